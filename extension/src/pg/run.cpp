// pg_deploy: deploy.run_step(), one step of CALL deploy.run() (extension/sql/60_run.sql): apply the next pending
// migration through deploy.up() and record its checkpoint.
#include <string>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/engine.hpp"
#include "pg_deploy/pg/settings.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
}

namespace pgdeploy {

namespace {

struct NextMigration {
    std::string version, name;
    bool transactional = true;
};

Cell string_cell(const Json& j) {
    return j.is_string() ? Cell(j.get<std::string>()) : Cell();
}

// next_pending: the oldest pending migration after the newest applied one (any pending one with
// pg_deploy.allow_out_of_order), up to the run's target.
std::optional<NextMigration> next_pending(const Cell& target) {
    Rows r = run_query(
        "SELECT m.version, m.name, m.transactional FROM deploy.migrations m "
        "WHERE ($2 OR m.sort_key > coalesce((SELECT a.sort_key FROM deploy.applied a ORDER BY a.sort_key DESC "
        "LIMIT 1), '')) "
        "AND ($1::text IS NULL OR m.sort_key <= (SELECT t.sort_key FROM deploy.migrations t WHERE t.version = $1)) "
        "AND NOT EXISTS (SELECT 1 FROM deploy.applied a WHERE a.version = m.version) ORDER BY m.sort_key LIMIT 1",
        {TEXTOID, BOOLOID}, {p_text(target), p_bool(allow_out_of_order)});
    if (r.empty())
        return std::nullopt;
    return NextMigration{*r.front()[0], *r.front()[1], cell_bool(r.front()[2])};
}

// record_checkpoint writes the step's checkpoint row (step 0: "the whole migration") and its event.
void record_checkpoint(const Json& state, int step_no, const NextMigration& next, const Json& outcome,
                       double elapsed_ms, bool done) {
    int64_t deployment_id = outcome["deployment_id"].get<int64_t>();
    Json error = done ? Json(nullptr) : outcome["failed"];
    Rows c = run_query(
        "INSERT INTO deploy.checkpoints (deployment_id, version, step, statement, state, holder, started_at, "
        "finished_at, attempts, error) VALUES ($1, $2, 0, pg_catalog.format('deploy.up(target => %L)', $2), $3, $4, "
        "pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => $5 / 1000), pg_catalog.clock_timestamp(), 1, "
        "deploy.public_error($6)) RETURNING id",
        {INT8OID, TEXTOID, TEXTOID, TEXTOID, FLOAT8OID, JSONBOID},
        {p_int8(deployment_id), p_text(next.version), p_text(std::string(done ? "done" : "failed")),
         p_text(string_cell(state["run_id"])), p_float8(elapsed_ms),
         error.is_null() ? p_null() : p_jsonb(error.dump())});
    Json details{{"run_id", state["run_id"]}, {"run_step", step_no}, {"checkpoint_id", cell_int8(c.front()[0])}};
    if (!done)
        details["sqlstate"] = error.is_object() && error.contains("sqlstate") ? error["sqlstate"] : Json(nullptr);
    EventLog events;
    events.log(done ? "checkpoint_done" : "checkpoint_failed", deployment_id, next.version, std::nullopt, details);
}

bool applied_version(const Json& outcome, const std::string& version) {
    if (!outcome.contains("applied") || !outcome["applied"].is_array())
        return false;
    for (const Json& a : outcome["applied"]) {
        if (a.value("version", "") == version)
            return true;
    }
    return false;
}

// step applies `next` through deploy.up(), called as the caller so that the migration runs with their rights and
// search_path, and returns the run's new state.
Json step(Json state, const NextMigration& next) {
    int step_no = state.value("steps", 0) + 1;
    int64_t t0 = now_us();
    Json metadata{{"run_id", state["run_id"]}, {"run_step", step_no}};
    Rows r = run_query_as_caller(
        "SELECT deploy.up(target => $1, app_version => $2, metadata => $3)", {TEXTOID, TEXTOID, JSONBOID},
        {p_text(next.version), p_text(string_cell(state["app_version"])), p_jsonb(metadata.dump())});
    Json outcome = Json::parse(r.front()[0].value_or("{}"));
    bool ok = outcome.value("ok", false);
    if (ok && !applied_version(outcome, next.version)) {
        // up() succeeded without applying it (someone else applied it meanwhile, or it waits for non-transactional
        // steps): the run is over; say what up() said.
        state["continue"] = false;
        state["awaiting_nontransactional"] = outcome.value("awaiting_nontransactional", Json(nullptr));
        return state;
    }
    bool recorded = outcome.contains("deployment_id") && outcome["deployment_id"].is_number();
    if (recorded)
        record_checkpoint(state, step_no, next, outcome, ms_since(t0), ok);
    state["steps"] = step_no;
    state["last_version"] = next.version;
    if (ok) {
        state["applied"].push_back(Json{{"version", next.version},
                                        {"name", next.name},
                                        {"deployment_id", outcome["deployment_id"]},
                                        {"duration_ms", ms_since(t0)}});
        return state;
    }
    state["continue"] = false;
    state["ok"] = false;
    state["failed"] = outcome.contains("failed") && !outcome["failed"].is_null()
                          ? outcome["failed"]
                          : Json{{"version", next.version}, {"message", "deploy.up() failed"}};
    state["failed_deployment_id"] = outcome.value("deployment_id", Json(nullptr));
    return state;
}

/*
 * run_step_impl: deploy.run_step(state) takes the next step of a run and returns the run's state, with "continue"
 * telling the procedure whether to commit and go on.
 */
Datum run_step_impl(FunctionCallInfo fcinfo) {
    std::optional<std::string> state_text = opt_jsonb_arg(fcinfo, 0);
    if (!state_text)
        throw DeployError(sqlstate::null_value, "state must not be NULL");
    Json state = Json::parse(*state_text);
    {
        SpiSession spi;
        std::optional<NextMigration> next = next_pending(string_cell(state["target"]));
        if (!next) {
            state["continue"] = false;
        } else if (state.value("last_version", Json(nullptr)) == Json(next->version)) {
            // deploy.up() returned success without applying it: stop rather than loop.
            state["continue"] = false;
            state["ok"] = false;
            state["failed"] = Json{{"version", next->version},
                                   {"name", next->name},
                                   {"sqlstate", sqlstate::object_not_in_prerequisite_state},
                                   {"message", "deploy.up() did not apply this migration"}};
        } else if (!next->transactional) {
            state["continue"] = false;
            state["awaiting_nontransactional"] =
                Json{{"version", next->version},
                     {"name", next->name},
                     {"hint",
                      "non-transactional migrations run at top level: pgdeploy up (or deploy.next_step() "
                      "from psql), then CALL deploy.run() again"}};
        } else {
            state = step(std::move(state), *next);
        }
        spi.finish();
    }
    return json_result(state);
}

}  // namespace

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_run_step, pgdeploy::run_step_impl)
