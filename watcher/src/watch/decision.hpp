// The decision engine: pure code that turns check results and the ledger's view of the current deployment into
// "roll back", "freeze", or "do nothing (and why)". Time is always an argument (milliseconds on one clock), so the
// rules are tested without sleeping (tests/unit/test_watch_decision.cpp). The rules are listed in docs/pgdeploy.md.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "watch/config.hpp"

namespace pgdeploy::watch {

// The outcome of one run of one check.
enum class CheckStatus { ok, warning, critical };
const char* to_string(CheckStatus s);

// The state a check is in after hysteresis.
enum class HealthState { ok, warning, failing };
const char* to_string(HealthState s);

struct CheckResult {
    std::string name;
    CheckStatus status = CheckStatus::ok;
    double latency_ms = 0;
    std::string detail;  // short, scrubbed: "HTTP 503", "connection refused", "exit 2: ..."
};

/*
 * CheckTracker: one check's state machine.
 *   ok      -> warning  after warning_threshold consecutive non-ok results (warning or critical)
 *   any     -> failing  after failure_threshold consecutive critical results
 *   warning/failing -> ok only after success_threshold consecutive ok results (hysteresis)
 * A warning result (command exit 1) never makes a check failing, and breaks a run of critical results.
 * Failures inside the grace period after a deployment are ignored (counted apart); successes count.
 * The error rate is critical results / all results in the sliding window; it means nothing below min_samples.
 * Failures while the watcher is frozen (no writable primary: watch/freeze.hpp) are held out the same way (counted in
 * freeze_ignored): a failover must not leave a check failing when the primary is back.
 */
class CheckTracker {
public:
    explicit CheckTracker(CheckConfig cfg) : cfg_(std::make_shared<const CheckConfig>(std::move(cfg))) {}
    // Shares the configuration (the engine points every tracker into its one copy of the watcher's configuration).
    explicit CheckTracker(std::shared_ptr<const CheckConfig> cfg) : cfg_(std::move(cfg)) {}

    // held_out: a failure (warning or critical) is counted apart and changes nothing else; true inside the grace
    // period (grace_ignored) or during a freeze (freeze_ignored, with frozen).
    void record(const CheckResult& r, Millis now, bool in_grace, bool frozen = false);
    void reset();
    void reconfigure(const CheckConfig& cfg) { reconfigure(std::make_shared<const CheckConfig>(cfg)); }
    void reconfigure(std::shared_ptr<const CheckConfig> cfg);

    HealthState state() const { return state_; }
    bool error_rate_exceeded(Millis now) const;
    double error_rate(Millis now) const;
    int samples(Millis now) const;
    int consecutive_failures() const { return consecutive_critical_; }
    int consecutive_successes() const { return consecutive_ok_; }
    const CheckConfig& config() const { return *cfg_; }
    const std::optional<CheckResult>& last() const { return last_; }
    Millis last_at() const { return last_at_; }
    long grace_ignored() const { return grace_ignored_; }
    long freeze_ignored() const { return freeze_ignored_; }
    nlohmann::json to_json(Millis now) const;
    // to_json into an object made by an earlier call: the same keys, so no allocation but for longer strings (the
    // status document of thousands of checks is written every second).
    void to_json(Millis now, nlohmann::json& j) const;

private:
    void prune(Millis now) const;
    void drop_oldest() const;
    void add(std::int64_t k, std::uint32_t total, std::uint32_t critical) const;

    std::shared_ptr<const CheckConfig> cfg_;
    HealthState state_ = HealthState::ok;
    int consecutive_ok_ = 0;
    int consecutive_nonok_ = 0;
    int consecutive_critical_ = 0;
    long grace_ignored_ = 0;
    long freeze_ignored_ = 0;
    std::optional<CheckResult> last_;
    Millis last_at_ = 0;
    // The error-rate window, in buckets of window/120 so that memory stays bounded (about 1 KB per check, allocated
    // at the first result) whatever the interval: a sample leaves the window up to one bucket (0.8 % of the window)
    // late. A ring indexed by bucket number (time / width): buckets [oldest_, newest_] are live, the rest are zero.
    struct Bucket {
        std::uint32_t total;
        std::uint32_t critical;
    };
    Millis bucket_width() const;
    Bucket& bucket(std::int64_t k) const;
    mutable std::vector<Bucket> window_;
    mutable std::int64_t oldest_ = 0;
    mutable std::int64_t newest_ = -1;  // < oldest_: the window is empty
    mutable long window_total_ = 0;
    mutable long window_critical_ = 0;
};

// The release a rollback would return to: the newest succeeded deployment before the current one.
struct TargetInfo {
    std::int64_t deployment_id = 0;
    std::string app_version;
    std::string schema_version;
    bool failing = false;  // the ledger shows it was itself unhealthy or rolled back for health
};

// What the ledger says about the newest `up` deployment.
struct DeploymentView {
    std::int64_t id = 0;  // 0: no deployment yet
    std::string state;    // running | succeeded | failed | rolled_back
    std::string app_version;
    std::string version_before;
    std::string version_after;
    Millis finished_at = 0;  // on the watcher's clock (computed from the server's age)
    std::vector<std::string> irreversible_versions;
    bool has_marker = false;  // a rollback marker exists for it (any state), or a watcher already decided to roll
                              // it back, freeze it or record a dry run about it (a watcher_decision event)
    std::optional<TargetInfo> target;
    Millis last_rollback_at = 0;  // newest rollback marker request, for cooldown across restarts
};

enum class DecisionKind { none, rollback, would_rollback, freeze, suppressed };
const char* to_string(DecisionKind k);

struct Decision {
    DecisionKind kind = DecisionKind::none;
    std::string reason;   // machine word: healthy, outside_window, cooldown, ...
    std::string message;  // for people
    std::int64_t deployment_id = 0;
    std::vector<std::string> triggering_checks;
    bool fresh = false;  // differs from the previous evaluation: log it / record the event
    nlohmann::json to_json() const;
};

class DecisionEngine {
public:
    explicit DecisionEngine(const WatchConfig& cfg);
    // Shares the caller's configuration rather than copying it (thousands of checks: megabytes per copy).
    explicit DecisionEngine(std::shared_ptr<const WatchConfig> cfg);

    // reconfigure keeps the history of checks whose name survives a reload.
    void reconfigure(const WatchConfig& cfg);
    void reconfigure(std::shared_ptr<const WatchConfig> cfg);

    // observe_deployment: a new deployment (or a change of its state) starts fresh evidence for every check.
    void observe_deployment(const DeploymentView& view, Millis now);

    void record(const CheckResult& r, Millis now);
    // record the result of the configuration's checks[index] (the daemon's loop: no lookup by name).
    void record(std::size_t index, const CheckResult& r, Millis now);
    // set_frozen: the watcher cannot reach a writable primary (watch/freeze.hpp). While frozen, failures of every
    // check are held out of the evidence (an app's own health endpoint fails too while its database fails over) and
    // evaluate() decides nothing ("database_frozen"). The end of a freeze starts fresh evidence for every check, as a
    // new deployment does: failures seen in the moments before the loss was noticed belong to the outage too.
    void set_frozen(bool frozen);
    bool frozen() const { return frozen_; }
    Decision evaluate(Millis now);

    // commit: the caller acted on (or recorded) a rollback/freeze/would_rollback decision: never again for this
    // deployment, and start the cooldown when it was a rollback.
    void commit(const Decision& d, Millis now);

    // all_critical_healthy: every critical check is ok with at least success_threshold consecutive successes. Used
    // to verify that health recovered after a rollback.
    bool all_critical_healthy() const;

    const DeploymentView& deployment() const { return view_; }
    const std::map<std::string, CheckTracker>& trackers() const { return trackers_; }
    // The tracker of the configuration's checks[index].
    const CheckTracker& tracker(std::size_t index) const { return *by_index_[index]; }
    bool in_grace(const std::string& check, Millis now) const;
    bool in_grace(const CheckTracker& t, Millis now) const;
    nlohmann::json to_json(Millis now) const;
    // summary_json: to_json without "checks" (deployment, cooldown_remaining_ms, handled_deployments).
    nlohmann::json summary_json(Millis now) const;
    // checks_json: the "checks" array of to_json, appended to out as text indented for the watcher's status document
    // (dump(2) of an array that is the value of a top-level key), one check at a time so that thousands of checks
    // never make one big JSON tree.
    // With flush, out is handed to it whenever it holds more than 64 KB (flush writes it somewhere and clears it).
    void checks_json(Millis now, std::string& out, const std::function<void(std::string&)>& flush = {}) const;

private:
    void build_trackers(std::map<std::string, CheckTracker> old);

    std::shared_ptr<const WatchConfig> cfg_;
    DeploymentView view_;
    std::map<std::string, CheckTracker> trackers_;
    std::vector<CheckTracker*> by_index_;         // trackers_ in the order of cfg_->checks
    std::set<std::int64_t> handled_;              // deployments rolled back / frozen / dry-run recorded
    std::set<std::string> failing_app_versions_;  // releases this watcher saw fail
    Millis last_rollback_at_ = 0;
    bool frozen_ = false;
    std::string last_key_;  // kind/reason/deployment of the previous evaluation
};

}  // namespace pgdeploy::watch
