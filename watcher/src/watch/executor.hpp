// Performing a rollback marker: the app hook and the database revert in the configured order, every step an event,
// safe to repeat after a crash (docs/pgdeploy.md, "The rollback procedure").
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "watch/config.hpp"
#include "watch/ledger.hpp"

namespace pgdeploy::watch {

// Backoff before retrying a marker after `attempts` failed attempts: retry_backoff doubling, capped.
Millis retry_delay(const RollbackConfig& rb, int attempts);

// Markers ready to be claimed by `holder` now; honour_backoff skips failed ones whose retry delay has not passed.
std::vector<ClaimableMarker> list_claimable(common::Connection& conn, const std::string& holder,
                                            const RollbackConfig& rb, bool honour_backoff);

// The PGDEPLOY_* variables the app hook gets (docs/pgdeploy.md, "The hook's environment"); child_environment()
// (watch/hook_env.hpp) adds the rest.
std::map<std::string, std::string> hook_variables(const MarkerInfo& m, int attempt, const std::string& watcher_id);

// send_alert: the watcher needs a person. Always a critical log line; with alert.command configured, the command
// runs (argv, no shell, alert.timeout) with PGDEPLOY_ALERT_KIND (frozen, not_rolled_back, needs_attention,
// unrecovered), PGDEPLOY_ALERT_MESSAGE, PGDEPLOY_DEPLOYMENT_ID, PGDEPLOY_MARKER_ID and PGDEPLOY_WATCHER_ID, in the
// environment of child_environment().
// Returns false when the alert command failed (logged; an alert never stops the watcher).
bool send_alert(const WatchConfig& cfg, const std::string& kind, const std::string& message, std::int64_t deployment_id,
                std::int64_t marker_id, const std::function<bool()>& tick = {});

// How performing one marker ended ("result" in the JSON of `pgdeploy once` and in the metrics).
enum class ExecResult { done, failed, needs_attention, interrupted, not_claimed };
const char* to_string(ExecResult r);
// The outcome of a failed attempt, from the marker's state after it: needs_attention, or failed (retried).
ExecResult result_after_failure(MarkerState s);

struct ExecOutcome {
    std::int64_t marker_id = 0;
    std::int64_t deployment_id = 0;
    ExecResult result = ExecResult::not_claimed;
    std::string error;
    int hook_attempt = 0;
    bool hook_ran = false;
    nlohmann::json rollback;                         // execute_rollback's result
    nlohmann::json steps = nlohmann::json::array();  // the non-transactional steps of down SQL it ran
    nlohmann::json to_json() const;
};

class RollbackExecutor {
public:
    // tick: called about every 100 ms while the hook runs (watchdog, stop request); false interrupts the hook.
    RollbackExecutor(const WatchConfig& cfg, common::Connection& conn, std::function<bool()> tick)
        : cfg_(cfg), conn_(conn), ledger_(conn), tick_(std::move(tick)) {}

    // claim_and_execute: claims marker_id for cfg.watcher_id (renewing an own lease) and performs it.
    ExecOutcome claim_and_execute(std::int64_t marker_id);

private:
    ExecOutcome execute_claimed(std::int64_t marker_id);
    bool run_hook(const MarkerInfo& m, ExecOutcome& out);
    bool revert_database(const MarkerInfo& m, ExecOutcome& out);

    const WatchConfig& cfg_;
    common::Connection& conn_;
    Ledger ledger_;
    std::function<bool()> tick_;
};

}  // namespace pgdeploy::watch
