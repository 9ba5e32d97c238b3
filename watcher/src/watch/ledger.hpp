// The watcher's view of the ledger and its writes to it, all through the extension's functions (docs/architecture.md)
// on one session connection: that connection also LISTENs on pg_deploy and holds the leadership lock.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/connection.hpp"
#include "watch/decision.hpp"

namespace pgdeploy::watch {

// Leadership among watchers: session advisory lock (1346651472, 2) held by the leader's connection.
inline constexpr int kLockClass = 1346651472;
inline constexpr int kLeaderLockKey = 2;

// What the app hook and the events need to know about one marker.
struct MarkerInfo {
    std::int64_t id = 0;
    std::int64_t deployment_id = 0;
    std::string state;
    std::string holder;
    int attempts = 0;
    std::string reason;
    std::string from_app_version;
    std::string to_app_version;
    std::string from_schema_version;
    std::string to_schema_version;
    int hook_runs = 0;       // watcher_hook_started events so far
    bool hook_done = false;  // a watcher_hook_done event exists: the app side is already back
};

class Ledger {
public:
    explicit Ledger(common::Connection& conn) : conn_(conn) {}

    // read_view: the newest up deployment and what the rules need; now is the watcher's clock, ages come from the
    // server so that clock skew between hosts does not move the watch window.
    DeploymentView read_view(Millis now);

    bool try_lead();
    void listen();
    // drain_notifications: consumes input, returns how many pg_deploy notifications arrived (0 when none).
    int drain_notifications();

    std::int64_t request_rollback(const std::string& reason, std::int64_t deployment_id, const nlohmann::json& details);
    // claim: one marker (marker_id > 0: that one, renewing our own lease), or the next claimable. nullopt: none.
    std::optional<std::int64_t> claim(const std::string& holder, Millis lease, std::int64_t marker_id = 0);
    // Markers this holder still holds (after a restart with the same watcher_id).
    std::vector<std::int64_t> own_in_progress(const std::string& holder);
    void renew_lease(std::int64_t marker_id, const std::string& holder, Millis lease);
    MarkerInfo marker_info(std::int64_t marker_id);
    nlohmann::json execute_rollback(std::int64_t marker_id, const std::string& holder, bool force);
    // fail_attempt: the app hook failed: keep the marker (failed, claimable again) or needs_attention after the
    // last attempt. Returns the marker's new state.
    std::string fail_attempt(std::int64_t marker_id, const std::string& holder, const nlohmann::json& failure);
    // log_event: deploy.log_event with the details scrubbed and cut to fit (common/limits.hpp). private_details
    // (not null: a hook's output) is what only administrators may read: deploy.events.private_details.
    std::int64_t log_event(const std::string& kind, std::int64_t deployment_id, std::int64_t marker_id,
                           const nlohmann::json& details, const nlohmann::json& private_details = nullptr);
    int pending_migrations();

private:
    common::Connection& conn_;
};

}  // namespace pgdeploy::watch
