// pg_deploy: deploy.execute_rollback() — perform a rollback marker (extension/sql/50_markers.sql has the marker's
// life cycle; this file joins its two recorded steps to the rollback rule and the revert, which runs as the caller)
// — and the list of open marker states.
#include <string>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/eligibility.hpp"
#include "pg_deploy/pg/engine.hpp"
#include "pg_deploy/pg/ledger.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
}

namespace pgdeploy {

namespace {

// The states of an open marker: requested and not yet finished (done is the only closed state). The one list; SQL
// reaches it as deploy.marker_is_open(state), which the partial unique index rollback_markers_open_idx uses too.
constexpr const char* kOpenMarkerStates[] = {"pending", "in_progress", "failed", "needs_attention"};

// marker_is_open_impl: deploy.marker_is_open(state), IMMUTABLE STRICT.
Datum marker_is_open_impl(FunctionCallInfo fcinfo) {
    std::string state = text_arg(fcinfo, 0);
    for (const char* open : kOpenMarkerStates) {
        if (state == open)
            PG_RETURN_BOOL(true);
    }
    PG_RETURN_BOOL(false);
}

Json jsonb_cell(const Cell& c) {
    return c ? Json::parse(*c) : Json(nullptr);
}

// What one attempt at a marker's revert gave: deploy.rollback()'s result document, or the error it raised.
struct Attempt {
    Cell outcome;
    Cell raised;
};

/*
 * revert_as_caller runs deploy.rollback() for the marker's deployment with the caller's rights and search_path, in a
 * subtransaction (a cancel request aborts the whole call instead).
 */
Attempt revert_as_caller(const Json& plan) {
    Cell reason = plan["reason"].is_string() ? Cell(plan["reason"].get<std::string>()) : Cell();
    Attempt attempt;
    std::optional<SqlFailure> failure = failure_of([&] {
        in_subtransaction([&] {
            Rows r = run_query_as_caller(
                "SELECT deploy.rollback(deployment_id => $1, force => $2, reason => $3)", {INT8OID, BOOLOID, TEXTOID},
                {p_int8(plan["deployment_id"].get<int64_t>()), p_bool(plan["force"].get<bool>()), p_text(reason)});
            attempt.outcome = r.front()[0];
        });
    });
    if (failure)
        attempt.raised = failure->to_json().dump();
    return attempt;
}

/*
 * refuse_if_not_eligible adds to the plan the refusal the rollback rule gives for the marker's deployment
 * (marker_refusal), to be recorded on the marker instead of reverting. Read after execute_rollback_begin took the
 * deploy lock and claimed the marker. A running rollback of that deployment (it waits for the steps of a down SQL)
 * is resumed without asking again: the rule was applied when it started. Another running revert makes the marker
 * wait (a retryable refusal).
 */
bool refuse_if_not_eligible(Json& plan) {
    int64_t deployment_id = plan["deployment_id"].get<int64_t>();
    if (std::optional<RunningDeployment> running = newest_running(true)) {
        if (running->kind == "rollback" && running->reverts == deployment_id)
            return false;
        plan["refusal"] = failure_from(running_refusal("deploy.execute_rollback()", *running)).to_json();
        plan["retryable"] = true;
        return true;
    }
    std::optional<RollbackFacts> facts = rollback_facts(deployment_id);
    if (!facts)
        throw DeployError(sqlstate::no_data_found, "deployment " + std::to_string(deployment_id) + " does not exist");
    std::optional<MarkerRefusal> refusal = marker_refusal(*facts, plan["force"].get<bool>());
    if (!refusal)
        return false;
    plan["refusal"] = refusal->failure;
    plan["retryable"] = refusal->retryable;
    return true;
}

/*
 * execute_rollback_impl: deploy.execute_rollback(marker_id, holder, force). The marker is checked, locked and
 * claimed by deploy.execute_rollback_begin and its outcome recorded by deploy.execute_rollback_end, both run as the
 * extension's owner (the caller cannot write markers); the revert between them runs as the caller.
 */
Datum execute_rollback_impl(FunctionCallInfo fcinfo) {
    std::optional<int64_t> marker_id = opt_int8_arg(fcinfo, 0);
    std::optional<std::string> holder = opt_text_arg(fcinfo, 1);
    std::optional<bool> force = opt_bool_arg(fcinfo, 2);
    Json result;
    {
        SpiSession spi;
        Rows begun = run_query("SELECT deploy.execute_rollback_begin($1, $2, $3)", {INT8OID, TEXTOID, BOOLOID},
                               {p_int8(marker_id), p_text(holder), force ? p_bool(*force) : p_null()});
        Json plan = jsonb_cell(begun.front()[0]);
        if (plan.contains("result")) {
            result = plan["result"];
        } else {
            Attempt attempt;
            if (!refuse_if_not_eligible(plan))
                attempt = revert_as_caller(plan);
            Rows ended = run_query("SELECT deploy.execute_rollback_end($1, $2, $3)", {JSONBOID, JSONBOID, JSONBOID},
                                   {p_jsonb(plan.dump()), p_jsonb(attempt.outcome), p_jsonb(attempt.raised)});
            result = jsonb_cell(ended.front()[0]);
        }
        spi.finish();
    }
    return json_result(result);
}

}  // namespace

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_execute_rollback, pgdeploy::execute_rollback_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_marker_is_open, pgdeploy::marker_is_open_impl)
