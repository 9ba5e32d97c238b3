// Catch2 tests of the /metrics text (prometheus_text, watch/metrics.cpp): every family has HELP and TYPE, the
// counters list every result and decision kind (0 when none happened), gauges that are not known are left out.
#include <catch2/catch.hpp>

#include <map>
#include <string>

#include "watch/config.hpp"
#include "watch/metrics.hpp"

using namespace pgdeploy::watch;

TEST_CASE("prometheus_text: families, counters by word, unknown gauges left out", "[watch][metrics]") {
    WatchConfig cfg = parse_config(R"({"checks": [{"name": "api.v2", "type": "tcp", "host": "h", "port": 1}]})");
    DecisionEngine engine(cfg);
    engine.record(CheckResult{"api.v2", CheckStatus::ok, 250, ""}, 1000);
    std::map<std::string, long> rollbacks{{"done", 2}};
    std::map<DecisionKind, long> decisions{{DecisionKind::freeze, 1}};
    std::string text = prometheus_text({engine, 1000, rollbacks, decisions, true, false, -1, true, 2, 4500});

    CHECK(text.find("# HELP pgdeploy_watch_check_state Check state: 0 ok, 1 warning, 2 failing.\n"
                    "# TYPE pgdeploy_watch_check_state gauge\n"
                    "pgdeploy_watch_check_state{check=\"api.v2\",type=\"tcp\",critical=\"true\"} 0\n") !=
          std::string::npos);
    CHECK(text.find("pgdeploy_watch_check_up{check=\"api.v2\"} 1\n") != std::string::npos);
    CHECK(text.find("pgdeploy_watch_check_latency_seconds{check=\"api.v2\"} 0.25\n") != std::string::npos);
    CHECK(text.find("pgdeploy_watch_rollbacks_total{result=\"done\"} 2\n") != std::string::npos);
    CHECK(text.find("pgdeploy_watch_rollbacks_total{result=\"unrecovered\"} 0\n") != std::string::npos);
    CHECK(text.find("pgdeploy_watch_decisions_total{kind=\"freeze\"} 1\n") != std::string::npos);
    CHECK(text.find("pgdeploy_watch_decisions_total{kind=\"would_rollback\"} 0\n") != std::string::npos);
    CHECK(text.find("pgdeploy_watch_leader 1\n") != std::string::npos);
    CHECK(text.find("pgdeploy_watch_database_up 0\n") != std::string::npos);
    // A failover freeze: the gauge, the count and the seconds (watch/freeze.hpp).
    CHECK(text.find("# TYPE pgdeploy_watch_frozen gauge\npgdeploy_watch_frozen 1\n") != std::string::npos);
    CHECK(text.find("# TYPE pgdeploy_watch_freezes_total counter\npgdeploy_watch_freezes_total 2\n") !=
          std::string::npos);
    CHECK(text.find("pgdeploy_watch_frozen_seconds_total 4.5\n") != std::string::npos);
    // Not known yet, or nothing deployed: no sample rather than a made-up one.
    CHECK(text.find("pgdeploy_watch_pending_migrations") == std::string::npos);
    CHECK(text.find("pgdeploy_watch_deployment_id") == std::string::npos);

    std::string with_pending = prometheus_text({engine, 1000, rollbacks, decisions, false, true, 3, false, 0, 0});
    CHECK(with_pending.find("# TYPE pgdeploy_watch_pending_migrations gauge\npgdeploy_watch_pending_migrations 3\n") !=
          std::string::npos);
    CHECK(with_pending.find("pgdeploy_watch_frozen 0\n") != std::string::npos);
}
