// Catch2 tests of the http checks' connection reuse (watch/checks.cpp, HttpRunner): connections are kept alive from
// cycle to cycle, a connection the server closed meanwhile is not a failure, a server that went away is, and a
// cycle larger than the number of transfers run at once keeps every check's own result. Real servers on 127.0.0.1
// (cpp-httplib), the real run_checks().
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "watch/checks.hpp"

using namespace pgdeploy::watch;

namespace {

// A health endpoint on 127.0.0.1 that remembers which client ports (connections) its requests came from.
class Endpoint {
public:
    explicit Endpoint(int keep_alive_seconds, int port = 0) {
        server_.set_keep_alive_timeout(keep_alive_seconds);
        server_.set_keep_alive_max_count(1000);
        server_.Get("/health", [this](const httplib::Request& req, httplib::Response& res) {
            {
                std::lock_guard<std::mutex> lock(mutex_);
                ports_.insert(req.remote_port);
            }
            ++requests_;
            res.set_content("all good", "text/plain");
        });
        port_ = port ? (server_.bind_to_port("127.0.0.1", port) ? port : -1) : server_.bind_to_any_port("127.0.0.1");
        REQUIRE(port_ > 0);
        thread_ = std::thread([this] { server_.listen_after_bind(); });
    }
    ~Endpoint() { stop(); }
    void stop() {
        if (thread_.joinable()) {
            server_.stop();
            thread_.join();
        }
    }
    int port() const { return port_; }
    std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/health"; }
    std::set<int> take_ports() {
        std::lock_guard<std::mutex> lock(mutex_);
        std::set<int> p;
        p.swap(ports_);
        return p;
    }
    long requests() const { return requests_.load(); }

private:
    httplib::Server server_;
    std::thread thread_;
    int port_ = 0;
    std::mutex mutex_;
    std::set<int> ports_;
    std::atomic<long> requests_{0};
};

std::vector<CheckConfig> http_checks(const std::string& url, int n) {
    std::vector<CheckConfig> v(n);
    for (int i = 0; i < n; ++i) {
        v[i].name = "h" + std::to_string(i);
        v[i].type = CheckType::http;
        v[i].url = url;
        v[i].timeout = 10000;  // these tests count connections, not speed: room for a loaded machine under ASan
        v[i].body_contains = "good";
    }
    return v;
}

std::vector<const CheckConfig*> pointers(const std::vector<CheckConfig>& v) {
    std::vector<const CheckConfig*> p;
    for (const auto& c : v)
        p.push_back(&c);
    return p;
}

void require_all(const std::vector<CheckResult>& results, CheckStatus want, std::size_t n) {
    REQUIRE(results.size() == n);
    for (const auto& r : results) {
        INFO(r.name << ": " << r.detail);
        CHECK(r.status == want);
    }
}

}  // namespace

TEST_CASE("http checks reuse their connections from one cycle to the next", "[watch][checks][http]") {
    init_checks();
    Endpoint ep(2);
    auto checks = http_checks(ep.url(), 4);
    require_all(run_checks(pointers(checks), ""), CheckStatus::ok, 4);
    auto first = ep.take_ports();
    require_all(run_checks(pointers(checks), ""), CheckStatus::ok, 4);
    auto second = ep.take_ports();
    CHECK(ep.requests() == 8);
    // Every request of the second cycle came over a connection the first cycle opened.
    for (int p : second) {
        INFO("client port " << p);
        CHECK(first.count(p) == 1);
    }
}

TEST_CASE("a server that closed its keep-alive connections between cycles still reads as healthy",
          "[watch][checks][http]") {
    init_checks();
    Endpoint ep(1);  // closes an idle connection after 1 s
    auto checks = http_checks(ep.url(), 3);
    require_all(run_checks(pointers(checks), ""), CheckStatus::ok, 3);
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    require_all(run_checks(pointers(checks), ""), CheckStatus::ok, 3);
    CHECK(ep.requests() == 6);
}

TEST_CASE("a server restarted on the same port between cycles still reads as healthy", "[watch][checks][http]") {
    init_checks();
    auto ep = std::make_unique<Endpoint>(2);
    int port = ep->port();
    auto checks = http_checks(ep->url(), 3);
    require_all(run_checks(pointers(checks), ""), CheckStatus::ok, 3);
    ep->stop();  // closes the connections the watcher keeps
    ep.reset();
    ep = std::make_unique<Endpoint>(2, port);
    require_all(run_checks(pointers(checks), ""), CheckStatus::ok, 3);
    CHECK(ep->requests() == 3);
}

TEST_CASE("a server that stops is detected as failing on the next cycle", "[watch][checks][http]") {
    init_checks();
    Endpoint ep(2);
    auto checks = http_checks(ep.url(), 3);
    require_all(run_checks(pointers(checks), ""), CheckStatus::ok, 3);
    ep.stop();
    auto results = run_checks(pointers(checks), "");
    require_all(results, CheckStatus::critical, 3);
    for (const auto& r : results) {
        CHECK(r.latency_ms < 1500);
        CHECK_THAT(r.detail, Catch::Matchers::Contains("onnect"));  // "Couldn't connect" / "Connection refused"
    }
}

TEST_CASE("a server killed while the watcher holds its connections fails the very next cycle",
          "[watch][checks][http]") {
    init_checks();
    // The server in a child process, so that SIGKILL drops it at once with every kept-alive connection open.
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        httplib::Server server;
        server.set_keep_alive_timeout(60);
        server.Get("/health",
                   [](const httplib::Request&, httplib::Response& res) { res.set_content("good", "text/plain"); });
        int port = server.bind_to_any_port("127.0.0.1");
        if (write(fds[1], &port, sizeof port) != static_cast<ssize_t>(sizeof port))
            _exit(1);
        server.listen_after_bind();
        _exit(0);
    }
    close(fds[1]);
    int port = 0;
    REQUIRE(read(fds[0], &port, sizeof port) == static_cast<ssize_t>(sizeof port));
    close(fds[0]);
    REQUIRE(port > 0);
    auto checks = http_checks("http://127.0.0.1:" + std::to_string(port) + "/health", 3);
    require_all(run_checks(pointers(checks), ""), CheckStatus::ok, 3);
    require_all(run_checks(pointers(checks), ""), CheckStatus::ok, 3);
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    auto results = run_checks(pointers(checks), "");
    require_all(results, CheckStatus::critical, 3);
    for (const auto& r : results)
        CHECK(r.latency_ms < 1500);
}

TEST_CASE("a cycle with more http checks than run at once gives every check its own result, in order",
          "[watch][checks][http]") {
    init_checks();
    Endpoint ep(2);
    auto checks = http_checks(ep.url(), 300);
    // One check in the middle expects what the server does not say: only that one is critical.
    checks[150].body_contains = "not on this page";
    CheckConfig bad;
    bad.name = "refused";
    bad.type = CheckType::http;
    bad.url = "http://127.0.0.1:1/health";
    bad.timeout = 1000;
    checks.push_back(bad);
    auto results = run_checks(pointers(checks), "");
    REQUIRE(results.size() == checks.size());
    for (std::size_t i = 0; i < checks.size(); ++i) {
        INFO(results[i].name << ": " << results[i].detail);
        CHECK(results[i].name == checks[i].name);
        bool should_fail = i == 150 || i == checks.size() - 1;
        CHECK(results[i].status == (should_fail ? CheckStatus::critical : CheckStatus::ok));
    }
    CHECK(ep.requests() == 300);
}
