// pg_deploy: may a deployment be rolled back? The one implementation of the rule. deploy.rollback() refuses with it,
// deploy.rollback_eligibility() answers with it and deploy.execute_rollback() refuses a marker with it. Pure C++ (no
// postgres.h): pg/eligibility.cpp reads the facts from the ledger, these functions decide, and the unit tests
// (tests/unit/test_extension_rollback_rules.cpp) run them without a server.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pg_deploy/errors.hpp"

namespace pgdeploy {

using Json = nlohmann::ordered_json;

// RollbackFacts is what the ledger says about one deployment, read in one statement after the deploy lock
// (rollback_facts() in pg/eligibility.cpp). The window is judged there, on clock_timestamp(): the moment of the
// decision, on the clock that stamped finished_at, whatever the transaction waited for before.
struct RollbackFacts {
    int64_t deployment_id = 0;
    std::string kind, state;  // deployments.kind and .state
    std::optional<int64_t> rolled_back_by;
    int64_t applied = 0;                    // its migrations still applied
    std::vector<std::string> irreversible;  // ... of them without down SQL, in version order
    std::vector<std::string> lossy;         // ... of them with reversibility lossy (their revert archives data)
    std::vector<int64_t> later;             // later deployments that still have migrations applied
    bool outside_window = false;            // it finished (or started, if it never finished) longer ago than the window
    double age_s = 0;                       // how long ago that was
    std::string ended_at;                   // when that was, for messages
    std::string window;                     // pg_deploy.rollback_window as SHOW prints it ("7d")
    double window_s = 0;
    // Shown by deploy.rollback_eligibility() only.
    std::optional<std::string> app_version, version_before, version_after;
    Json window_ends_at;  // JSON timestamp (as jsonb writes a timestamptz)
};

/*
 * Reason is one obstacle to rolling a deployment back, as deploy.rollback_eligibility() lists it. `forceable` says
 * whether force => true lets deploy.execute_rollback() go ahead anyway. deploy.rollback() refuses on the same facts
 * (rollback_refusal); the one difference is still_running, which an operator's deploy.rollback(force => true) may
 * override (it abandons the remaining steps) but a marker may not (automation never abandons a deploy in progress).
 *
 *   code                   forceable  deploy.rollback() without force / with force
 *   not_an_up_deployment   no         22023 / 22023
 *   already_rolled_back    no         55000 / 55000
 *   still_running          no         55000 / goes ahead
 *   nothing_applied        no         nothing to revert: recorded as rolled back (executing a rollback twice is a
 * no-op) later_deployments      no         55000 / 55000 irreversible           yes        PD002 / goes ahead
 * (irreversible_refusal, shared with deploy.down()) outside_window         yes        PD006 / goes ahead
 */
struct Reason {
    std::string code;
    bool forceable = false;
    std::string message;
};

// rollback_reasons lists why the deployment may not be rolled back now (empty: it may), in the documented order.
std::vector<Reason> rollback_reasons(const RollbackFacts& f);

// eligibility_document is deploy.rollback_eligibility(id)'s answer (docs/sql-reference.md).
Json eligibility_document(const RollbackFacts& f);
// no_candidate_document is its answer when no deployment may be the default target (reason nothing_to_roll_back).
Json no_candidate_document(const std::string& window);

// rollback_refusal is the error deploy.rollback(force) raises before it reverts anything, or nothing when it may go
// on (irreversible migrations are refused later, by irreversible_refusal, since deploy.down() refuses them too).
std::optional<DeployError> rollback_refusal(const RollbackFacts& f, bool force);

// irreversible_refusal refuses to revert migrations that have no down SQL (PD002), unless forced. `described` names
// each one as "version (name)".
std::optional<DeployError> irreversible_refusal(const std::vector<std::string>& described, bool force);

// MarkerRefusal is why deploy.execute_rollback() does not revert a marker's deployment: the failure recorded on the
// marker ({"sqlstate", "message", "reasons"}) and whether another attempt could succeed.
struct MarkerRefusal {
    Json failure;
    bool retryable = false;
};
std::optional<MarkerRefusal> marker_refusal(const RollbackFacts& f, bool force);

// human_age formats seconds for messages: "8.0 days", "3.5 hours", "12 minutes", "40 seconds".
std::string human_age(double seconds);

}  // namespace pgdeploy
