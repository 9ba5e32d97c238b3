// pg_deploy: ledger reads and writes shared by the engine's functions.
#include "pg_deploy/pg/ledger.hpp"

#include "pg_deploy/errors.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
}

namespace pgdeploy {

Cell current_version() {
    Rows r = run_query("SELECT version FROM deploy.applied ORDER BY sort_key DESC LIMIT 1");
    return r.empty() ? Cell() : r.front()[0];
}

void refuse_if_open_marker(const char* operation) {
    Rows m = run_query(
        "SELECT id, deployment_id, state, reason FROM deploy.rollback_markers "
        "WHERE state IN ('pending', 'in_progress', 'failed', 'needs_attention') ORDER BY id LIMIT 1");
    if (m.empty())
        return;
    const Row& r = m.front();
    throw DeployError(sqlstate::object_not_in_prerequisite_state,
                      std::string(operation) + " refused: rollback marker " + r[0].value_or("?") + " (" +
                          r[2].value_or("?") + ") for deployment " + r[1].value_or("?") + " is open",
                      "reason: " + r[3].value_or(""),
                      "Execute it (pgdeploy once, or SELECT deploy.execute_rollback(" + r[0].value_or("?") +
                          ")) or close it with deploy.resolve_marker().");
}

/*
 * AppliedWriter::write inserts the applied row and logs migration_applied in one statement (a data-modifying CTE):
 * this runs once per migration, so one executor round trip instead of two is worth it (issue 7: the ledger must
 * cost under 5 % of the migrations themselves).
 */
void AppliedWriter::write(const Migration& m, int64_t deployment_id, double duration_ms, EventLog& events) {
    (void)events;
    if (!plan_.prepared()) {
        plan_ = Plan(
            "WITH applied AS (INSERT INTO deploy.applied (version, sort_key, name, checksum, down_sql, reversibility, "
            "transactional, deployment_id, duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)), "
            "counted AS (INSERT INTO deploy.ledger_stats AS s VALUES (true, 1) ON CONFLICT (only_row) "
            "DO UPDATE SET applied_count = s.applied_count + 1) "
            "SELECT deploy.log_event('migration_applied', $8, $1, NULL, "
            "pg_catalog.jsonb_build_object('name', $3, 'duration_ms', $9, 'checksum', $4))",
            {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, BOOLOID, INT8OID, FLOAT8OID});
    }
    plan_.run({p_text(m.version), p_text(m.sort_key), p_text(m.name), p_text(m.checksum), p_text(m.down_sql),
               p_text(m.reversibility), p_bool(m.transactional), p_int8(deployment_id), p_float8(duration_ms)});
}

void finish_deployment(int64_t id, const char* state, const Cell& version_after, const std::optional<Json>& error) {
    run_query(
        "UPDATE deploy.deployments SET state = $2, version_after = $3, error = $4, "
        "finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE pg_catalog.clock_timestamp() END "
        "WHERE id = $1",
        {INT8OID, TEXTOID, TEXTOID, JSONBOID},
        {p_int8(id), p_text(std::string(state)), p_text(version_after), error ? p_jsonb(error->dump()) : p_null()});
}

}  // namespace pgdeploy
