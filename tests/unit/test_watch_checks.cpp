// Catch2 tests of check result classification and of the process runner behind command checks and the app hook.
#include <catch2/catch.hpp>

#include "watch/checks.hpp"
#include "watch/executor.hpp"
#include "watch/process.hpp"

using namespace pgdeploy::watch;

namespace {

CheckConfig http_check() {
    CheckConfig c;
    c.name = "api";
    c.type = CheckType::http;
    c.url = "http://127.0.0.1/";
    return c;
}

ProcessResult exited(int code, std::string out = "") {
    ProcessResult p;
    p.started = true;
    p.exit_code = code;
    p.output = std::move(out);
    return p;
}

}  // namespace

TEST_CASE("http results: expected status, body substring, transport errors", "[watch][checks]") {
    CheckConfig c = http_check();
    CHECK(classify_http(c, 200, "hello", "").status == CheckStatus::ok);
    auto r = classify_http(c, 503, "down", "");
    CHECK(r.status == CheckStatus::critical);
    CHECK(r.detail == "HTTP 503 (expected 200)");
    c.body_contains = "\"ok\"";
    CHECK(classify_http(c, 200, R"({"status":"ok"})", "").status == CheckStatus::ok);
    CHECK(classify_http(c, 200, R"({"status":"degraded"})", "").status == CheckStatus::critical);
    c.expect_status = 204;
    CHECK(classify_http(c, 200, R"("ok")", "").status == CheckStatus::critical);
    auto e = classify_http(c, 0, "", "Failed to connect to 127.0.0.1 port 1: Connection refused");
    CHECK(e.status == CheckStatus::critical);
    CHECK_THAT(e.detail, Catch::Matchers::Contains("Connection refused"));
}

TEST_CASE("command results: exit 0 ok, 1 warning, anything else critical", "[watch][checks]") {
    CheckConfig c;
    c.name = "cmd";
    c.type = CheckType::command;
    CHECK(classify_command(c, exited(0)).status == CheckStatus::ok);
    CHECK(classify_command(c, exited(1)).status == CheckStatus::warning);
    CHECK(classify_command(c, exited(2)).status == CheckStatus::critical);
    CHECK(classify_command(c, exited(127)).status == CheckStatus::critical);
    ProcessResult killed = exited(-1);
    killed.signal = 9;
    CHECK(classify_command(c, killed).status == CheckStatus::critical);
    ProcessResult timeout = exited(0);
    timeout.timed_out = true;
    CHECK(classify_command(c, timeout).status == CheckStatus::critical);
    ProcessResult not_started;
    not_started.error = "cannot run";
    CHECK(classify_command(c, not_started).status == CheckStatus::critical);
}

TEST_CASE("run_process: argv without a shell, exit codes, output capture and truncation", "[watch][process]") {
    auto echo = run_process({"/bin/echo", "$(id)", ";", "rm", "-rf", "/"}, {}, 5000, 4096);
    REQUIRE(echo.started);
    CHECK(echo.exit_code == 0);
    CHECK(echo.output == "$(id) ; rm -rf /\n");  // shell syntax is inert

    auto code = run_process({"/bin/sh", "-c", "echo out; echo err >&2; exit 3"}, {}, 5000, 4096);
    CHECK(code.exit_code == 3);
    CHECK_THAT(code.output, Catch::Matchers::Contains("out") && Catch::Matchers::Contains("err"));
    CHECK(describe(code).rfind("exit 3: ", 0) == 0);

    auto big = run_process({"/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"}, {}, 5000, 100);
    CHECK(big.output.size() == 100);
    CHECK(big.truncated);

    auto env =
        run_process({"/bin/sh", "-c", "printf %s \"$PGDEPLOY_ATTEMPT\""}, {{"PGDEPLOY_ATTEMPT", "2"}}, 5000, 100);
    CHECK(env.output == "2");

    auto missing = run_process({"/nonexistent/program"}, {}, 5000, 100);
    CHECK_FALSE(missing.started);
    CHECK_THAT(missing.error, Catch::Matchers::Contains("No such file"));
}

TEST_CASE("run_process kills the whole process group on timeout", "[watch][process]") {
    auto slow = run_process({"/bin/sh", "-c", "sleep 30 & sleep 30"}, {}, 300, 100);
    CHECK(slow.timed_out);
    CHECK(slow.duration_ms < 5000);
    CHECK_THAT(describe(slow), Catch::Matchers::Contains("timeout"));
}

TEST_CASE("run_process stops when the tick callback asks", "[watch][process]") {
    int ticks = 0;
    auto r = run_process({"/bin/sleep", "30"}, {}, 60000, 100, [&] { return ++ticks < 3; });
    CHECK(r.error == "interrupted");
    CHECK(r.duration_ms < 5000);
}

TEST_CASE("retry backoff doubles up to its cap", "[watch][executor]") {
    RollbackConfig rb;
    rb.retry_backoff = 1000;
    rb.retry_backoff_max = 5000;
    CHECK(retry_delay(rb, 1) == 1000);
    CHECK(retry_delay(rb, 2) == 2000);
    CHECK(retry_delay(rb, 3) == 4000);
    CHECK(retry_delay(rb, 4) == 5000);
    CHECK(retry_delay(rb, 50) == 5000);
}

TEST_CASE("the hook's environment names both releases, the marker and the attempt", "[watch][executor]") {
    MarkerInfo m;
    m.id = 7;
    m.deployment_id = 3;
    m.from_app_version = "v3";
    m.to_app_version = "v2";
    m.from_schema_version = "0003";
    m.to_schema_version = "0002";
    auto env = hook_variables(m, 2, "web-1");
    CHECK(env.at("PGDEPLOY_FROM_APP_VERSION") == "v3");
    CHECK(env.at("PGDEPLOY_TO_APP_VERSION") == "v2");
    CHECK(env.at("PGDEPLOY_FROM_SCHEMA_VERSION") == "0003");
    CHECK(env.at("PGDEPLOY_TO_SCHEMA_VERSION") == "0002");
    CHECK(env.at("PGDEPLOY_DEPLOYMENT_ID") == "3");
    CHECK(env.at("PGDEPLOY_MARKER_ID") == "7");
    CHECK(env.at("PGDEPLOY_ATTEMPT") == "2");
    CHECK(env.at("PGDEPLOY_WATCHER_ID") == "web-1");
}

TEST_CASE("tcp and http checks against closed ports fail fast and critically", "[watch][checks]") {
    CheckConfig tcp;
    tcp.name = "tcp";
    tcp.type = CheckType::tcp;
    tcp.host = "127.0.0.1";
    tcp.port = 1;
    tcp.timeout = 1000;
    CheckConfig http = http_check();
    http.url = "http://127.0.0.1:1/health";
    http.timeout = 1000;
    auto results = run_checks({&tcp, &http}, "");
    REQUIRE(results.size() == 2);
    for (const auto& r : results) {
        INFO(r.name << ": " << r.detail);
        CHECK(r.status == CheckStatus::critical);
        CHECK(r.latency_ms < 1500);
    }
}

TEST_CASE("program output that is not UTF-8 is made safe for JSON", "[watch][process]") {
    CHECK(sanitize_utf8("plain") == "plain");
    CHECK(sanitize_utf8("caf\xc3\xa9") == "caf\xc3\xa9");
    CHECK(sanitize_utf8("bad \xff\xfe end") == "bad ?? end");
    CHECK(sanitize_utf8("cut \xc3") == "cut ?");
    CHECK(sanitize_utf8("\xed\xa0\x80") == "???");  // a UTF-16 surrogate
    CHECK(sanitize_utf8("\xc0\xaf") == "??");       // overlong '/'
    auto r = run_process({"/usr/bin/printf", "\\377\\376ok"}, {}, 5000, 100);
    CHECK(r.output == "??ok");
    nlohmann::json j = {{"output", r.output}};
    CHECK_NOTHROW(j.dump());
}
