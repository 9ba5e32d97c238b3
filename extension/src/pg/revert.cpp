// pg_deploy: deploy.down() and deploy.rollback() — reverting applied migrations from their stored down SQL. Whether
// a deployment may be rolled back is decided by the rollback rule (pg_deploy/rollback_rules.hpp); what a lossy revert
// drops is archived first (pg/archiver.cpp); a down SQL that cannot run inside a transaction is planned as steps that
// a client runs at top level (pg/steps.cpp), and the revert resumes when it is called again.
#include <algorithm>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/archiver.hpp"
#include "pg_deploy/pg/eligibility.hpp"
#include "pg_deploy/pg/ledger.hpp"
#include "pg_deploy/pg/limits.hpp"
#include "pg_deploy/pg/lock_retry.hpp"
#include "pg_deploy/pg/settings.hpp"
#include "pg_deploy/pg/steps.hpp"
#include "pg_deploy/sql_split.hpp"
#include "pg_deploy/version.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
}

namespace pgdeploy {

namespace {

// Thrown out of the batch subtransaction to roll it back after a down script failed.
struct BatchRollback {};

struct RevertRow {
    std::string version, name, reversibility;
    Cell down_sql, down_checksum;
    int64_t deployment_id = 0;
    std::optional<int> lock_timeout_ms;
    bool down_transactional = true;
    // Its down SQL runs statement by statement at top level, as steps of the revert deployment.
    bool runs_as_steps() const { return down_sql && !down_transactional; }
};

// The running revert deployment that a call continues (it stopped at the steps of a non-transactional down SQL).
struct ResumedRevert {
    int64_t id = 0;
    Cell version_before;
    std::vector<int64_t> from_deployments;  // the deployments the migrations of its plan were applied by
};

struct RevertRequest {
    const char* kind = "down";    // deployments.kind
    std::vector<RevertRow> rows;  // newest first
    bool force = false;
    bool dry_run = false;
    Cell app_version;
    std::optional<int64_t> reverts;  // rollback: the deployment undone
    Cell reason;
    std::optional<ResumedRevert> resumed;
};

std::vector<RevertRow> load_rows(const char* where_and_order, std::vector<Oid> types,
                                 const std::vector<Param>& params) {
    std::string sql = std::string(
                          "SELECT version, name, reversibility, down_sql, deployment_id, down_checksum, "
                          "down_transactional, lock_timeout_ms FROM deploy.applied ") +
                      where_and_order;
    Rows rows = run_query(sql.c_str(), std::move(types), params);
    std::vector<RevertRow> out;
    out.reserve(rows.rows.size());
    for (Row& r : rows.rows) {
        RevertRow row;
        row.version = std::move(*r[0]);
        row.name = std::move(*r[1]);
        row.reversibility = std::move(*r[2]);
        row.down_sql = std::move(r[3]);
        row.deployment_id = cell_int8(r[4]);
        row.down_checksum = std::move(r[5]);
        row.down_transactional = cell_bool(r[6]);
        if (r[7])
            row.lock_timeout_ms = static_cast<int>(cell_int8(r[7]));
        out.push_back(std::move(row));
    }
    return out;
}

/*
 * resume_request continues the running revert deployment `d`: what its plan still has applied, with the arguments of
 * the call that started it (kept in its metadata when it stopped at steps).
 */
RevertRequest resume_request(const RunningDeployment& d, bool force) {
    Rows r = run_query(
        "SELECT app_version, version_before, metadata ->> 'reason', (metadata ->> 'force')::boolean "
        "FROM deploy.deployments WHERE id = $1",
        {INT8OID}, {p_int8(d.id)});
    const Row& row = r.front();
    RevertRequest req;
    req.kind = d.kind == "rollback" ? "rollback" : "down";
    req.reverts = d.reverts;
    req.app_version = row[0];
    req.reason = row[2];
    req.force = force || cell_bool(row[3]);
    req.rows = load_rows(
        "WHERE version IN (SELECT pg_catalog.jsonb_array_elements_text(d.metadata -> 'remaining') "
        "FROM deploy.deployments d WHERE d.id = $1) ORDER BY sort_key DESC",
        {INT8OID}, {p_int8(d.id)});
    ResumedRevert resumed;
    resumed.id = d.id;
    resumed.version_before = row[1];
    Rows ids = run_query(
        "SELECT pg_catalog.jsonb_array_elements_text(metadata -> 'from_deployments')::bigint "
        "FROM deploy.deployments WHERE id = $1",
        {INT8OID}, {p_int8(d.id)});
    for (const Row& id : ids.rows)
        resumed.from_deployments.push_back(cell_int8(id[0]));
    req.resumed = resumed;
    return req;
}

// One migration the batch reverted (or, forced, removed from the ledger without running anything).
struct Reverted {
    const RevertRow* row;
    double duration_ms;
    int64_t at;     // now_us() when it was done
    Json archived;  // the archive's entries for what its down SQL dropped
};

// What the batch did: the migrations reverted, in order, up to the failure (if any) that rolled the batch back.
struct RevertBatch {
    std::vector<Reverted> reverted;
    std::optional<SqlFailure> failure;
    const RevertRow* failed_row = nullptr;
};

/*
 * Revert runs a list of applied migrations' down SQL, newest first, atomically: the whole list in one batch
 * subtransaction. A failing down script rolls the whole batch back; the failed down/rollback deployment and its error
 * are then recorded in the outer transaction (they persist), a WARNING is raised and ok:false returned — never an
 * ERROR, so deploy.execute_rollback() can read the outcome. It owns the revert's deployment record and its result.
 *
 * A down SQL that cannot run inside a transaction (DROP INDEX CONCURRENTLY, ...) stops the list: the migrations
 * before it are reverted in the batch, its statements are planned as steps of the revert deployment, which stays
 * running, and the result says "awaiting_nontransactional" (as deploy.up() does). A client runs the steps at top
 * level (the last one takes the migration out of the ledger, pg/steps.cpp) and calls the revert again, which resumes
 * the same deployment with the migrations after it.
 */
class Revert {
public:
    explicit Revert(RevertRequest req) : req_(std::move(req)), started_(now_us()), result_(base_result()) {}

    // run reads as its list of steps.
    CallOutcome run() {
        refuse_irreversible();
        version_before_ = req_.resumed ? req_.resumed->version_before : current_version();
        result_["version_before"] = cell_json(version_before_);
        if (req_.resumed)
            resume_deployment();
        else if (req_.rows.empty())
            return nothing_to_do();
        else if (!req_.dry_run)
            start_deployment();
        if (req_.resumed && still_waiting())
            return done(std::nullopt);
        split_at_steps();
        RevertBatch batch = refuse_drifted(later_rows_);
        if (!batch.failure && !batch_rows_.empty())
            batch = run_batch(batch_rows_);
        std::optional<Warning> warning;
        if (batch.failure)
            warning = report_failure(batch);
        if (req_.dry_run)
            finish_dry_run(batch);
        else if (batch.failure)
            record_failure(batch);
        else if (!later_rows_.empty())
            wait_for_steps(batch);
        else
            record_success(batch);
        return done(warning);
    }

private:
    Json base_result() const {
        return Json{{"schema_version", 1},
                    {"operation", req_.kind},
                    {"ok", true},
                    {"dry_run", req_.dry_run},
                    {"deployment_id", nullptr},
                    {"reverts", req_.reverts ? Json(*req_.reverts) : Json(nullptr)},
                    {"app_version", cell_json(req_.app_version)},
                    {"state", nullptr},
                    {"resumed", req_.resumed.has_value()},
                    {"version_before", nullptr},
                    {"version_after", nullptr},
                    {"reverted", Json::array()},
                    {"failed", nullptr},
                    {"awaiting_nontransactional", nullptr},
                    {"archived", Json::array()},
                    {"forced", Json::array()},
                    {"lock_retries", Json::array()},
                    {"duration_ms", 0}};
    }

    CallOutcome done(std::optional<Warning> warning) {
        result_["duration_ms"] = ms_since(started_);
        return CallOutcome{std::move(result_), std::move(warning)};
    }

    void refuse_irreversible() const {
        std::vector<std::string> without_down_sql;
        for (const RevertRow& r : req_.rows) {
            if (!r.down_sql)
                without_down_sql.push_back(r.version + " (" + r.name + ")");
        }
        if (std::optional<DeployError> refusal = irreversible_refusal(without_down_sql, req_.force))
            throw *refusal;
    }

    CallOutcome nothing_to_do() {
        result_["state"] = req_.dry_run ? "dry_run" : "nothing_to_do";
        result_["version_after"] = cell_json(version_before_);
        return done(std::nullopt);
    }

    void start_deployment() {
        Json metadata{{"reason", cell_json(req_.reason)}};
        Rows d = run_query(
            "INSERT INTO deploy.deployments (kind, app_version, state, version_before, reverts, metadata) "
            "VALUES ($1, $2, 'running', $3, $4, $5) RETURNING id",
            {TEXTOID, TEXTOID, TEXTOID, INT8OID, JSONBOID},
            {p_text(std::string(req_.kind)), p_text(req_.app_version), p_text(version_before_), p_int8(req_.reverts),
             p_jsonb(metadata.dump())});
        deployment_id_ = cell_int8(d.front()[0]);
        result_["deployment_id"] = *deployment_id_;
        events_.log("deployment_started", deployment_id_, version_before_, std::nullopt,
                    Json{{"kind", req_.kind},
                         {"reverts", req_.reverts ? Json(*req_.reverts) : Json(nullptr)},
                         {"migrations", req_.rows.size()},
                         {"reason", cell_json(req_.reason)},
                         {"force", req_.force}});
    }

    void resume_deployment() {
        deployment_id_ = req_.resumed->id;
        result_["deployment_id"] = *deployment_id_;
        from_deployments_.insert(req_.resumed->from_deployments.begin(), req_.resumed->from_deployments.end());
    }

    // still_waiting: the resumed deployment still has steps that are not done; the result says which (nothing else
    // to do).
    bool still_waiting() {
        Rows steps = unfinished_steps(*deployment_id_);
        if (steps.empty())
            return false;
        result_["state"] = "running";
        result_["version_after"] = cell_json(current_version());
        result_["awaiting_nontransactional"] = awaiting_json(steps);
        notice_awaiting(req_.kind, *deployment_id_, steps);
        return true;
    }

    // split_at_steps: the rows before the first one whose down SQL runs as steps form the batch; that row and the
    // rows after it wait for the steps.
    void split_at_steps() {
        auto first =
            std::find_if(req_.rows.begin(), req_.rows.end(), [](const RevertRow& r) { return r.runs_as_steps(); });
        batch_rows_.assign(std::make_move_iterator(req_.rows.begin()), std::make_move_iterator(first));
        later_rows_.assign(std::make_move_iterator(first), std::make_move_iterator(req_.rows.end()));
        req_.rows.clear();
        for (const std::vector<RevertRow>* rows : {&batch_rows_, &later_rows_}) {
            for (const RevertRow& r : *rows)
                from_deployments_.insert(r.deployment_id);
        }
    }

    // run_batch reverts the rows in one subtransaction: rolled back on a failure, and always in a dry run. Stored
    // down SQL that no longer matches its checksum is never run, and nothing else runs either: the whole revert is
    // refused before the first statement.
    RevertBatch run_batch(const std::vector<RevertRow>& rows) {
        RevertBatch batch = refuse_drifted(rows);
        if (batch.failure)
            return batch;
        LockRetry retry("down SQL", events_, deployment_id_);
        do {
            batch = run_batch_once(rows, retry);
        } while (retry.after_rollback(batch.failure, batch.failed_row ? batch.failed_row->version : std::string(),
                                      batch.failed_row ? batch.failed_row->name : std::string()));
        for (const Json& entry : retry.retries())
            result_["lock_retries"].push_back(entry);  // a resumed revert may run more than one batch
        return batch;
    }

    RevertBatch run_batch_once(const std::vector<RevertRow>& rows, LockRetry& retry) {
        RevertBatch batch;
        auto body = [&] {
            batch = revert_rows(rows);
            retry.decide(batch.failure);  // the batch is rolled back on any failure
            if (batch.failure && !req_.dry_run)
                throw BatchRollback{};
            if (!req_.dry_run)
                remove_from_ledger(batch);
        };
        if (req_.dry_run) {
            in_rolled_back_subtransaction(body);
        } else {
            try {
                in_subtransaction(body);
            } catch (const BatchRollback&) {
            }
        }
        return batch;
    }

    static RevertBatch refuse_drifted(const std::vector<RevertRow>& rows) {
        RevertBatch batch;
        for (const RevertRow& r : rows) {
            if (!intact(r.down_sql, r.down_checksum)) {
                batch.failure = drift_failure("down_sql", r.version);
                batch.failed_row = &r;
                break;
            }
        }
        return batch;
    }

    RevertBatch revert_rows(const std::vector<RevertRow>& rows) {
        RevertBatch batch;
        for (const RevertRow& r : rows) {
            int64_t t0 = now_us();
            Json archived = Json::array();
            if (r.down_sql) {
                batch.failure = failure_of([&] { archived = run_down_sql(r); });
                if (batch.failure) {
                    batch.failed_row = &r;
                    break;
                }
            }
            batch.reverted.push_back(Reverted{&r, ms_since(t0), now_us(), std::move(archived)});
        }
        return batch;
    }

    // run_down_sql runs one down script and returns what it archived. No subtransaction per migration: a revert is
    // all or nothing, so the batch subtransaction is rolled back on any failure (see up.cpp for why per-migration
    // subtransactions cost too much). A dry run archives nothing (there is no deployment to file it under).
    Json run_down_sql(const RevertRow& r) {
        Json archived = Json::array();
        if (!holds_code(*r.down_sql)) {
            pg_notice("down SQL of migration " + r.version + " (" + r.name + ") is a no-op: it holds only comments");
            return archived;
        }
        with_lock_timeout(effective_lock_timeout_ms(r.lock_timeout_ms), [&] {
            MigrationTimer timer;
            if (r.reversibility == "lossy" && deployment_id_) {
                Archiver archiver(*deployment_id_, r.version, events_);
                archiver.run_statement_by_statement(*r.down_sql);
                archived = archiver.archived();
            } else {
                run_user_sql(*r.down_sql);
            }
        });
        return archived;
    }

    // remove_from_ledger takes the reverted migrations out of the ledger (remove_reverted: their applied rows and
    // migration_reverted events, in one statement).
    void remove_from_ledger(const RevertBatch& batch) {
        std::vector<RevertedMigration> reverted;
        reverted.reserve(batch.reverted.size());
        for (const Reverted& r : batch.reverted) {
            reverted.push_back(RevertedMigration{r.row->version, r.row->name, r.row->reversibility,
                                                 r.row->down_sql.has_value(), r.row->deployment_id, r.duration_ms,
                                                 static_cast<int64_t>(r.archived.size()), r.at});
        }
        remove_reverted(*deployment_id_, reverted);
    }

    // report_failure puts the failure into the result and returns the WARNING that tells a psql user.
    Warning report_failure(const RevertBatch& batch) {
        const SqlFailure& failure = *batch.failure;
        Json failed = failure.to_json();
        failed["version"] = batch.failed_row->version;
        failed["name"] = batch.failed_row->name;
        result_["ok"] = false;
        result_["failed"] = failed;
        std::string message = std::string(req_.dry_run ? "dry run: " : "") + "down SQL of migration " +
                              batch.failed_row->version + " (" + batch.failed_row->name +
                              ") failed: " + failure.message;
        std::string detail = "nothing was changed (dry run)";
        if (!req_.dry_run) {
            detail = std::string(req_.kind) + " deployment " + std::to_string(*deployment_id_) + " failed; " +
                     (req_.resumed ? "its batch was rolled back; what its earlier calls and steps reverted stays "
                                     "reverted"
                                   : "nothing was reverted (the batch was rolled back)");
        }
        return Warning{failure.sqlstate, message, detail};
    }

    // finish_dry_run reports what the revert would have done, and the version it would have left current. A down SQL
    // that would run as steps is not rehearsed (it cannot run inside a transaction), nor is anything after it.
    void finish_dry_run(const RevertBatch& batch) {
        result_["state"] = "dry_run";
        result_["reverted"] = reverted_json(batch);
        result_["forced"] = forced_json(batch);
        if (!later_rows_.empty() && !batch.failure) {
            const RevertRow& r = later_rows_.front();
            result_["awaiting_nontransactional"] =
                Json{{"version", r.version},
                     {"name", r.name},
                     {"steps", nullptr},
                     {"note", "not rehearsed: non-transactional statements cannot run inside a transaction"}};
        }
        Cell after = version_before_;
        if (!batch.failure) {
            // the newest applied row the batch did not revert
            std::set<std::string> gone;
            for (const Reverted& r : batch.reverted)
                gone.insert(r.row->version);
            after = std::nullopt;
            Rows all = run_query("SELECT version FROM deploy.applied ORDER BY sort_key DESC");
            for (const Row& a : all.rows) {
                if (!gone.count(*a[0])) {
                    after = a[0];
                    break;
                }
            }
        }
        result_["version_after"] = cell_json(after);
    }

    void record_failure(const RevertBatch& batch) {
        const std::string& version = batch.failed_row->version;
        result_["state"] = "failed";
        result_["version_after"] = cell_json(current_version());
        finish_deployment(*deployment_id_, "failed", current_version(), result_["failed"]);
        events_.log_failure("migration_failed", deployment_id_, version, result_["failed"]);
        if (batch.failure->sqlstate == sqlstate::checksum_drift) {
            events_.log("stored_sql_drift", deployment_id_, version, std::nullopt,
                        Json{{"operation", req_.kind}, {"message", batch.failure->message}});
        }
        events_.log("deployment_failed", deployment_id_, version_before_, std::nullopt,
                    Json{{"kind", req_.kind}, {"failed_version", version}, {"sqlstate", batch.failure->sqlstate}});
        // What earlier calls and steps of a resumed revert took out stays out: a deployment they emptied is rolled
        // back (by this failed revert) as it would have been on success.
        if (req_.resumed)
            mark_rolled_back(current_version());
    }

    /*
     * wait_for_steps plans the statements of the first down SQL that must run at top level as steps of the revert
     * deployment and leaves it running. Its metadata keeps what a later call needs to resume it: the versions still to
     * revert, the deployments they came from, and force.
     */
    void wait_for_steps(const RevertBatch& batch) {
        const RevertRow& r = later_rows_.front();
        plan_steps(*deployment_id_, r.version, *r.down_sql, "down_sql");
        Json remaining = Json::array();
        for (const RevertRow& later : later_rows_)
            remaining.push_back(later.version);
        Json plan{{"remaining", remaining}, {"from_deployments", from_deployments_}, {"force", req_.force}};
        run_query("UPDATE deploy.deployments SET metadata = metadata || $2 WHERE id = $1", {INT8OID, JSONBOID},
                  {p_int8(*deployment_id_), p_jsonb(plan.dump())});
        Cell now_version = current_version();
        finish_deployment(*deployment_id_, "running", now_version, std::nullopt);
        Rows steps = unfinished_steps(*deployment_id_);
        result_["state"] = "running";
        result_["reverted"] = reverted_json(batch);
        result_["archived"] = archived_json(batch);
        result_["forced"] = forced_json(batch);
        result_["version_after"] = cell_json(now_version);
        result_["awaiting_nontransactional"] = awaiting_json(steps);
        notice_awaiting(req_.kind, *deployment_id_, steps);
    }

    void record_success(const RevertBatch& batch) {
        Cell after = current_version();
        if (req_.resumed)
            whole_deployment_lists();
        else
            batch_lists(batch);
        result_["state"] = "succeeded";
        result_["version_after"] = cell_json(after);
        finish_deployment(*deployment_id_, "succeeded", after, std::nullopt);
        mark_rolled_back(after);
        events_.log("deployment_succeeded", deployment_id_, after, std::nullopt,
                    Json{{"kind", req_.kind},
                         {"reverted", result_["reverted"].size()},
                         {"forced", result_["forced"]},
                         {"resumed", req_.resumed.has_value()}});
    }

    void batch_lists(const RevertBatch& batch) {
        result_["reverted"] = reverted_json(batch);
        result_["archived"] = archived_json(batch);
        result_["forced"] = forced_json(batch);
    }

    // whole_deployment_lists: a resumed revert reports everything its deployment reverted and archived, over all its
    // calls and steps, from the ledger.
    void whole_deployment_lists() {
        Rows reverted = run_query(
            "SELECT e.version, e.details ->> 'name', (e.details ->> 'duration_ms')::float8, "
            "(e.details ->> 'sql_run')::boolean FROM deploy.events e "
            "WHERE e.deployment_id = $1 AND e.kind = 'migration_reverted' ORDER BY e.id",
            {INT8OID}, {p_int8(*deployment_id_)});
        Json list = Json::array();
        Json forced = Json::array();
        for (const Row& r : reverted.rows) {
            bool sql_run = cell_bool(r[3]);
            list.push_back(Json{{"version", r[0].value_or("")},
                                {"name", r[1].value_or("")},
                                {"duration_ms", cell_float8(r[2])},
                                {"sql_run", sql_run}});
            if (!sql_run)
                forced.push_back(r[0].value_or(""));
        }
        Rows archived = run_query(
            "SELECT object_type, object_name, archive_table, row_count FROM deploy.archived "
            "WHERE deployment_id = $1 ORDER BY id",
            {INT8OID}, {p_int8(*deployment_id_)});
        Json archive = Json::array();
        for (const Row& a : archived.rows) {
            archive.push_back(Json{{"object_type", a[0].value_or("")},
                                   {"object_name", a[1].value_or("")},
                                   {"archive_table", a[2].value_or("")},
                                   {"row_count", cell_int8(a[3])}});
        }
        result_["reverted"] = list;
        result_["archived"] = archive;
        result_["forced"] = forced;
    }

    // mark_rolled_back marks the up deployments left with nothing applied rolled back: the target of a rollback, and
    // any deployment a down() emptied. Their unfinished steps are abandoned.
    void mark_rolled_back(const Cell& after) {
        std::set<int64_t> targets = from_deployments_;
        if (req_.reverts)
            targets.insert(*req_.reverts);
        Plan mark(
            "UPDATE deploy.deployments d SET state = 'rolled_back', rolled_back_by = $2 "
            "WHERE d.id = $1 AND d.kind = 'up' AND d.state IN ('succeeded', 'failed', 'running') "
            "AND NOT EXISTS (SELECT 1 FROM deploy.applied a WHERE a.deployment_id = d.id) RETURNING d.id",
            {INT8OID, INT8OID});
        Plan abandon(
            "UPDATE deploy.checkpoints SET state = 'failed', finished_at = pg_catalog.clock_timestamp(), "
            "error = $2 WHERE deployment_id = $1 AND state <> 'done'",
            {INT8OID, JSONBOID});
        for (int64_t t : targets) {
            Rows m = mark.run({p_int8(t), p_int8(deployment_id_)});
            if (m.empty())
                continue;
            abandon.run({p_int8(t), p_jsonb(Json{{"message", "abandoned: deployment rolled back by " +
                                                                 std::to_string(*deployment_id_)}}
                                                .dump())});
            events_.log("deployment_rolled_back", t, after, std::nullopt,
                        Json{{"by", *deployment_id_}, {"kind", req_.kind}, {"reason", cell_json(req_.reason)}});
        }
    }

    static Json reverted_json(const RevertBatch& batch) {
        Json out = Json::array();
        for (const Reverted& r : batch.reverted) {
            out.push_back(Json{{"version", r.row->version},
                               {"name", r.row->name},
                               {"duration_ms", r.duration_ms},
                               {"sql_run", r.row->down_sql.has_value()}});
        }
        return out;
    }

    static Json forced_json(const RevertBatch& batch) {
        Json out = Json::array();
        for (const Reverted& r : batch.reverted) {
            if (!r.row->down_sql)
                out.push_back(r.row->version);
        }
        return out;
    }

    static Json archived_json(const RevertBatch& batch) {
        Json out = Json::array();
        for (const Reverted& r : batch.reverted) {
            for (const Json& a : r.archived)
                out.push_back(a);
        }
        return out;
    }

    RevertRequest req_;
    int64_t started_;
    Json result_;
    Cell version_before_;
    std::optional<int64_t> deployment_id_;  // none in a dry run
    std::vector<RevertRow> batch_rows_;     // reverted in this call's batch
    std::vector<RevertRow> later_rows_;     // from the first down SQL that runs as steps on
    std::set<int64_t> from_deployments_;    // the deployments whose migrations this revert takes out
    EventLog events_;
};

Cell previous_release(int64_t before_id) {
    Rows r = run_query(
        "SELECT app_version FROM deploy.deployments WHERE kind = 'up' AND state = 'succeeded' "
        "AND id < $1 AND app_version IS NOT NULL ORDER BY id DESC LIMIT 1",
        {INT8OID}, {p_int8(before_id)});
    return r.empty() ? Cell() : r.front()[0];
}

struct DownArgs {
    int32 steps = 1;
    std::optional<std::string> to_version;
    bool force = false;
    bool dry_run = false;
    std::optional<std::string> app_version;
};

DownArgs down_args(FunctionCallInfo fcinfo) {
    if (PG_ARGISNULL(0))
        throw DeployError(sqlstate::null_value, "steps must not be NULL");
    DownArgs a;
    a.steps = PG_GETARG_INT32(0);
    a.to_version = opt_text_arg(fcinfo, 1);
    a.force = bool_arg(fcinfo, 2, "force");
    a.dry_run = bool_arg(fcinfo, 3, "dry_run");
    a.app_version = opt_text_arg(fcinfo, 4);
    check_input_length("app_version", a.app_version);
    if (a.to_version)
        check_version(*a.to_version, "to_version");
    if (!a.to_version && a.steps < 1) {
        throw DeployError(sqlstate::invalid_parameter,
                          "steps must be at least 1 (got " + std::to_string(a.steps) + ")");
    }
    return a;
}

// rows_to_revert: every applied migration above to_version, or the newest `steps` of them (to_version wins).
std::vector<RevertRow> rows_to_revert(const DownArgs& a) {
    if (a.to_version) {
        Rows t =
            run_query("SELECT sort_key FROM deploy.applied WHERE version = $1", {TEXTOID}, {p_text(*a.to_version)});
        if (t.empty()) {
            throw DeployError(sqlstate::no_data_found, "to_version " + *a.to_version + " is not applied", {},
                              "to_version names the applied version to return to; see deploy.status().");
        }
        return load_rows("WHERE sort_key > $1 ORDER BY sort_key DESC", {TEXTOID},
                         {t.front()[0] ? p_text(*t.front()[0]) : p_null()});
    }
    std::vector<RevertRow> rows = load_rows("ORDER BY sort_key DESC LIMIT $1", {INT4OID}, {p_int4(a.steps)});
    if (!rows.empty() && static_cast<int32>(rows.size()) < a.steps) {
        throw DeployError(sqlstate::invalid_parameter, "steps => " + std::to_string(a.steps) + " but only " +
                                                           std::to_string(rows.size()) + " migration(s) are applied");
    }
    return rows;
}

/*
 * down_request: what deploy.down() reverts. A running down deployment (it stopped at the steps of a down SQL) is
 * resumed, whatever steps or to_version say: it finishes what it started. Any other running deployment refuses it.
 */
RevertRequest down_request(const DownArgs& args) {
    if (!args.dry_run) {
        if (std::optional<RunningDeployment> running = newest_running(false)) {
            if (running->kind != "down")
                throw running_refusal("deploy.down()", *running);
            return resume_request(*running, args.force);
        }
    }
    RevertRequest req;
    req.kind = "down";
    req.force = args.force;
    req.dry_run = args.dry_run;
    req.app_version = args.app_version;
    req.rows = rows_to_revert(args);
    return req;
}

/*
 * down_impl: deploy.down(steps, to_version, force, dry_run, app_version) reverts the newest `steps` migrations, or
 * every migration above to_version (to_version wins when both are given).
 */
Datum down_impl(FunctionCallInfo fcinfo) {
    DownArgs args = down_args(fcinfo);
    CallOutcome out;
    {
        SpiSession spi;
        acquire_deploy_lock("deploy.down()");
        out = Revert(down_request(args)).run();
        spi.finish();
    }
    return outcome_result(out);
}

struct RollbackArgs {
    std::optional<int64_t> deployment_id;
    bool force = false;
    std::optional<std::string> reason;
    bool dry_run = false;
};

RollbackArgs rollback_args(FunctionCallInfo fcinfo) {
    RollbackArgs a;
    a.deployment_id = opt_int8_arg(fcinfo, 0);
    a.force = bool_arg(fcinfo, 1, "force");
    a.reason = opt_text_arg(fcinfo, 2);
    a.dry_run = bool_arg(fcinfo, 3, "dry_run");
    check_input_length("reason", a.reason);
    return a;
}

int64_t rollback_target(const RollbackArgs& a) {
    if (a.deployment_id)
        return *a.deployment_id;
    std::optional<int64_t> newest = newest_revertible_deployment();
    if (!newest) {
        throw DeployError(sqlstate::no_data_found, "there is no deployment to roll back", {},
                          "Only up deployments that still have applied migrations can be rolled back.");
    }
    return *newest;
}

// refuse_rollback raises what the rollback rule refuses (rollback_refusal) for the target.
void refuse_rollback(int64_t target, bool force) {
    std::optional<RollbackFacts> facts = rollback_facts(target);
    if (!facts)
        throw DeployError(sqlstate::no_data_found, "deployment " + std::to_string(target) + " does not exist");
    if (std::optional<DeployError> refusal = rollback_refusal(*facts, force))
        throw *refusal;
}

// record_nothing_left marks a target with nothing left to revert (a down() took it already, or nothing was applied)
// rolled back, so that executing a rollback twice is a no-op.
void record_nothing_left(int64_t target, const std::optional<std::string>& reason) {
    run_query("UPDATE deploy.deployments SET state = 'rolled_back' WHERE id = $1 AND state <> 'rolled_back'", {INT8OID},
              {p_int8(target)});
    run_query(
        "UPDATE deploy.checkpoints SET state = 'failed', finished_at = pg_catalog.clock_timestamp(), "
        "error = $2 WHERE deployment_id = $1 AND state <> 'done'",
        {INT8OID, JSONBOID}, {p_int8(target), p_jsonb(Json{{"message", "abandoned: deployment rolled back"}}.dump())});
    EventLog events;
    events.log("deployment_rolled_back", target, current_version(), std::nullopt,
               Json{{"by", nullptr},
                    {"kind", "rollback"},
                    {"reason", cell_json(reason)},
                    {"note", "nothing was applied any more"}});
}

/*
 * running_rollback: the running rollback deployment this call resumes (it stopped at the steps of a down SQL), if
 * any. A rollback of another deployment, or a running down deployment, refuses the call.
 */
std::optional<RunningDeployment> running_rollback(const RollbackArgs& a) {
    if (a.dry_run)
        return std::nullopt;
    std::optional<RunningDeployment> running = newest_running(true);
    if (running && (running->kind != "rollback" || (a.deployment_id && a.deployment_id != running->reverts)))
        throw running_refusal("deploy.rollback()", *running);
    return running;
}

/*
 * rollback: deploy.rollback()'s steps, under the deploy lock. Refusals (the target, the rollback rule, irreversible
 * migrations) raise; a failing down script returns ok:false with the failed rollback deployment recorded. A running
 * rollback is resumed: the rule was applied when it started.
 */
CallOutcome rollback(const RollbackArgs& a) {
    if (std::optional<RunningDeployment> running = running_rollback(a))
        return Revert(resume_request(*running, a.force)).run();
    int64_t target = rollback_target(a);
    refuse_rollback(target, a.force);
    RevertRequest req;
    req.kind = "rollback";
    req.force = a.force;
    req.dry_run = a.dry_run;
    req.reverts = target;
    req.reason = a.reason;
    req.app_version = previous_release(target);
    req.rows = load_rows("WHERE deployment_id = $1 ORDER BY sort_key DESC", {INT8OID}, {p_int8(target)});
    bool nothing_applied = req.rows.empty();
    CallOutcome out = Revert(std::move(req)).run();
    if (nothing_applied && !a.dry_run) {
        record_nothing_left(target, a.reason);
        out.result["state"] = "succeeded";
    }
    return out;
}

// rollback_impl: deploy.rollback(deployment_id, force, reason, dry_run) reverts what one up deployment applied.
Datum rollback_impl(FunctionCallInfo fcinfo) {
    RollbackArgs args = rollback_args(fcinfo);
    CallOutcome out;
    {
        SpiSession spi;
        acquire_deploy_lock("deploy.rollback()");
        out = rollback(args);
        spi.finish();
    }
    return outcome_result(out);
}

}  // namespace

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_down, pgdeploy::down_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_rollback, pgdeploy::rollback_impl)
