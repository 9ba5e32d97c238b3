// Catch2 tests of the metrics server (watch/metrics.cpp): documents are built on demand. A request wakes the main
// loop (wake_fd, wanted()) and is answered with the snapshot published for it; a main loop that does not answer
// within a second gets the newest snapshot there is served instead. Real requests on 127.0.0.1 (cpp-httplib).
#include <httplib.h>
#include <poll.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <future>
#include <string>

#include "watch/metrics.hpp"

using namespace pgdeploy::watch;

namespace {

std::future<std::string> get_async(int port, const std::string& path) {
    return std::async(std::launch::async, [port, path] {
        httplib::Client client("127.0.0.1", port);
        client.set_read_timeout(10, 0);
        auto res = client.Get(path.c_str());
        return res ? res->body : std::string("(no response)");
    });
}

// wait_wanted: what the daemon's loop does: poll the wake fd, then ask which documents are wanted.
unsigned wait_wanted(MetricsServer& server, int timeout_ms) {
    struct pollfd pfd = {server.wake_fd(), POLLIN, 0};
    return poll(&pfd, 1, timeout_ms) == 1 ? server.wanted() : 0;
}

}  // namespace

TEST_CASE("a metrics request is answered with the snapshot published for it", "[watch][metrics]") {
    MetricsServer server;
    std::string err;
    REQUIRE(server.start("127.0.0.1", 0, err));
    CHECK(server.wanted() == 0);

    auto first = get_async(server.bound_port(), "/metrics");
    REQUIRE(wait_wanted(server, 5000) == MetricsServer::kMetrics);  // only the document asked for
    server.publish(MetricsServer::kMetrics, "metric_a 1\n");
    CHECK(first.get() == "metric_a 1\n");
    CHECK(server.wanted() == 0);  // answered: nothing waits any more

    auto status = get_async(server.bound_port(), "/status.json");
    REQUIRE(wait_wanted(server, 5000) == MetricsServer::kStatus);
    server.publish(MetricsServer::kStatus, "{\"a\": 2}\n");
    CHECK(status.get() == "{\"a\": 2}\n");
    server.stop();
}

TEST_CASE("a main loop that does not answer within a second gets the newest snapshot served", "[watch][metrics]") {
    MetricsServer server;
    std::string err;
    REQUIRE(server.start("127.0.0.1", 0, err));
    auto start = std::chrono::steady_clock::now();
    CHECK(get_async(server.bound_port(), "/status.json").get() == "{}");  // nothing published yet
    auto waited = std::chrono::steady_clock::now() - start;
    CHECK(waited >= std::chrono::milliseconds(900));
    CHECK(waited < std::chrono::seconds(5));

    server.publish(MetricsServer::kMetrics, "metric_b 1\n");
    CHECK(get_async(server.bound_port(), "/metrics").get() == "metric_b 1\n");  // old, but the newest there is
    server.stop();
}
