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
    return std::max<Millis>(1, cfg_.error_rate.window / 120);
}

void CheckTracker::prune(Millis now) const {
    Millis width = bucket_width();
    while (!window_.empty() && window_.front().start + width <= now - cfg_.error_rate.window) {
        window_total_ -= window_.front().total;
        window_critical_ -= window_.front().critical;
        window_.pop_front();
    }
}

/*
 * CheckTracker::record
 *
 * Hysteresis is the point: a check that fails once in a while must neither page anyone nor roll a release back,
 * and a check that just recovered must prove it for success_threshold runs before the release counts as healthy.
 */
void CheckTracker::record(const CheckResult& r, Millis now, bool in_grace) {
    last_ = r;
    last_at_ = now;
    if (in_grace && r.status != CheckStatus::ok) {
        ++grace_ignored_;
        return;
    }
    Millis width = bucket_width();
    Millis slot = now - ((now % width) + width) % width;
    if (window_.empty() || window_.back().start != slot)
        window_.push_back(Bucket{slot, 0, 0});
    int critical = r.status == CheckStatus::critical ? 1 : 0;
    window_.back().total += 1;
    window_.back().critical += critical;
    window_total_ += 1;
    window_critical_ += critical;
    prune(now);

    if (r.status == CheckStatus::ok) {
        ++consecutive_ok_;
        consecutive_nonok_ = 0;
        consecutive_critical_ = 0;
        if (state_ != HealthState::ok && consecutive_ok_ >= cfg_.success_threshold)
            state_ = HealthState::ok;
        return;
    }
    consecutive_ok_ = 0;
    ++consecutive_nonok_;
    if (r.status == CheckStatus::critical)
        ++consecutive_critical_;
    else
        consecutive_critical_ = 0;
    if (consecutive_critical_ >= cfg_.failure_threshold)
        state_ = HealthState::failing;
    else if (state_ == HealthState::ok && consecutive_nonok_ >= cfg_.warning_threshold)
        state_ = HealthState::warning;
}

void CheckTracker::reset() {
    state_ = HealthState::ok;
    consecutive_ok_ = consecutive_nonok_ = consecutive_critical_ = 0;
    grace_ignored_ = 0;
    window_.clear();
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
    if (!cfg_.error_rate.enabled)
        return false;
    if (samples(now) < cfg_.error_rate.min_samples)
        return false;
    return error_rate(now) >= cfg_.error_rate.threshold;
}

json CheckTracker::to_json(Millis now) const {
    json j = {{"name", cfg_.name},
              {"type", to_string(cfg_.type)},
              {"critical", cfg_.critical},
              {"dry_run", cfg_.dry_run},
              {"state", to_string(state_)},
              {"consecutive_failures", consecutive_critical_},
              {"consecutive_successes", consecutive_ok_},
              {"samples", samples(now)},
              {"error_rate", error_rate(now)},
              {"error_rate_exceeded", error_rate_exceeded(now)},
              {"grace_ignored", grace_ignored_}};
    if (last_) {
        j["last"] = {{"status", to_string(last_->status)},
                     {"latency_ms", last_->latency_ms},
                     {"detail", last_->detail},
                     {"age_ms", now - last_at_}};
    } else {
        j["last"] = nullptr;
    }
    return j;
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

DecisionEngine::DecisionEngine(const WatchConfig& cfg) : cfg_(cfg) {
    for (const auto& c : cfg_.checks)
        trackers_.emplace(c.name, CheckTracker(c));
}

void DecisionEngine::reconfigure(const WatchConfig& cfg) {
    std::map<std::string, CheckTracker> next;
    for (const auto& c : cfg.checks) {
        auto it = trackers_.find(c.name);
        if (it != trackers_.end() && it->second.config().type == c.type) {
            it->second.reconfigure(c);
            next.emplace(c.name, std::move(it->second));
        } else {
            next.emplace(c.name, CheckTracker(c));
        }
    }
    trackers_ = std::move(next);
    cfg_ = cfg;
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
    if (it == trackers_.end() || view_.id == 0 || view_.state != "succeeded")
        return false;
    return now < view_.finished_at + it->second.config().grace_period;
}

void DecisionEngine::record(const CheckResult& r, Millis now) {
    auto it = trackers_.find(r.name);
    if (it == trackers_.end())
        return;
    it->second.record(r, now, in_grace(r.name, now));
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

    if (view_.id == 0)
        return finish(DecisionKind::none, "no_deployment", "no deployment in the ledger");
    if (view_.state != "succeeded")
        return finish(DecisionKind::none, "deployment_" + view_.state,
                      "deployment " + std::to_string(view_.id) + " is " + view_.state);
    if (now > view_.finished_at + cfg_.decision.watch_window)
        return finish(DecisionKind::none, "outside_window",
                      "deployment " + std::to_string(view_.id) + " finished more than " +
                          format_duration(cfg_.decision.watch_window) + " ago");

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
    if (last_rollback_at_ != 0 && now < last_rollback_at_ + cfg_.decision.cooldown)
        return finish(DecisionKind::suppressed, "cooldown",
                      dep + " is unhealthy (" + checks + ") but the previous rollback was less than " +
                          format_duration(cfg_.decision.cooldown) + " ago");
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
    if (cfg_.decision.dry_run || all_dry)
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
        j["in_grace"] = in_grace(name, now);
        checks.push_back(std::move(j));
    }
    json dep = nullptr;
    if (view_.id != 0) {
        dep = {{"id", view_.id},
               {"state", view_.state},
               {"app_version", view_.app_version},
               {"version_before", view_.version_before},
               {"version_after", view_.version_after},
               {"age_ms", now - view_.finished_at},
               {"in_watch_window", now <= view_.finished_at + cfg_.decision.watch_window},
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
    if (last_rollback_at_ != 0 && now < last_rollback_at_ + cfg_.decision.cooldown)
        cooldown_left = last_rollback_at_ + cfg_.decision.cooldown - now;
    return {{"checks", checks},
            {"deployment", dep},
            {"cooldown_remaining_ms", cooldown_left},
            {"handled_deployments", std::vector<std::int64_t>(handled_.begin(), handled_.end())}};
}

}  // namespace pgdeploy::watch
