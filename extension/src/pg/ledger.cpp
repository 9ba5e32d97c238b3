// pg_deploy: ledger reads and writes shared by the engine's functions.
#include "pg_deploy/pg/ledger.hpp"

#include "pg_deploy/errors.hpp"

#include <cstring>

extern "C" {
#include "catalog/pg_type_d.h"
#include "commands/trigger.h"
#include "utils/rel.h"
#include "utils/tuplestore.h"
}

namespace pgdeploy {

std::optional<SqlFailure> stored_sql_drift(const Migration& m) {
    if (!intact(Cell(m.up_sql), Cell(m.checksum)))
        return drift_failure("up_sql", m.version);
    if (!intact(m.down_sql, m.down_checksum))
        return drift_failure("down_sql", m.version);
    return std::nullopt;
}

Cell current_version() {
    Rows r = run_query("SELECT version FROM deploy.applied ORDER BY sort_key DESC LIMIT 1");
    return r.empty() ? Cell() : r.front()[0];
}

void refuse_if_open_marker(const char* operation) {
    Rows m = run_query(
        "SELECT id, deployment_id, state, reason FROM deploy.rollback_markers "
        "WHERE deploy.marker_is_open(state) ORDER BY id LIMIT 1");
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
 * AppliedWriter::flush writes every migration added since the last flush in one statement: the applied rows and their
 * migration_applied events (deploy.log_events), however many there are. One statement per deployment instead of one
 * per migration brought deploy.up() of 1,000 trivial migrations from 1.30x to about 1.07x of the bare statements
 * (docs/benchmarks.md, §3); applied_count is kept by the trigger on deploy.applied, like for every other writer.
 */
void AppliedWriter::add(const Migration& m, double duration_ms) {
    version_.emplace_back(m.version);
    sort_key_.emplace_back(m.sort_key);
    name_.emplace_back(m.name);
    checksum_.emplace_back(m.checksum);
    down_sql_.push_back(m.down_sql);
    down_checksum_.push_back(m.down_checksum);
    reversibility_.emplace_back(m.reversibility);
    transactional_.push_back(m.transactional);
    lock_timeout_ms_.push_back(m.lock_timeout_ms ? Cell(std::to_string(*m.lock_timeout_ms)) : Cell());
    down_transactional_.push_back(m.down_transactional);
    duration_ms_.push_back(duration_ms);
    at_.push_back(now_us());
}

void AppliedWriter::flush(int64_t deployment_id) {
    if (version_.empty())
        return;
    run_query(
        "WITH r AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), "
        "pg_catalog.unnest($4::text[]), pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::text[]), "
        "pg_catalog.unnest($7::text[]), pg_catalog.unnest($8::boolean[]), pg_catalog.unnest($9::float8[]), "
        "pg_catalog.unnest($10::timestamptz[]), pg_catalog.unnest($11::text[]), pg_catalog.unnest($12::boolean[]), "
        "pg_catalog.unnest($13::text[])) "
        "WITH ORDINALITY AS r(version, sort_key, name, checksum, down_sql, reversibility, transactional, "
        "duration_ms, at, down_checksum, down_transactional, lock_timeout_ms, ord)), "
        "added AS (INSERT INTO deploy.applied (version, sort_key, name, checksum, down_sql, reversibility, "
        "transactional, deployment_id, duration_ms, applied_at, down_checksum, down_transactional, lock_timeout_ms) "
        "SELECT version, sort_key, name, checksum, down_sql, reversibility, transactional, $1, duration_ms, at, "
        "down_checksum, down_transactional, lock_timeout_ms::integer FROM r) "
        "SELECT deploy.log_events('migration_applied', $1, $2, $10, pg_catalog.array_agg(pg_catalog.jsonb_build_object("
        "'name', r.name, 'duration_ms', r.duration_ms, 'checksum', r.checksum) ORDER BY r.ord)) FROM r",
        {INT8OID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, BOOLARRAYOID,
         FLOAT8ARRAYOID, TIMESTAMPTZARRAYOID, TEXTARRAYOID, BOOLARRAYOID, TEXTARRAYOID},
        {p_int8(deployment_id), p_text_array(std::move(version_)), p_text_array(std::move(sort_key_)),
         p_text_array(std::move(name_)), p_text_array(std::move(checksum_)), p_text_array(std::move(down_sql_)),
         p_text_array(std::move(reversibility_)), p_bool_array(transactional_), p_float8_array(std::move(duration_ms_)),
         p_timestamptz_array(std::move(at_)), p_text_array(std::move(down_checksum_)),
         p_bool_array(down_transactional_), p_text_array(std::move(lock_timeout_ms_))});
    *this = AppliedWriter();
}

void remove_reverted(int64_t deployment_id, const std::vector<RevertedMigration>& reverted) {
    if (reverted.empty())
        return;
    std::vector<Cell> version, name, reversibility;
    std::vector<int64_t> at, from_deployment, archived;
    std::vector<double> duration_ms;
    std::vector<bool> sql_run;
    for (const RevertedMigration& r : reverted) {
        version.emplace_back(r.version);
        at.push_back(r.at);
        name.emplace_back(r.name);
        duration_ms.push_back(r.duration_ms);
        reversibility.emplace_back(r.reversibility);
        sql_run.push_back(r.sql_run);
        from_deployment.push_back(r.from_deployment);
        archived.push_back(r.archived);
    }
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
        {p_int8(deployment_id), p_text_array(std::move(version)), p_timestamptz_array(std::move(at)),
         p_text_array(std::move(name)), p_float8_array(std::move(duration_ms)), p_text_array(std::move(reversibility)),
         p_bool_array(sql_run), p_int8_array(std::move(from_deployment)), p_int8_array(std::move(archived))});
}

std::optional<RunningDeployment> newest_running(bool reverts_only) {
    Rows r = run_query(
        "SELECT d.id, d.kind, d.reverts, (SELECT c.version FROM deploy.checkpoints c WHERE c.deployment_id = d.id "
        "AND c.state <> 'done' AND c.step > 0 ORDER BY c.id LIMIT 1) FROM deploy.deployments d "
        "WHERE d.state = 'running' AND d.kind IN ('down', 'rollback', CASE WHEN $1 THEN NULL ELSE 'up' END) "
        "ORDER BY d.id DESC LIMIT 1",
        {BOOLOID}, {p_bool(reverts_only)});
    if (r.empty())
        return std::nullopt;
    const Row& row = r.front();
    RunningDeployment out;
    out.id = cell_int8(row[0]);
    out.kind = row[1].value_or("");
    if (row[2])
        out.reverts = cell_int8(row[2]);
    out.waits_for = row[3].value_or("");
    return out;
}

DeployError running_refusal(const std::string& operation, const RunningDeployment& d) {
    std::string id = std::to_string(d.id);
    std::string why =
        d.waits_for.empty() ? "it was interrupted" : "it waits for non-transactional steps of migration " + d.waits_for;
    std::string hint = "Finish it with `pgdeploy " + d.kind +
                       "` (or from psql at top level: SELECT deploy.next_step(); run the statement; SELECT "
                       "deploy.step_done(<step_id>); then SELECT deploy." +
                       d.kind + "())";
    hint += d.is_revert() ? "." : ", or roll it back with deploy.rollback(deployment_id => " + id + ", force => true).";
    std::string which = d.kind + " deployment " + id;
    if (d.reverts)
        which += " (the rollback of deployment " + std::to_string(*d.reverts) + ")";
    return DeployError(sqlstate::object_not_in_prerequisite_state,
                       operation + " refused: " + which + " is still running (" + why + ")", {}, hint);
}

namespace {

/*
 * The checks of deploy.ledger_changed (the contract is in extension/sql/20_engine.sql). Each reads the statement's
 * rows (the transition table changed_rows) and probes the indexes on version and sort_key; none scans the ledger.
 */
// deploy.applied INSERT: a registered migration left unapplied between the newest key applied before the statement
// and the newest inserted key.
constexpr const char* applied_insert_disorders =
    "SELECT EXISTS (SELECT 1 FROM deploy.migrations m "
    "WHERE m.sort_key < (SELECT max(c.sort_key) FROM changed_rows c) "
    "AND m.sort_key > coalesce((SELECT max(a.sort_key) FROM deploy.applied a "
    "WHERE a.version NOT IN (SELECT c.version FROM changed_rows c)), '') "
    "AND NOT EXISTS (SELECT 1 FROM deploy.applied a WHERE a.version = m.version))";
// deploy.applied DELETE: a deleted row that is registered and older than the newest row still applied.
constexpr const char* applied_delete_disorders =
    "SELECT EXISTS (SELECT 1 FROM changed_rows c JOIN deploy.migrations m ON m.version = c.version "
    "WHERE c.sort_key < (SELECT max(a.sort_key) FROM deploy.applied a))";
// deploy.migrations INSERT: an inserted row older than the newest applied one and not applied itself.
constexpr const char* migrations_insert_disorders =
    "SELECT EXISTS (SELECT 1 FROM changed_rows c WHERE c.sort_key < (SELECT max(a.sort_key) FROM deploy.applied a) "
    "AND NOT EXISTS (SELECT 1 FROM deploy.applied a WHERE a.version = c.version))";

Datum ledger_changed_impl(FunctionCallInfo fcinfo) {
    if (!CALLED_AS_TRIGGER(fcinfo))
        throw DeployError(sqlstate::invalid_parameter, "deploy.ledger_changed() can only be called as a trigger");
    TriggerData* td = reinterpret_cast<TriggerData*>(fcinfo->context);
    TriggerEvent event = td->tg_event;
    if (!TRIGGER_FIRED_AFTER(event) || !TRIGGER_FIRED_FOR_STATEMENT(event))
        throw DeployError(sqlstate::invalid_parameter,
                          "deploy.ledger_changed() must fire AFTER ... FOR EACH STATEMENT");
    const bool on_applied = std::strcmp(RelationGetRelationName(td->tg_relation), "applied") == 0;

    int64_t delta = 0;
    bool reset = false;
    bool disorder = false;
    const char* check = nullptr;
    if (TRIGGER_FIRED_BY_TRUNCATE(event)) {
        reset = on_applied;  // nothing applied: nothing can be out of order
    } else if (TRIGGER_FIRED_BY_UPDATE(event)) {
        disorder = true;  // a version or sort_key rewritten by hand: prove nothing, recheck at the next up()
    } else if (TRIGGER_FIRED_BY_INSERT(event)) {
        int64_t n = td->tg_newtable ? tuplestore_tuple_count(td->tg_newtable) : 0;
        if (n == 0)
            return PointerGetDatum(nullptr);
        delta = on_applied ? n : 0;
        check = on_applied ? applied_insert_disorders : migrations_insert_disorders;
    } else if (TRIGGER_FIRED_BY_DELETE(event)) {
        int64_t n = td->tg_oldtable ? tuplestore_tuple_count(td->tg_oldtable) : 0;
        if (n == 0)
            return PointerGetDatum(nullptr);
        delta = on_applied ? -n : 0;
        check = on_applied ? applied_delete_disorders : nullptr;
    }

    SpiSession spi;
    if (check) {
        int rc = 0;
        pg_guard([&] { rc = SPI_register_trigger_data(td); });
        if (rc != SPI_OK_TD_REGISTER)
            throw DeployError(sqlstate::internal_error, "SPI_register_trigger_data failed");
        disorder = cell_bool(run_query(check).front()[0]);
    }
    if (delta != 0 || reset || disorder) {
        run_query(
            "UPDATE deploy.ledger_stats SET applied_count = CASE WHEN $2 THEN 0 ELSE applied_count + $1 END, "
            "order_generation = order_generation + CASE WHEN $3 THEN 1 ELSE 0 END",
            {INT8OID, BOOLOID, BOOLOID}, {p_int8(delta), p_bool(reset), p_bool(disorder)});
    }
    spi.finish();
    return PointerGetDatum(nullptr);
}

}  // namespace

OrderState order_state() {
    Rows r = run_query("SELECT order_generation, order_checked FROM deploy.ledger_stats");
    OrderState st;
    if (r.empty())
        return st;  // the row was deleted by hand: never proven
    st.generation = cell_int8(r.front()[0]);
    st.proven = r.front()[1] && cell_int8(r.front()[1]) == st.generation;
    return st;
}

void mark_order_checked(int64_t generation) {
    // The record is the generation the check saw: a change committed meanwhile has moved order_generation past it,
    // so the record never vouches for that change (specs/order_check_race.spec). The WHERE only skips a write that
    // could not be current anyway.
    run_query("UPDATE deploy.ledger_stats SET order_checked = $1 WHERE order_generation = $1", {INT8OID},
              {p_int8(generation)});
}

void finish_deployment(int64_t id, const char* state, const Cell& version_after, const std::optional<Json>& error) {
    run_query(
        "UPDATE deploy.deployments SET state = $2, version_after = $3, error = deploy.public_error($4), "
        "error_private = deploy.private_error($4), "
        "finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE pg_catalog.clock_timestamp() END "
        "WHERE id = $1",
        {INT8OID, TEXTOID, TEXTOID, JSONBOID},
        {p_int8(id), p_text(std::string(state)), p_text(version_after), error ? p_jsonb(error->dump()) : p_null()});
}

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_ledger_changed, pgdeploy::ledger_changed_impl)
