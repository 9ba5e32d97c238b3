// pg_deploy: may a deployment be rolled back? (the rule; see include/pg_deploy/rollback_rules.hpp). Pure C++.
#include "pg_deploy/rollback_rules.hpp"

#include <cstdio>
#include <type_traits>

namespace pgdeploy {

namespace {

template <typename T>
std::string joined(const std::vector<T>& items, const char* separator = ", ") {
    std::string out;
    for (const T& item : items) {
        if (!out.empty())
            out += separator;
        if constexpr (std::is_same_v<T, std::string>)
            out += item;
        else
            out += std::to_string(item);
    }
    return out;
}

std::string which(const RollbackFacts& f) {
    return "deployment " + std::to_string(f.deployment_id);
}

Json text_or_null(const std::optional<std::string>& s) {
    return s ? Json(*s) : Json(nullptr);
}

}  // namespace

std::vector<Reason> rollback_reasons(const RollbackFacts& f) {
    std::vector<Reason> reasons;
    if (f.kind != "up") {
        reasons.push_back(
            {"not_an_up_deployment", false, which(f) + " is a " + f.kind + ", only up deployments are rolled back"});
    }
    if (f.state == "rolled_back") {
        std::string by = f.rolled_back_by ? std::to_string(*f.rolled_back_by) : "?";
        reasons.push_back({"already_rolled_back", false, which(f) + " was already rolled back by deployment " + by});
    } else if (f.state == "running") {
        reasons.push_back({"still_running", false, which(f) + " is still running"});
    } else if (f.applied == 0) {
        reasons.push_back({"nothing_applied", false, which(f) + " has no migration applied any more"});
    }
    if (!f.later.empty()) {
        reasons.push_back(
            {"later_deployments", false,
             "later deployments still applied build on it: " + joined(f.later) + "; roll those back first"});
    }
    if (!f.irreversible.empty())
        reasons.push_back({"irreversible", true, "irreversible migrations: " + joined(f.irreversible)});
    if (f.outside_window) {
        reasons.push_back(
            {"outside_window", true, "the rollback window (pg_deploy.rollback_window = " + f.window + ") has passed"});
    }
    return reasons;
}

namespace {

Json reasons_json(const std::vector<Reason>& reasons) {
    Json out = Json::array();
    for (const Reason& r : reasons)
        out.push_back(Json{{"code", r.code}, {"forceable", r.forceable}, {"message", r.message}});
    return out;
}

bool forceable(const std::vector<Reason>& reasons) {
    for (const Reason& r : reasons) {
        if (!r.forceable)
            return false;
    }
    return true;
}

}  // namespace

Json eligibility_document(const RollbackFacts& f) {
    std::vector<Reason> reasons = rollback_reasons(f);
    return Json{{"schema_version", 1},
                {"deployment_id", f.deployment_id},
                {"app_version", text_or_null(f.app_version)},
                {"state", f.state},
                {"version_before", text_or_null(f.version_before)},
                {"version_after", text_or_null(f.version_after)},
                {"eligible", reasons.empty()},
                {"eligible_with_force", forceable(reasons)},
                {"reasons", reasons_json(reasons)},
                {"window_ends_at", f.window_ends_at},
                {"rollback_window", f.window},
                {"irreversible", f.irreversible},
                {"lossy", f.lossy},
                {"later_deployments", f.later}};
}

Json no_candidate_document(const std::string& window) {
    std::vector<Reason> reasons{{"nothing_to_roll_back", false, "no finished up deployment has migrations applied"}};
    return Json{{"schema_version", 1},
                {"deployment_id", nullptr},
                {"eligible", false},
                {"eligible_with_force", false},
                {"reasons", reasons_json(reasons)},
                {"window_ends_at", nullptr},
                {"rollback_window", window},
                {"irreversible", Json::array()},
                {"lossy", Json::array()},
                {"later_deployments", Json::array()}};
}

std::optional<DeployError> rollback_refusal(const RollbackFacts& f, bool force) {
    if (f.kind != "up") {
        return DeployError(sqlstate::invalid_parameter,
                           which(f) + " is a " + f.kind + " deployment; only up deployments can be rolled back", {},
                           "Use deploy.up() to re-apply what a down or rollback reverted.");
    }
    if (f.state == "rolled_back") {
        std::string by = f.rolled_back_by ? std::to_string(*f.rolled_back_by) : "?";
        return DeployError(sqlstate::object_not_in_prerequisite_state,
                           which(f) + " is already rolled back (by deployment " + by + ")");
    }
    if (f.state == "running" && !force) {
        return DeployError(sqlstate::object_not_in_prerequisite_state,
                           which(f) + " is still running (it waits for non-transactional steps or was interrupted)", {},
                           "Finish it with `pgdeploy up`, or pass force => true to revert what it applied and abandon "
                           "its remaining steps.");
    }
    if (f.outside_window && !force) {
        return DeployError(sqlstate::outside_rollback_window,
                           which(f) + " is outside pg_deploy.rollback_window: it finished " + human_age(f.age_s) +
                               " ago, the window is " + human_age(f.window_s),
                           "finished at " + f.ended_at,
                           "Pass force => true to roll it back anyway, or raise pg_deploy.rollback_window.");
    }
    if (!f.later.empty()) {
        std::string first = std::to_string(f.later.front());
        return DeployError(
            sqlstate::object_not_in_prerequisite_state,
            which(f) + " cannot be rolled back: deployment " + first + " applied migrations after it and builds on it",
            {}, "Roll back deployment " + first + " first.");
    }
    return std::nullopt;
}

std::optional<DeployError> irreversible_refusal(const std::vector<std::string>& described, bool force) {
    if (described.empty() || force)
        return std::nullopt;
    return DeployError(sqlstate::irreversible, "irreversible migration(s) refused: " + joined(described),
                       "They have no down SQL.",
                       "Pass force => true to remove them from the ledger without running anything: their schema "
                       "changes stay in place.");
}

std::optional<MarkerRefusal> marker_refusal(const RollbackFacts& f, bool force) {
    std::vector<Reason> reasons = rollback_reasons(f);
    if (reasons.empty() || (force && forceable(reasons)))
        return std::nullopt;
    auto names = [&](const char* code) {
        for (const Reason& r : reasons) {
            if (r.code == code)
                return true;
        }
        return false;
    };
    // The window and irreversible migrations have their own SQLSTATEs (what force overrides); the rest are state
    // conflicts. Only a deployment that is still running can become eligible by waiting.
    const char* code = names("outside_window") ? sqlstate::outside_rollback_window
                       : names("irreversible") ? sqlstate::irreversible
                                               : sqlstate::object_not_in_prerequisite_state;
    bool retryable = true;
    std::vector<std::string> messages;
    for (const Reason& r : reasons) {
        retryable = retryable && r.code == "still_running";
        messages.push_back(r.message);
    }
    Json failure{{"sqlstate", code},
                 {"message", "rollback not eligible: " + joined(messages, "; ")},
                 {"reasons", reasons_json(reasons)}};
    return MarkerRefusal{failure, retryable};
}

std::string human_age(double seconds) {
    char buf[64];
    if (seconds >= 86400)
        std::snprintf(buf, sizeof buf, "%.1f days", seconds / 86400);
    else if (seconds >= 3600)
        std::snprintf(buf, sizeof buf, "%.1f hours", seconds / 3600);
    else if (seconds >= 60)
        std::snprintf(buf, sizeof buf, "%.0f minutes", seconds / 60);
    else
        std::snprintf(buf, sizeof buf, "%.0f seconds", seconds);
    return buf;
}

}  // namespace pgdeploy
