#include "watch/decision.hpp"

#include <algorithm>

namespace pgdeploy::watch {

using nlohmann::json;

const char* to_string(CheckStatus s) {
    switch (s) {
        case CheckStatus::ok:
            return "ok";
        case CheckStatus::warning:
            return "warning";
        case CheckStatus::critical:
            return "critical";
    }
    return "?";
}

const char* to_string(HealthState s) {
    switch (s) {
        case HealthState::ok:
            return "ok";
        case HealthState::warning:
            return "warning";
        case HealthState::failing:
            return "failing";
    }
    return "?";
}

const char* to_string(DecisionKind k) {
    switch (k) {
        case DecisionKind::none:
            return "none";
        case DecisionKind::rollback:
            return "rollback";
        case DecisionKind::would_rollback:
            return "would_rollback";
        case DecisionKind::freeze:
            return "freeze";
        case DecisionKind::suppressed:
            return "suppressed";
    }
    return "?";
}

// ---- CheckTracker ------------------------------------------------------------------------------------------------

Millis CheckTracker::bucket_width() const {
    return std::max<Millis>(1, cfg_->error_rate.window / 120);
}

namespace {

// floor_div: the bucket number of time t (floor, also for times before the clock's epoch).
std::int64_t floor_div(Millis t, Millis width) {
    return t / width - (t % width != 0 && t < 0 ? 1 : 0);
}

// ring_size: live buckets never span more than window/width + 2 bucket numbers (see prune); one more for safety.
std::size_t ring_size(Millis window, Millis width) {
    return static_cast<std::size_t>(std::max<Millis>(0, window) / width + 3);
}

}  // namespace

CheckTracker::Bucket& CheckTracker::bucket(std::int64_t k) const {
    auto n = static_cast<std::int64_t>(window_.size());
    return window_[static_cast<std::size_t>(((k % n) + n) % n)];
}

void CheckTracker::prune(Millis now) const {
    Millis width = bucket_width();
    while (oldest_ <= newest_ && oldest_ * width + width <= now - cfg_->error_rate.window)
        drop_oldest();
}

void CheckTracker::drop_oldest() const {
    Bucket& b = bucket(oldest_);
    window_total_ -= b.total;
    window_critical_ -= b.critical;
    b = Bucket{0, 0};
    ++oldest_;
}

/*
 * CheckTracker::add
 *
 * Counts samples into bucket k. Buckets older than the window have been pruned first (record) so that k fits in the
 * ring; a re-bucketing after the window changed may not, and then the oldest go.
 */
void CheckTracker::add(std::int64_t k, std::uint32_t total, std::uint32_t critical) const {
    if (window_.empty())
        window_.assign(ring_size(cfg_->error_rate.window, bucket_width()), Bucket{0, 0});
    auto n = static_cast<std::int64_t>(window_.size());
    if (newest_ < oldest_) {
        oldest_ = newest_ = k;
    } else if (k < oldest_) {
        k = oldest_;  // the clock went back: count it in the oldest bucket still in the window
    } else if (k > newest_) {
        while (oldest_ <= newest_ && k - oldest_ >= n)
            drop_oldest();
        if (oldest_ > newest_)
            oldest_ = k;
        newest_ = k;
    }
    Bucket& b = bucket(k);
    b.total += total;
    b.critical += critical;
    window_total_ += total;
    window_critical_ += critical;
}

void CheckTracker::reconfigure(std::shared_ptr<const CheckConfig> cfg) {
    if (window_.empty() || cfg->error_rate.window == cfg_->error_rate.window) {
        cfg_ = std::move(cfg);
        return;
    }
    // Another window means another bucket width: count what is in the window again, at the buckets' start times.
    Millis old_width = bucket_width();
    std::vector<std::pair<Millis, Bucket>> live;
    for (std::int64_t k = oldest_; k <= newest_; ++k)
        if (bucket(k).total > 0)
            live.emplace_back(k * old_width, bucket(k));
    cfg_ = std::move(cfg);
    window_.clear();
    oldest_ = 0;
    newest_ = -1;
    window_total_ = window_critical_ = 0;
    for (const auto& [start, b] : live)
        add(floor_div(start, bucket_width()), b.total, b.critical);
}

/*
 * CheckTracker::record
 *
 * Hysteresis is the point: a check that fails once in a while must neither page anyone nor roll a release back,
 * and a check that just recovered must prove it for success_threshold runs before the release counts as healthy.
 */
void CheckTracker::record(const CheckResult& r, Millis now, bool in_grace, bool frozen) {
    if (last_) {
        // Assign member by member: the strings keep their buffers from one result to the next.
        last_->name = r.name;
        last_->status = r.status;
        last_->latency_ms = r.latency_ms;
        last_->detail = r.detail;
    } else {
        last_ = r;
    }
    last_at_ = now;
    if (frozen && r.status != CheckStatus::ok) {
        ++freeze_ignored_;
        return;
    }
    if (in_grace && r.status != CheckStatus::ok) {
        ++grace_ignored_;
        return;
    }
    prune(now);
    add(floor_div(now, bucket_width()), 1, r.status == CheckStatus::critical ? 1 : 0);

    if (r.status == CheckStatus::ok) {
        ++consecutive_ok_;
        consecutive_nonok_ = 0;
        consecutive_critical_ = 0;
        if (state_ != HealthState::ok && consecutive_ok_ >= cfg_->success_threshold)
            state_ = HealthState::ok;
        return;
    }
    consecutive_ok_ = 0;
    ++consecutive_nonok_;
    if (r.status == CheckStatus::critical)
        ++consecutive_critical_;
    else
        consecutive_critical_ = 0;
    if (consecutive_critical_ >= cfg_->failure_threshold)
        state_ = HealthState::failing;
    else if (state_ == HealthState::ok && consecutive_nonok_ >= cfg_->warning_threshold)
        state_ = HealthState::warning;
}

void CheckTracker::reset() {
    state_ = HealthState::ok;
    consecutive_ok_ = consecutive_nonok_ = consecutive_critical_ = 0;
    grace_ignored_ = 0;
    freeze_ignored_ = 0;
    std::fill(window_.begin(), window_.end(), Bucket{0, 0});
    oldest_ = 0;
    newest_ = -1;
    window_total_ = window_critical_ = 0;
}

int CheckTracker::samples(Millis now) const {
    prune(now);
    return static_cast<int>(window_total_);
}

double CheckTracker::error_rate(Millis now) const {
    prune(now);
    if (window_total_ == 0)
        return 0.0;
    return static_cast<double>(window_critical_) / static_cast<double>(window_total_);
}

bool CheckTracker::error_rate_exceeded(Millis now) const {
    if (!cfg_->error_rate.enabled)
        return false;
    if (samples(now) < cfg_->error_rate.min_samples)
        return false;
    return error_rate(now) >= cfg_->error_rate.threshold;
}

json CheckTracker::to_json(Millis now) const {
    json j;
    to_json(now, j);
    return j;
}

namespace {

// set: assigns into the value that is there already, so that a string keeps its buffer (operator= would make a new
// string and free the old one).
void set(json& slot, const char* v) {
    if (slot.is_string())
        slot.get_ref<std::string&>() = v;
    else
        slot = v;
}
void set(json& slot, const std::string& v) {
    if (slot.is_string())
        slot.get_ref<std::string&>() = v;
    else
        slot = v;
}
template <typename T>
void set(json& slot, T v) {
    slot = v;
}

// Keys as std::string: json::operator[] with a C string would build a std::string key for each lookup.
const std::string kName = "name", kType = "type", kCritical = "critical", kDryRun = "dry_run", kState = "state",
                  kConsecutiveFailures = "consecutive_failures", kConsecutiveSuccesses = "consecutive_successes",
                  kSamples = "samples", kErrorRate = "error_rate", kErrorRateExceeded = "error_rate_exceeded",
                  kGraceIgnored = "grace_ignored", kLast = "last", kStatus = "status", kLatencyMs = "latency_ms",
                  kDetail = "detail", kAgeMs = "age_ms", kInGrace = "in_grace", kFreezeIgnored = "freeze_ignored";

}  // namespace

void CheckTracker::to_json(Millis now, json& j) const {
    if (!j.is_object())
        j = json::object();
    set(j[kName], cfg_->name);
    set(j[kType], to_string(cfg_->type));
    set(j[kCritical], cfg_->critical);
    set(j[kDryRun], cfg_->dry_run);
    set(j[kState], to_string(state_));
    set(j[kConsecutiveFailures], consecutive_critical_);
    set(j[kConsecutiveSuccesses], consecutive_ok_);
    set(j[kSamples], samples(now));
    set(j[kErrorRate], error_rate(now));
    set(j[kErrorRateExceeded], error_rate_exceeded(now));
    set(j[kGraceIgnored], grace_ignored_);
    set(j[kFreezeIgnored], freeze_ignored_);
    json& last = j[kLast];
    if (last_) {
        if (!last.is_object())
            last = json::object();
        set(last[kStatus], to_string(last_->status));
        set(last[kLatencyMs], last_->latency_ms);
        set(last[kDetail], last_->detail);
        set(last[kAgeMs], now - last_at_);
    } else {
        last = nullptr;
    }
}

// ---- Decision ----------------------------------------------------------------------------------------------------

json Decision::to_json() const {
    return {{"kind", to_string(kind)},
            {"reason", reason},
            {"message", message},
            {"deployment_id", deployment_id == 0 ? json(nullptr) : json(deployment_id)},
            {"triggering_checks", triggering_checks}};
}

// ---- DecisionEngine ----------------------------------------------------------------------------------------------

DecisionEngine::DecisionEngine(const WatchConfig& cfg) : DecisionEngine(std::make_shared<const WatchConfig>(cfg)) {}

DecisionEngine::DecisionEngine(std::shared_ptr<const WatchConfig> cfg) : cfg_(std::move(cfg)) {
    build_trackers({});
}

void DecisionEngine::reconfigure(const WatchConfig& cfg) {
    reconfigure(std::make_shared<const WatchConfig>(cfg));
}

void DecisionEngine::reconfigure(std::shared_ptr<const WatchConfig> cfg) {
    cfg_ = std::move(cfg);
    std::map<std::string, CheckTracker> old;
    old.swap(trackers_);
    build_trackers(std::move(old));
}

// build_trackers: one tracker per check of cfg_, each sharing its CheckConfig with cfg_ (no copy per check); the
// history of a check in `old` with the same name and type carries over.
void DecisionEngine::build_trackers(std::map<std::string, CheckTracker> old) {
    by_index_.clear();
    by_index_.reserve(cfg_->checks.size());
    for (const auto& c : cfg_->checks) {
        std::shared_ptr<const CheckConfig> shared(cfg_, &c);  // aliasing: shares cfg_'s ownership
        auto it = old.find(c.name);
        bool keep = it != old.end() && it->second.config().type == c.type;
        auto at = trackers_.emplace(c.name, keep ? std::move(it->second) : CheckTracker(shared)).first;
        if (keep)
            at->second.reconfigure(std::move(shared));
        by_index_.push_back(&at->second);
    }
}

/*
 * DecisionEngine::observe_deployment
 *
 * Health is judged per release: evidence gathered against the previous release (or before the current one finished
 * deploying) says nothing about the new one, so a change of deployment or of its state starts every check afresh.
 * Before forgetting, remember whether the outgoing release was failing: it must never become a rollback target.
 */
void DecisionEngine::observe_deployment(const DeploymentView& view, Millis now) {
    bool changed = view.id != view_.id || view.state != view_.state;
    if (changed && view_.id != 0) {
        for (const auto& [name, t] : trackers_)
            if (t.config().critical && t.state() == HealthState::failing && !view_.app_version.empty())
                failing_app_versions_.insert(view_.app_version);
    }
    if (view.last_rollback_at > last_rollback_at_)
        last_rollback_at_ = view.last_rollback_at;
    if (changed)
        for (auto& [name, t] : trackers_)
            t.reset();
    view_ = view;
}

bool DecisionEngine::in_grace(const std::string& check, Millis now) const {
    auto it = trackers_.find(check);
    return it != trackers_.end() && in_grace(it->second, now);
}

bool DecisionEngine::in_grace(const CheckTracker& t, Millis now) const {
    if (view_.id == 0 || view_.state != "succeeded")
        return false;
    return now < view_.finished_at + t.config().grace_period;
}

void DecisionEngine::set_frozen(bool frozen) {
    if (frozen_ && !frozen)
        for (auto& [name, t] : trackers_)
            t.reset();
    frozen_ = frozen;
}

void DecisionEngine::record(const CheckResult& r, Millis now) {
    auto it = trackers_.find(r.name);
    if (it == trackers_.end())
        return;
    it->second.record(r, now, in_grace(it->second, now), frozen_);
}

void DecisionEngine::record(std::size_t index, const CheckResult& r, Millis now) {
    CheckTracker& t = *by_index_.at(index);
    t.record(r, now, in_grace(t, now), frozen_);
}

/*
 * DecisionEngine::evaluate
 *
 * The rules, in order (docs/pgdeploy.md lists them for operators):
 *   1. no deployment, or it is not `succeeded` (running, failed, rolled back): nothing to decide;
 *   2. after the watch window: a release that was healthy long enough is not this watcher's to revert;
 *   3. no critical check failing and no critical error rate exceeded: healthy (non-critical checks only alert);
 *   4. never the same deployment twice (this watcher's memory, or any marker in the ledger);
 *   5. cooldown after the previous rollback;
 *   6. no release to go back to, or that release was itself failing: suppressed, alert;
 *   7. the release applied irreversible migrations: freeze and alert, never revert;
 *   8. dry run (global, or every triggering check is dry_run): record what would have been done;
 *   9. roll back.
 */
Decision DecisionEngine::evaluate(Millis now) {
    Decision d;
    d.deployment_id = view_.id;
    auto finish = [&](DecisionKind kind, std::string reason, std::string message) {
        d.kind = kind;
        d.reason = std::move(reason);
        d.message = std::move(message);
        std::string key = std::string(to_string(kind)) + "/" + d.reason + "/" + std::to_string(d.deployment_id);
        d.fresh = key != last_key_;
        last_key_ = key;
        return d;
    };

    if (frozen_)
        return finish(DecisionKind::none, "database_frozen",
                      "no writable primary: decisions are frozen until the database is back");
    if (view_.id == 0)
        return finish(DecisionKind::none, "no_deployment", "no deployment in the ledger");
    if (view_.state != "succeeded")
        return finish(DecisionKind::none, "deployment_" + view_.state,
                      "deployment " + std::to_string(view_.id) + " is " + view_.state);
    if (now > view_.finished_at + cfg_->decision.watch_window)
        return finish(DecisionKind::none, "outside_window",
                      "deployment " + std::to_string(view_.id) + " finished more than " +
                          format_duration(cfg_->decision.watch_window) + " ago");

    bool all_dry = true;
    for (const auto& [name, t] : trackers_) {
        if (!t.config().critical)
            continue;
        if (t.state() == HealthState::failing || t.error_rate_exceeded(now)) {
            d.triggering_checks.push_back(name);
            if (!t.config().dry_run)
                all_dry = false;
        }
    }
    if (d.triggering_checks.empty())
        return finish(DecisionKind::none, "healthy", "critical checks are healthy");

    std::string checks;
    for (const auto& n : d.triggering_checks)
        checks += (checks.empty() ? "" : ", ") + n;
    std::string dep = "deployment " + std::to_string(view_.id) + " (" +
                      (view_.app_version.empty() ? "no app version" : "app " + view_.app_version) + ")";

    if (handled_.count(view_.id) || view_.has_marker)
        return finish(DecisionKind::suppressed, "already_handled",
                      dep + " is unhealthy (" + checks + ") but was already rolled back or handled once");
    if (last_rollback_at_ != 0 && now < last_rollback_at_ + cfg_->decision.cooldown)
        return finish(DecisionKind::suppressed, "cooldown",
                      dep + " is unhealthy (" + checks + ") but the previous rollback was less than " +
                          format_duration(cfg_->decision.cooldown) + " ago");
    if (!view_.target)
        return finish(DecisionKind::suppressed, "no_target",
                      dep + " is unhealthy (" + checks + ") but there is no earlier good release to return to");
    if (view_.target->failing ||
        (!view_.target->app_version.empty() && failing_app_versions_.count(view_.target->app_version)))
        return finish(DecisionKind::suppressed, "target_failing",
                      dep + " is unhealthy (" + checks + ") but the release before it (deployment " +
                          std::to_string(view_.target->deployment_id) + ") was itself failing");
    if (!view_.irreversible_versions.empty()) {
        std::string vs;
        for (const auto& v : view_.irreversible_versions)
            vs += (vs.empty() ? "" : ", ") + v;
        return finish(DecisionKind::freeze, "irreversible",
                      dep + " is unhealthy (" + checks + ") but applied irreversible migrations (" + vs +
                          "): frozen, a person must decide");
    }
    if (cfg_->decision.dry_run || all_dry)
        return finish(DecisionKind::would_rollback, "dry_run",
                      dep + " is unhealthy (" + checks + "): would roll back (dry run)");
    return finish(DecisionKind::rollback, "unhealthy", dep + " is unhealthy (" + checks + "): rolling back");
}

void DecisionEngine::commit(const Decision& d, Millis now) {
    if (d.deployment_id == 0)
        return;
    if (d.kind == DecisionKind::rollback || d.kind == DecisionKind::freeze || d.kind == DecisionKind::would_rollback)
        handled_.insert(d.deployment_id);
    if (d.kind == DecisionKind::rollback) {
        last_rollback_at_ = now;
        if (!view_.app_version.empty())
            failing_app_versions_.insert(view_.app_version);
    }
}

bool DecisionEngine::all_critical_healthy() const {
    for (const auto& [name, t] : trackers_) {
        if (!t.config().critical)
            continue;
        if (t.state() != HealthState::ok)
            return false;
        if (t.consecutive_successes() < t.config().success_threshold)
            return false;
    }
    return true;
}

json DecisionEngine::to_json(Millis now) const {
    json checks = json::array();
    for (const auto& [name, t] : trackers_) {
        json j = t.to_json(now);
        j[kInGrace] = in_grace(t, now);
        checks.push_back(std::move(j));
    }
    json j = summary_json(now);
    j["checks"] = std::move(checks);
    return j;
}

json DecisionEngine::summary_json(Millis now) const {
    json dep = nullptr;
    if (view_.id != 0) {
        dep = {{"id", view_.id},
               {"state", view_.state},
               {"app_version", view_.app_version},
               {"version_before", view_.version_before},
               {"version_after", view_.version_after},
               {"age_ms", now - view_.finished_at},
               {"in_watch_window", now <= view_.finished_at + cfg_->decision.watch_window},
               {"irreversible_versions", view_.irreversible_versions},
               {"has_marker", view_.has_marker}};
        if (view_.target)
            dep["target"] = {{"deployment_id", view_.target->deployment_id},
                             {"app_version", view_.target->app_version},
                             {"schema_version", view_.target->schema_version},
                             {"failing", view_.target->failing}};
        else
            dep["target"] = nullptr;
    }
    Millis cooldown_left = 0;
    if (last_rollback_at_ != 0 && now < last_rollback_at_ + cfg_->decision.cooldown)
        cooldown_left = last_rollback_at_ + cfg_->decision.cooldown - now;
    return {{"deployment", std::move(dep)},
            {"cooldown_remaining_ms", cooldown_left},
            {"handled_deployments", std::vector<std::int64_t>(handled_.begin(), handled_.end())}};
}

/*
 * DecisionEngine::checks_json
 *
 * The same text as the "checks" member of to_json() in a document dumped with indent 2, written one check at a time
 * into one reused object: at thousands of checks the whole tree cost megabytes at its peak and most of the watcher's
 * own CPU, every second.
 */
void DecisionEngine::checks_json(Millis now, std::string& out, const std::function<void(std::string&)>& flush) const {
    if (trackers_.empty()) {
        out += "[]";
        return;
    }
    json j = json::object();
    std::string one;
    out += "[\n";
    bool first = true;
    for (const auto& [name, t] : trackers_) {
        t.to_json(now, j);
        set(j[kInGrace], in_grace(t, now));
        one = j.dump(2, ' ', false, json::error_handler_t::replace);
        if (!first)
            out += ",\n";
        first = false;
        // Nested two levels deep (the document, then the array): every line of the object moves right by 4. A
        // newline inside a string is escaped in JSON, so every '\n' of the dump is a line break.
        out += "    ";
        std::size_t from = 0;
        for (std::size_t nl = one.find('\n'); nl != std::string::npos; nl = one.find('\n', from)) {
            out.append(one, from, nl + 1 - from);
            out += "    ";
            from = nl + 1;
        }
        out.append(one, from, std::string::npos);
        if (flush && out.size() > 64 * 1024)
            flush(out);
    }
    out += "\n  ]";
}

}  // namespace pgdeploy::watch
