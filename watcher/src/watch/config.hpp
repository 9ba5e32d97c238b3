// The watcher's configuration file (JSON): what to check, when to decide, how to roll back.
// Every key, its default and its meaning is documented in docs/pgdeploy.md (the watcher section); keep the two in step.
#pragma once
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/lock_safety.hpp"
#include "watch/duration.hpp"

namespace pgdeploy::watch {

// A configuration error names the key path it is about, e.g. `checks[2].interval: must be a positive duration`.
class ConfigError : public std::runtime_error {
public:
    ConfigError(std::string path, const std::string& message)
        : std::runtime_error(path.empty() ? message : path + ": " + message), path_(std::move(path)) {}
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

enum class CheckType { http, tcp, postgres, command };
const char* to_string(CheckType t);

struct ErrorRateConfig {
    bool enabled = true;
    double threshold = 0.10;             // fraction of failed samples in the window that counts as unhealthy
    Millis window = Millis{600} * 1000;  // the default rule: 10 % over 10 minutes (docs/pgdeploy.md)
    int min_samples = 10;                // fewer samples than this never decide anything
};

struct CheckConfig {
    std::string name;
    CheckType type = CheckType::http;
    Millis interval = Millis{10} * 1000;
    Millis timeout = Millis{2} * 1000;
    bool critical = true;
    int failure_threshold = 3;
    int warning_threshold = 2;
    int success_threshold = 2;
    ErrorRateConfig error_rate;
    Millis grace_period = 0;
    bool dry_run = false;

    // http
    std::string url;
    int expect_status = 200;
    std::string body_contains;
    // tcp
    std::string host;
    int port = 0;
    // postgres
    std::string dsn;  // empty: the watcher's database dsn
    std::string query = "SELECT 1";
    // command
    std::vector<std::string> argv;
    std::size_t max_output = 4096;
};

enum class RollbackOrder { app_first, database_first };

struct RollbackConfig {
    std::vector<std::string> command;  // the app's rollback hook; empty: database only
    Millis timeout = Millis{5} * 60 * 1000;
    RollbackOrder order = RollbackOrder::app_first;
    Millis retry_backoff = Millis{10} * 1000;
    Millis retry_backoff_max = Millis{5} * 60 * 1000;
    Millis lease = Millis{5} * 60 * 1000;
    bool force = false;  // pass force => true to execute_rollback (outside the rollback window)
    // lock_timeout, lock_attempts, lock_retry_time: the pg_deploy.lock_* settings of the session that executes
    // rollbacks (unset: the server's); lock_wait is not configurable here.
    common::LockSafety lock;
};

// An optional alert hook: run (argv, no shell) when the watcher needs a person: a frozen release, an unhealthy
// release it will not roll back, a marker that needs attention, health that did not recover.
struct AlertConfig {
    std::vector<std::string> command;  // empty: alerts go to the log, the events and the metrics only
    Millis timeout = Millis{30} * 1000;
};

// The environment of the programs the watcher starts (rollback hook, alert command, command checks) is built from
// scratch (docs/pgdeploy.md, "The hook's environment"); these add to the documented minimal set.
struct HookEnvironmentConfig {
    std::vector<std::string> pass;           // names copied from the watcher's own environment when set there
    std::map<std::string, std::string> set;  // explicit values
};

struct DecisionConfig {
    Millis watch_window = Millis{30} * 60 * 1000;    // roll back only this long after a deployment finished
    Millis cooldown = Millis{10} * 60 * 1000;        // no second rollback this soon after one
    Millis health_recovery = Millis{2} * 60 * 1000;  // after a rollback, health must recover within this
    bool dry_run = false;                            // decide and record, never act
};

struct DatabaseConfig {
    std::string dsn;                          // libpq conninfo; empty: PG* environment
    Millis poll_interval = Millis{5} * 1000;  // how often the ledger is read (and leadership renewed)
    bool listen = false;  // LISTEN pg_deploy for a faster reaction; off by default: a transaction pooler (PgBouncer)
                          // hands LISTEN to any server connection, so polling is the mechanism
    Millis reconnect_min = 500;
    Millis reconnect_max = Millis{30} * 1000;
};

struct LoggingConfig {
    std::string level = "info";
    std::string format = "plain";  // plain | json
};

struct MetricsConfig {
    std::string listen;  // empty: no metrics server; else loopback host:port
    std::string host;
    int port = 0;
};

struct WatchConfig {
    std::string watcher_id;  // stable holder identity; default: the host name
    DatabaseConfig database;
    std::vector<CheckConfig> checks;
    DecisionConfig decision;
    RollbackConfig rollback;
    AlertConfig alert;
    HookEnvironmentConfig hook_environment;
    LoggingConfig logging;
    MetricsConfig metrics;
    bool leader_lock = true;  // leader.enabled; false: never lead (a pure observer)
    // leader.ttl: the leadership lease (deploy.try_watcher_leadership), renewed every poll; a leader that stops
    // renewing is replaced after it. Default: max(15 s, 3 x database.poll_interval) (default_leader_ttl).
    Millis leader_ttl = 0;
    std::string state_file;  // where the daemon writes its view for `watch --status`
};

// parse_config parses and validates a configuration document; throws ConfigError naming the key.
WatchConfig parse_config(const std::string& text);

// load_config reads FILE and parses it; unreadable files are ConfigError too (path ""). The passwords of its DSNs
// are registered for scrubbing (common::register_dsn_secrets).
WatchConfig load_config(const std::string& file);

// How a changed key takes effect on a reload (SIGHUP). One table, in config.cpp, names the keys that are not live;
// every other key is live: the daemon's next cycle reads it from the new configuration.
enum class Reload { live, reconnect, restart };

struct ReloadPlan {
    bool reconnect = false;                 // a reconnect key changed: drop the connection (and leadership)
    std::vector<std::string> restart_keys;  // changed keys that keep their old value until the next restart
};

// reload_plan: what swapping old for next needs, from the table.
ReloadPlan reload_plan(const WatchConfig& old, const WatchConfig& next);

// default_leader_ttl: max(15 s, 3 x poll_interval).
Millis default_leader_ttl(Millis poll_interval);

// Smallest interval of all checks (the main loop's natural tick); 1 s when there are no checks.
Millis shortest_interval(const WatchConfig& cfg);

}  // namespace pgdeploy::watch
