// Catch2 tests of the decision engine: every rule listed in docs/pgdeploy.md (the watcher section), with time as an
// input (no sleeping).
#include <catch2/catch.hpp>

#include "watch/decision.hpp"

using namespace pgdeploy::watch;

namespace {

constexpr Millis kSec = 1000;
constexpr Millis kMin = 60 * kSec;

CheckConfig check(const std::string& name, bool critical = true) {
    CheckConfig c;
    c.name = name;
    c.type = CheckType::http;
    c.url = "http://127.0.0.1/";
    c.interval = kSec;
    c.critical = critical;
    c.failure_threshold = 3;
    c.warning_threshold = 2;
    c.success_threshold = 2;
    c.error_rate.threshold = 0.5;
    c.error_rate.window = kMin;
    c.error_rate.min_samples = 20;
    return c;
}

WatchConfig config() {
    WatchConfig cfg;
    cfg.checks = {check("api"), check("side", false)};
    cfg.decision.watch_window = 10 * kMin;
    cfg.decision.cooldown = 5 * kMin;
    return cfg;
}

DeploymentView deployment(std::int64_t id, Millis finished_at, std::string app = "v2") {
    DeploymentView v;
    v.id = id;
    v.state = "succeeded";
    v.app_version = std::move(app);
    v.version_before = "0001";
    v.version_after = "0002";
    v.finished_at = finished_at;
    TargetInfo t;
    t.deployment_id = id - 1;
    t.app_version = "v1";
    t.schema_version = "0001";
    v.target = t;
    return v;
}

CheckResult result(const std::string& name, CheckStatus s) {
    CheckResult r;
    r.name = name;
    r.status = s;
    r.detail = to_string(s);
    return r;
}

// Feeds `n` results one second apart starting at `t`; returns the time after the last one.
Millis feed(DecisionEngine& e, const std::string& name, CheckStatus s, int n, Millis t) {
    for (int i = 0; i < n; ++i) {
        e.record(result(name, s), t);
        t += kSec;
    }
    return t;
}

}  // namespace

TEST_CASE("check state machine: ok -> warning -> failing, hysteresis on recovery", "[watch][decision]") {
    CheckTracker t(check("api"));
    t.record(result("api", CheckStatus::critical), 0, false);
    CHECK(t.state() == HealthState::ok);
    t.record(result("api", CheckStatus::critical), 1, false);
    CHECK(t.state() == HealthState::warning);  // warning_threshold = 2
    t.record(result("api", CheckStatus::critical), 2, false);
    CHECK(t.state() == HealthState::failing);  // failure_threshold = 3
    t.record(result("api", CheckStatus::ok), 3, false);
    CHECK(t.state() == HealthState::failing);  // one success is not recovery
    t.record(result("api", CheckStatus::critical), 4, false);
    t.record(result("api", CheckStatus::ok), 5, false);
    CHECK(t.state() == HealthState::failing);
    t.record(result("api", CheckStatus::ok), 6, false);
    CHECK(t.state() == HealthState::ok);  // success_threshold = 2 consecutive
}

TEST_CASE("a warning result never makes a check failing and breaks a critical run", "[watch][decision]") {
    CheckTracker t(check("cmd"));
    for (int i = 0; i < 10; ++i)
        t.record(result("cmd", CheckStatus::warning), i, false);
    CHECK(t.state() == HealthState::warning);
    t.record(result("cmd", CheckStatus::critical), 10, false);
    t.record(result("cmd", CheckStatus::critical), 11, false);
    t.record(result("cmd", CheckStatus::warning), 12, false);
    t.record(result("cmd", CheckStatus::critical), 13, false);
    CHECK(t.state() == HealthState::warning);
    CHECK(t.consecutive_failures() == 1);
}

TEST_CASE("rollback is decided when a critical check fails inside the watch window", "[watch][decision]") {
    DecisionEngine e(config());
    e.observe_deployment(deployment(2, 0), 0);
    Millis t = feed(e, "api", CheckStatus::critical, 2, kSec);
    CHECK(e.evaluate(t).kind == DecisionKind::none);  // below failure_threshold
    t = feed(e, "api", CheckStatus::critical, 1, t);
    Decision d = e.evaluate(t);
    CHECK(d.kind == DecisionKind::rollback);
    CHECK(d.deployment_id == 2);
    CHECK(d.triggering_checks == std::vector<std::string>{"api"});
    CHECK(d.fresh);
}

TEST_CASE("flapping below the thresholds never triggers", "[watch][decision]") {
    DecisionEngine e(config());
    e.observe_deployment(deployment(2, 0), 0);
    Millis t = kSec;
    // fail, ok, fail, ok ... : never 3 consecutive failures; fewer samples than min_samples (20) in the window.
    for (int i = 0; i < 9; ++i) {
        t = feed(e, "api", CheckStatus::critical, 1, t);
        t = feed(e, "api", CheckStatus::ok, 1, t);
        CHECK(e.evaluate(t).kind == DecisionKind::none);
    }
    // fail, fail, ok: 2 of 3 fail (67 %) with a low error-rate threshold but still below min_samples, then
    // many samples at a rate below the threshold (1 in 3 = 33 % < 50 %).
    DecisionEngine f(config());
    f.observe_deployment(deployment(2, 0), 0);
    t = kSec;
    for (int i = 0; i < 30; ++i) {
        t = feed(f, "api", CheckStatus::critical, 1, t);
        t = feed(f, "api", CheckStatus::ok, 2, t);
        CHECK(f.evaluate(t).kind == DecisionKind::none);
    }
    CHECK(f.trackers().at("api").samples(t) >= 20);
    CHECK(f.trackers().at("api").error_rate(t) < 0.5);
}

TEST_CASE("an error rate over the window with enough samples triggers; old samples leave the window",
          "[watch][decision]") {
    DecisionEngine e(config());
    e.observe_deployment(deployment(2, 0), 0);
    Millis t = kSec;
    for (int i = 0; i < 9; ++i) {  // 18 samples at 50 %: below min_samples
        t = feed(e, "api", CheckStatus::critical, 1, t);
        t = feed(e, "api", CheckStatus::ok, 1, t);
    }
    CHECK(e.evaluate(t).kind == DecisionKind::none);
    t = feed(e, "api", CheckStatus::critical, 1, t);
    t = feed(e, "api", CheckStatus::ok, 1, t);                 // 20 samples, 50 % >= 0.5
    CHECK(e.trackers().at("api").state() == HealthState::ok);  // never 2 in a row...
    Decision d = e.evaluate(t);
    CHECK(d.kind == DecisionKind::rollback);  // ...but the error rate says the release is bad

    CheckTracker w(check("api"));
    for (int i = 0; i < 20; ++i)
        w.record(result("api", i % 2 ? CheckStatus::ok : CheckStatus::critical), i * kSec, false);
    CHECK(w.error_rate_exceeded(20 * kSec));
    CHECK(w.samples(20 * kSec + kMin) == 0);  // a minute later all samples have left the window
    CHECK_FALSE(w.error_rate_exceeded(20 * kSec + kMin));
}

TEST_CASE("no rollback outside the watch window", "[watch][decision]") {
    DecisionEngine e(config());
    e.observe_deployment(deployment(2, 0), 0);
    Millis t = 11 * kMin;
    t = feed(e, "api", CheckStatus::critical, 5, t);
    Decision d = e.evaluate(t);
    CHECK(d.kind == DecisionKind::none);
    CHECK(d.reason == "outside_window");
}

TEST_CASE("failures inside the grace period are ignored, later ones count", "[watch][decision]") {
    WatchConfig cfg = config();
    cfg.checks[0].grace_period = 30 * kSec;
    DecisionEngine e(cfg);
    e.observe_deployment(deployment(2, 0), 0);
    Millis t = feed(e, "api", CheckStatus::critical, 10, kSec);  // t = 1..10 s, all in grace
    CHECK(e.trackers().at("api").grace_ignored() == 10);
    CHECK(e.trackers().at("api").state() == HealthState::ok);
    CHECK(e.evaluate(t).kind == DecisionKind::none);
    t = feed(e, "api", CheckStatus::critical, 3, 31 * kSec);
    CHECK(e.evaluate(t).kind == DecisionKind::rollback);
}

TEST_CASE("never the same deployment twice", "[watch][decision]") {
    DecisionEngine e(config());
    e.observe_deployment(deployment(2, 0), 0);
    Millis t = feed(e, "api", CheckStatus::critical, 3, kSec);
    Decision d = e.evaluate(t);
    REQUIRE(d.kind == DecisionKind::rollback);
    e.commit(d, t);
    t = feed(e, "api", CheckStatus::critical, 3, t);
    Decision again = e.evaluate(t);
    CHECK(again.kind == DecisionKind::suppressed);
    CHECK(again.reason == "already_handled");

    // Another watcher's marker in the ledger counts too (a take-over after the leader died).
    DecisionEngine other(config());
    DeploymentView v = deployment(2, 0);
    v.has_marker = true;
    other.observe_deployment(v, 0);
    t = feed(other, "api", CheckStatus::critical, 3, kSec);
    CHECK(other.evaluate(t).reason == "already_handled");
}

TEST_CASE("cooldown after a rollback, from this watcher or from the ledger", "[watch][decision]") {
    DecisionEngine e(config());
    e.observe_deployment(deployment(2, 0), 0);
    Millis t = feed(e, "api", CheckStatus::critical, 3, kSec);
    Decision d = e.evaluate(t);
    REQUIRE(d.kind == DecisionKind::rollback);
    e.commit(d, t);
    Millis rolled_back_at = t;

    // A new release two minutes later also fails: still in the 5-minute cooldown.
    e.observe_deployment(deployment(4, rolled_back_at + 2 * kMin, "v3"), rolled_back_at + 2 * kMin);
    t = feed(e, "api", CheckStatus::critical, 3, rolled_back_at + 2 * kMin + kSec);
    Decision c = e.evaluate(t);
    CHECK(c.kind == DecisionKind::suppressed);
    CHECK(c.reason == "cooldown");
    // After the cooldown the same evidence decides.
    t = feed(e, "api", CheckStatus::critical, 1, rolled_back_at + 5 * kMin + kSec);
    CHECK(e.evaluate(t).kind == DecisionKind::rollback);

    // A rollback recorded in the ledger (last_rollback_at) starts the cooldown for a fresh watcher too.
    DecisionEngine fresh(config());
    DeploymentView v = deployment(6, 10 * kSec);
    v.last_rollback_at = 1;
    fresh.observe_deployment(v, 10 * kSec);
    t = feed(fresh, "api", CheckStatus::critical, 3, 11 * kSec);
    CHECK(fresh.evaluate(t).reason == "cooldown");
}

TEST_CASE("never roll back into a release that was itself failing", "[watch][decision]") {
    // The ledger says so (a marker or a watcher_unhealthy event for the target's release).
    DecisionEngine e(config());
    DeploymentView v = deployment(3, 0);
    v.target->failing = true;
    e.observe_deployment(v, 0);
    Millis t = feed(e, "api", CheckStatus::critical, 3, kSec);
    Decision d = e.evaluate(t);
    CHECK(d.kind == DecisionKind::suppressed);
    CHECK(d.reason == "target_failing");

    // This watcher saw it: release v1 was failing when v2 replaced it; v2 fails too; going back to v1 is refused.
    WatchConfig cfg = config();
    cfg.decision.watch_window = kSec;  // v1 failed outside its window: no rollback then, but it is remembered
    DecisionEngine w(cfg);
    w.observe_deployment(deployment(1, 0, "v1"), 0);
    t = feed(w, "api", CheckStatus::critical, 3, 10 * kSec);
    CHECK(w.evaluate(t).reason == "outside_window");
    cfg.decision.watch_window = 10 * kMin;
    w.reconfigure(cfg);
    w.observe_deployment(deployment(2, t, "v2"), t);  // target app v1
    t = feed(w, "api", CheckStatus::critical, 3, t + kSec);
    CHECK(w.evaluate(t).reason == "target_failing");
}

TEST_CASE("no earlier release: nothing to roll back into", "[watch][decision]") {
    DecisionEngine e(config());
    DeploymentView v = deployment(1, 0);
    v.target.reset();
    e.observe_deployment(v, 0);
    Millis t = feed(e, "api", CheckStatus::critical, 3, kSec);
    CHECK(e.evaluate(t).reason == "no_target");
}

TEST_CASE("a release with irreversible migrations is frozen, not reverted", "[watch][decision]") {
    DecisionEngine e(config());
    DeploymentView v = deployment(2, 0);
    v.irreversible_versions = {"0002"};
    e.observe_deployment(v, 0);
    Millis t = feed(e, "api", CheckStatus::critical, 3, kSec);
    Decision d = e.evaluate(t);
    CHECK(d.kind == DecisionKind::freeze);
    CHECK(d.reason == "irreversible");
    CHECK_THAT(d.message, Catch::Matchers::Contains("0002"));
    e.commit(d, t);
    t = feed(e, "api", CheckStatus::critical, 1, t);
    CHECK(e.evaluate(t).reason == "already_handled");  // alerted once, not every cycle
}

TEST_CASE("dry run records what it would do", "[watch][decision]") {
    WatchConfig cfg = config();
    cfg.decision.dry_run = true;
    DecisionEngine e(cfg);
    e.observe_deployment(deployment(2, 0), 0);
    Millis t = feed(e, "api", CheckStatus::critical, 3, kSec);
    CHECK(e.evaluate(t).kind == DecisionKind::would_rollback);

    WatchConfig per_check = config();
    per_check.checks[0].dry_run = true;
    per_check.checks.push_back(check("db"));
    DecisionEngine p(per_check);
    p.observe_deployment(deployment(2, 0), 0);
    t = feed(p, "api", CheckStatus::critical, 3, kSec);
    CHECK(p.evaluate(t).kind == DecisionKind::would_rollback);  // only a dry-run check fails
    t = feed(p, "db", CheckStatus::critical, 3, t);
    CHECK(p.evaluate(t).kind == DecisionKind::rollback);  // a real check fails too
}

TEST_CASE("non-critical checks alert but never roll back", "[watch][decision]") {
    DecisionEngine e(config());
    e.observe_deployment(deployment(2, 0), 0);
    Millis t = feed(e, "side", CheckStatus::critical, 30, kSec);
    CHECK(e.trackers().at("side").state() == HealthState::failing);
    CHECK(e.evaluate(t).kind == DecisionKind::none);
}

TEST_CASE("a running or rolled-back deployment is not judged; a change of deployment starts fresh evidence",
          "[watch][decision]") {
    DecisionEngine e(config());
    DeploymentView v = deployment(2, 0);
    v.state = "running";
    e.observe_deployment(v, 0);
    Millis t = feed(e, "api", CheckStatus::critical, 3, kSec);
    CHECK(e.evaluate(t).reason == "deployment_running");
    v.state = "succeeded";
    v.finished_at = t;
    e.observe_deployment(v, t);
    CHECK(e.trackers().at("api").consecutive_failures() == 0);
    CHECK(e.evaluate(t).kind == DecisionKind::none);
    v.state = "rolled_back";
    e.observe_deployment(v, t);
    t = feed(e, "api", CheckStatus::critical, 3, t);
    CHECK(e.evaluate(t).reason == "deployment_rolled_back");
    DecisionEngine empty(config());
    CHECK(empty.evaluate(0).reason == "no_deployment");
}

TEST_CASE("the same decision twice is not fresh (logged and recorded once)", "[watch][decision]") {
    DecisionEngine e(config());
    DeploymentView v = deployment(2, 0);
    v.target.reset();
    e.observe_deployment(v, 0);
    Millis t = feed(e, "api", CheckStatus::critical, 3, kSec);
    CHECK(e.evaluate(t).fresh);
    CHECK_FALSE(e.evaluate(t + 1).fresh);
    t = feed(e, "api", CheckStatus::ok, 2, t);
    CHECK(e.evaluate(t).fresh);  // healthy again: a different decision
}

TEST_CASE("recovery after a rollback needs success_threshold fresh successes of every critical check",
          "[watch][decision]") {
    DecisionEngine e(config());
    e.observe_deployment(deployment(2, 0), 0);
    feed(e, "api", CheckStatus::critical, 3, kSec);
    CHECK_FALSE(e.all_critical_healthy());
    DeploymentView v = deployment(2, 0);
    v.state = "rolled_back";
    e.observe_deployment(v, 10 * kSec);
    CHECK_FALSE(e.all_critical_healthy());  // no evidence yet
    feed(e, "api", CheckStatus::ok, 1, 11 * kSec);
    CHECK_FALSE(e.all_critical_healthy());
    feed(e, "api", CheckStatus::ok, 1, 12 * kSec);
    CHECK(e.all_critical_healthy());  // the non-critical check does not matter
}

TEST_CASE("reload keeps the history of checks that keep their name", "[watch][decision]") {
    DecisionEngine e(config());
    e.observe_deployment(deployment(2, 0), 0);
    feed(e, "api", CheckStatus::critical, 2, kSec);
    WatchConfig next = config();
    next.checks[0].failure_threshold = 2;
    next.checks.pop_back();
    e.reconfigure(next);
    CHECK(e.trackers().size() == 1);
    CHECK(e.trackers().at("api").consecutive_failures() == 2);
    CHECK(e.evaluate(3 * kSec).kind == DecisionKind::none);  // state updates at the next result
    feed(e, "api", CheckStatus::critical, 1, 3 * kSec);
    CHECK(e.evaluate(4 * kSec).kind == DecisionKind::rollback);
}

TEST_CASE("the error-rate window slides in small buckets: bounded memory, exact within a bucket", "[watch][decision]") {
    CheckConfig c = check("api");  // window 1 minute: buckets of 500 ms
    CheckTracker t(c);
    Millis now = 0;
    for (int i = 0; i < 10000; ++i) {  // 100 s of results every 10 ms, one in four critical
        t.record(result("api", i % 4 == 0 ? CheckStatus::critical : CheckStatus::ok), now, false);
        now += 10;
    }
    int n = t.samples(now);
    CHECK(n >= 6000);  // the last minute...
    CHECK(n <= 6050);  // ...plus at most one bucket
    CHECK(t.error_rate(now) == Approx(0.25).epsilon(0.01));
    CHECK(t.samples(now + 2 * kMin) == 0);
}

TEST_CASE("the error-rate ring: a long run of results keeps the window's counts exact to a bucket",
          "[watch][decision]") {
    CheckConfig c = check("api");  // window 1 minute: buckets of 500 ms
    CheckTracker t(c);
    Millis now = 0;
    // A gap longer than the window in the middle: the ring must drop everything, then start again.
    for (int i = 0; i < 3000; ++i) {
        t.record(result("api", CheckStatus::critical), now, false);
        now += i == 1500 ? 5 * kMin : 100;
    }
    int n = t.samples(now);
    CHECK(n >= 600);  // the last minute at 10 a second...
    CHECK(n <= 605);  // ...plus at most one bucket
    CHECK(t.error_rate(now) == Approx(1.0));
    t.reset();
    CHECK(t.samples(now) == 0);
    t.record(result("api", CheckStatus::ok), now, false);
    CHECK(t.samples(now) == 1);
    CHECK(t.error_rate(now) == Approx(0.0));
}

TEST_CASE("a reload that changes the error-rate window keeps the samples still inside it", "[watch][decision]") {
    CheckConfig c = check("api");  // window 1 minute
    CheckTracker t(c);
    Millis now = 0;
    for (int i = 0; i < 120; ++i) {  // two minutes, one a second, one in two critical
        t.record(result("api", i % 2 ? CheckStatus::critical : CheckStatus::ok), now, false);
        now += kSec;
    }
    CHECK(t.samples(now) >= 59);
    CHECK(t.samples(now) <= 61);
    c.error_rate.window = 10 * kMin;  // longer: only what the old window still held is left
    t.reconfigure(c);
    CHECK(t.samples(now) >= 59);
    CHECK(t.samples(now) <= 61);
    CHECK(t.error_rate(now) == Approx(0.5).epsilon(0.05));
    c.error_rate.window = 10 * kSec;  // shorter: the older samples leave
    t.reconfigure(c);
    CHECK(t.samples(now) >= 9);
    CHECK(t.samples(now) <= 12);
}

TEST_CASE("checks_json writes the same text as the checks of to_json in an indented document", "[watch][decision]") {
    WatchConfig cfg = config();
    cfg.checks.push_back(check("quote\"and\nnewline"));
    DecisionEngine e(cfg);
    auto expect = [&](Millis now) {
        nlohmann::json doc = {{"checks", e.to_json(now)["checks"]}, {"zz", 1}};
        std::string text = "{\n  \"checks\": ";
        e.checks_json(now, text);
        text += ",\n  \"zz\": 1\n}";
        CHECK(text == doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
    };
    expect(0);  // no results yet: "last" is null
    Millis t = feed(e, "api", CheckStatus::critical, 3, 0);
    CheckResult odd = result("side", CheckStatus::warning);
    odd.detail = "exit 1: \xff not UTF-8 and a \"quote\"";
    odd.latency_ms = 12.345;
    e.record(odd, t);
    expect(t + 5);
    e.observe_deployment(deployment(7, t), t);  // in grace, fresh trackers
    expect(t + 10);
    std::string pieces = "{\n  \"checks\": ";
    int flushes = 0;
    std::string whole;
    for (int i = 0; i < 1000; ++i)  // enough checks for several 64 KB pieces
        cfg.checks.push_back(check("many_" + std::to_string(i)));
    DecisionEngine big(cfg);
    big.checks_json(t, whole);
    std::string joined;
    big.checks_json(t, joined, [&](std::string& part) {
        ++flushes;
        pieces += part;
        part.clear();
    });
    CHECK(flushes >= 2);
    CHECK("{\n  \"checks\": " + whole == pieces + joined);
    WatchConfig none;
    DecisionEngine empty(none);
    std::string text;
    empty.checks_json(0, text);
    CHECK(text == "[]");
}
