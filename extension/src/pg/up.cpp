// pg_deploy: deploy.up() — apply pending migrations — and the non-transactional step functions.
#include <string>
#include <vector>

#include "pg_deploy/errors.hpp"
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

// Thrown out of the batch subtransaction to roll it back after a migration failed (atomic mode).
struct BatchRollback {};

/*
 * load_pending reads the pending migrations that sort from `from_key` on (all of them when it is empty) and up to
 * `through_key` when given, in order, with their up SQL. The range is an index range scan on the unique
 * deploy.migrations.sort_key, so one more migration on a ledger of 100,000 reads its own catalog row and SQL, not
 * every pending row's SQL (older pending rows are refused by out_of_order_pending()). Every row
 * in the range is still probed against deploy.applied by version (a primary-key probe per row), so a row that manual
 * DML marked applied out of order is never applied twice. The range starts at the newest applied key inclusive: the
 * newest applied row itself is dropped by the probe, and the result equals the old whole-catalog query restricted to
 * keys >= it (the older part is what out_of_order_pending() checks).
 */
std::vector<Migration> load_pending(const std::string& from_key, const std::optional<std::string>& through_key) {
    Rows rows = run_query(
        "SELECT m.version, m.sort_key, m.name, m.up_sql, m.down_sql, m.checksum, m.transactional, m.reversibility, "
        "m.down_checksum "
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

Json steps_json(const Rows& steps) {
    Json arr = Json::array();
    for (const Row& s : steps.rows) {
        arr.push_back(Json{{"step_id", cell_int8(s[0])},
                           {"step", cell_int8(s[2])},
                           {"statement", s[3].value_or("")},
                           {"state", s[4].value_or("pending")}});
    }
    return arr;
}

Rows unfinished_steps(int64_t deployment_id) {
    return run_query(
        "SELECT c.id, c.version, c.step, c.statement, c.state, m.name FROM deploy.checkpoints c "
        "JOIN deploy.migrations m ON m.version = c.version AND NOT m.transactional "
        "WHERE c.deployment_id = $1 AND c.state <> 'done' ORDER BY c.id",
        {INT8OID}, {p_int8(deployment_id)});
}

void notice_awaiting(const std::string& version, std::size_t steps, int64_t deployment_id) {
    pg_notice("deployment " + std::to_string(deployment_id) + " waits for " + std::to_string(steps) +
                  " non-transactional step(s) of migration " + version,
              "Run `pgdeploy up`, or from psql at top level: SELECT deploy.next_step(); run the statement; "
              "SELECT deploy.step_done(<step_id>); then SELECT deploy.up() to continue.");
}

Json base_result(bool dry_run, bool atomic) {
    return Json{{"schema_version", 1},
                {"operation", "up"},
                {"ok", true},
                {"dry_run", dry_run},
                {"atomic", atomic},
                {"deployment_id", nullptr},
                {"app_version", nullptr},
                {"state", nullptr},
                {"version_before", nullptr},
                {"version_after", nullptr},
                {"applied", Json::array()},
                {"failed", nullptr},
                {"awaiting_nontransactional", nullptr},
                {"marker_id", nullptr},
                {"duration_ms", 0}};
}

Json cell_json(const Cell& c) {
    return c ? Json(*c) : Json(nullptr);
}

// stored_sql_drift refuses a migration whose stored up or down SQL no longer matches its checksum (changed by a
// superuser or a tampered restore after registration): it is never run, and its down SQL is never copied.
std::optional<SqlFailure> stored_sql_drift(const Migration& m) {
    if (!intact(Cell(m.up_sql), Cell(m.checksum)))
        return drift_failure("up_sql", m.version);
    if (!intact(m.down_sql, m.down_checksum))
        return drift_failure("down_sql", m.version);
    return std::nullopt;
}

/*
 * up_impl: deploy.up(target, dry_run, app_version, atomic, metadata).
 *
 * Atomic mode runs the batch in one subtransaction; atomic => false runs each migration in its own subtransaction
 * so that a failure keeps the ones before it. A failure rolls the subtransaction back and is then recorded in the
 * outer transaction, so the failed deployment row, its error and
 * the events persist when the function returns normally with ok:false (and a WARNING for psql users). A dry run
 * runs the same code inside a subtransaction that is always rolled back and writes no row.
 */
Datum up_impl(FunctionCallInfo fcinfo) {
    std::optional<std::string> target = opt_text_arg(fcinfo, 0);
    bool dry_run = bool_arg(fcinfo, 1, "dry_run");
    std::optional<std::string> app_version = opt_text_arg(fcinfo, 2);
    bool atomic = bool_arg(fcinfo, 3, "atomic");
    std::string metadata = opt_jsonb_arg(fcinfo, 4).value_or("{}");
    if (target)
        check_version(*target, "target");
    if (app_version && app_version->find_first_not_of(" \t\r\n") == std::string::npos) {
        throw DeployError(sqlstate::invalid_parameter, "app_version must not be empty", {},
                          "Pass NULL when there is no application release to record.");
    }
    if (!Json::parse(metadata).is_object()) {
        throw DeployError(sqlstate::invalid_parameter, "metadata must be a JSON object");
    }
    check_input_length("app_version", app_version);
    check_input_length("metadata", metadata);

    int64_t started = now_us();
    Json result = base_result(dry_run, atomic);
    result["app_version"] = app_version ? Json(*app_version) : Json(nullptr);
    std::optional<std::string> warning_state, warning_message, warning_detail;
    {
        SpiSession spi;
        acquire_deploy_lock("deploy.up()");
        if (!dry_run)
            refuse_if_open_marker("deploy.up()");

        Cell version_before = current_version();
        std::string newest_key;
        if (version_before)
            newest_key = version_key(*version_before);

        // A running deployment is resumed: it waits for non-transactional steps, or was interrupted.
        std::optional<int64_t> deployment_id;
        if (!dry_run) {
            Rows running = run_query(
                "SELECT id, app_version, version_before FROM deploy.deployments "
                "WHERE kind = 'up' AND state = 'running' ORDER BY id DESC LIMIT 1");
            if (!running.empty()) {
                deployment_id = cell_int8(running.front()[0]);
                result["deployment_id"] = *deployment_id;
                result["app_version"] = cell_json(running.front()[1]);
                version_before = running.front()[2];
                Rows steps = unfinished_steps(*deployment_id);
                if (!steps.empty()) {
                    std::string v = steps.front()[1].value_or("");
                    result["state"] = "running";
                    result["version_before"] = cell_json(version_before);
                    result["version_after"] = cell_json(current_version());
                    result["awaiting_nontransactional"] =
                        Json{{"version", v}, {"name", steps.front()[5].value_or("")}, {"steps", steps_json(steps)}};
                    notice_awaiting(v, steps.rows.size(), *deployment_id);
                    result["duration_ms"] = ms_since(started);
                    spi.finish();
                    return json_result(result);
                }
            }
        }
        result["version_before"] = cell_json(version_before);

        // Out-of-order pending migrations (older than the newest applied one) are refused unless allowed; with
        // pg_deploy.allow_out_of_order they are applied in order with the rest, so the whole catalog is read. The
        // exact check compares the whole catalog with the whole ledger, so it runs only when a change since the last
        // clean check may have left such a migration (deploy.ledger_stats.order_generation, kept by triggers).
        if (!allow_out_of_order && !newest_key.empty()) {
            OrderState order = order_state();
            std::vector<std::string> older_versions;
            if (!order.proven) {
                older_versions = out_of_order_pending(newest_key);
                if (older_versions.empty() && !dry_run)
                    mark_order_checked(order.generation);
            }
            if (!older_versions.empty()) {
                std::string older;
                std::size_t n = older_versions.size();
                for (std::size_t i = 0; i < n && i < 10; ++i)
                    older += (i == 0 ? "" : ", ") + older_versions[i];
                throw DeployError(sqlstate::object_not_in_prerequisite_state,
                                  "pending migration(s) older than the newest applied one (" +
                                      current_version().value_or("") + "): " + older + (n > 10 ? ", ..." : ""),
                                  std::to_string(n) + " out-of-order migration(s)",
                                  "Renumber them after the newest applied version, or SET pg_deploy.allow_out_of_order "
                                  "= on to apply them anyway.");
            }
        }
        std::optional<std::string> target_key;
        if (target) {
            Rows t = run_query(
                "SELECT sort_key FROM deploy.migrations WHERE version = $1 "
                "UNION ALL SELECT sort_key FROM deploy.applied WHERE version = $1 LIMIT 1",
                {TEXTOID}, {p_text(*target)});
            if (t.empty()) {
                throw DeployError(sqlstate::no_data_found, "target version " + *target + " is not registered", {},
                                  "Register it first (pgdeploy load, or deploy.register()).");
            }
            target_key = t.front()[0].value_or("");
        }
        // Only the migrations this call may run are read, up SQL included: the range [newest applied, target].
        std::vector<Migration> pending = load_pending(allow_out_of_order ? std::string() : newest_key, target_key);

        EventLog events;
        if (pending.empty()) {
            Cell now_version = current_version();
            result["version_after"] = cell_json(now_version);
            if (deployment_id) {
                finish_deployment(*deployment_id, "succeeded", now_version, std::nullopt);
                events.log("deployment_succeeded", deployment_id, now_version, std::nullopt,
                           Json{{"kind", "up"}, {"resumed", true}});
                result["state"] = "succeeded";
            } else if (app_version && !dry_run) {
                // A release without schema changes is still a deployment: the app version is recorded.
                Rows d = run_query(
                    "INSERT INTO deploy.deployments (kind, app_version, state, version_before, version_after, "
                    "metadata, finished_at) VALUES ('up', $1, 'succeeded', $2, $2, $3, pg_catalog.clock_timestamp()) "
                    "RETURNING id",
                    {TEXTOID, TEXTOID, JSONBOID}, {p_text(app_version), p_text(now_version), p_jsonb(metadata)});
                deployment_id = cell_int8(d.front()[0]);
                events.log("deployment_started", deployment_id, now_version, std::nullopt,
                           Json{{"kind", "up"}, {"app_version", *app_version}, {"pending", 0}});
                events.log("deployment_succeeded", deployment_id, now_version, std::nullopt,
                           Json{{"kind", "up"}, {"applied", 0}});
                result["deployment_id"] = *deployment_id;
                result["state"] = "succeeded";
            } else {
                result["state"] = dry_run ? "dry_run" : "nothing_to_do";
            }
            result["duration_ms"] = ms_since(started);
            spi.finish();
            return json_result(result);
        }

        if (!dry_run && !deployment_id) {
            Rows d = run_query(
                "INSERT INTO deploy.deployments (kind, app_version, state, version_before, metadata) "
                "VALUES ('up', $1, 'running', $2, $3) RETURNING id",
                {TEXTOID, TEXTOID, JSONBOID}, {p_text(app_version), p_text(version_before), p_jsonb(metadata)});
            deployment_id = cell_int8(d.front()[0]);
            result["deployment_id"] = *deployment_id;
            events.log("deployment_started", deployment_id, version_before, std::nullopt,
                       Json{{"kind", "up"},
                            {"app_version", app_version ? Json(*app_version) : Json(nullptr)},
                            {"pending", pending.size()},
                            {"atomic", atomic},
                            {"target", target ? Json(*target) : Json(nullptr)}});
        }

        Json applied = Json::array();
        std::optional<SqlFailure> failure;
        const Migration* failed_migration = nullptr;
        double failed_ms = 0;
        const Migration* awaiting = nullptr;
        Cell last_applied;
        AppliedWriter writer;

        // A subtransaction per migration is needed only when a failure must keep the migrations before it
        // (atomic => false). In atomic mode and in dry runs the batch subtransaction is rolled back on any failure
        // and the loop knows which migration failed, so the error is still named; nothing touches PostgreSQL between
        // the caught error and that rollback. Per-migration subtransactions would cost ~0.4 ms each once a transaction
        // has created many relations (every subtransaction end then scans the relation cache): +50 % on 1,000 trivial
        // CREATE TABLEs, against a goal of +5 %.
        const bool per_migration_subtransactions = !atomic && !dry_run;
        auto run_batch = [&] {
            for (const Migration& m : pending) {
                int64_t t0 = now_us();
                failure = stored_sql_drift(m);
                if (failure) {
                    failed_migration = &m;
                    break;
                }
                if (!m.transactional) {
                    awaiting = &m;
                    break;
                }
                auto run_one = [&] {
                    MigrationTimer timer;
                    run_user_sql(m.up_sql);
                };
                failure = failure_of([&] {
                    if (per_migration_subtransactions)
                        in_subtransaction(run_one);
                    else
                        run_one();
                });
                double ms = ms_since(t0);
                if (failure) {
                    failed_migration = &m;
                    failed_ms = ms;
                    break;
                }
                if (!dry_run)
                    writer.add(m, ms);
                applied.push_back(Json{{"version", m.version}, {"name", m.name}, {"duration_ms", ms}});
                last_applied = m.version;
            }
            if (failure && atomic && !dry_run)
                throw BatchRollback{};
            if (!dry_run)
                writer.flush(*deployment_id);
        };

        if (dry_run) {
            in_rolled_back_subtransaction(run_batch);
        } else if (atomic) {
            try {
                in_subtransaction(run_batch);
            } catch (const BatchRollback&) {
            }
        } else {
            run_batch();
        }

        Json failed_json;
        if (failure) {
            failed_json = failure->to_json();
            failed_json["version"] = failed_migration->version;
            failed_json["name"] = failed_migration->name;
            failed_json["duration_ms"] = failed_ms;
            result["ok"] = false;
            result["failed"] = failed_json;
        }

        if (dry_run) {
            result["state"] = "dry_run";
            result["applied"] = applied;
            result["version_after"] = last_applied ? Json(*last_applied) : cell_json(version_before);
            if (awaiting) {
                result["awaiting_nontransactional"] =
                    Json{{"version", awaiting->version},
                         {"name", awaiting->name},
                         {"steps", nullptr},
                         {"note", "not rehearsed: non-transactional statements cannot run inside a transaction"}};
            }
            if (failure) {
                warning_state = failure->sqlstate;
                warning_message = "dry run: migration " + failed_migration->version + " (" + failed_migration->name +
                                  ") failed: " + failure->message;
                warning_detail = "nothing was changed (dry run)";
            }
        } else if (failure) {
            Cell now_version = current_version();
            result["state"] = "failed";
            result["version_after"] = cell_json(now_version);
            if (atomic) {
                result["undone"] = applied;
                result["applied"] = Json::array();
            } else {
                result["applied"] = applied;
            }
            finish_deployment(*deployment_id, "failed", now_version, failed_json);
            events.log_failure("migration_failed", deployment_id, failed_migration->version, failed_json);
            if (failure->sqlstate == sqlstate::checksum_drift) {
                events.log("stored_sql_drift", deployment_id, failed_migration->version, std::nullopt,
                           Json{{"operation", "up"}, {"message", failure->message}});
            }
            events.log("deployment_failed", deployment_id, now_version, std::nullopt,
                       Json{{"kind", "up"},
                            {"atomic", atomic},
                            {"failed_version", failed_migration->version},
                            {"sqlstate", failure->sqlstate}});
            std::string detail;
            if (!atomic) {
                Rows kept = run_query("SELECT count(*) FROM deploy.applied WHERE deployment_id = $1", {INT8OID},
                                      {p_int8(*deployment_id)});
                if (cell_int8(kept.front()[0]) > 0) {
                    std::string reason = clip_to_limit("reason", "deploy.up(atomic => false) failed at migration " +
                                                                     failed_migration->version + ": " +
                                                                     failure->message);
                    Rows mk = run_query(
                        "INSERT INTO deploy.rollback_markers (deployment_id, target_version, reason, details) "
                        "VALUES ($1, $2, $3, pg_catalog.jsonb_build_object('source', 'up', 'failed', "
                        "deploy.public_error($4))) RETURNING id",
                        {INT8OID, TEXTOID, TEXTOID, JSONBOID},
                        {p_int8(*deployment_id), p_text(version_before), p_text(reason),
                         p_jsonb(failed_json.dump())});
                    int64_t marker = cell_int8(mk.front()[0]);
                    result["marker_id"] = marker;
                    events.log("marker_requested", deployment_id, version_before, marker,
                               Json{{"reason", reason}, {"target_version", cell_json(version_before)}});
                    detail = "deployment " + std::to_string(*deployment_id) + " failed; " +
                             std::to_string(applied.size()) + " migration(s) stay applied; rollback marker " +
                             std::to_string(marker) + " targets version " + version_before.value_or("(none)");
                } else {
                    detail = "deployment " + std::to_string(*deployment_id) + " failed; nothing was applied";
                }
            } else {
                detail = "deployment " + std::to_string(*deployment_id) + " failed; the batch was rolled back (" +
                         std::to_string(applied.size()) + " migration(s) undone)";
            }
            warning_state = failure->sqlstate;
            warning_message = "migration " + failed_migration->version + " (" + failed_migration->name +
                              ") failed: " + failure->message;
            warning_detail = detail;
        } else if (awaiting) {
            result["applied"] = applied;
            std::vector<SqlStatement> stmts = parse_sql(awaiting->up_sql, "up_sql of migration " + awaiting->version);
            Plan insert(
                "INSERT INTO deploy.checkpoints (deployment_id, version, step, statement) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (deployment_id, version, step) DO NOTHING",
                {INT8OID, TEXTOID, INT4OID, TEXTOID});
            int step = 0;
            for (const SqlStatement& st : stmts)
                insert.run({p_int8(*deployment_id), p_text(awaiting->version), p_int4(++step), p_text(st.text)});
            Rows steps = unfinished_steps(*deployment_id);
            Cell now_version = current_version();
            finish_deployment(*deployment_id, "running", now_version, std::nullopt);
            result["state"] = "running";
            result["version_after"] = cell_json(now_version);
            result["awaiting_nontransactional"] =
                Json{{"version", awaiting->version}, {"name", awaiting->name}, {"steps", steps_json(steps)}};
            notice_awaiting(awaiting->version, steps.rows.size(), *deployment_id);
        } else {
            Cell now_version = current_version();
            result["applied"] = applied;
            result["state"] = "succeeded";
            result["version_after"] = cell_json(now_version);
            finish_deployment(*deployment_id, "succeeded", now_version, std::nullopt);
            events.log("deployment_succeeded", deployment_id, now_version, std::nullopt,
                       Json{{"kind", "up"}, {"applied", applied.size()}});
        }
        result["duration_ms"] = ms_since(started);
        spi.finish();
    }
    if (warning_message)
        pg_warning(*warning_state, *warning_message, warning_detail.value_or(""));
    return json_result(result);
}

// The deployment whose steps are driven: the given one (must be running) or the newest running up deployment.
std::optional<int64_t> running_deployment(const std::optional<int64_t>& given) {
    if (given) {
        Rows d = run_query("SELECT state FROM deploy.deployments WHERE id = $1", {INT8OID}, {p_int8(*given)});
        if (d.empty())
            throw DeployError(sqlstate::no_data_found, "deployment " + std::to_string(*given) + " does not exist");
        if (d.front()[0] != Cell("running"))
            return std::nullopt;
        return given;
    }
    Rows d =
        run_query("SELECT id FROM deploy.deployments WHERE kind = 'up' AND state = 'running' ORDER BY id DESC LIMIT 1");
    if (d.empty())
        return std::nullopt;
    return cell_int8(d.front()[0]);
}

struct StepRow {
    int64_t id, deployment_id, step;
    std::string version, state, statement;
};

// load_step locks a checkpoint row and checks that it is the step being worked on (PD007 otherwise).
StepRow load_step(int64_t step_id, const char* action) {
    Rows r = run_query(
        "SELECT id, deployment_id, version, step, state, statement FROM deploy.checkpoints "
        "WHERE id = $1 FOR UPDATE",
        {INT8OID}, {p_int8(step_id)});
    if (r.empty())
        throw DeployError(sqlstate::no_data_found, "step " + std::to_string(step_id) + " does not exist");
    const Row& row = r.front();
    StepRow s{cell_int8(row[0]),   cell_int8(row[1]),   cell_int8(row[3]),
              row[2].value_or(""), row[4].value_or(""), row[5].value_or("")};
    std::string which =
        "step " + std::to_string(step_id) + " (migration " + s.version + ", step " + std::to_string(s.step) + ")";
    if (s.state == "done") {
        throw DeployError(sqlstate::state_conflict,
                          std::string("cannot report ") + action + ": " + which + " is already done");
    }
    if (s.state != "running") {
        throw DeployError(sqlstate::state_conflict,
                          std::string("cannot report ") + action + ": " + which + " is " + s.state + ", not running",
                          {}, "Claim it with deploy.next_step() first.");
    }
    Rows earlier = run_query(
        "SELECT id FROM deploy.checkpoints WHERE deployment_id = $1 AND id < $2 "
        "AND state <> 'done' ORDER BY id LIMIT 1",
        {INT8OID, INT8OID}, {p_int8(s.deployment_id), p_int8(s.id)});
    if (!earlier.empty()) {
        throw DeployError(sqlstate::state_conflict, std::string("cannot report ") + action + " out of order: " + which +
                                                        " comes after step " + earlier.front()[0].value_or("?") +
                                                        ", which is not done");
    }
    return s;
}

/*
 * complete_step marks a running step done and, when it was the migration's last, applies the migration under the
 * running deployment. Shared by deploy.step_done() and by next_step() when it finds a step's work already there.
 */
Json complete_step(const StepRow& s, const Json& details) {
    Json merged_details{{"step_id", s.id}, {"step", s.step}};
    merged_details.update(details);
    run_query(
        "UPDATE deploy.checkpoints SET state = 'done', finished_at = pg_catalog.clock_timestamp(), "
        "error = NULL WHERE id = $1",
        {INT8OID}, {p_int8(s.id)});
    EventLog events;
    events.log("checkpoint_done", s.deployment_id, s.version, std::nullopt, merged_details);
    Rows left = run_query(
        "SELECT count(*) FROM deploy.checkpoints WHERE deployment_id = $1 AND version = $2 "
        "AND state <> 'done'",
        {INT8OID, TEXTOID}, {p_int8(s.deployment_id), p_text(s.version)});
    bool migration_applied = false;
    if (cell_int8(left.front()[0]) == 0) {
        Rows m = run_query(
            "SELECT m.version, m.sort_key, m.name, m.up_sql, m.down_sql, m.checksum, m.transactional, "
            "m.reversibility, (SELECT coalesce(sum(EXTRACT(EPOCH FROM c.finished_at - c.started_at)) * 1000, 0) "
            "FROM deploy.checkpoints c WHERE c.deployment_id = $2 AND c.version = m.version), m.down_checksum "
            "FROM deploy.migrations m WHERE m.version = $1",
            {TEXTOID, INT8OID}, {p_text(s.version), p_int8(s.deployment_id)});
        if (m.empty()) {
            throw DeployError(sqlstate::no_data_found,
                              "migration " + s.version + " was unregistered while its steps ran");
        }
        const Row& r = m.front();
        Migration mig{*r[0], *r[1], *r[2], *r[3], *r[5], *r[7], r[4], r[9], cell_bool(r[6])};
        if (std::optional<SqlFailure> drift = stored_sql_drift(mig))
            throw DeployError(drift->sqlstate, drift->message, {}, drift->hint);
        AppliedWriter writer;
        writer.add(mig, cell_float8(r[8]));
        writer.flush(s.deployment_id);
        finish_deployment(s.deployment_id, "running", current_version(), std::nullopt);
        migration_applied = true;
    }
    return Json{{"schema_version", 1}, {"step_id", s.id},   {"deployment_id", s.deployment_id},
                {"version", s.version},  {"step", s.step}, {"state", "done"},
                {"migration_applied", migration_applied}};
}

/*
 * next_step_impl: deploy.next_step(deployment_id, holder) hands the first unfinished statement of a
 * non-transactional migration to a client that runs it at top level, and marks it running. A step found running or
 * failed is handed out again (the previous client died or failed); for CREATE INDEX CONCURRENTLY the INVALID index a
 * failed build leaves behind is returned in "cleanup", to be dropped before the retry, and a VALID one (the build
 * finished, the client died before reporting it) completes the step without running it again.
 */
Datum next_step_impl(FunctionCallInfo fcinfo) {
    std::optional<int64_t> given = opt_int8_arg(fcinfo, 0);
    std::optional<std::string> holder = opt_text_arg(fcinfo, 1);
    Json result;
    bool none = false;
    {
        SpiSession spi;
        acquire_deploy_lock("deploy.next_step()");
        std::optional<int64_t> dep = running_deployment(given);
        while (true) {
            Rows steps;
            if (dep)
                steps = unfinished_steps(*dep);
            if (steps.empty()) {
                none = true;
                break;
            }
            const Row& s = steps.front();
            int64_t step_id = cell_int8(s[0]);
            std::string statement = s[3].value_or("");
            bool claimed_before = s[4].value_or("pending") != "pending";
            Json cleanup = Json::array();
            bool already_built = false;
            std::vector<SqlStatement> parsed = parse_sql(statement, "step " + std::to_string(step_id));
            if (!parsed.empty() && parsed.front().concurrent_index) {
                const ConcurrentIndex& ci = *parsed.front().concurrent_index;
                Rows found = run_query(
                    "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), "
                    "(SELECT p.pid FROM pg_catalog.pg_stat_progress_create_index p "
                    " WHERE p.index_relid = c.oid LIMIT 1), i.indisvalid "
                    "FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
                    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relname = $1 AND i.indrelid = $2::oid",
                    {TEXTOID, INT8OID},
                    {p_text(ci.index_name),
                     p_int8(static_cast<int64_t>(relation_on_callers_path(ci.table_schema, ci.table_name)))});
                for (const Row& r : found.rows) {
                    if (cell_bool(r[2])) {
                        // A VALID index by that name on that table, for a step a client claimed before: that
                        // client's build finished but it died before reporting. Running the statement again would
                        // fail with 42P07 forever; the work is there, so the step is done.
                        already_built = claimed_before;
                        continue;
                    }
                    if (r[1]) {
                        // The INVALID index is a build in progress, not a leftover: another client runs this step.
                        throw DeployError(sqlstate::state_conflict,
                                          "step " + std::to_string(step_id) + " is being run by another session: pid " +
                                              *r[1] + " is building index " + r[0].value_or("?"),
                                          {},
                                          "Wait for it to finish; do not run the same deployment from two clients.");
                    }
                    cleanup.push_back("DROP INDEX CONCURRENTLY IF EXISTS " + r[0].value_or(""));
                }
            }
            run_query(
                "UPDATE deploy.checkpoints SET state = 'running', holder = $2, "
                "started_at = pg_catalog.clock_timestamp(), finished_at = NULL, attempts = attempts + 1 "
                "WHERE id = $1",
                {INT8OID, TEXTOID}, {p_int8(step_id), p_text(holder)});
            if (already_built) {
                StepRow done{step_id, *dep, cell_int8(s[2]), s[1].value_or(""), "running", statement};
                complete_step(done, Json{{"found_built", true}});
                continue;
            }
            result = Json{{"schema_version", 1},          {"step_id", step_id},        {"deployment_id", *dep},
                          {"version", s[1].value_or("")}, {"name", s[5].value_or("")}, {"step", cell_int8(s[2])},
                          {"statement", statement},       {"cleanup", cleanup}};
            break;
        }
        spi.finish();
    }
    if (none) {
        fcinfo->isnull = true;
        return (Datum)0;
    }
    return json_result(result);
}

/*
 * step_done_impl: deploy.step_done(step_id). When the last step of the migration is done, the migration becomes
 * applied under the running deployment; the next deploy.up() continues with the migrations after it.
 */
Datum step_done_impl(FunctionCallInfo fcinfo) {
    if (PG_ARGISNULL(0))
        throw DeployError(sqlstate::null_value, "step_id must not be NULL");
    int64_t step_id = PG_GETARG_INT64(0);
    Json result;
    {
        SpiSession spi;
        acquire_deploy_lock("deploy.step_done()");
        StepRow s = load_step(step_id, "done");
        result = complete_step(s, Json::object());
        spi.finish();
    }
    return json_result(result);
}

// step_failed_impl: deploy.step_failed(step_id, sqlstate, message). The step stays to be retried by next_step().
Datum step_failed_impl(FunctionCallInfo fcinfo) {
    if (PG_ARGISNULL(0))
        throw DeployError(sqlstate::null_value, "step_id must not be NULL");
    int64_t step_id = PG_GETARG_INT64(0);
    std::optional<std::string> code = opt_text_arg(fcinfo, 1);
    std::string message = required_text_arg(fcinfo, 2, "message");
    if (code && code->size() != 5) {
        throw DeployError(sqlstate::invalid_parameter, "sqlstate \"" + *code + "\" is not a five-character SQLSTATE");
    }
    Json result;
    {
        SpiSession spi;
        acquire_deploy_lock("deploy.step_failed()");
        StepRow s = load_step(step_id, "failed");
        Json error{{"sqlstate", code ? Json(*code) : Json(nullptr)}, {"message", message}};
        run_query(
            "UPDATE deploy.checkpoints SET state = 'failed', finished_at = pg_catalog.clock_timestamp(), "
            "error = $2 WHERE id = $1",
            {INT8OID, JSONBOID}, {p_int8(step_id), p_jsonb(error.dump())});
        EventLog events;
        events.log("checkpoint_failed", s.deployment_id, s.version, std::nullopt,
                   Json{{"step_id", step_id}, {"step", s.step}, {"error", error}});
        result = Json{{"schema_version", 1},  {"step_id", step_id}, {"deployment_id", s.deployment_id},
                      {"version", s.version}, {"step", s.step},     {"state", "failed"},
                      {"error", error}};
        spi.finish();
    }
    return json_result(result);
}

}  // namespace

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_up, pgdeploy::up_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_next_step, pgdeploy::next_step_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_step_done, pgdeploy::step_done_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_step_failed, pgdeploy::step_failed_impl)
