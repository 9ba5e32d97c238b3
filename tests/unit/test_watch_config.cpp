// Catch2 tests of the watcher's configuration parser: defaults, durations, and every error naming its key path.
#include <catch2/catch.hpp>

#include <fstream>
#include <string>

#include "watch/config.hpp"
#include "watch/duration.hpp"

using namespace pgdeploy::watch;

namespace {

// The error message of parsing `text`, or "" when it parses.
std::string error_of(const std::string& text) {
    try {
        parse_config(text);
    } catch (const ConfigError& e) {
        return e.what();
    }
    return "";
}

std::string with_check(const std::string& check_body) {
    return R"({"checks": [{"type": "http", "url": "http://127.0.0.1/"}, {"type": "tcp", "host": "h", "port": 1}, )" +
           check_body + "]}";
}

}  // namespace

TEST_CASE("durations parse the config's spellings and refuse bare numbers", "[watch][config]") {
    CHECK(parse_duration("500ms") == 500);
    CHECK(parse_duration("30s") == 30000);
    CHECK(parse_duration("10m") == 600000);
    CHECK(parse_duration("2h") == 7200000);
    CHECK(parse_duration("1d") == 86400000);
    CHECK(parse_duration("1m30s") == 90000);
    CHECK(parse_duration("0s") == 0);
    CHECK_FALSE(parse_duration("30"));
    CHECK_FALSE(parse_duration(""));
    CHECK_FALSE(parse_duration("s"));
    CHECK_FALSE(parse_duration("-5s"));
    CHECK_FALSE(parse_duration("5 s"));
    CHECK_FALSE(parse_duration("5sec"));
    CHECK_FALSE(parse_duration("1.5s"));
    CHECK_FALSE(parse_duration("99999999999999999999999s"));
    CHECK(format_duration(30000) == "30s");
    CHECK(format_duration(600000) == "10m");
    CHECK(format_duration(1500) == "1500ms");
}

TEST_CASE("an empty object is a valid configuration with the documented defaults", "[watch][config]") {
    WatchConfig c = parse_config("{}");
    CHECK_FALSE(c.watcher_id.empty());
    CHECK(c.checks.empty());
    CHECK(c.decision.watch_window == Millis{30} * 60 * 1000);
    CHECK(c.decision.cooldown == Millis{10} * 60 * 1000);
    CHECK(c.decision.health_recovery == Millis{2} * 60 * 1000);
    CHECK_FALSE(c.decision.dry_run);
    CHECK(c.rollback.order == RollbackOrder::app_first);
    CHECK(c.rollback.timeout == Millis{5} * 60 * 1000);
    CHECK(c.rollback.lease == Millis{5} * 60 * 1000);
    CHECK(c.logging.level == "info");
    CHECK(c.logging.format == "plain");
    CHECK(c.alert.command.empty());
    CHECK(c.alert.timeout == 30000);
    CHECK(c.metrics.listen.empty());
    CHECK(c.leader_lock);
    CHECK(c.database.poll_interval == 5000);
}

TEST_CASE("check defaults follow the issue: thresholds 3/2, error rate 10% over 10 minutes", "[watch][config]") {
    WatchConfig c = parse_config(R"({"checks": [{"type": "http", "url": "http://127.0.0.1:8080/health"}]})");
    REQUIRE(c.checks.size() == 1);
    const CheckConfig& k = c.checks[0];
    CHECK(k.name == "http_0");
    CHECK(k.failure_threshold == 3);
    CHECK(k.warning_threshold == 2);
    CHECK(k.success_threshold == 2);
    CHECK(k.error_rate.enabled);
    CHECK(k.error_rate.threshold == Approx(0.10));
    CHECK(k.error_rate.window == 600000);
    CHECK(k.expect_status == 200);
    CHECK(k.critical);
    CHECK_FALSE(k.dry_run);
    CHECK(k.grace_period == 0);
}

TEST_CASE("a full configuration parses every key", "[watch][config]") {
    WatchConfig c = parse_config(R"({
      "watcher_id": "web-1",
      "database": {"dsn": "host=db dbname=app", "poll_interval": "2s", "reconnect_min": "100ms", "reconnect_max": "5s"},
      "checks": [
        {"name": "api", "type": "http", "url": "https://app/health", "expect_status": 204, "body_contains": "ok",
         "interval": "200ms", "timeout": "1s", "critical": true, "failure_threshold": 4, "warning_threshold": 1,
         "success_threshold": 3, "error_rate": {"threshold": 0.25, "window": "1m", "min_samples": 5},
         "grace_period": "10s", "dry_run": true},
        {"name": "port", "type": "tcp", "host": "127.0.0.1", "port": 5432, "critical": false},
        {"name": "db", "type": "postgres", "dsn": "dbname=x", "query": "SELECT 2"},
        {"name": "script", "type": "command", "argv": ["/bin/true", "a b"], "max_output": 10, "error_rate": false}
      ],
      "decision": {"watch_window": "15m", "cooldown": "0s", "health_recovery": "30s", "dry_run": true},
      "rollback": {"command": ["/usr/local/bin/rollback", "--fast"], "timeout": "2m", "order": "database_first",
                   "retry_backoff": "1s", "retry_backoff_max": "1m", "lease": "90s", "force": true},
      "alert": {"command": ["/usr/local/bin/page", "--team", "db"], "timeout": "10s"},
      "logging": {"level": "debug", "format": "json"},
      "metrics": {"listen": "127.0.0.1:9187"},
      "leader": {"enabled": false},
      "state_file": "/run/pgdeploy/watch.json"
    })");
    CHECK(c.watcher_id == "web-1");
    CHECK(c.database.dsn == "host=db dbname=app");
    CHECK(c.database.reconnect_min == 100);
    REQUIRE(c.checks.size() == 4);
    CHECK(c.checks[0].interval == 200);
    CHECK(c.checks[0].expect_status == 204);
    CHECK(c.checks[0].error_rate.min_samples == 5);
    CHECK(c.checks[0].dry_run);
    CHECK(c.checks[1].type == CheckType::tcp);
    CHECK_FALSE(c.checks[1].critical);
    CHECK(c.checks[2].query == "SELECT 2");
    CHECK(c.checks[3].argv.size() == 2);
    CHECK_FALSE(c.checks[3].error_rate.enabled);
    CHECK(c.decision.cooldown == 0);
    CHECK(c.rollback.order == RollbackOrder::database_first);
    CHECK(c.rollback.command[1] == "--fast");
    CHECK(c.rollback.force);
    CHECK(c.alert.command.size() == 3);
    CHECK(c.alert.timeout == 10000);
    CHECK(c.metrics.port == 9187);
    CHECK_FALSE(c.leader_lock);
    CHECK(c.logging.format == "json");
    CHECK(shortest_interval(c) == 200);
}

TEST_CASE("configuration errors name the key path", "[watch][config]") {
    struct Case {
        std::string text;
        std::string expected;
    };
    std::vector<Case> cases = {
        {"", "not valid JSON"},
        {"{\"a\": 1110E1110}", "not valid JSON"},  // number overflow: found by the fuzzer
        {"{\"a\": \"\xff\"}", "not valid JSON"},   // not UTF-8
        {"[1]", "(top level): must be an object"},
        {R"({"chekcs": []})", "chekcs: unknown key"},
        {R"({"checks": {}})", "checks: must be an array"},
        {with_check(R"({"type": "http", "url": "http://x/", "interval": "soon"})"),
         "checks[2].interval: must be a positive duration"},
        {with_check(R"({"type": "http", "url": "http://x/", "interval": "0s"})"),
         "checks[2].interval: must be a positive duration"},
        {with_check(R"({"type": "http", "url": "http://x/", "interval": 30})"),
         "checks[2].interval: must be a positive duration"},
        {with_check(R"({"type": "http", "url": "http://x/", "timeout": "-1s"})"), "checks[2].timeout"},
        {with_check(R"({"type": "smtp"})"), "checks[2].type: must be http, tcp, postgres or command"},
        {with_check(R"({"url": "http://x/"})"), "checks[2].type: is required"},
        {with_check(R"({"type": "http"})"), "checks[2].url: is required"},
        {with_check(R"({"type": "http", "url": "ftp://x/"})"), "checks[2].url: must start with http://"},
        {with_check(R"({"type": "http", "url": "http://x/", "expect_status": 99})"), "checks[2].expect_status"},
        {with_check(R"({"type": "tcp", "host": "h"})"), "checks[2].port: is required"},
        {with_check(R"({"type": "tcp", "port": 5})"), "checks[2].host: is required"},
        {with_check(R"({"type": "tcp", "host": "h", "port": 70000})"), "checks[2].port: must be between 1 and 65535"},
        {with_check(R"({"type": "command"})"), "checks[2].argv: is required"},
        {with_check(R"({"type": "command", "argv": "ls -l"})"), "checks[2].argv: must be an array of strings"},
        {with_check(R"({"type": "command", "argv": []})"), "checks[2].argv: must not be empty"},
        {with_check(R"({"type": "command", "argv": [1]})"), "checks[2].argv[0]: must be a string"},
        {with_check(R"({"type": "command", "argv": [""]})"), "checks[2].argv[0]: must name a program"},
        {with_check(R"({"type": "postgres", "query": ""})"), "checks[2].query: must not be empty"},
        {with_check(R"({"type": "http", "url": "http://x/", "failure_threshold": 0})"),
         "checks[2].failure_threshold: must be between 1 and 1000"},
        {with_check(R"({"type": "http", "url": "http://x/", "failure_threshold": "3"})"),
         "checks[2].failure_threshold: must be an integer"},
        {with_check(R"({"type": "http", "url": "http://x/", "failure_threshold": 2, "warning_threshold": 3})"),
         "checks[2].warning_threshold: must not exceed failure_threshold"},
        {with_check(R"({"type": "http", "url": "http://x/", "success_threshold": 0})"), "checks[2].success_threshold"},
        {with_check(R"({"type": "http", "url": "http://x/", "critical": "yes"})"),
         "checks[2].critical: must be true or false"},
        {with_check(R"({"type": "http", "url": "http://x/", "error_rate": {"threshold": 1.5}})"),
         "checks[2].error_rate.threshold: must be between"},
        {with_check(R"({"type": "http", "url": "http://x/", "error_rate": {"threshold": 0}})"),
         "checks[2].error_rate.threshold: must be greater than 0"},
        {with_check(R"({"type": "http", "url": "http://x/", "error_rate": {"window": "0s"}})"),
         "checks[2].error_rate.window: must be a positive duration"},
        {with_check(R"({"type": "http", "url": "http://x/", "error_rate": {"min_samples": 0}})"),
         "checks[2].error_rate.min_samples"},
        {with_check(R"({"type": "http", "url": "http://x/", "error_rate": {"treshold": 0.1}})"),
         "checks[2].error_rate.treshold: unknown key"},
        {with_check(R"({"type": "http", "url": "http://x/", "grace_period": "later"})"),
         "checks[2].grace_period: must be a duration"},
        {with_check(R"({"type": "http", "url": "http://x/", "name": "bad name"})"), "checks[2].name: may contain only"},
        {with_check(R"({"type": "http", "url": "http://x/", "name": "http_0"})"),
         "checks[2].name: duplicate check name \"http_0\""},
        {with_check(R"({"type": "http", "url": "http://x/", "bogus": 1})"), "checks[2].bogus: unknown key"},
        {with_check("42"), "checks[2]: must be an object"},
        {R"({"decision": {"watch_window": "0s"}})", "decision.watch_window: must be a positive duration"},
        {R"({"decision": {"cooldown": "x"}})", "decision.cooldown: must be a duration"},
        {R"({"decision": {"health_recovery": 5}})", "decision.health_recovery: must be a positive duration"},
        {R"({"decision": {"dry_run": 1}})", "decision.dry_run: must be true or false"},
        {R"({"decision": {"window": "1m"}})", "decision.window: unknown key"},
        {R"({"rollback": {"command": "rollback.sh --now"}})", "rollback.command: must be an array of strings"},
        {R"({"rollback": {"order": "sideways"}})", "rollback.order: must be \"app_first\" or \"database_first\""},
        {R"({"rollback": {"timeout": "0ms"}})", "rollback.timeout: must be a positive duration"},
        {R"({"rollback": {"retry_backoff": "10s", "retry_backoff_max": "1s"}})",
         "rollback.retry_backoff_max: must not be less than"},
        {R"({"rollback": {"lease": "500ms"}})", "rollback.lease: must be at least 1s"},
        {R"({"rollback": {"lock_timeout": 500}})", "rollback.lock_timeout: must be a duration"},
        {R"({"rollback": {"lock_timeout": "600h"}})", "rollback.lock_timeout: must be at most 2147483647ms"},
        {R"({"rollback": {"lock_attempts": 0}})", "rollback.lock_attempts: must be between 1 and 10000"},
        {R"({"rollback": {"lock_attempts": "3"}})", "rollback.lock_attempts: must be an integer"},
        {R"({"rollback": {"lock_retry_time": "soon"}})", "rollback.lock_retry_time: must be a duration"},
        {R"({"rollback": {"lock_retries": 3}})", "rollback.lock_retries: unknown key"},
        {R"({"alert": {"command": "page me"}})", "alert.command: must be an array of strings"},
        {R"({"alert": {"timeout": "0s"}})", "alert.timeout: must be a positive duration"},
        {R"({"alert": {"url": "x"}})", "alert.url: unknown key"},
        {R"({"logging": {"level": "loud"}})", "logging.level: must be one of"},
        {R"({"logging": {"format": "xml"}})", "logging.format: must be \"plain\" or \"json\""},
        {R"({"metrics": {"listen": "0.0.0.0:9187"}})", "metrics.listen: must be a loopback address"},
        {R"({"metrics": {"listen": "10.1.2.3:9187"}})", "metrics.listen: must be a loopback address"},
        {R"({"metrics": {"listen": "127.0.0.1.evil.com:9187"}})", "metrics.listen: must be a loopback address"},
        {R"({"metrics": {"listen": "[::]:9187"}})", "metrics.listen: must be a loopback address"},
        {R"({"metrics": {"listen": "127.0.0.1"}})", "metrics.listen: must be host:port"},
        {R"({"metrics": {"listen": "127.0.0.1:99999"}})", "metrics.listen: port must be"},
        {R"({"database": {"dsn": 5}})", "database.dsn: must be a string"},
        {R"({"database": {"poll_interval": "never"}})", "database.poll_interval: must be a positive duration"},
        {R"({"database": {"reconnect_min": "10s", "reconnect_max": "1s"}})", "database.reconnect_max"},
        {R"({"database": {"host": "x"}})", "database.host: unknown key"},
        {R"({"leader": {"enabled": "no"}})", "leader.enabled: must be true or false"},
        {R"({"state_file": "relative/path.json"})", "state_file: must be an absolute path"},
        {R"({"watcher_id": 7})", "watcher_id: must be a string"},
        {R"({"hook_environment": {"pass": ["HOME"], "sett": {}}})", "hook_environment.sett: unknown key"},
        {R"({"hook_environment": ["HOME"]})", "hook_environment: must be an object"},
        {R"({"hook_environment": {"pass": "HOME"}})", "hook_environment.pass: must be an array of variable names"},
        {R"({"hook_environment": {"pass": [1]}})", "hook_environment.pass[0]: must be a string"},
        {R"({"hook_environment": {"pass": ["HOME", "PGPASSWORD"]}})",
         "hook_environment.pass[1]: \"PGPASSWORD\" the database password is never handed to a program"},
        {R"({"hook_environment": {"set": {"PGPASSWORD": "x"}}})", "hook_environment.set.PGPASSWORD: \"PGPASSWORD\""},
        {R"({"hook_environment": {"pass": ["PGDEPLOY_REASON"]}})", "PGDEPLOY_* variables are set by the watcher"},
        {R"({"hook_environment": {"pass": ["NOTIFY_SOCKET"]}})", "belongs to the service manager"},
        {R"({"hook_environment": {"pass": ["A-B"]}})", "may contain only letters, digits and '_'"},
        {R"({"hook_environment": {"pass": ["1A"]}})", "must not start with a digit"},
        {R"({"hook_environment": {"pass": [""]}})", "must be 1 to 128 characters long"},
        {R"({"hook_environment": {"set": {"A": 1}}})", "hook_environment.set.A: must be a string"},
        {R"({"hook_environment": {"set": []}})", "hook_environment.set: must be an object"},
        {R"({"hook_environment": {"pass": ["A"], "set": {"A": "x"}}})", "is in hook_environment.pass too"},
    };
    for (const auto& c : cases) {
        INFO("config: " << c.text);
        std::string err = error_of(c.text);
        CHECK_THAT(err, Catch::Matchers::Contains(c.expected));
    }
}

TEST_CASE("hook_environment: pass and set are read; long values and argv are bounded", "[watch][config]") {
    WatchConfig cfg = parse_config(
        R"({"hook_environment": {"pass": ["KUBECONFIG", "HOME"], "set": {"PATH": "/opt/bin:/usr/bin", "ENV": "prod"}}})");
    CHECK(cfg.hook_environment.pass == std::vector<std::string>{"KUBECONFIG", "HOME"});
    CHECK(cfg.hook_environment.set.at("PATH") == "/opt/bin:/usr/bin");
    CHECK(cfg.hook_environment.set.at("ENV") == "prod");
    CHECK(parse_config("{}").hook_environment.pass.empty());

    std::string long_value(4097, 'x');
    CHECK_THAT(error_of(R"({"hook_environment": {"set": {"A": ")" + long_value + R"("}}})"),
               Catch::Matchers::Contains("hook_environment.set.A: must be at most 4096 bytes"));
    std::string names;
    for (int i = 0; i < 65; ++i)
        names += std::string(i ? "," : "") + "\"N" + std::to_string(i) + "\"";
    CHECK_THAT(error_of(R"({"hook_environment": {"pass": [)" + names + "]}}"),
               Catch::Matchers::Contains("hook_environment.pass: must name at most 64"));
    // argv: at most 64 KiB in all, so that exec never fails with E2BIG on it.
    std::string arg(40000, 'a');
    CHECK_THAT(error_of(R"({"rollback": {"command": ["/bin/true", ")" + arg + R"(", ")" + arg + R"("]}})"),
               Catch::Matchers::Contains("rollback.command: is longer than 65536 bytes in all"));
    CHECK_NOTHROW(parse_config(R"({"rollback": {"command": ["/bin/true", ")" + arg + R"("]}})"));
}

TEST_CASE("loopback metrics addresses are accepted", "[watch][config]") {
    CHECK(parse_config(R"({"metrics": {"listen": "127.0.0.1:0"}})").metrics.port == 0);
    CHECK(parse_config(R"({"metrics": {"listen": "[::1]:9187"}})").metrics.host == "::1");
    CHECK(parse_config(R"({"metrics": {"listen": "localhost:9187"}})").metrics.host == "127.0.0.1");
}

TEST_CASE("load_config reports an unreadable file", "[watch][config]") {
    try {
        load_config("/nonexistent/pgdeploy/watch.json");
        FAIL("expected a ConfigError");
    } catch (const ConfigError& e) {
        CHECK_THAT(std::string(e.what()), Catch::Matchers::Contains("cannot read config file"));
    }
}

TEST_CASE("the example configurations are valid", "[watch][config]") {
    for (const char* name : {"watch-minimal.json", "watch-full.json"}) {
        INFO(name);
        std::string path = std::string(PGDEPLOY_SOURCE_DIR) + "/examples/config/" + name;
        CHECK_NOTHROW(load_config(path));
    }
}

TEST_CASE("reload_plan: the declared keys reconnect or wait for a restart, every other key is live",
          "[watch][config]") {
    WatchConfig old = parse_config(R"({"watcher_id": "a", "database": {"dsn": "dbname=x"},
                                       "metrics": {"listen": "127.0.0.1:9187"}, "logging": {"format": "plain"}})");
    SECTION("nothing changed") {
        ReloadPlan p = reload_plan(old, old);
        CHECK_FALSE(p.reconnect);
        CHECK(p.restart_keys.empty());
    }
    SECTION("live keys need neither") {
        WatchConfig next = old;
        next.decision.cooldown = 1;
        next.logging.level = "debug";
        next.rollback.lease = 2;
        ReloadPlan p = reload_plan(old, next);
        CHECK_FALSE(p.reconnect);
        CHECK(p.restart_keys.empty());
    }
    SECTION("the connection's identity reconnects") {
        for (auto change :
             {+[](WatchConfig& c) { c.database.dsn = "dbname=y"; }, +[](WatchConfig& c) { c.watcher_id = "b"; },
              +[](WatchConfig& c) { c.leader_lock = false; }}) {
            WatchConfig next = old;
            change(next);
            ReloadPlan p = reload_plan(old, next);
            CHECK(p.reconnect);
            CHECK(p.restart_keys.empty());
        }
    }
    SECTION("the metrics address and the log format wait for a restart, and are named") {
        WatchConfig next = old;
        next.metrics.listen = "127.0.0.1:9188";
        next.logging.format = "json";
        ReloadPlan p = reload_plan(old, next);
        CHECK_FALSE(p.reconnect);
        CHECK(p.restart_keys == std::vector<std::string>{"metrics.listen", "logging.format"});
    }
}

TEST_CASE("rollback.lock_* set the lock safety of the reverting session, unset keys leave the server's",
          "[watch][config]") {
    WatchConfig none = parse_config("{}");
    CHECK(none.rollback.lock.empty());
    WatchConfig c =
        parse_config(R"({"rollback": {"lock_timeout": "200ms", "lock_attempts": 5, "lock_retry_time": "1m"}})");
    CHECK(c.rollback.lock.lock_timeout_ms == 200);
    CHECK(c.rollback.lock.lock_attempts == 5);
    CHECK(c.rollback.lock.lock_retry_time_ms == 60000);
    CHECK_FALSE(c.rollback.lock.lock_wait_ms);
    WatchConfig off = parse_config(R"({"rollback": {"lock_timeout": "0s"}})");
    CHECK(off.rollback.lock.lock_timeout_ms == 0);
    CHECK_FALSE(off.rollback.lock.lock_attempts);
    CHECK(parse_config(R"({"rollback": {"lock_retry_time": "0s"}})").rollback.lock.lock_retry_time_ms == 0);
}
