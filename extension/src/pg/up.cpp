// pg_deploy: deploy.up() — apply pending migrations; a non-transactional one is planned as steps (pg/steps.cpp).
#include <string>
#include <vector>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/ledger.hpp"
#include "pg_deploy/pg/limits.hpp"
#include "pg_deploy/pg/lock_retry.hpp"
#include "pg_deploy/pg/settings.hpp"
#include "pg_deploy/pg/sqltext.hpp"
#include "pg_deploy/pg/steps.hpp"
#include "pg_deploy/sql_split.hpp"
#include "pg_deploy/version.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
}

namespace pgdeploy {

namespace {

// Thrown out of the batch subtransaction to roll it back after a migration failed (atomic mode).
struct BatchRollback {};

/*
 * load_pending reads the pending migrations that sort from `from_key` on (all of them when it is empty) and up to
 * `through_key` when given, in order, with their up SQL. The range is an index range scan on the unique
 * deploy.migrations.sort_key, so one more migration on a ledger of 100,000 reads its own catalog row and SQL, not
 * every pending row's SQL (older pending rows are refused by out_of_order_pending()). Every row
 * in the range is still probed against deploy.applied by version (a primary-key probe per row), so a row that manual
 * DML marked applied out of order is never applied twice. The range starts at the newest applied key inclusive: the
 * newest applied row itself is dropped by the probe, so the result is every pending migration with a key >= it (the
 * older ones are what out_of_order_pending() checks).
 */
std::vector<Migration> load_pending(const std::string& from_key, const std::optional<std::string>& through_key) {
    Rows rows = run_query(
        "SELECT m.version, m.sort_key, m.name, m.up_sql, m.down_sql, m.checksum, m.transactional, m.reversibility, "
        "m.down_checksum, m.down_transactional, m.lock_timeout_ms "
        "FROM deploy.migrations m "
        "WHERE ($1::text IS NULL OR m.sort_key >= $1) AND ($2::text IS NULL OR m.sort_key <= $2) "
        "AND NOT EXISTS (SELECT 1 FROM deploy.applied a WHERE a.version = m.version) ORDER BY m.sort_key",
        {TEXTOID, TEXTOID}, {from_key.empty() ? p_null() : p_text(from_key), p_text(through_key)});
    std::vector<Migration> out;
    out.reserve(rows.rows.size());
    for (Row& r : rows.rows) {
        Migration m;
        m.version = std::move(*r[0]);
        m.sort_key = std::move(*r[1]);
        m.name = std::move(*r[2]);
        m.up_sql = std::move(*r[3]);
        m.down_sql = std::move(r[4]);
        m.checksum = std::move(*r[5]);
        m.transactional = cell_bool(r[6]);
        m.reversibility = std::move(*r[7]);
        m.down_checksum = std::move(r[8]);
        m.down_transactional = cell_bool(r[9]);
        if (r[10])
            m.lock_timeout_ms = static_cast<int>(cell_int8(r[10]));
        out.push_back(std::move(m));
    }
    return out;
}

/*
 * out_of_order_pending returns the versions of registered migrations that are not applied and sort before
 * `newest_key` (the newest applied one), oldest first. It is exact whatever wrote the tables (deploy.register, a
 * rollback, manual DML): it reads only versions and sort keys, never the SQL, and returns no row in the normal case.
 * It costs an anti-join of the catalog against the ledger (about 30 ms at 100,000 rows), so up() runs it only when
 * deploy.ledger_stats says a change since the last clean check may have left such a migration (order_state()); the
 * triggers that keep that state see every writer, manual DML included, and look only at the rows a statement changed.
 */
std::vector<std::string> out_of_order_pending(const std::string& newest_key) {
    Rows rows = run_query(
        "SELECT m.version FROM deploy.migrations m WHERE m.sort_key < $1 "
        "AND NOT EXISTS (SELECT 1 FROM deploy.applied a WHERE a.version = m.version) ORDER BY m.sort_key",
        {TEXTOID}, {p_text(newest_key)});
    std::vector<std::string> out;
    out.reserve(rows.rows.size());
    for (Row& r : rows.rows)
        out.push_back(std::move(*r[0]));
    return out;
}

struct UpArgs {
    std::optional<std::string> target;
    bool dry_run = false;
    std::optional<std::string> app_version;
    bool atomic = true;
    std::string metadata;  // a JSON object
};

UpArgs up_args(FunctionCallInfo fcinfo) {
    UpArgs a;
    a.target = opt_text_arg(fcinfo, 0);
    a.dry_run = bool_arg(fcinfo, 1, "dry_run");
    a.app_version = opt_text_arg(fcinfo, 2);
    a.atomic = bool_arg(fcinfo, 3, "atomic");
    a.metadata = opt_jsonb_arg(fcinfo, 4).value_or("{}");
    if (a.target)
        check_version(*a.target, "target");
    if (a.app_version && a.app_version->find_first_not_of(" \t\r\n") == std::string::npos) {
        throw DeployError(sqlstate::invalid_parameter, "app_version must not be empty", {},
                          "Pass NULL when there is no application release to record.");
    }
    if (!Json::parse(a.metadata).is_object())
        throw DeployError(sqlstate::invalid_parameter, "metadata must be a JSON object");
    check_input_length("app_version", a.app_version);
    check_input_length("metadata", a.metadata);
    return a;
}

// One migration the batch applied.
struct Applied {
    const Migration* migration;
    double duration_ms;
};

// What the batch did: the migrations applied, in order, up to the failure or the non-transactional migration that
// stopped it (if any).
struct UpBatch {
    std::vector<Applied> applied;
    std::optional<SqlFailure> failure;
    const Migration* failed = nullptr;
    double failed_ms = 0;
    const Migration* awaiting = nullptr;  // non-transactional: its statements run at top level, one step each
};

/*
 * Up is one call of deploy.up(target, dry_run, app_version, atomic, metadata); it owns the deployment record and the
 * result document. Atomic mode runs the batch in one subtransaction; atomic => false runs each migration in its own
 * subtransaction so that a failure keeps the ones before it. A failure rolls the subtransaction back and is then
 * recorded in the outer transaction, so the failed deployment row, its error and the events persist when the
 * function returns normally with ok:false (and a WARNING for psql users). A dry run runs the same code inside a
 * subtransaction that is always rolled back and writes no row.
 */
class Up {
public:
    explicit Up(const UpArgs& args) : args_(args), started_(now_us()), result_(base_result()) {}

    // run reads as its list of steps.
    CallOutcome run() {
        acquire_deploy_lock("deploy.up()");
        if (!args_.dry_run)
            refuse_while_reverting();
        if (!args_.dry_run)
            refuse_if_open_marker("deploy.up()");
        version_before_ = current_version();
        std::string newest_key = version_before_ ? version_key(*version_before_) : std::string();
        if (!args_.dry_run && resume_running_deployment())
            return done();
        result_["version_before"] = cell_json(version_before_);
        if (!allow_out_of_order && !newest_key.empty())
            refuse_out_of_order(newest_key);
        // Only the migrations this call may run are read, up SQL included: the range [newest applied, target].
        std::vector<Migration> pending = load_pending(allow_out_of_order ? std::string() : newest_key, target_key());
        if (pending.empty()) {
            finish_without_migrations();
            return done();
        }
        if (!args_.dry_run && !deployment_id_)
            start_deployment(pending.size());
        UpBatch batch = run_batch(pending);
        if (batch.failure)
            report_failure(batch);
        if (args_.dry_run)
            return done(finish_dry_run(batch));
        if (batch.failure)
            return done(record_failure(batch));
        if (batch.awaiting)
            wait_for_steps(batch);
        else
            record_success(batch);
        return done();
    }

private:
    Json base_result() const {
        return Json{{"schema_version", 1},
                    {"operation", "up"},
                    {"ok", true},
                    {"dry_run", args_.dry_run},
                    {"atomic", args_.atomic},
                    {"deployment_id", nullptr},
                    {"app_version", cell_json(args_.app_version)},
                    {"state", nullptr},
                    {"version_before", nullptr},
                    {"version_after", nullptr},
                    {"applied", Json::array()},
                    {"failed", nullptr},
                    {"awaiting_nontransactional", nullptr},
                    {"marker_id", nullptr},
                    {"lock_retries", Json::array()},
                    {"duration_ms", 0}};
    }

    CallOutcome done(std::optional<Warning> warning = std::nullopt) {
        result_["duration_ms"] = ms_since(started_);
        return CallOutcome{std::move(result_), std::move(warning)};
    }

    // refuse_while_reverting: a revert that waits for the steps of a down SQL must finish first (deploy.up() would
    // re-apply what it has just reverted, under its feet).
    static void refuse_while_reverting() {
        if (std::optional<RunningDeployment> revert = newest_running(true))
            throw running_refusal("deploy.up()", *revert);
    }

    // resume_running_deployment continues a running deployment: it waits for non-transactional steps, or was
    // interrupted. True when it still waits for steps (the result says which; nothing else to do).
    bool resume_running_deployment() {
        Rows running = run_query(
            "SELECT id, app_version, version_before FROM deploy.deployments "
            "WHERE kind = 'up' AND state = 'running' ORDER BY id DESC LIMIT 1");
        if (running.empty())
            return false;
        deployment_id_ = cell_int8(running.front()[0]);
        result_["deployment_id"] = *deployment_id_;
        result_["app_version"] = cell_json(running.front()[1]);
        version_before_ = running.front()[2];
        Rows steps = unfinished_steps(*deployment_id_);
        if (steps.empty())
            return false;
        result_["state"] = "running";
        result_["version_before"] = cell_json(version_before_);
        result_["version_after"] = cell_json(current_version());
        result_["awaiting_nontransactional"] = awaiting_json(steps);
        notice_awaiting("up", *deployment_id_, steps);
        return true;
    }

    /*
     * refuse_out_of_order refuses pending migrations older than the newest applied one (with
     * pg_deploy.allow_out_of_order they are applied in order with the rest instead). The exact check compares the
     * whole catalog with the whole ledger, so it runs only when a change since the last clean check may have left
     * such a migration (deploy.ledger_stats.order_generation, kept by triggers).
     */
    void refuse_out_of_order(const std::string& newest_key) {
        OrderState order = order_state();
        if (order.proven)
            return;
        std::vector<std::string> older = out_of_order_pending(newest_key);
        if (older.empty()) {
            if (!args_.dry_run)
                mark_order_checked(order.generation);
            return;
        }
        std::string listed;
        std::size_t n = older.size();
        for (std::size_t i = 0; i < n && i < 10; ++i)
            listed += (i == 0 ? "" : ", ") + older[i];
        throw DeployError(sqlstate::object_not_in_prerequisite_state,
                          "pending migration(s) older than the newest applied one (" + current_version().value_or("") +
                              "): " + listed + (n > 10 ? ", ..." : ""),
                          std::to_string(n) + " out-of-order migration(s)",
                          "Renumber them after the newest applied version, or SET pg_deploy.allow_out_of_order "
                          "= on to apply them anyway.");
    }

    std::optional<std::string> target_key() const {
        if (!args_.target)
            return std::nullopt;
        Rows t = run_query(
            "SELECT sort_key FROM deploy.migrations WHERE version = $1 "
            "UNION ALL SELECT sort_key FROM deploy.applied WHERE version = $1 LIMIT 1",
            {TEXTOID}, {p_text(*args_.target)});
        if (t.empty()) {
            throw DeployError(sqlstate::no_data_found, "target version " + *args_.target + " is not registered", {},
                              "Register it first (pgdeploy load, or deploy.register()).");
        }
        return t.front()[0].value_or("");
    }

    // finish_without_migrations ends a call with nothing pending: a resumed deployment succeeds, a release without
    // schema changes is still recorded as a deployment (its app version), anything else has nothing to do.
    void finish_without_migrations() {
        Cell now_version = current_version();
        result_["version_after"] = cell_json(now_version);
        if (deployment_id_) {
            finish_deployment(*deployment_id_, "succeeded", now_version, std::nullopt);
            events_.log("deployment_succeeded", deployment_id_, now_version, std::nullopt,
                        Json{{"kind", "up"}, {"resumed", true}});
            result_["state"] = "succeeded";
        } else if (args_.app_version && !args_.dry_run) {
            Rows d = run_query(
                "INSERT INTO deploy.deployments (kind, app_version, state, version_before, version_after, "
                "metadata, finished_at) VALUES ('up', $1, 'succeeded', $2, $2, $3, pg_catalog.clock_timestamp()) "
                "RETURNING id",
                {TEXTOID, TEXTOID, JSONBOID},
                {p_text(args_.app_version), p_text(now_version), p_jsonb(args_.metadata)});
            deployment_id_ = cell_int8(d.front()[0]);
            events_.log("deployment_started", deployment_id_, now_version, std::nullopt,
                        Json{{"kind", "up"}, {"app_version", *args_.app_version}, {"pending", 0}});
            events_.log("deployment_succeeded", deployment_id_, now_version, std::nullopt,
                        Json{{"kind", "up"}, {"applied", 0}});
            result_["deployment_id"] = *deployment_id_;
            result_["state"] = "succeeded";
        } else {
            result_["state"] = args_.dry_run ? "dry_run" : "nothing_to_do";
        }
    }

    void start_deployment(std::size_t pending) {
        Rows d = run_query(
            "INSERT INTO deploy.deployments (kind, app_version, state, version_before, metadata) "
            "VALUES ('up', $1, 'running', $2, $3) RETURNING id",
            {TEXTOID, TEXTOID, JSONBOID},
            {p_text(args_.app_version), p_text(version_before_), p_jsonb(args_.metadata)});
        deployment_id_ = cell_int8(d.front()[0]);
        result_["deployment_id"] = *deployment_id_;
        events_.log("deployment_started", deployment_id_, version_before_, std::nullopt,
                    Json{{"kind", "up"},
                         {"app_version", cell_json(args_.app_version)},
                         {"pending", pending},
                         {"atomic", args_.atomic},
                         {"target", cell_json(args_.target)}});
    }

    /*
     * run_batch applies the pending migrations in one subtransaction: in atomic mode rolled back on a failure, in a
     * dry run always rolled back; with atomic => false each migration also runs in its own (apply_one), and the
     * batch's is released on a failure so that the migrations before it stay. The applied rows and their events are
     * written in one statement at the end (AppliedWriter). A lock timeout rolls the whole batch back in every mode,
     * releasing its locks, and the batch is tried again within the lock-retry budget (lock_retry.hpp).
     *
     * A subtransaction per migration is needed only when a failure must keep the migrations before it
     * (atomic => false). In atomic mode and in dry runs the batch subtransaction is rolled back on any failure and
     * the loop knows which migration failed, so the error is still named; nothing touches PostgreSQL between the
     * caught error and that rollback. Per-migration subtransactions would cost ~0.4 ms each once a transaction has
     * created many relations (every subtransaction end then scans the relation cache): +50 % on 1,000 trivial
     * CREATE TABLEs, against a goal of +5 %.
     */
    UpBatch run_batch(const std::vector<Migration>& pending) {
        LockRetry retry("up SQL", events_, deployment_id_);
        UpBatch batch;
        do {
            batch = run_batch_once(pending, retry);
        } while (retry.after_rollback(batch.failure, batch.failed ? batch.failed->version : std::string(),
                                      batch.failed ? batch.failed->name : std::string()));
        result_["lock_retries"] = retry.retries();
        return batch;
    }

    UpBatch run_batch_once(const std::vector<Migration>& pending, LockRetry& retry) {
        UpBatch batch;
        auto body = [&] {
            AppliedWriter writer;
            batch = apply_migrations(pending, args_.dry_run ? nullptr : &writer);
            bool retrying = retry.decide(batch.failure);
            if (batch.failure && (args_.atomic || retrying) && !args_.dry_run)
                throw BatchRollback{};
            if (!args_.dry_run)
                writer.flush(*deployment_id_);
        };
        if (args_.dry_run) {
            in_rolled_back_subtransaction(body);
        } else {
            try {
                in_subtransaction(body);
            } catch (const BatchRollback&) {
            }
        }
        return batch;
    }

    // apply_migrations runs the pending migrations in order until one fails or one is non-transactional.
    UpBatch apply_migrations(const std::vector<Migration>& pending, AppliedWriter* writer) const {
        const bool own_subtransactions = !args_.atomic && !args_.dry_run;
        UpBatch batch;
        for (const Migration& m : pending) {
            int64_t t0 = now_us();
            batch.failure = stored_sql_drift(m);
            if (batch.failure) {
                batch.failed = &m;
                break;
            }
            if (!m.transactional) {
                batch.awaiting = &m;
                break;
            }
            batch.failure = failure_of([&] { apply_one(m, own_subtransactions); });
            double ms = ms_since(t0);
            if (batch.failure) {
                batch.failed = &m;
                batch.failed_ms = ms;
                break;
            }
            if (writer)
                writer->add(m, ms);
            batch.applied.push_back(Applied{&m, ms});
        }
        return batch;
    }

    static void apply_one(const Migration& m, bool own_subtransaction) {
        if (!holds_code(m.up_sql)) {
            pg_notice("migration " + m.version + " (" + m.name + ") is a no-op: its up SQL holds only comments");
            return;
        }
        auto run = [&] {
            with_lock_timeout(effective_lock_timeout_ms(m.lock_timeout_ms), [&] {
                MigrationTimer timer;
                run_user_sql(m.up_sql);
            });
        };
        if (own_subtransaction)
            in_subtransaction(run);
        else
            run();
    }

    // report_failure puts the failed migration into the result.
    void report_failure(const UpBatch& batch) {
        Json failed = batch.failure->to_json();
        failed["version"] = batch.failed->version;
        failed["name"] = batch.failed->name;
        failed["duration_ms"] = batch.failed_ms;
        result_["ok"] = false;
        result_["failed"] = failed;
    }

    std::optional<Warning> finish_dry_run(const UpBatch& batch) {
        result_["state"] = "dry_run";
        result_["applied"] = applied_json(batch);
        result_["version_after"] =
            batch.applied.empty() ? cell_json(version_before_) : Json(batch.applied.back().migration->version);
        if (batch.awaiting) {
            result_["awaiting_nontransactional"] =
                Json{{"version", batch.awaiting->version},
                     {"name", batch.awaiting->name},
                     {"steps", nullptr},
                     {"note", "not rehearsed: non-transactional statements cannot run inside a transaction"}};
        }
        if (!batch.failure)
            return std::nullopt;
        return Warning{batch.failure->sqlstate,
                       "dry run: migration " + batch.failed->version + " (" + batch.failed->name +
                           ") failed: " + batch.failure->message,
                       "nothing was changed (dry run)"};
    }

    // record_failure records the failed deployment, its error and events; returns the WARNING for psql users.
    Warning record_failure(const UpBatch& batch) {
        const Migration& m = *batch.failed;
        Json failed = result_["failed"];  // a copy: adding keys to result_ may move its elements
        Cell now_version = current_version();
        result_["state"] = "failed";
        result_["version_after"] = cell_json(now_version);
        result_[args_.atomic ? "undone" : "applied"] = applied_json(batch);
        finish_deployment(*deployment_id_, "failed", now_version, failed);
        events_.log_failure("migration_failed", deployment_id_, m.version, failed);
        if (batch.failure->sqlstate == sqlstate::checksum_drift) {
            events_.log("stored_sql_drift", deployment_id_, m.version, std::nullopt,
                        Json{{"operation", "up"}, {"message", batch.failure->message}});
        }
        events_.log("deployment_failed", deployment_id_, now_version, std::nullopt,
                    Json{{"kind", "up"},
                         {"atomic", args_.atomic},
                         {"failed_version", m.version},
                         {"sqlstate", batch.failure->sqlstate}});
        std::string detail = args_.atomic ? "deployment " + std::to_string(*deployment_id_) +
                                                " failed; the batch was rolled back (" +
                                                std::to_string(batch.applied.size()) + " migration(s) undone)"
                                          : request_rollback_of_kept(batch);
        return Warning{batch.failure->sqlstate,
                       "migration " + m.version + " (" + m.name + ") failed: " + batch.failure->message, detail};
    }

    // request_rollback_of_kept: atomic => false keeps what applied before the failure; a rollback marker for it
    // records that the release is half-applied. Returns the WARNING's detail.
    std::string request_rollback_of_kept(const UpBatch& batch) {
        std::string which = "deployment " + std::to_string(*deployment_id_) + " failed; ";
        Rows kept = run_query("SELECT count(*) FROM deploy.applied WHERE deployment_id = $1", {INT8OID},
                              {p_int8(*deployment_id_)});
        if (cell_int8(kept.front()[0]) == 0)
            return which + "nothing was applied";
        std::string reason = clip_to_limit("reason", "deploy.up(atomic => false) failed at migration " +
                                                         batch.failed->version + ": " + batch.failure->message);
        Rows mk = run_query(
            "INSERT INTO deploy.rollback_markers (deployment_id, target_version, reason, details) "
            "VALUES ($1, $2, $3, pg_catalog.jsonb_build_object('source', 'up', 'failed', "
            "deploy.public_error($4))) RETURNING id",
            {INT8OID, TEXTOID, TEXTOID, JSONBOID},
            {p_int8(*deployment_id_), p_text(version_before_), p_text(reason), p_jsonb(result_["failed"].dump())});
        int64_t marker = cell_int8(mk.front()[0]);
        result_["marker_id"] = marker;
        events_.log("marker_requested", deployment_id_, version_before_, marker,
                    Json{{"reason", reason}, {"target_version", cell_json(version_before_)}});
        return which + std::to_string(batch.applied.size()) + " migration(s) stay applied; rollback marker " +
               std::to_string(marker) + " targets version " + version_before_.value_or("(none)");
    }

    // wait_for_steps records the statements of the non-transactional migration that stopped the batch as steps
    // (checkpoints) for a client to run at top level; the deployment stays running until they are done.
    void wait_for_steps(const UpBatch& batch) {
        const Migration& m = *batch.awaiting;
        result_["applied"] = applied_json(batch);
        plan_steps(*deployment_id_, m.version, m.up_sql, "up_sql");
        Rows steps = unfinished_steps(*deployment_id_);
        Cell now_version = current_version();
        finish_deployment(*deployment_id_, "running", now_version, std::nullopt);
        result_["state"] = "running";
        result_["version_after"] = cell_json(now_version);
        result_["awaiting_nontransactional"] = awaiting_json(steps);
        notice_awaiting("up", *deployment_id_, steps);
    }

    void record_success(const UpBatch& batch) {
        Cell now_version = current_version();
        result_["applied"] = applied_json(batch);
        result_["state"] = "succeeded";
        result_["version_after"] = cell_json(now_version);
        finish_deployment(*deployment_id_, "succeeded", now_version, std::nullopt);
        events_.log("deployment_succeeded", deployment_id_, now_version, std::nullopt,
                    Json{{"kind", "up"}, {"applied", batch.applied.size()}});
    }

    static Json applied_json(const UpBatch& batch) {
        Json out = Json::array();
        for (const Applied& a : batch.applied) {
            out.push_back(
                Json{{"version", a.migration->version}, {"name", a.migration->name}, {"duration_ms", a.duration_ms}});
        }
        return out;
    }

    const UpArgs& args_;
    int64_t started_;
    Json result_;
    Cell version_before_;
    std::optional<int64_t> deployment_id_;  // none in a dry run
    EventLog events_;
};

// up_impl: deploy.up(target, dry_run, app_version, atomic, metadata) applies the pending migrations (class Up).
Datum up_impl(FunctionCallInfo fcinfo) {
    UpArgs args = up_args(fcinfo);
    CallOutcome out;
    {
        SpiSession spi;
        out = Up(args).run();
        spi.finish();
    }
    return outcome_result(out);
}

}  // namespace

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_up, pgdeploy::up_impl)
