// Lock safety on the client side (see lock_safety.hpp).
#include "common/lock_safety.hpp"

#include <cstdio>

#include "common/connection.hpp"

namespace pgdeploy::common {

using nlohmann::json;

namespace {

std::string text_of(const json& obj, const char* key) {
    if (!obj.is_object() || !obj.contains(key) || obj[key].is_null())
        return "";
    return obj[key].is_string() ? obj[key].get<std::string>() : obj[key].dump();
}

// age_text: "3.2 s", as the extension words a transaction's age.
std::string age_text(double ms) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f s", ms / 1000.0);
    return buf;
}

}  // namespace

void apply_lock_safety(Connection& conn, const LockSafety& settings) {
    ConnectSettings values;
    auto add = [&values](const char* name, const std::optional<long long>& value, const char* unit) {
        if (value)
            values.emplace_back(name, std::to_string(*value) + unit);
    };
    add("pg_deploy.lock_wait", settings.lock_wait_ms, "ms");
    add("pg_deploy.lock_timeout", settings.lock_timeout_ms, "ms");
    add("pg_deploy.lock_attempts", settings.lock_attempts, "");
    add("pg_deploy.lock_retry_time", settings.lock_retry_time_ms, "ms");
    conn.set_transaction_settings(std::move(values));
}

std::string describe_lock(const json& lock) {
    if (!lock.is_object())
        return "a lock";
    std::string mode = text_of(lock, "mode"), type = text_of(lock, "type"), object = text_of(lock, "object");
    std::string out = mode.empty() ? "a lock" : mode;
    if (!type.empty())
        out += " on " + type + (object.empty() ? "" : " " + object);
    return out;
}

std::string describe_blocker(const json& blocker) {
    if (!blocker.is_object() || !blocker.contains("pid") || blocker["pid"].is_null())
        return "an unknown session";
    std::string out = "pid " + text_of(blocker, "pid");
    std::string details;
    auto add = [&details](const std::string& part) { details += (details.empty() ? "" : ", ") + part; };
    for (const char* key : {"application_name", "user", "state"})
        if (blocker.contains(key) && blocker[key].is_string())
            add(std::string(key) + " \"" + blocker[key].get<std::string>() + "\"");
    if (blocker.contains("xact_age_ms") && blocker["xact_age_ms"].is_number())
        add("transaction open " + age_text(blocker["xact_age_ms"].get<double>()));
    return details.empty() ? out : out + " (" + details + ")";
}

std::string what_of(const json& entry) {
    std::string step = text_of(entry, "step");
    std::string out = (step.empty() ? "" : "step " + step + " of ") + "migration " + text_of(entry, "version");
    std::string name = text_of(entry, "name");
    return name.empty() ? out : out + " (" + name + ")";
}

std::string lock_retry_message(const json& entry, long long attempts) {
    auto ms = [&entry](const char* key) {
        return entry.contains(key) && entry[key].is_number() ? std::to_string(entry[key].get<long long>()) : "?";
    };
    return std::string(kLockRetryPrefix) + text_of(entry, "attempt") + "/" + std::to_string(attempts) + ": " +
           what_of(entry) + " waited " + ms("waited_ms") + " ms for " + describe_lock(entry.value("lock", json())) +
           "; blocked by " + describe_blocker(entry.value("blocker", json())) + "; next attempt in " +
           ms("backoff_ms") + " ms";
}

}  // namespace pgdeploy::common
