// Lock safety on the client side: the --lock-* flags (cli/args), the wording of a retry (common/lock_safety), what
// next_step asks for (cli/steps), and the progress descriptions of the monitor (common/progress). The retry rule
// itself is the extension's (test_extension_lock_backoff.cpp). Nothing here sleeps or needs a server.
#include <catch2/catch.hpp>

#include "cli/args.hpp"
#include "common/lock_safety.hpp"
#include "common/progress.hpp"
#include "common/steps.hpp"

using namespace pgdeploy;
using nlohmann::json;

namespace {

const cli::CommandSpec& spec() {
    static const cli::CommandSpec s{
        "up", "", "test", cli::with_lock_retry_options({{"lock-wait", 0, true, "DURATION", ""}}), 0, 0, ""};
    return s;
}

common::LockSafety flags(const std::vector<std::string>& args) {
    return cli::lock_flags(cli::parse_args(spec(), args));
}

std::string error_of(const std::vector<std::string>& args) {
    try {
        flags(args);
    } catch (const cli::ArgumentError& e) {
        CHECK(e.exit_code() == 2);
        return e.what();
    }
    return "(no error)";
}

}  // namespace

TEST_CASE("the --lock-* flags become the session's pg_deploy.lock_* settings", "[cli][lock]") {
    CHECK(flags({}).empty());
    auto s = flags({"--lock-timeout", "200ms", "--lock-attempts", "3", "--lock-retry-time", "2min", "--lock-wait=5s"});
    CHECK(s.lock_timeout_ms == 200);
    CHECK(s.lock_attempts == 3);
    CHECK(s.lock_retry_time_ms == 120000);
    CHECK(s.lock_wait_ms == 5000);
    CHECK(flags({"--lock-timeout", "0"}).lock_timeout_ms == 0);     // off: no lock timeout of pg_deploy's
    CHECK(flags({"--lock-timeout", "2"}).lock_timeout_ms == 2000);  // bare seconds, as --lock-wait
    CHECK_FALSE(flags({"--lock-attempts", "7"}).lock_timeout_ms);   // unset stays unset
}

TEST_CASE("bad --lock-* values are usage errors naming the option", "[cli][lock]") {
    CHECK(error_of({"--lock-timeout", "soon"}) ==
          "--lock-timeout needs a duration like 10s, 500ms, 2min or 1h, not \"soon\"");
    CHECK(error_of({"--lock-timeout", "-1s"}) ==
          "--lock-timeout needs a duration like 10s, 500ms, 2min or 1h, not \"-1s\"");
    CHECK(error_of({"--lock-timeout", "600h"}) ==
          "--lock-timeout must be at most 2147483647ms (about 24 days), not \"600h\"");
    CHECK(error_of({"--lock-attempts", "0"}) == "--lock-attempts must be between 1 and 10000, not 0");
    CHECK(error_of({"--lock-attempts", "10001"}) == "--lock-attempts must be between 1 and 10000, not 10001");
    CHECK(error_of({"--lock-attempts", "3x"}) == "--lock-attempts needs a positive integer, not \"3x\"");
    CHECK(error_of({"--lock-retry-time", "1fortnight"}) ==
          "--lock-retry-time needs a duration like 10s, 500ms, 2min or 1h, not \"1fortnight\"");
    CHECK(error_of({"--lock-wait", "forever"}) ==
          "--lock-wait needs a duration like 10s, 500ms, 2min or 1h, not \"forever\"");
    CHECK_THROWS_WITH(cli::parse_args(spec(), {"--lock-timeout"}), "option --lock-timeout needs a value");
    CHECK_THROWS_WITH(cli::parse_args(spec(), {"--lock-timeou", "1s"}),
                      "unknown option --lock-timeou (did you mean --lock-timeout?)");
}

TEST_CASE("a retry line names the statement, the lock and the blocking session", "[cli][lock]") {
    json entry = {{"attempt", 2},
                  {"version", "0002"},
                  {"name", "add_column"},
                  {"step", nullptr},
                  {"lock", {{"type", "relation"}, {"object", "public.accounts"}, {"mode", "AccessExclusiveLock"}}},
                  {"blocker",
                   {{"pid", 1234},
                    {"application_name", "app"},
                    {"user", "app"},
                    {"state", "idle in transaction"},
                    {"xact_age_ms", 3200}}},
                  {"waited_ms", 500},
                  {"backoff_ms", 340}};
    CHECK(common::lock_retry_message(entry, 30) ==
          "lock retry 2/30: migration 0002 (add_column) waited 500 ms for AccessExclusiveLock on relation "
          "public.accounts; blocked by pid 1234 (application_name \"app\", user \"app\", state \"idle in "
          "transaction\", transaction open 3.2 s); next attempt in 340 ms");
    CHECK(std::string(common::lock_retry_message(entry, 30)).rfind(common::kLockRetryPrefix, 0) == 0);

    entry["step"] = 1;
    entry["lock"] = nullptr;
    entry["blocker"] = nullptr;
    CHECK(common::lock_retry_message(entry, 3) ==
          "lock retry 2/3: step 1 of migration 0002 (add_column) waited 500 ms for a lock; blocked by an unknown "
          "session; next attempt in 340 ms");
    // What the server did not show (another user's state, no transaction) is left out.
    CHECK(common::describe_blocker(
              {{"pid", 7}, {"application_name", ""}, {"user", "u"}, {"state", nullptr}, {"xact_age_ms", nullptr}}) ==
          "pid 7 (application_name \"\", user \"u\")");
    CHECK(common::describe_blocker({{"pid", 7}, {"xact_age_ms", 300}}) == "pid 7 (transaction open 0.3 s)");
}

TEST_CASE("a step runs under next_step's lock timeout and budget only when it has them", "[cli][lock]") {
    CHECK(common::step_lock_timeout_ms(json::parse(R"({"statement": "x", "lock_timeout_ms": 500})")) == 500);
    CHECK(common::step_lock_timeout_ms(json::parse(R"({"statement": "x", "lock_timeout_ms": null})")) == 0);
    CHECK(common::step_lock_timeout_ms(json::parse(R"({"statement": "x"})")) == 0);  // an older extension
    CHECK(common::step_lock_timeout_ms(json::parse(R"({"lock_timeout_ms": 0})")) == 0);
    auto b = common::step_retry_budget(json::parse(R"({"lock_retry": {"attempts": 4, "time_ms": 9000}})"));
    CHECK(b.attempts == 4);
    CHECK(b.time_ms == 9000);
    auto d = common::step_retry_budget(json::parse(R"({"statement": "x"})"));
    CHECK(d.attempts == 30);
    CHECK(d.time_ms == 60000);
}

TEST_CASE("progress lines show the phase, the percentage and the session waited for", "[cli][progress]") {
    json cic = json::parse(R"({"create_index": {"command": "CREATE INDEX CONCURRENTLY",
        "phase": "building index: scanning table", "blocks_total": 200, "blocks_done": 90, "tuples_total": 0,
        "tuples_done": 0, "lockers_total": 0, "lockers_done": 0}, "cluster": null, "lock": null, "blocker": null})");
    CHECK(common::describe_progress(cic) == "CREATE INDEX CONCURRENTLY: building index: scanning table 45%");

    json waiting = json::parse(R"({"create_index": {"command": "CREATE INDEX CONCURRENTLY",
        "phase": "waiting for old snapshots", "blocks_total": 0, "tuples_total": 0, "lockers_total": 2,
        "lockers_done": 1}, "lock": {"type": "virtualxid", "object": "5/12", "mode": "ShareLock"},
        "blocker": {"pid": 99, "application_name": "app", "state": "idle in transaction", "xact_age_ms": 12000}})");
    CHECK(common::describe_progress(waiting) ==
          "CREATE INDEX CONCURRENTLY: waiting for old snapshots 50%; waiting for ShareLock on virtualxid 5/12 held "
          "by pid 99 (application_name \"app\", state \"idle in transaction\", transaction open 12.0 s)");

    json vacuum = json::parse(R"({"cluster": {"command": "VACUUM FULL", "phase": "seq scanning heap",
        "heap_blks_total": 1000, "heap_blks_scanned": 333}})");
    CHECK(common::describe_progress(vacuum) == "VACUUM FULL: seq scanning heap 33%");

    CHECK(common::describe_progress(json::parse(R"({"create_index": null, "cluster": null, "lock": null})")) == "");
    CHECK(common::describe_progress(nullptr) == "");
    CHECK_FALSE(common::progress_percent(json::parse(R"({"phase": "initializing", "blocks_total": 0})")));
    CHECK(common::progress_percent(json::parse(R"({"tuples_total": 4, "tuples_done": 4})")) == Approx(100.0));
}
