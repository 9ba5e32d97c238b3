// pg_deploy: the steps of non-transactional scripts — planned by deploy.up() and the reverts, handed to a client by
// deploy.next_step(), reported by deploy.step_done() and deploy.step_failed() (pg_deploy/pg/steps.hpp).
#include "pg_deploy/pg/steps.hpp"

#include <string>
#include <vector>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/ledger.hpp"
#include "pg_deploy/pg/lock_retry.hpp"
#include "pg_deploy/pg/settings.hpp"
#include "pg_deploy/pg/sqltext.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
}

namespace pgdeploy {

namespace {

// A step reverts its migration when its deployment is a revert (the one rule; deploy.checkpoints has no column for
// it).
bool reverts(const std::string& kind) {
    return kind == "down" || kind == "rollback";
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

}  // namespace

void plan_steps(int64_t deployment_id, const std::string& version, const std::string& sql, const std::string& what) {
    std::vector<SqlStatement> stmts = parse_sql(sql, what + " of migration " + version);
    Plan insert(
        "INSERT INTO deploy.checkpoints (deployment_id, version, step, statement) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (deployment_id, version, step) DO NOTHING",
        {INT8OID, TEXTOID, INT4OID, TEXTOID});
    int step = 0;
    for (const SqlStatement& st : stmts)
        insert.run({p_int8(deployment_id), p_text(version), p_int4(++step), p_text(st.text)});
}

/*
 * unfinished_steps reads the steps of an up deployment's non-transactional migrations (its step-0 rows are CALL
 * deploy.run()'s record of whole transactional migrations, not steps) or of a revert deployment. The name comes from
 * the catalog, or from the applied row for a revert of a migration that is no longer registered.
 */
Rows unfinished_steps(int64_t deployment_id) {
    return run_query(
        "SELECT c.id, c.version, c.step, c.statement, c.state, coalesce(m.name, a.name), "
        "CASE WHEN d.kind = 'up' THEN m.lock_timeout_ms ELSE a.lock_timeout_ms END FROM deploy.checkpoints c "
        "JOIN deploy.deployments d ON d.id = c.deployment_id "
        "LEFT JOIN deploy.migrations m ON m.version = c.version "
        "LEFT JOIN deploy.applied a ON a.version = c.version "
        "WHERE c.deployment_id = $1 AND c.state <> 'done' AND (d.kind <> 'up' OR NOT m.transactional) ORDER BY c.id",
        {INT8OID}, {p_int8(deployment_id)});
}

Json awaiting_json(const Rows& steps) {
    const Row& first = steps.front();
    return Json{{"version", first[1].value_or("")}, {"name", first[5].value_or("")}, {"steps", steps_json(steps)}};
}

void notice_awaiting(const std::string& kind, int64_t deployment_id, const Rows& steps) {
    std::string count = std::to_string(steps.rows.size());
    std::string version = steps.front()[1].value_or("");
    if (!reverts(kind)) {
        pg_notice("deployment " + std::to_string(deployment_id) + " waits for " + count +
                      " non-transactional step(s) of migration " + version,
                  "Run `pgdeploy up`, or from psql at top level: SELECT deploy.next_step(); run the statement; "
                  "SELECT deploy.step_done(<step_id>); then SELECT deploy.up() to continue.");
        return;
    }
    pg_notice(kind + " deployment " + std::to_string(deployment_id) + " waits for " + count +
                  " non-transactional step(s) of the down SQL of migration " + version,
              "Run `pgdeploy " + kind +
                  "`, or from psql at top level: SELECT deploy.next_step(); run the statement; "
                  "SELECT deploy.step_done(<step_id>); then SELECT deploy." +
                  kind + "() to continue.");
}

namespace {

// The deployment whose steps are driven: the given one (must be running) or the newest running deployment (an up
// deployment waiting for its steps, or a revert waiting for a down SQL's).
std::optional<int64_t> running_deployment(const std::optional<int64_t>& given) {
    if (given) {
        Rows d = run_query("SELECT state FROM deploy.deployments WHERE id = $1", {INT8OID}, {p_int8(*given)});
        if (d.empty())
            throw DeployError(sqlstate::no_data_found, "deployment " + std::to_string(*given) + " does not exist");
        if (d.front()[0] != Cell("running"))
            return std::nullopt;
        return given;
    }
    std::optional<RunningDeployment> newest = newest_running(false);
    if (!newest)
        return std::nullopt;
    return newest->id;
}

// A step (checkpoint) of a non-transactional script, as a client reports on it.
struct StepRow {
    int64_t id, deployment_id, step;
    std::string version, state;
};

// load_step locks a checkpoint row and checks that it is the step being worked on (PD007 otherwise).
StepRow load_step(int64_t step_id, const char* action) {
    Rows r =
        run_query("SELECT id, deployment_id, version, step, state FROM deploy.checkpoints WHERE id = $1 FOR UPDATE",
                  {INT8OID}, {p_int8(step_id)});
    if (r.empty())
        throw DeployError(sqlstate::no_data_found, "step " + std::to_string(step_id) + " does not exist");
    const Row& row = r.front();
    StepRow s{cell_int8(row[0]), cell_int8(row[1]), cell_int8(row[3]), row[2].value_or(""), row[4].value_or("")};
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

// apply_completed makes the migration whose last up step is done applied under the running up deployment.
void apply_completed(const StepRow& s) {
    Rows m = run_query(
        "SELECT m.version, m.sort_key, m.name, m.up_sql, m.down_sql, m.checksum, m.transactional, "
        "m.reversibility, (SELECT coalesce(sum(EXTRACT(EPOCH FROM c.finished_at - c.started_at)) * 1000, 0) "
        "FROM deploy.checkpoints c WHERE c.deployment_id = $2 AND c.version = m.version), m.down_checksum, "
        "m.down_transactional, m.lock_timeout_ms FROM deploy.migrations m WHERE m.version = $1",
        {TEXTOID, INT8OID}, {p_text(s.version), p_int8(s.deployment_id)});
    if (m.empty())
        throw DeployError(sqlstate::no_data_found, "migration " + s.version + " was unregistered while its steps ran");
    const Row& r = m.front();
    Migration mig{*r[0], *r[1], *r[2], *r[3], *r[5], *r[7], r[4], r[9], cell_bool(r[6]), cell_bool(r[10])};
    if (r[11])
        mig.lock_timeout_ms = static_cast<int>(cell_int8(r[11]));
    if (std::optional<SqlFailure> drift = stored_sql_drift(mig))
        throw DeployError(drift->sqlstate, drift->message, {}, drift->hint);
    AppliedWriter writer;
    writer.add(mig, cell_float8(r[8]));
    writer.flush(s.deployment_id);
}

// revert_completed takes the migration whose last down step is done out of the ledger under the running revert
// deployment, as a revert's batch does for the migrations it reverted.
void revert_completed(const StepRow& s) {
    Rows a = run_query(
        "SELECT a.name, a.reversibility, a.deployment_id, (SELECT coalesce(sum(EXTRACT(EPOCH FROM c.finished_at - "
        "c.started_at)) * 1000, 0) FROM deploy.checkpoints c WHERE c.deployment_id = $2 AND c.version = a.version) "
        "FROM deploy.applied a WHERE a.version = $1",
        {TEXTOID, INT8OID}, {p_text(s.version), p_int8(s.deployment_id)});
    if (a.empty()) {
        throw DeployError(sqlstate::no_data_found,
                          "migration " + s.version + " was taken out of the ledger while its down steps ran");
    }
    const Row& r = a.front();
    RevertedMigration reverted{
        s.version, r[0].value_or(""), r[1].value_or(""), true, cell_int8(r[2]), cell_float8(r[3]), 0, now_us()};
    remove_reverted(s.deployment_id, {reverted});
}

/*
 * complete_step marks a running step done and, when it was the migration's last, applies the migration under the
 * running up deployment or takes it out of the ledger under the running revert deployment. Shared by
 * deploy.step_done() and by next_step() when it finds a step's work already there.
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
        "SELECT count(*) FILTER (WHERE c.state <> 'done'), (SELECT d.kind FROM deploy.deployments d "
        "WHERE d.id = $1) FROM deploy.checkpoints c WHERE c.deployment_id = $1 AND c.version = $2",
        {INT8OID, TEXTOID}, {p_int8(s.deployment_id), p_text(s.version)});
    bool last = cell_int8(left.front()[0]) == 0;
    bool revert = reverts(left.front()[1].value_or(""));
    if (last) {
        if (revert)
            revert_completed(s);
        else
            apply_completed(s);
        finish_deployment(s.deployment_id, "running", current_version(), std::nullopt);
    }
    return Json{{"schema_version", 1},
                {"step_id", s.id},
                {"deployment_id", s.deployment_id},
                {"version", s.version},
                {"step", s.step},
                {"state", "done"},
                {"migration_applied", last && !revert},
                {"migration_reverted", last && revert}};
}

// What the database already holds of a concurrent index step that a client claimed before.
struct IndexLeftovers {
    Json cleanup = Json::array();  // statements that drop the INVALID indexes a failed or interrupted run left behind
    const char* found_done = nullptr;  // the step's work is there ("found_built", "found_dropped"): its client died
                                       // before reporting it
};

std::string step_label(int64_t step_id) {
    return "step " + std::to_string(step_id);
}

[[noreturn]] void run_elsewhere(int64_t step_id, const std::string& pid, const std::string& what) {
    throw DeployError(sqlstate::state_conflict,
                      step_label(step_id) + " is being run by another session: pid " + pid + " " + what, {},
                      "Wait for it to finish; do not run the same deployment from two clients.");
}

/*
 * refuse_if_still_running: a step handed out before (its client died, or its deploy lease expired) whose statement
 * a live backend is still executing (the server goes on with a statement whose client is gone) is not handed out
 * again: a second copy would race the first. pg_stat_activity keeps the first track_activity_query_size bytes.
 */
void refuse_if_still_running(int64_t step_id, const std::string& statement) {
    Rows running = run_query(
        "SELECT a.pid::text FROM pg_catalog.pg_stat_activity a WHERE a.state = 'active' "
        "AND a.pid <> pg_catalog.pg_backend_pid() AND a.backend_type = 'client backend' "
        "AND (a.query = $1 OR (pg_catalog.length(a.query) >= 1000 AND pg_catalog.starts_with($1, a.query))) LIMIT 1",
        {TEXTOID}, {p_text(statement)});
    if (!running.empty())
        run_elsewhere(step_id, running.front()[0].value_or("?"), "is still executing its statement");
}

/*
 * created_index_leftovers: the index a CREATE INDEX CONCURRENTLY builds, on the table as the statement will resolve
 * it (the caller's path). An INVALID one is a failed build's leftover, unless a live backend is still building it
 * (another client runs the step: PD007). A VALID one, for a step a client claimed before, is a build that finished
 * while its client died before reporting it: running the statement again would fail with 42P07 forever, so the step
 * is done.
 */
IndexLeftovers created_index_leftovers(int64_t step_id, const ConcurrentIndex& ci, bool claimed_before) {
    IndexLeftovers found;
    Rows indexes = run_query(
        "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), "
        "(SELECT p.pid FROM pg_catalog.pg_stat_progress_create_index p "
        " WHERE p.index_relid = c.oid LIMIT 1), i.indisvalid "
        "FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = $1 AND i.indrelid = $2::oid",
        {TEXTOID, INT8OID},
        {p_text(ci.index_name), p_int8(static_cast<int64_t>(relation_on_callers_path(ci.schema, ci.table_name)))});
    for (const Row& r : indexes.rows) {
        if (cell_bool(r[2])) {
            if (claimed_before)
                found.found_done = "found_built";
            continue;
        }
        if (r[1])
            run_elsewhere(step_id, *r[1], "is building index " + r[0].value_or("?"));
        found.cleanup.push_back("DROP INDEX CONCURRENTLY IF EXISTS " + r[0].value_or(""));
    }
    return found;
}

/*
 * dropped_index_leftovers: the index a DROP INDEX CONCURRENTLY drops, as the statement will resolve it. An interrupted
 * drop leaves it INVALID, and the statement itself finishes the job, so there is nothing to clean up. Gone, for a step
 * a client claimed before, the drop finished while its client died before reporting it: running the statement again
 * would fail with 42704 forever (without IF EXISTS), so the step is done. A live backend that holds the lock a
 * concurrent drop takes on the index is another client running the step (PD007).
 */
IndexLeftovers dropped_index_leftovers(int64_t step_id, const ConcurrentIndex& ci, bool claimed_before) {
    IndexLeftovers found;
    Oid index = relation_on_callers_path(ci.schema, ci.index_name);
    if (index == InvalidOid) {
        if (claimed_before)
            found.found_done = "found_dropped";
        return found;
    }
    Rows dropping = run_query(
        "SELECT l.pid FROM pg_catalog.pg_locks l WHERE l.locktype = 'relation' AND l.relation = $1::oid "
        "AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = "
        "pg_catalog.current_database()) AND l.mode = 'ShareUpdateExclusiveLock' "
        "AND l.pid <> pg_catalog.pg_backend_pid() LIMIT 1",
        {INT8OID}, {p_int8(static_cast<int64_t>(index))});
    if (!dropping.empty())
        run_elsewhere(step_id, dropping.front()[0].value_or("?"), "is working on index " + ci.index_name);
    return found;
}

/*
 * reindex_leftovers: an interrupted REINDEX INDEX|TABLE ... CONCURRENTLY leaves INVALID indexes named <index>_ccnew
 * (the copy being built) and, after the swap, <index>_ccold (the original, not yet dropped) on the table. Both are
 * dropped before the retry; a live REINDEX or concurrent build on that table is another client running the step
 * (PD007).
 */
IndexLeftovers reindex_leftovers(int64_t step_id, const ConcurrentIndex& ci) {
    IndexLeftovers found;
    Oid table = InvalidOid;
    if (ci.action == ConcurrentIndex::Action::reindex_table) {
        table = relation_on_callers_path(ci.schema, ci.table_name);
    } else {
        Oid index = relation_on_callers_path(ci.schema, ci.index_name);
        Rows t = run_query("SELECT indrelid FROM pg_catalog.pg_index WHERE indexrelid = $1::oid", {INT8OID},
                           {p_int8(static_cast<int64_t>(index))});
        table = t.empty() ? InvalidOid : static_cast<Oid>(cell_int8(t.front()[0]));
    }
    if (table == InvalidOid)
        return found;
    Rows running = run_query(
        "SELECT p.pid FROM pg_catalog.pg_stat_progress_create_index p WHERE p.relid = $1::oid "
        "AND p.pid <> pg_catalog.pg_backend_pid() LIMIT 1",
        {INT8OID}, {p_int8(static_cast<int64_t>(table))});
    if (!running.empty())
        run_elsewhere(step_id, running.front()[0].value_or("?"), "is building an index on the same table");
    Rows left = run_query(
        "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) "
        "FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE i.indrelid = $1::oid AND NOT i.indisvalid AND c.relname ~ '_cc(new|old)[0-9]*$' ORDER BY c.relname",
        {INT8OID}, {p_int8(static_cast<int64_t>(table))});
    for (const Row& r : left.rows)
        found.cleanup.push_back("DROP INDEX CONCURRENTLY IF EXISTS " + r[0].value_or(""));
    return found;
}

/*
 * index_leftovers looks at what an earlier, failed or interrupted run of a step's concurrent index statement left
 * behind (see the three functions above); other statements leave nothing to look at.
 */
IndexLeftovers index_leftovers(int64_t step_id, const std::string& statement, bool claimed_before) {
    std::vector<SqlStatement> parsed = parse_sql(statement, step_label(step_id));
    if (parsed.empty() || !parsed.front().concurrent_index)
        return IndexLeftovers{};
    const ConcurrentIndex& ci = *parsed.front().concurrent_index;
    switch (ci.action) {
        case ConcurrentIndex::Action::create:
            return created_index_leftovers(step_id, ci, claimed_before);
        case ConcurrentIndex::Action::drop:
            return dropped_index_leftovers(step_id, ci, claimed_before);
        case ConcurrentIndex::Action::reindex_index:
        case ConcurrentIndex::Action::reindex_table:
            break;
    }
    return reindex_leftovers(step_id, ci);
}

/*
 * claim_next_step hands out the first unfinished step of a running deployment, marked running, or nothing when none
 * is left. A step whose work is found already done is completed on the way.
 */
std::optional<Json> claim_next_step(const std::optional<int64_t>& deployment_id,
                                    const std::optional<std::string>& holder) {
    if (!deployment_id)
        return std::nullopt;
    while (true) {
        Rows steps = unfinished_steps(*deployment_id);
        if (steps.empty())
            return std::nullopt;
        const Row& s = steps.front();
        int64_t step_id = cell_int8(s[0]);
        std::string statement = s[3].value_or("");
        bool claimed_before = s[4].value_or("pending") != "pending";
        if (s[4].value_or("pending") == "running")
            refuse_if_still_running(step_id, statement);
        IndexLeftovers leftovers = index_leftovers(step_id, statement, claimed_before);
        run_query(
            "UPDATE deploy.checkpoints SET state = 'running', holder = $2, "
            "started_at = pg_catalog.clock_timestamp(), finished_at = NULL, attempts = attempts + 1 "
            "WHERE id = $1",
            {INT8OID, TEXTOID}, {p_int8(step_id), p_text(holder)});
        if (leftovers.found_done) {
            StepRow done{step_id, *deployment_id, cell_int8(s[2]), s[1].value_or(""), "running"};
            complete_step(done, Json{{leftovers.found_done, true}});
            continue;
        }
        Json step{{"schema_version", 1},          {"step_id", step_id},          {"deployment_id", *deployment_id},
                  {"version", s[1].value_or("")}, {"name", s[5].value_or("")},   {"step", cell_int8(s[2])},
                  {"statement", statement},       {"cleanup", leftovers.cleanup}};
        step.update(top_level_lock_policy(statement,
                                          s[6] ? std::optional<int>(static_cast<int>(cell_int8(s[6]))) : std::nullopt));
        return step;
    }
}

/*
 * next_step_impl: deploy.next_step(deployment_id, holder) hands the first unfinished statement of a
 * non-transactional script to a client that runs it at top level, and marks it running. A step found running or
 * failed is handed out again (the previous client died or failed); the INVALID indexes a failed concurrent build or
 * REINDEX leaves behind are returned in "cleanup", to be dropped before the retry, and work found done (a VALID built
 * index, a dropped index: the client died before reporting it) completes the step without running it again.
 */
Datum next_step_impl(FunctionCallInfo fcinfo) {
    std::optional<int64_t> given = opt_int8_arg(fcinfo, 0);
    std::optional<std::string> holder = opt_text_arg(fcinfo, 1);
    std::optional<Json> step;
    {
        SpiSession spi;
        acquire_deploy_lock("deploy.next_step()", holder);
        step = claim_next_step(running_deployment(given), holder);
        spi.finish();
    }
    if (!step) {
        fcinfo->isnull = true;
        return (Datum)0;
    }
    return json_result(*step);
}

/*
 * step_done_impl: deploy.step_done(step_id). When the last step of the migration is done, the migration becomes
 * applied under the running up deployment (or reverted under the running revert deployment); the next deploy.up()
 * (deploy.down(), deploy.rollback()) continues with the migrations after it.
 */
Datum step_done_impl(FunctionCallInfo fcinfo) {
    if (PG_ARGISNULL(0))
        throw DeployError(sqlstate::null_value, "step_id must not be NULL");
    int64_t step_id = PG_GETARG_INT64(0);
    Json result;
    {
        SpiSession spi;
        acquire_deploy_lock_for_step("deploy.step_done()");
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
        acquire_deploy_lock_for_step("deploy.step_failed()");
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

PGDEPLOY_SQL_FUNCTION(pgdeploy_next_step, pgdeploy::next_step_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_step_done, pgdeploy::step_done_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_step_failed, pgdeploy::step_failed_impl)
