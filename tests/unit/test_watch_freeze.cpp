// Catch2 tests of the watcher's failover freeze (watch/freeze.hpp), its effect on the decision engine, and the keys
// that configure leadership and LISTEN (docs/pgdeploy.md, "Failovers and connection poolers"). Time is an input.
#include <catch2/catch.hpp>

#include "watch/config.hpp"
#include "watch/decision.hpp"
#include "watch/freeze.hpp"

using namespace pgdeploy::watch;

namespace {

constexpr Millis kSec = 1000;
constexpr Millis kMin = 60 * kSec;
constexpr Millis kWall = 1'800'000'000'000;  // an epoch in 2027

CheckConfig check(const std::string& name, CheckType type) {
    CheckConfig c;
    c.name = name;
    c.type = type;
    c.interval = kSec;
    c.failure_threshold = 3;
    c.warning_threshold = 2;
    c.success_threshold = 2;
    c.error_rate.threshold = 0.5;
    c.error_rate.window = kMin;
    c.error_rate.min_samples = 4;
    return c;
}

WatchConfig config() {
    WatchConfig cfg;
    cfg.checks = {check("api", CheckType::http), check("db", CheckType::postgres)};
    cfg.decision.watch_window = 10 * kMin;
    cfg.decision.cooldown = 0;
    return cfg;
}

DeploymentView deployment(Millis finished_at) {
    DeploymentView v;
    v.id = 2;
    v.state = "succeeded";
    v.app_version = "v2";
    v.finished_at = finished_at;
    TargetInfo t;
    t.deployment_id = 1;
    t.app_version = "v1";
    v.target = t;
    return v;
}

CheckResult result(const std::string& name, CheckStatus s) {
    CheckResult r;
    r.name = name;
    r.status = s;
    r.detail = s == CheckStatus::ok ? "ok" : "connection refused";
    return r;
}

}  // namespace

TEST_CASE("a freeze starts once, keeps its first reason, and ends with a record", "[watch][freeze]") {
    FreezeState f;
    CHECK_FALSE(f.frozen());
    CHECK_FALSE(f.thaw(10, kWall + 10).has_value());  // thawing while thawed does nothing
    CHECK(f.pending().empty());

    CHECK(f.enter(FreezeReason::lost, "server closed the connection", true, 1000, kWall + 1000));
    CHECK(f.frozen());
    CHECK_FALSE(f.enter(FreezeReason::unreachable, "connection refused", false, 1500, kWall + 1500));
    CHECK(f.reason() == FreezeReason::lost);
    CHECK(f.duration(3000) == 2000);
    CHECK(f.freezes() == 1);
    nlohmann::json j = f.to_json(3000);
    CHECK(j["reason"] == "connection_lost");
    CHECK(j["detail"] == "connection refused");  // the last error seen
    CHECK(j["duration_ms"] == 2000);
    CHECK(j["since"].get<std::string>().size() > 10);

    auto ended = f.thaw(4000, kWall + 4000);
    REQUIRE(ended.has_value());
    CHECK_FALSE(f.frozen());
    CHECK(ended->duration_ms == 3000);
    CHECK(ended->was_leader);
    CHECK(ended->reason == FreezeReason::lost);
    nlohmann::json r = ended->to_json();
    CHECK(r["duration_ms"] == 3000);
    CHECK(r["reason"] == "connection_lost");
    REQUIRE(f.pending().size() == 1);
    CHECK(f.frozen_ms_total(9000) == 3000);
    CHECK(f.to_json(9000)["since"].is_null());

    // A second freeze adds up; the queue keeps both until they are recorded.
    CHECK(f.enter(FreezeReason::standby, "in recovery", false, 10000, kWall + 10000));
    CHECK(f.frozen_ms_total(10500) == 3500);
    f.thaw(11000, kWall + 11000);
    CHECK(f.freezes() == 2);
    CHECK(f.frozen_ms_total(20000) == 4000);
    REQUIRE(f.pending().size() == 2);
    CHECK(f.pending().front().reason == FreezeReason::lost);
    f.recorded();
    CHECK(f.pending().front().reason == FreezeReason::standby);
    f.recorded();
    CHECK(f.pending().empty());
}

TEST_CASE("ended freezes that cannot be recorded are bounded", "[watch][freeze]") {
    FreezeState f;
    for (Millis i = 0; i < static_cast<Millis>(FreezeState::kMaxPending) + 5; ++i) {
        f.enter(FreezeReason::lost, "x", false, i * 10, kWall + i * 10);
        f.thaw(i * 10 + 5, kWall + i * 10 + 5);
    }
    CHECK(f.pending().size() == FreezeState::kMaxPending);
    CHECK(f.dropped() == 5);
}

TEST_CASE("server errors that mean the database is unavailable", "[watch][freeze]") {
    for (const char* s : {"08006", "08003", "08P01", "57P01", "57P02", "57P03", "25006"})
        CHECK(database_unavailable(s));
    for (const char* s : {"", "42883", "55P03", "PD007", "57014", "40001", "0800"})
        CHECK_FALSE(database_unavailable(s));
    CHECK(freeze_reason_for("25006", FreezeReason::lost) == FreezeReason::standby);
    CHECK(freeze_reason_for("57P01", FreezeReason::lost) == FreezeReason::lost);
    CHECK(freeze_reason_for("08006", FreezeReason::unreachable) == FreezeReason::unreachable);
}

TEST_CASE("while frozen nothing is decided and failures do not count, then evidence starts fresh",
          "[watch][freeze][decision]") {
    DecisionEngine e(config());
    e.observe_deployment(deployment(0), 0);
    Millis t = kSec;
    e.record(result("api", CheckStatus::ok), t);
    e.record(result("db", CheckStatus::ok), t);
    CHECK(e.evaluate(t).reason == "healthy");

    // Two failures of the postgres check before the loss is noticed, then the freeze.
    e.record(result("db", CheckStatus::critical), t += kSec);
    e.record(result("db", CheckStatus::critical), t += kSec);
    e.set_frozen(true);
    for (int i = 0; i < 10; ++i) {
        t += kSec;
        e.record(result("db", CheckStatus::critical), t);
        e.record(result("api", CheckStatus::critical), t);  // the app's endpoint fails with its database
        Decision d = e.evaluate(t);
        CHECK(d.kind == DecisionKind::none);
        CHECK(d.reason == "database_frozen");
    }
    const CheckTracker& db = e.trackers().at("db");
    CHECK(db.freeze_ignored() == 10);
    CHECK(db.last()->status == CheckStatus::critical);  // still reported
    CHECK(db.state() != HealthState::failing);
    CHECK_FALSE(db.error_rate_exceeded(t));
    CHECK(e.trackers().at("api").state() == HealthState::ok);

    // The primary is back: the two failures from before the freeze do not add up with one after it.
    e.set_frozen(false);
    CHECK(e.trackers().at("db").consecutive_failures() == 0);
    e.record(result("db", CheckStatus::critical), t += kSec);
    CHECK(e.evaluate(t).reason == "healthy");
    e.record(result("db", CheckStatus::critical), t += kSec);
    e.record(result("db", CheckStatus::critical), t += kSec);
    // A release that is really unhealthy is still rolled back, on evidence from after the freeze.
    Decision d = e.evaluate(t);
    CHECK(d.kind == DecisionKind::rollback);
    CHECK(d.triggering_checks == std::vector<std::string>{"db"});
}

TEST_CASE("leader.ttl and database.listen", "[watch][freeze][config]") {
    WatchConfig c = parse_config("{}");
    CHECK_FALSE(c.database.listen);
    CHECK(c.leader_ttl == 15 * kSec);  // max(15 s, 3 x 5 s)
    c = parse_config(R"({"database": {"poll_interval": "10s", "listen": true}})");
    CHECK(c.database.listen);
    CHECK(c.leader_ttl == 30 * kSec);
    c = parse_config(R"({"database": {"poll_interval": "500ms"}, "leader": {"ttl": "2s"}})");
    CHECK(c.leader_ttl == 2 * kSec);
    auto error_of = [](const std::string& text) -> std::string {
        try {
            parse_config(text);
        } catch (const ConfigError& e) {
            return e.what();
        }
        return "";
    };
    CHECK(error_of(R"({"database": {"poll_interval": "5s"}, "leader": {"ttl": "8s"}})").rfind("leader.ttl: ", 0) == 0);
    CHECK(
        error_of(R"({"leader": {"ttl": "500ms"}, "database": {"poll_interval": "100ms"}})").rfind("leader.ttl: ", 0) ==
        0);
    CHECK(error_of(R"({"database": {"listen": "yes"}})").rfind("database.listen", 0) == 0);
    CHECK(error_of(R"({"leader": {"ttl": "2d"}})").rfind("leader.ttl: must be at most 1d", 0) == 0);

    WatchConfig old = parse_config("{}");
    WatchConfig next = old;
    next.database.listen = true;
    CHECK(reload_plan(old, next).reconnect);
    next = old;
    next.leader_ttl = 20 * kSec;
    CHECK_FALSE(reload_plan(old, next).reconnect);  // live: the next renewal asks for the new TTL
}
