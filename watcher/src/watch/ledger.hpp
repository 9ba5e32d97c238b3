// The watcher's view of the ledger and its writes to it, all through the extension's functions (the watcher's API,
// extension/sql/80_watcher_api.sql; docs/sql-reference.md), never a deploy.* table, so the ledger's layout can change
// under a deployed watcher. Nothing here relies on the session outliving a transaction (a transaction pooler such as
// PgBouncer hands each transaction to any server connection): leadership is a lease row renewed every poll, and
// LISTEN pg_deploy is opt-in (database.listen).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/connection.hpp"
#include "watch/decision.hpp"

namespace pgdeploy::watch {

// A rollback marker's state (deploy.rollback_markers.state; docs/sql-reference.md, "Markers"). unknown: a state this
// pgdeploy does not know (a newer extension); never claimable by it.
enum class MarkerState { pending, in_progress, done, failed, needs_attention, unknown };
const char* to_string(MarkerState s);
MarkerState marker_state_from(const std::string& s);

// What the app hook and the events need to know about one marker (deploy.marker_context).
struct MarkerInfo {
    std::int64_t id = 0;
    std::int64_t deployment_id = 0;
    int attempts = 0;
    std::string reason;
    std::string from_app_version;
    std::string to_app_version;
    std::string from_schema_version;
    std::string to_schema_version;
    int hook_runs = 0;       // watcher_hook_started events so far
    bool hook_done = false;  // a watcher_hook_done event exists: the app side is already back
};

// A marker that could be claimed now (deploy.claimable_markers).
struct ClaimableMarker {
    std::int64_t id = 0;
    MarkerState state = MarkerState::unknown;
    int attempts = 0;
    Millis age_ms = 0;  // since its last update
    bool own = false;   // in_progress and held by us (a restart with the same watcher_id)
};

class Ledger {
public:
    explicit Ledger(common::Connection& conn) : conn_(conn) {}

    // read_view: the newest up deployment and what the rules need; now is the watcher's clock, ages come from the
    // server so that clock skew between hosts does not move the watch window.
    DeploymentView read_view(Millis now);

    // try_lead: deploy.try_watcher_leadership(holder, ttl): takes the leadership lease when it is free or expired,
    // renews it when holder leads already; false while another watcher holds a live lease.
    bool try_lead(const std::string& holder, Millis ttl);
    // release_lead: deploy.release_watcher_leadership(holder); another watcher may lead at its next poll.
    bool release_lead(const std::string& holder);
    void listen();
    // drain_notifications: consumes input, returns how many pg_deploy notifications arrived (0 when none).
    int drain_notifications();

    std::int64_t request_rollback(const std::string& reason, std::int64_t deployment_id, const nlohmann::json& details);
    // claim: one marker (marker_id > 0: that one, renewing our own lease), or the next claimable. nullopt: none.
    std::optional<std::int64_t> claim(const std::string& holder, Millis lease, std::int64_t marker_id = 0);
    // Markers this holder still holds (after a restart with the same watcher_id).
    std::vector<std::int64_t> own_in_progress(const std::string& holder);
    // claimable: the markers holder could claim now, oldest first (the caller applies its retry backoff).
    std::vector<ClaimableMarker> claimable(const std::string& holder);
    void renew_lease(std::int64_t marker_id, const std::string& holder, Millis lease);
    MarkerInfo marker_info(std::int64_t marker_id);
    // fail_attempt: the app hook failed: keep the marker (failed, claimable again) or needs_attention after the
    // last attempt. Returns the marker's new state.
    MarkerState fail_attempt(std::int64_t marker_id, const std::string& holder, const nlohmann::json& failure);
    // log_event: deploy.log_event with the details scrubbed and cut to fit (common/limits.hpp). private_details
    // (not null: a hook's output) is what only administrators may read: deploy.events.private_details.
    std::int64_t log_event(const std::string& kind, std::int64_t deployment_id, std::int64_t marker_id,
                           const nlohmann::json& details, const nlohmann::json& private_details = nullptr);
    // pending_migrations: registered migrations not applied (deploy.pending_count()).
    int pending_migrations();

private:
    common::Connection& conn_;
};

}  // namespace pgdeploy::watch
