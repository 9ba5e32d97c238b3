#include "watch/config.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/conninfo.hpp"
#include "watch/hook_env.hpp"

namespace pgdeploy::watch {

using nlohmann::json;

const char* to_string(CheckType t) {
    switch (t) {
        case CheckType::http:
            return "http";
        case CheckType::tcp:
            return "tcp";
        case CheckType::postgres:
            return "postgres";
        case CheckType::command:
            return "command";
    }
    return "?";
}

namespace {

constexpr std::size_t kMaxArgvBytes = 64 * 1024;

/*
 * ObjectReader
 *
 * Reads the keys of one JSON object and remembers which it used, so that a misspelt key ("failure_treshold") is an
 * error instead of a silently ignored setting: a watcher that ignores its thresholds is worse than one that refuses
 * to start.
 */
class ObjectReader {
public:
    ObjectReader(const json& obj, std::string path) : obj_(obj), path_(std::move(path)) {
        if (!obj_.is_object())
            throw ConfigError(path_.empty() ? "(top level)" : path_, "must be an object");
    }

    std::string key_path(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

    const json* get(const std::string& key) {
        used_.insert(key);
        auto it = obj_.find(key);
        if (it == obj_.end() || it->is_null())
            return nullptr;
        return &*it;
    }

    bool has(const std::string& key) const { return obj_.contains(key) && !obj_.at(key).is_null(); }

    std::string string(const std::string& key, const std::string& dflt, bool allow_empty = true) {
        const json* v = get(key);
        if (!v)
            return dflt;
        if (!v->is_string())
            throw ConfigError(key_path(key), "must be a string");
        auto s = v->get<std::string>();
        if (!allow_empty && s.empty())
            throw ConfigError(key_path(key), "must not be empty");
        if (s.find('\0') != std::string::npos)
            throw ConfigError(key_path(key), "must not contain NUL");
        return s;
    }

    bool boolean(const std::string& key, bool dflt) {
        const json* v = get(key);
        if (!v)
            return dflt;
        if (!v->is_boolean())
            throw ConfigError(key_path(key), "must be true or false");
        return v->get<bool>();
    }

    long long integer(const std::string& key, long long dflt, long long min, long long max) {
        const json* v = get(key);
        if (!v)
            return dflt;
        if (!v->is_number_integer())
            throw ConfigError(key_path(key), "must be an integer");
        long long n = v->is_number_unsigned() && v->get<unsigned long long>() > static_cast<unsigned long long>(max)
                          ? max + 1
                          : v->get<long long>();
        if (n < min || n > max)
            throw ConfigError(key_path(key), "must be between " + std::to_string(min) + " and " + std::to_string(max));
        return n;
    }

    double number(const std::string& key, double dflt, double min, double max) {
        const json* v = get(key);
        if (!v)
            return dflt;
        if (!v->is_number())
            throw ConfigError(key_path(key), "must be a number");
        double d = v->get<double>();
        if (!(d >= min && d <= max))
            throw ConfigError(key_path(key), "must be between " + std::to_string(min) + " and " + std::to_string(max));
        return d;
    }

    // Durations are strings such as "30s"; positive unless allow_zero.
    Millis duration(const std::string& key, Millis dflt, bool allow_zero = false) {
        const json* v = get(key);
        if (!v)
            return dflt;
        const char* what = allow_zero ? "must be a duration such as \"500ms\", \"30s\" or \"10m\""
                                      : "must be a positive duration such as \"500ms\", \"30s\" or \"10m\"";
        if (!v->is_string())
            throw ConfigError(key_path(key), what);
        auto d = parse_duration(v->get<std::string>());
        if (!d || (*d == 0 && !allow_zero))
            throw ConfigError(key_path(key), what);
        return *d;
    }

    std::vector<std::string> argv(const std::string& key, bool required) {
        const json* v = get(key);
        if (!v) {
            if (required)
                throw ConfigError(key_path(key), "is required (an argv array such as [\"/usr/bin/x\", \"arg\"])");
            return {};
        }
        if (!v->is_array())
            throw ConfigError(key_path(key), "must be an array of strings (argv; no shell is used)");
        if (v->empty())
            throw ConfigError(key_path(key), "must not be empty");
        std::vector<std::string> out;
        std::size_t total = 0;
        for (std::size_t i = 0; i < v->size(); ++i) {
            const auto& e = (*v)[i];
            std::string p = key_path(key) + "[" + std::to_string(i) + "]";
            if (!e.is_string())
                throw ConfigError(p, "must be a string");
            auto s = e.get<std::string>();
            if (s.find('\0') != std::string::npos)
                throw ConfigError(p, "must not contain NUL");
            if (i == 0 && s.empty())
                throw ConfigError(p, "must name a program");
            total += s.size() + 1;
            out.push_back(std::move(s));
        }
        // Far below what exec accepts, so that the program always starts (its environment is bounded too).
        if (total > kMaxArgvBytes)
            throw ConfigError(key_path(key), "is longer than " + std::to_string(kMaxArgvBytes) + " bytes in all");
        return out;
    }

    void reject_unknown() const {
        for (auto it = obj_.begin(); it != obj_.end(); ++it)
            if (!used_.count(it.key()))
                throw ConfigError(key_path(it.key()), "unknown key");
    }

private:
    const json& obj_;
    std::string path_;
    std::set<std::string> used_;
};

// Metrics must never be reachable from outside the host: they name releases and checks.
void parse_listen(MetricsConfig& m, const std::string& path) {
    const std::string& s = m.listen;
    std::string host, port;
    if (!s.empty() && s[0] == '[') {
        auto close = s.find(']');
        if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':')
            throw ConfigError(path, "must be host:port, e.g. \"127.0.0.1:9187\"");
        host = s.substr(1, close - 1);
        port = s.substr(close + 2);
    } else {
        auto colon = s.rfind(':');
        if (colon == std::string::npos)
            throw ConfigError(path, "must be host:port, e.g. \"127.0.0.1:9187\"");
        host = s.substr(0, colon);
        port = s.substr(colon + 1);
    }
    bool loopback = host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
    if (host.rfind("127.", 0) == 0) {
        // 127.x.y.z with numeric parts only.
        for (char c : host)
            if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.'))
                loopback = false;
    }
    if (!loopback)
        throw ConfigError(path, "must be a loopback address (127.0.0.1, ::1 or localhost), not \"" + host + "\"");
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
        throw ConfigError(path, "port must be a number between 0 and 65535");
    int p = std::stoi(port);
    if (p > 65535)
        throw ConfigError(path, "port must be a number between 0 and 65535");
    m.host = host == "localhost" ? "127.0.0.1" : host;
    m.port = p;
}

/*
 * parse_rollback_lock
 *		rollback.lock_timeout (0 = off), rollback.lock_attempts, rollback.lock_retry_time: the lock safety of
 *the reverts this watcher runs (docs/pgdeploy.md). Unset keys leave the server's settings alone; a set one must fit the
 *setting (milliseconds in an int; attempts as pg_deploy.lock_attempts).
 */
common::LockSafety parse_rollback_lock(ObjectReader& r) {
    common::LockSafety lock;
    auto limited = [&r](const char* key) -> std::optional<long long> {
        Millis d = r.duration(key, -1, true);
        if (d < 0)
            return std::nullopt;
        if (d > common::kMaxLockSettingMs)
            throw ConfigError(r.key_path(key),
                              "must be at most " + std::to_string(common::kMaxLockSettingMs) + "ms (about 24 days)");
        return d;
    };
    lock.lock_timeout_ms = limited("lock_timeout");
    lock.lock_retry_time_ms = limited("lock_retry_time");
    long long attempts = r.integer("lock_attempts", 0, 1, common::kMaxLockAttempts);
    if (attempts > 0)
        lock.lock_attempts = attempts;
    return lock;
}

void check_hook_env_name(const std::string& name, const std::string& path) {
    std::string problem = hook_env_name_problem(name);
    if (!problem.empty())
        throw ConfigError(path, "\"" + name + "\" " + problem);
}

/*
 * parse_hook_environment
 *		{"pass": ["NAME", ...], "set": {"NAME": "value"}}: what the programs the watcher starts get besides the
 *		minimal set (watch/hook_env.hpp). A name in both lists would leave the reader guessing which wins.
 */
HookEnvironmentConfig parse_hook_environment(const json& j) {
    ObjectReader r(j, "hook_environment");
    HookEnvironmentConfig env;
    if (const json* pass = r.get("pass")) {
        if (!pass->is_array())
            throw ConfigError("hook_environment.pass", "must be an array of variable names");
        if (pass->size() > kMaxHookEnvNames)
            throw ConfigError("hook_environment.pass", "must name at most " + std::to_string(kMaxHookEnvNames));
        for (std::size_t i = 0; i < pass->size(); ++i) {
            std::string path = "hook_environment.pass[" + std::to_string(i) + "]";
            if (!(*pass)[i].is_string())
                throw ConfigError(path, "must be a string");
            std::string name = (*pass)[i].get<std::string>();
            check_hook_env_name(name, path);
            env.pass.push_back(name);
        }
    }
    if (const json* set = r.get("set")) {
        if (!set->is_object())
            throw ConfigError("hook_environment.set", "must be an object of \"NAME\": \"value\"");
        if (set->size() > kMaxHookEnvNames)
            throw ConfigError("hook_environment.set", "must name at most " + std::to_string(kMaxHookEnvNames));
        for (auto it = set->begin(); it != set->end(); ++it) {
            std::string path = "hook_environment.set." + it.key();
            check_hook_env_name(it.key(), path);
            if (!it->is_string())
                throw ConfigError(path, "must be a string");
            std::string value = it->get<std::string>();
            if (value.find('\0') != std::string::npos)
                throw ConfigError(path, "must not contain NUL");
            if (value.size() > kMaxHookEnvValueBytes)
                throw ConfigError(path, "must be at most " + std::to_string(kMaxHookEnvValueBytes) + " bytes");
            if (std::find(env.pass.begin(), env.pass.end(), it.key()) != env.pass.end())
                throw ConfigError(path, "\"" + it.key() + "\" is in hook_environment.pass too: keep one");
            env.set[it.key()] = value;
        }
    }
    r.reject_unknown();
    return env;
}

CheckConfig parse_check(const json& j, std::size_t index) {
    std::string path = "checks[" + std::to_string(index) + "]";
    ObjectReader r(j, path);
    CheckConfig c;
    std::string type = r.string("type", "", false);
    if (!r.has("type"))
        throw ConfigError(path + ".type", "is required (http, tcp, postgres or command)");
    if (type == "http")
        c.type = CheckType::http;
    else if (type == "tcp")
        c.type = CheckType::tcp;
    else if (type == "postgres")
        c.type = CheckType::postgres;
    else if (type == "command")
        c.type = CheckType::command;
    else
        throw ConfigError(path + ".type", "must be http, tcp, postgres or command, not \"" + type + "\"");

    c.name = r.string("name", type + "_" + std::to_string(index), false);
    for (char ch : c.name)
        if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-' || ch == '.'))
            throw ConfigError(path + ".name", "may contain only letters, digits, '_', '-' and '.'");
    if (c.name.size() > 64)
        throw ConfigError(path + ".name", "must be at most 64 characters");
    c.interval = r.duration("interval", c.interval);
    c.timeout = r.duration("timeout", c.timeout);
    c.critical = r.boolean("critical", c.critical);
    c.failure_threshold = static_cast<int>(r.integer("failure_threshold", 3, 1, 1000));
    c.warning_threshold = static_cast<int>(r.integer("warning_threshold", 2, 1, 1000));
    c.success_threshold = static_cast<int>(r.integer("success_threshold", 2, 1, 1000));
    if (c.warning_threshold > c.failure_threshold)
        throw ConfigError(path + ".warning_threshold",
                          "must not exceed failure_threshold (" + std::to_string(c.failure_threshold) + ")");
    c.grace_period = r.duration("grace_period", 0, true);
    c.dry_run = r.boolean("dry_run", false);

    if (const json* er = r.get("error_rate")) {
        if (er->is_boolean()) {
            c.error_rate.enabled = er->get<bool>();
        } else {
            ObjectReader e(*er, path + ".error_rate");
            c.error_rate.enabled = e.boolean("enabled", true);
            c.error_rate.threshold = e.number("threshold", 0.10, 0.0, 1.0);
            if (c.error_rate.threshold <= 0.0)
                throw ConfigError(path + ".error_rate.threshold", "must be greater than 0 (and at most 1)");
            c.error_rate.window = e.duration("window", c.error_rate.window);
            c.error_rate.min_samples = static_cast<int>(e.integer("min_samples", 10, 1, 1000000));
            e.reject_unknown();
        }
    }

    switch (c.type) {
        case CheckType::http: {
            c.url = r.string("url", "", false);
            if (c.url.empty())
                throw ConfigError(path + ".url", "is required for an http check");
            if (c.url.rfind("http://", 0) != 0 && c.url.rfind("https://", 0) != 0)
                throw ConfigError(path + ".url", "must start with http:// or https://");
            c.expect_status = static_cast<int>(r.integer("expect_status", 200, 100, 599));
            c.body_contains = r.string("body_contains", "");
            break;
        }
        case CheckType::tcp: {
            c.host = r.string("host", "", false);
            if (c.host.empty())
                throw ConfigError(path + ".host", "is required for a tcp check");
            c.port = static_cast<int>(r.integer("port", 0, 1, 65535));
            if (!r.has("port"))
                throw ConfigError(path + ".port", "is required for a tcp check");
            break;
        }
        case CheckType::postgres: {
            c.dsn = r.string("dsn", "");
            c.query = r.string("query", "SELECT 1", false);
            break;
        }
        case CheckType::command: {
            c.argv = r.argv("argv", true);
            c.max_output = static_cast<std::size_t>(r.integer("max_output", 4096, 0, 1 << 20));
            break;
        }
    }
    r.reject_unknown();
    return c;
}

}  // namespace

/*
 * parse_config
 *
 * Validates everything up front: the daemon refuses to start on a bad file, and a reload keeps the old
 * configuration when the new one fails here, so no half-valid configuration ever runs.
 */
WatchConfig parse_config(const std::string& text) {
    json doc;
    try {
        doc = json::parse(text);
    } catch (const json::exception& e) {
        // json::parse_error, and json::out_of_range for numbers beyond double (found by tests/fuzz/fuzz_config.cpp).
        throw ConfigError("", std::string("not valid JSON: ") + e.what());
    }
    ObjectReader top(doc, "");
    WatchConfig cfg;

    cfg.watcher_id = top.string("watcher_id", "");
    if (cfg.watcher_id.empty()) {
        char host[256] = {0};
        if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0')
            std::snprintf(host, sizeof host, "watcher");
        cfg.watcher_id = host;
    }
    if (cfg.watcher_id.size() > 128)
        throw ConfigError("watcher_id", "must be at most 128 characters");

    if (const json* db = top.get("database")) {
        if (db->is_string()) {
            cfg.database.dsn = db->get<std::string>();
        } else {
            ObjectReader d(*db, "database");
            cfg.database.dsn = d.string("dsn", "");
            cfg.database.poll_interval = d.duration("poll_interval", cfg.database.poll_interval);
            cfg.database.reconnect_min = d.duration("reconnect_min", cfg.database.reconnect_min);
            cfg.database.reconnect_max = d.duration("reconnect_max", cfg.database.reconnect_max);
            cfg.database.listen = d.boolean("listen", false);
            if (cfg.database.reconnect_max < cfg.database.reconnect_min)
                throw ConfigError("database.reconnect_max", "must not be less than database.reconnect_min");
            d.reject_unknown();
        }
    }

    if (const json* checks = top.get("checks")) {
        if (!checks->is_array())
            throw ConfigError("checks", "must be an array of check objects");
        std::set<std::string> names;
        for (std::size_t i = 0; i < checks->size(); ++i) {
            CheckConfig c = parse_check((*checks)[i], i);
            if (!names.insert(c.name).second)
                throw ConfigError("checks[" + std::to_string(i) + "].name", "duplicate check name \"" + c.name + "\"");
            cfg.checks.push_back(std::move(c));
        }
    }

    if (const json* d = top.get("decision")) {
        ObjectReader r(*d, "decision");
        cfg.decision.watch_window = r.duration("watch_window", cfg.decision.watch_window);
        cfg.decision.cooldown = r.duration("cooldown", cfg.decision.cooldown, true);
        cfg.decision.health_recovery = r.duration("health_recovery", cfg.decision.health_recovery);
        cfg.decision.dry_run = r.boolean("dry_run", false);
        r.reject_unknown();
    }

    if (const json* rb = top.get("rollback")) {
        ObjectReader r(*rb, "rollback");
        cfg.rollback.command = r.argv("command", false);
        cfg.rollback.timeout = r.duration("timeout", cfg.rollback.timeout);
        std::string order = r.string("order", "app_first");
        if (order == "app_first")
            cfg.rollback.order = RollbackOrder::app_first;
        else if (order == "database_first")
            cfg.rollback.order = RollbackOrder::database_first;
        else
            throw ConfigError("rollback.order", "must be \"app_first\" or \"database_first\", not \"" + order + "\"");
        cfg.rollback.retry_backoff = r.duration("retry_backoff", cfg.rollback.retry_backoff);
        cfg.rollback.retry_backoff_max = r.duration("retry_backoff_max", cfg.rollback.retry_backoff_max);
        if (cfg.rollback.retry_backoff_max < cfg.rollback.retry_backoff)
            throw ConfigError("rollback.retry_backoff_max", "must not be less than rollback.retry_backoff");
        cfg.rollback.lease = r.duration("lease", cfg.rollback.lease);
        if (cfg.rollback.lease < 1000)
            throw ConfigError("rollback.lease", "must be at least 1s");
        cfg.rollback.force = r.boolean("force", false);
        cfg.rollback.lock = parse_rollback_lock(r);
        r.reject_unknown();
    }

    if (const json* a = top.get("alert")) {
        ObjectReader r(*a, "alert");
        cfg.alert.command = r.argv("command", false);
        cfg.alert.timeout = r.duration("timeout", cfg.alert.timeout);
        r.reject_unknown();
    }

    if (const json* e = top.get("hook_environment"))
        cfg.hook_environment = parse_hook_environment(*e);

    if (const json* l = top.get("logging")) {
        ObjectReader r(*l, "logging");
        cfg.logging.level = r.string("level", "info");
        static const std::set<std::string> levels = {"trace", "debug", "info",     "warning",
                                                     "warn",  "error", "critical", "off"};
        if (!levels.count(cfg.logging.level))
            throw ConfigError("logging.level", "must be one of trace, debug, info, warning, error, critical, off");
        cfg.logging.format = r.string("format", "plain");
        if (cfg.logging.format != "plain" && cfg.logging.format != "json")
            throw ConfigError("logging.format", "must be \"plain\" or \"json\"");
        r.reject_unknown();
    }

    if (const json* m = top.get("metrics")) {
        ObjectReader r(*m, "metrics");
        cfg.metrics.listen = r.string("listen", "");
        if (!cfg.metrics.listen.empty())
            parse_listen(cfg.metrics, "metrics.listen");
        r.reject_unknown();
    }

    if (const json* l = top.get("leader")) {
        ObjectReader r(*l, "leader");
        cfg.leader_lock = r.boolean("enabled", true);
        cfg.leader_ttl = r.duration("ttl", 0);
        r.reject_unknown();
    }
    if (cfg.leader_ttl == 0)
        cfg.leader_ttl = default_leader_ttl(cfg.database.poll_interval);
    else if (cfg.leader_ttl > Millis{24} * 3600 * 1000)
        throw ConfigError("leader.ttl", "must be at most 1d (the extension's limit for a lease)");
    else if (cfg.leader_ttl < 2 * cfg.database.poll_interval || cfg.leader_ttl < 1000)
        throw ConfigError("leader.ttl", "must be at least 1s and at least twice database.poll_interval (" +
                                            format_duration(cfg.database.poll_interval) +
                                            "): leadership is renewed once per poll");

    cfg.state_file = top.string("state_file", "");
    if (!cfg.state_file.empty() && cfg.state_file[0] != '/')
        throw ConfigError("state_file", "must be an absolute path");

    top.reject_unknown();
    return cfg;
}

WatchConfig load_config(const std::string& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in)
        throw ConfigError("", "cannot read config file \"" + file + "\"");
    std::ostringstream ss;
    ss << in.rdbuf();
    if (ss.str().size() > (4u << 20))
        throw ConfigError("", "config file \"" + file + "\" is larger than 4 MB");
    WatchConfig cfg = parse_config(ss.str());
    // Passwords written in the file are scrubbed from everything the watcher logs or stores from now on.
    common::register_dsn_secrets(cfg.database.dsn);
    for (const auto& c : cfg.checks)
        common::register_dsn_secrets(c.dsn);
    return cfg;
}

namespace {

// The keys that a reload does not simply apply (pgbouncer's CF_NO_RELOAD, as a table). The connection's identity
// needs a new session (the daemon releases its leadership lease first) and so does LISTEN. The metrics server binds
// once, and the log sinks are set up once.
struct ReloadRule {
    const char* key;
    Reload reload;
    bool (*changed)(const WatchConfig& a, const WatchConfig& b);
};

const ReloadRule kReloadRules[] = {
    {"database.dsn", Reload::reconnect,
     [](const WatchConfig& a, const WatchConfig& b) { return a.database.dsn != b.database.dsn; }},
    {"watcher_id", Reload::reconnect,
     [](const WatchConfig& a, const WatchConfig& b) { return a.watcher_id != b.watcher_id; }},
    {"database.listen", Reload::reconnect,
     [](const WatchConfig& a, const WatchConfig& b) { return a.database.listen != b.database.listen; }},
    {"leader.enabled", Reload::reconnect,
     [](const WatchConfig& a, const WatchConfig& b) { return a.leader_lock != b.leader_lock; }},
    {"metrics.listen", Reload::restart,
     [](const WatchConfig& a, const WatchConfig& b) { return a.metrics.listen != b.metrics.listen; }},
    {"logging.format", Reload::restart,
     [](const WatchConfig& a, const WatchConfig& b) { return a.logging.format != b.logging.format; }},
};

}  // namespace

ReloadPlan reload_plan(const WatchConfig& old, const WatchConfig& next) {
    ReloadPlan plan;
    for (const ReloadRule& r : kReloadRules) {
        if (!r.changed(old, next))
            continue;
        if (r.reload == Reload::reconnect)
            plan.reconnect = true;
        else if (r.reload == Reload::restart)
            plan.restart_keys.emplace_back(r.key);
    }
    return plan;
}

Millis default_leader_ttl(Millis poll_interval) {
    return std::max<Millis>(Millis{15} * 1000, 3 * poll_interval);
}

Millis shortest_interval(const WatchConfig& cfg) {
    Millis best = 0;
    for (const auto& c : cfg.checks)
        if (best == 0 || c.interval < best)
            best = c.interval;
    return best == 0 ? 1000 : best;
}

}  // namespace pgdeploy::watch
