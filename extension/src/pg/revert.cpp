// pg_deploy: deploy.down() and deploy.rollback() — reverting applied migrations from their stored down SQL — and the
// archive that keeps what a lossy revert drops.
#include <set>
#include <string>
#include <vector>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/archive_name.hpp"
#include "pg_deploy/pg/ledger.hpp"
#include "pg_deploy/pg/limits.hpp"
#include "pg_deploy/pg/settings.hpp"
#include "pg_deploy/pg/sqltext.hpp"
#include "pg_deploy/version.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
}

namespace pgdeploy {

namespace {

struct BatchRollback {};

struct RevertRow {
    std::string version, sort_key, name, checksum, reversibility;
    Cell down_sql, down_checksum;
    int64_t deployment_id = 0;
};

struct RevertRequest {
    const char* kind = "down";    // deployments.kind
    std::vector<RevertRow> rows;  // newest first
    bool force = false;
    bool dry_run = false;
    Cell app_version;
    std::optional<int64_t> reverts;  // rollback: the deployment undone
    Cell reason;
};

Json cell_json(const Cell& c) {
    return c ? Json(*c) : Json(nullptr);
}

std::vector<RevertRow> load_rows(const char* where_and_order, std::vector<Oid> types,
                                 const std::vector<Param>& params) {
    std::string sql = std::string(
                          "SELECT version, sort_key, name, checksum, reversibility, down_sql, deployment_id, "
                          "down_checksum "
                          "FROM deploy.applied ") +
                      where_and_order;
    Rows rows = run_query(sql.c_str(), std::move(types), params);
    std::vector<RevertRow> out;
    for (Row& r : rows.rows) {
        RevertRow row;
        row.version = *r[0];
        row.sort_key = *r[1];
        row.name = *r[2];
        row.checksum = *r[3];
        row.reversibility = *r[4];
        row.down_sql = r[5];
        row.deployment_id = cell_int8(r[6]);
        row.down_checksum = r[7];
        out.push_back(std::move(row));
    }
    return out;
}

void refuse_if_running(const char* operation) {
    Rows r = run_query("SELECT id FROM deploy.deployments WHERE state = 'running' ORDER BY id LIMIT 1");
    if (!r.empty()) {
        throw DeployError(sqlstate::object_not_in_prerequisite_state,
                          std::string(operation) + " refused: deployment " + r.front()[0].value_or("?") +
                              " is still running (it waits for non-transactional steps or was interrupted)",
                          {},
                          "Finish it with `pgdeploy up` (or deploy.next_step()/deploy.step_done() and deploy.up()), "
                          "or roll it back with deploy.rollback(deployment_id => ..., force => true).");
    }
}

/*
 * Archiver copies what a lossy down script is about to drop into schema deploy_archive: a dropped table entirely,
 * a dropped column together with the table's primary key (or the whole row when there is none). It reads the
 * statements with the raw parser and archives just before each statement runs, so renames earlier in the same
 * script are seen. It cannot see drops hidden in DO blocks or functions, nor objects removed by CASCADE. Each copy
 * is recorded in deploy.archived under the object's quoted name (schema.table[.column], each part quoted).
 */
class Archiver {
public:
    Archiver(int64_t deployment_id, const std::string& version, EventLog& events)
        : deployment_id_(deployment_id), version_(version), events_(events) {}

    void run_statement_by_statement(const std::string& down_sql) {
        std::vector<SqlStatement> stmts = parse_sql(down_sql, "down_sql of migration " + version_);
        for (const SqlStatement& st : stmts) {
            for (const DropTarget& d : st.drops)
                archive(d);
            run_user_sql(st.text);
        }
    }

    const Json& archived() const { return archived_; }

private:
    void archive(const DropTarget& d) {
        Oid relid = relation_on_callers_path(d.schema, d.table);
        if (relid == InvalidOid)
            return;
        Rows rel = run_query(
            "SELECT c.oid::bigint, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), "
            "c.relname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = $1::oid AND c.relkind IN ('r', 'p')",
            {INT8OID}, {p_int8(static_cast<int64_t>(relid))});
        if (rel.empty())
            return;  // DROP ... IF EXISTS of a missing table, or not a table
        int64_t oid = cell_int8(rel.front()[0]);
        std::string qualified = *rel.front()[1];
        std::string relname = *rel.front()[2];
        std::string object_name = qualified;  // each part quoted: "a.b"."c" and a."b.c" stay apart
        std::string select;
        if (d.is_column) {
            Rows col = run_query(
                "SELECT pg_catalog.quote_ident(attname) FROM pg_catalog.pg_attribute "
                "WHERE attrelid = $1::oid AND attname = $2 AND attnum > 0 AND NOT attisdropped",
                {INT8OID, TEXTOID}, {p_int8(oid), p_text(d.column)});
            if (col.empty())
                return;
            Rows pk = run_query(
                "SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum) "
                "FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[]) "
                "WHERE i.indrelid = $1::oid AND i.indisprimary AND a.attname <> $2",
                {INT8OID, TEXTOID}, {p_int8(oid), p_text(d.column)});
            std::string keys = pk.front()[0].value_or("");
            select = keys.empty() ? "SELECT * FROM " + qualified
                                  : "SELECT " + keys + ", " + *col.front()[0] + " FROM " + qualified;
            object_name += "." + *col.front()[0];
        } else {
            select = "SELECT * FROM " + qualified;
        }
        std::string table = free_archive_table(deployment_id_, relname, d.is_column ? d.column : "");
        std::string archive_table = "deploy_archive." + quoted(table);
        run_user_sql("CREATE TABLE " + archive_table + " AS " + select);
        Rows count = run_query(("SELECT count(*) FROM " + archive_table).c_str());
        int64_t rows = cell_int8(count.front()[0]);
        run_query(
            "INSERT INTO deploy.archived (deployment_id, version, object_type, object_name, archive_table, "
            "row_count, expires_at) VALUES ($1, $2, $3, $4, $5, $6, "
            "pg_catalog.now() + pg_catalog.make_interval(secs => $7))",
            {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID, FLOAT8OID},
            {p_int8(deployment_id_), p_text(version_), p_text(std::string(d.is_column ? "column" : "table")),
             p_text(object_name), p_text(archive_table), p_int8(rows),
             p_float8(static_cast<double>(rollback_window_s))});
        Json entry{{"object_type", d.is_column ? "column" : "table"},
                   {"object_name", object_name},
                   {"archive_table", archive_table},
                   {"row_count", rows}};
        events_.log("data_archived", deployment_id_, version_, std::nullopt, entry);
        archived_.push_back(entry);
    }

    static std::string quoted(const std::string& ident) {
        const char* in = ident.c_str();
        const char* out = nullptr;
        pg_guard([&] { out = quote_identifier(in); });
        return std::string(out);
    }

    int64_t deployment_id_;
    std::string version_;
    EventLog& events_;
    Json archived_ = Json::array();
};

/*
 * revert runs a list of applied migrations' down SQL, newest first, atomically: every migration in its own
 * subtransaction inside one batch subtransaction. A failing down script rolls the whole batch back; the failed
 * down/rollback deployment and its error are then recorded in the outer transaction (they persist), a WARNING is
 * raised and ok:false returned — never an ERROR, so deploy.execute_rollback() can read the outcome.
 */
Json revert(const RevertRequest& req, std::optional<std::string>& warn_state, std::optional<std::string>& warn_msg,
            std::optional<std::string>& warn_detail) {
    int64_t started = now_us();
    Json result{{"schema_version", 1},
                {"operation", req.kind},
                {"ok", true},
                {"dry_run", req.dry_run},
                {"deployment_id", nullptr},
                {"reverts", req.reverts ? Json(*req.reverts) : Json(nullptr)},
                {"app_version", cell_json(req.app_version)},
                {"state", nullptr},
                {"version_before", nullptr},
                {"version_after", nullptr},
                {"reverted", Json::array()},
                {"failed", nullptr},
                {"archived", Json::array()},
                {"forced", Json::array()},
                {"duration_ms", 0}};

    std::string irreversible;
    for (const RevertRow& r : req.rows) {
        if (!r.down_sql)
            irreversible += (irreversible.empty() ? "" : ", ") + r.version + " (" + r.name + ")";
    }
    if (!irreversible.empty() && !req.force) {
        throw DeployError(sqlstate::irreversible, "irreversible migration(s) refused: " + irreversible,
                          "They have no down SQL.",
                          "Pass force => true to remove them from the ledger without running anything: their schema "
                          "changes stay in place.");
    }

    Cell version_before = current_version();
    result["version_before"] = cell_json(version_before);
    if (req.rows.empty()) {
        result["state"] = req.dry_run ? "dry_run" : "nothing_to_do";
        result["version_after"] = cell_json(version_before);
        result["duration_ms"] = ms_since(started);
        return result;
    }

    EventLog events;
    std::optional<int64_t> dep;
    if (!req.dry_run) {
        Json metadata{{"reason", cell_json(req.reason)}};
        Rows d = run_query(
            "INSERT INTO deploy.deployments (kind, app_version, state, version_before, reverts, metadata) "
            "VALUES ($1, $2, 'running', $3, $4, $5) RETURNING id",
            {TEXTOID, TEXTOID, TEXTOID, INT8OID, JSONBOID},
            {p_text(std::string(req.kind)), p_text(req.app_version), p_text(version_before), p_int8(req.reverts),
             p_jsonb(metadata.dump())});
        dep = cell_int8(d.front()[0]);
        result["deployment_id"] = *dep;
        events.log("deployment_started", dep, version_before, std::nullopt,
                   Json{{"kind", req.kind},
                        {"reverts", req.reverts ? Json(*req.reverts) : Json(nullptr)},
                        {"migrations", req.rows.size()},
                        {"reason", cell_json(req.reason)},
                        {"force", req.force}});
    }

    Json reverted = Json::array();
    Json archived = Json::array();
    Json forced = Json::array();
    std::optional<SqlFailure> failure;
    const RevertRow* failed_row = nullptr;
    std::set<int64_t> touched;
    // The applied rows of the reverted migrations are deleted, and their migration_reverted events written, in one
    // statement after the loop (applied_count is kept by the trigger on deploy.applied).
    struct Removed {
        std::vector<Cell> version, name, reversibility;
        std::vector<int64_t> at, from_deployment, archived;
        std::vector<double> duration_ms;
        std::vector<bool> sql_run;
    } removed;
    auto write_removed = [&] {
        if (removed.version.empty())
            return;
        run_query(
            "WITH r AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::timestamptz[]), "
            "pg_catalog.unnest($4::text[]), pg_catalog.unnest($5::float8[]), pg_catalog.unnest($6::text[]), "
            "pg_catalog.unnest($7::boolean[]), pg_catalog.unnest($8::bigint[]), pg_catalog.unnest($9::bigint[])) "
            "WITH ORDINALITY AS r(version, at, name, duration_ms, reversibility, sql_run, from_deployment, archived, "
            "ord)), "
            "gone AS (DELETE FROM deploy.applied a USING r WHERE a.version = r.version) "
            "SELECT deploy.log_events('migration_reverted', $1, $2, $3, pg_catalog.array_agg("
            "pg_catalog.jsonb_build_object('name', r.name, 'duration_ms', r.duration_ms, 'reversibility', "
            "r.reversibility, 'sql_run', r.sql_run, 'from_deployment', r.from_deployment, 'archived', r.archived) "
            "ORDER BY r.ord)) FROM r",
            {INT8OID, TEXTARRAYOID, TIMESTAMPTZARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID, TEXTARRAYOID, BOOLARRAYOID,
             INT8ARRAYOID, INT8ARRAYOID},
            {p_int8(dep), p_text_array(std::move(removed.version)), p_timestamptz_array(std::move(removed.at)),
             p_text_array(std::move(removed.name)), p_float8_array(std::move(removed.duration_ms)),
             p_text_array(std::move(removed.reversibility)), p_bool_array(removed.sql_run),
             p_int8_array(std::move(removed.from_deployment)), p_int8_array(std::move(removed.archived))});
    };

    auto batch = [&] {
        for (const RevertRow& r : req.rows) {
            int64_t t0 = now_us();
            Json row_archive = Json::array();
            if (r.down_sql) {
                // No subtransaction per migration: a revert is all or nothing, so the batch subtransaction is
                // rolled back on any failure (see up.cpp for why per-migration subtransactions cost too much).
                failure = failure_of([&] {
                    MigrationTimer timer;
                    if (r.reversibility == "lossy" && dep) {
                        Archiver archiver(*dep, r.version, events);
                        archiver.run_statement_by_statement(*r.down_sql);
                        row_archive = archiver.archived();
                    } else {
                        run_user_sql(*r.down_sql);
                    }
                });
                if (failure) {
                    failed_row = &r;
                    break;
                }
            } else {
                forced.push_back(r.version);
            }
            double ms = ms_since(t0);
            if (!req.dry_run) {
                removed.version.emplace_back(r.version);
                removed.at.push_back(now_us());
                removed.name.emplace_back(r.name);
                removed.duration_ms.push_back(ms);
                removed.reversibility.emplace_back(r.reversibility);
                removed.sql_run.push_back(r.down_sql.has_value());
                removed.from_deployment.push_back(r.deployment_id);
                removed.archived.push_back(static_cast<int64_t>(row_archive.size()));
            }
            touched.insert(r.deployment_id);
            for (auto& a : row_archive)
                archived.push_back(a);
            reverted.push_back(Json{
                {"version", r.version}, {"name", r.name}, {"duration_ms", ms}, {"sql_run", r.down_sql.has_value()}});
        }
        if (failure && !req.dry_run)
            throw BatchRollback{};
        if (!req.dry_run)
            write_removed();
    };

    // Stored down SQL that no longer matches its checksum is never run, and nothing else runs either: the whole
    // revert is refused before the first statement.
    for (const RevertRow& r : req.rows) {
        if (!intact(r.down_sql, r.down_checksum)) {
            failure = drift_failure("down_sql", r.version);
            failed_row = &r;
            break;
        }
    }
    if (!failure && req.dry_run) {
        in_rolled_back_subtransaction(batch);
    } else if (!failure) {
        try {
            in_subtransaction(batch);
        } catch (const BatchRollback&) {
        }
    }

    if (failure) {
        Json failed = failure->to_json();
        failed["version"] = failed_row->version;
        failed["name"] = failed_row->name;
        result["ok"] = false;
        result["failed"] = failed;
        warn_state = failure->sqlstate;
        warn_msg = std::string(req.dry_run ? "dry run: " : "") + "down SQL of migration " + failed_row->version + " (" +
                   failed_row->name + ") failed: " + failure->message;
        if (req.dry_run) {
            warn_detail = "nothing was changed (dry run)";
        } else {
            warn_detail = std::string(req.kind) + " deployment " + std::to_string(*dep) +
                          " failed; nothing was reverted (the batch was rolled back)";
        }
    }

    if (req.dry_run) {
        result["state"] = "dry_run";
        result["reverted"] = reverted;
        result["forced"] = forced;
        Cell after;
        if (!failure) {
            // what the current version would become: the newest applied row not in the list
            std::set<std::string> gone;
            for (const RevertRow& r : req.rows)
                gone.insert(r.version);
            Rows all = run_query("SELECT version FROM deploy.applied ORDER BY sort_key DESC");
            for (const Row& a : all.rows) {
                if (!gone.count(*a[0])) {
                    after = a[0];
                    break;
                }
            }
        } else {
            after = version_before;
        }
        result["version_after"] = cell_json(after);
    } else if (failure) {
        result["state"] = "failed";
        result["version_after"] = cell_json(version_before);
        finish_deployment(*dep, "failed", version_before, result["failed"]);
        events.log_failure("migration_failed", dep, failed_row->version, result["failed"]);
        if (failure->sqlstate == sqlstate::checksum_drift) {
            events.log("stored_sql_drift", dep, failed_row->version, std::nullopt,
                       Json{{"operation", req.kind}, {"message", failure->message}});
        }
        events.log("deployment_failed", dep, version_before, std::nullopt,
                   Json{{"kind", req.kind}, {"failed_version", failed_row->version}, {"sqlstate", failure->sqlstate}});
    } else {
        Cell after = current_version();
        result["state"] = "succeeded";
        result["reverted"] = reverted;
        result["archived"] = archived;
        result["forced"] = forced;
        result["version_after"] = cell_json(after);
        finish_deployment(*dep, "succeeded", after, std::nullopt);
        // Deployments left with nothing applied are rolled back: the target of a rollback, and any deployment a
        // down() emptied.
        std::set<int64_t> targets = touched;
        if (req.reverts)
            targets.insert(*req.reverts);
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
            Rows m = mark.run({p_int8(t), p_int8(*dep)});
            if (m.empty())
                continue;
            abandon.run(
                {p_int8(t),
                 p_jsonb(Json{{"message", "abandoned: deployment rolled back by " + std::to_string(*dep)}}.dump())});
            events.log("deployment_rolled_back", t, after, std::nullopt,
                       Json{{"by", *dep}, {"kind", req.kind}, {"reason", cell_json(req.reason)}});
        }
        events.log("deployment_succeeded", dep, after, std::nullopt,
                   Json{{"kind", req.kind}, {"reverted", reverted.size()}, {"forced", forced}});
    }
    result["duration_ms"] = ms_since(started);
    return result;
}

// human_age formats seconds for messages: "8.0 days", "3.5 hours", "12 minutes", "40 seconds".
std::string human_age(double seconds) {
    char buf[64];
    if (seconds >= 86400)
        snprintf(buf, sizeof buf, "%.1f days", seconds / 86400);
    else if (seconds >= 3600)
        snprintf(buf, sizeof buf, "%.1f hours", seconds / 3600);
    else if (seconds >= 60)
        snprintf(buf, sizeof buf, "%.0f minutes", seconds / 60);
    else
        snprintf(buf, sizeof buf, "%.0f seconds", seconds);
    return buf;
}

Cell previous_release(int64_t before_id) {
    Rows r = run_query(
        "SELECT app_version FROM deploy.deployments WHERE kind = 'up' AND state = 'succeeded' "
        "AND id < $1 AND app_version IS NOT NULL ORDER BY id DESC LIMIT 1",
        {INT8OID}, {p_int8(before_id)});
    return r.empty() ? Cell() : r.front()[0];
}

/*
 * down_impl: deploy.down(steps, to_version, force, dry_run, app_version) reverts the newest `steps` migrations, or
 * every migration above to_version (to_version wins when both are given).
 */
Datum down_impl(FunctionCallInfo fcinfo) {
    if (PG_ARGISNULL(0))
        throw DeployError(sqlstate::null_value, "steps must not be NULL");
    int32 steps = PG_GETARG_INT32(0);
    std::optional<std::string> to_version = opt_text_arg(fcinfo, 1);
    bool force = bool_arg(fcinfo, 2, "force");
    bool dry_run = bool_arg(fcinfo, 3, "dry_run");
    std::optional<std::string> app_version = opt_text_arg(fcinfo, 4);
    check_input_length("app_version", app_version);
    if (to_version)
        check_version(*to_version, "to_version");
    if (!to_version && steps < 1) {
        throw DeployError(sqlstate::invalid_parameter, "steps must be at least 1 (got " + std::to_string(steps) + ")");
    }
    std::optional<std::string> ws, wm, wd;
    Json result;
    {
        SpiSession spi;
        acquire_deploy_lock("deploy.down()");
        if (!dry_run)
            refuse_if_running("deploy.down()");
        RevertRequest req;
        req.kind = "down";
        req.force = force;
        req.dry_run = dry_run;
        req.app_version = app_version;
        if (to_version) {
            Rows t =
                run_query("SELECT sort_key FROM deploy.applied WHERE version = $1", {TEXTOID}, {p_text(*to_version)});
            if (t.empty()) {
                throw DeployError(sqlstate::no_data_found, "to_version " + *to_version + " is not applied", {},
                                  "to_version names the applied version to return to; see deploy.status().");
            }
            req.rows = load_rows("WHERE sort_key > $1 ORDER BY sort_key DESC", {TEXTOID},
                                 {t.front()[0] ? p_text(*t.front()[0]) : p_null()});
        } else {
            req.rows = load_rows("ORDER BY sort_key DESC LIMIT $1", {INT4OID}, {p_int4(steps)});
            if (!req.rows.empty() && static_cast<int32>(req.rows.size()) < steps) {
                throw DeployError(sqlstate::invalid_parameter, "steps => " + std::to_string(steps) + " but only " +
                                                                   std::to_string(req.rows.size()) +
                                                                   " migration(s) are applied");
            }
        }
        result = revert(req, ws, wm, wd);
        spi.finish();
    }
    if (wm)
        pg_warning(*ws, *wm, wd.value_or(""));
    return json_result(result);
}

/*
 * rollback_impl: deploy.rollback(deployment_id, force, reason, dry_run) reverts what one up deployment applied.
 * Refusals (argument errors, window, a later deployment building on it, irreversible) raise; a failing down script
 * returns ok:false with the failed rollback deployment recorded.
 */
Datum rollback_impl(FunctionCallInfo fcinfo) {
    std::optional<int64_t> given = opt_int8_arg(fcinfo, 0);
    bool force = bool_arg(fcinfo, 1, "force");
    std::optional<std::string> reason = opt_text_arg(fcinfo, 2);
    bool dry_run = bool_arg(fcinfo, 3, "dry_run");
    check_input_length("reason", reason);
    std::optional<std::string> ws, wm, wd;
    Json result;
    {
        SpiSession spi;
        acquire_deploy_lock("deploy.rollback()");
        int64_t target;
        if (given) {
            target = *given;
        } else {
            Rows d = run_query(
                "SELECT d.id FROM deploy.deployments d WHERE d.kind = 'up' AND d.state IN ('succeeded', 'failed') "
                "AND EXISTS (SELECT 1 FROM deploy.applied a WHERE a.deployment_id = d.id) ORDER BY d.id DESC LIMIT 1");
            if (d.empty()) {
                throw DeployError(sqlstate::no_data_found, "there is no deployment to roll back", {},
                                  "Only up deployments that still have applied migrations can be rolled back.");
            }
            target = cell_int8(d.front()[0]);
        }
        Rows d = run_query(
            "SELECT kind, state, rolled_back_by, "
            "EXTRACT(EPOCH FROM pg_catalog.now() - coalesce(finished_at, started_at))::float8, "
            "to_char(coalesce(finished_at, started_at), 'YYYY-MM-DD HH24:MI:SSOF') "
            "FROM deploy.deployments WHERE id = $1",
            {INT8OID}, {p_int8(target)});
        std::string which = "deployment " + std::to_string(target);
        if (d.empty())
            throw DeployError(sqlstate::no_data_found, which + " does not exist");
        const Row& row = d.front();
        if (row[0] != Cell("up")) {
            throw DeployError(sqlstate::invalid_parameter,
                              which + " is a " + row[0].value_or("?") +
                                  " deployment; only up deployments can be "
                                  "rolled back",
                              {}, "Use deploy.up() to re-apply what a down or rollback reverted.");
        }
        if (row[1] == Cell("rolled_back")) {
            throw DeployError(sqlstate::object_not_in_prerequisite_state,
                              which + " is already rolled back (by deployment " + row[2].value_or("?") + ")");
        }
        if (row[1] == Cell("running") && !force) {
            throw DeployError(sqlstate::object_not_in_prerequisite_state,
                              which + " is still running (it waits for non-transactional steps or was interrupted)", {},
                              "Finish it with `pgdeploy up`, or pass force => true to revert what it applied and "
                              "abandon its remaining steps.");
        }
        double age = cell_float8(row[3]);
        if (age > static_cast<double>(rollback_window_s) && !force) {
            throw DeployError(sqlstate::outside_rollback_window,
                              which + " is outside pg_deploy.rollback_window: it finished " + human_age(age) +
                                  " ago, the window is " + human_age(rollback_window_s),
                              "finished at " + row[4].value_or("?"),
                              "Pass force => true to roll it back anyway, or raise pg_deploy.rollback_window.");
        }
        Rows later = run_query(
            "SELECT deployment_id FROM deploy.applied WHERE deployment_id > $1 "
            "ORDER BY deployment_id LIMIT 1",
            {INT8OID}, {p_int8(target)});
        if (!later.empty()) {
            throw DeployError(sqlstate::object_not_in_prerequisite_state,
                              which + " cannot be rolled back: deployment " + later.front()[0].value_or("?") +
                                  " applied migrations after it and builds on it",
                              {}, "Roll back deployment " + later.front()[0].value_or("?") + " first.");
        }
        RevertRequest req;
        req.kind = "rollback";
        req.force = force;
        req.dry_run = dry_run;
        req.reverts = target;
        req.reason = reason;
        req.app_version = previous_release(target);
        req.rows = load_rows("WHERE deployment_id = $1 ORDER BY sort_key DESC", {INT8OID}, {p_int8(target)});
        result = revert(req, ws, wm, wd);
        if (req.rows.empty() && !dry_run) {
            // Nothing left to revert (a down() took it already, or nothing was applied): record the outcome so that
            // executing a rollback twice is a no-op.
            run_query("UPDATE deploy.deployments SET state = 'rolled_back' WHERE id = $1 AND state <> 'rolled_back'",
                      {INT8OID}, {p_int8(target)});
            run_query(
                "UPDATE deploy.checkpoints SET state = 'failed', finished_at = pg_catalog.clock_timestamp(), "
                "error = $2 WHERE deployment_id = $1 AND state <> 'done'",
                {INT8OID, JSONBOID},
                {p_int8(target), p_jsonb(Json{{"message", "abandoned: deployment rolled back"}}.dump())});
            EventLog events;
            events.log("deployment_rolled_back", target, current_version(), std::nullopt,
                       Json{{"by", nullptr},
                            {"kind", "rollback"},
                            {"reason", cell_json(reason)},
                            {"note", "nothing was applied any more"}});
            result["state"] = "succeeded";
        }
        spi.finish();
    }
    if (wm)
        pg_warning(*ws, *wm, wd.value_or(""));
    return json_result(result);
}

}  // namespace

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_down, pgdeploy::down_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_rollback, pgdeploy::rollback_impl)
