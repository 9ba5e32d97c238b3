#include "watch/checks.hpp"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <malloc.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "common/conninfo.hpp"

namespace pgdeploy::watch {

namespace {

using Clock = std::chrono::steady_clock;

// Threads for the tcp, postgres and command checks of one cycle (http checks share one curl multi handle).
constexpr std::size_t kMaxCheckThreads = 32;

double since_ms(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

Millis remaining_ms(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return left < 0 ? 0 : left;
}

std::string first_line(std::string s, std::size_t max = 200) {
    auto nl = s.find('\n');
    if (nl != std::string::npos)
        s.resize(nl);
    if (s.size() > max)
        s = s.substr(0, max) + "...";
    return sanitize_utf8(s);
}

// ---- tcp -----------------------------------------------------------------------------------------------------------

CheckResult run_tcp(const CheckConfig& c) {
    CheckResult r;
    r.name = c.name;
    auto start = Clock::now();
    auto deadline = start + std::chrono::milliseconds(c.timeout);
    struct addrinfo hints {
    }, *res = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_family = AF_UNSPEC;
    int gai = getaddrinfo(c.host.c_str(), std::to_string(c.port).c_str(), &hints, &res);
    if (gai != 0) {
        r.status = CheckStatus::critical;
        r.detail = std::string("cannot resolve ") + c.host + ": " + gai_strerror(gai);
        r.latency_ms = since_ms(start);
        return r;
    }
    std::string last_error = "no address";
    bool connected = false;
    for (auto* ai = res; ai && !connected && remaining_ms(deadline) > 0; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_error = std::strerror(errno);
            continue;
        }
        int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (rc == 0) {
            connected = true;
        } else if (errno == EINPROGRESS) {
            struct pollfd pfd = {fd, POLLOUT, 0};
            int pr = poll(&pfd, 1, static_cast<int>(remaining_ms(deadline)));
            if (pr == 1) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err == 0)
                    connected = true;
                else
                    last_error = std::strerror(err);
            } else if (pr == 0) {
                last_error = "timed out after " + format_duration(c.timeout);
            } else {
                last_error = std::strerror(errno);
            }
        } else {
            last_error = std::strerror(errno);
        }
        close(fd);
    }
    freeaddrinfo(res);
    r.latency_ms = since_ms(start);
    r.status = connected ? CheckStatus::ok : CheckStatus::critical;
    r.detail = connected ? "connected" : c.host + ":" + std::to_string(c.port) + ": " + last_error;
    return r;
}

// ---- postgres
// --------------------------------------------------------------------------------------------------------

/*
 * run_postgres
 *
 * Asynchronous libpq so that the check's timeout holds for connecting and querying alike (connect_timeout counts
 * whole seconds only). The database going away is a critical result here, never an exception.
 */
CheckResult run_postgres(const CheckConfig& c, const std::string& default_dsn) {
    CheckResult r;
    r.name = c.name;
    auto start = Clock::now();
    auto deadline = start + std::chrono::milliseconds(c.timeout);
    const std::string& dsn = c.dsn.empty() ? default_dsn : c.dsn;
    const char* keys[] = {"dbname", "fallback_application_name", nullptr};
    const char* vals[] = {dsn.c_str(), "pgdeploy-watch-check", nullptr};
    PGconn* conn = PQconnectStartParams(keys, vals, 1);
    auto fail = [&](const std::string& why) {
        r.status = CheckStatus::critical;
        r.detail = first_line(common::scrub_secrets(why));
        r.latency_ms = since_ms(start);
        if (conn)
            PQfinish(conn);
        return r;
    };
    if (!conn)
        return fail("out of memory");
    if (PQstatus(conn) == CONNECTION_BAD)
        return fail(PQerrorMessage(conn));
    PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
    while (ps != PGRES_POLLING_OK) {
        if (ps == PGRES_POLLING_FAILED)
            return fail(PQerrorMessage(conn));
        struct pollfd pfd = {PQsocket(conn), static_cast<short>(ps == PGRES_POLLING_READING ? POLLIN : POLLOUT), 0};
        Millis left = remaining_ms(deadline);
        if (left <= 0 || poll(&pfd, 1, static_cast<int>(left)) <= 0)
            return fail("connect timed out after " + format_duration(c.timeout));
        ps = PQconnectPoll(conn);
    }
    if (!PQsendQuery(conn, c.query.c_str()))
        return fail(PQerrorMessage(conn));
    std::string error;
    bool got_ok = false;
    for (;;) {
        while (!PQisBusy(conn)) {
            PGresult* res = PQgetResult(conn);
            if (!res)
                goto done;
            auto st = PQresultStatus(res);
            if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
                got_ok = true;
            else if (error.empty())
                error = PQresultErrorMessage(res);
            PQclear(res);
        }
        struct pollfd pfd = {PQsocket(conn), POLLIN, 0};
        Millis left = remaining_ms(deadline);
        if (left <= 0 || poll(&pfd, 1, static_cast<int>(left)) <= 0) {
            if (PGcancel* cancel = PQgetCancel(conn)) {
                char buf[256];
                PQcancel(cancel, buf, sizeof buf);
                PQfreeCancel(cancel);
            }
            return fail("query timed out after " + format_duration(c.timeout));
        }
        if (!PQconsumeInput(conn))
            return fail(PQerrorMessage(conn));
    }
done:
    if (!error.empty() || !got_ok)
        return fail(error.empty() ? "no result" : error);
    PQfinish(conn);
    conn = nullptr;
    r.status = CheckStatus::ok;
    r.detail = "query ok";
    r.latency_ms = since_ms(start);
    return r;
}

// ---- http (curl multi)
// -----------------------------------------------------------------------------------------------

struct HttpTransfer {
    const CheckConfig* cfg;
    CURL* easy = nullptr;
    std::string body;
    char errbuf[CURL_ERROR_SIZE] = {0};
    Clock::time_point start;
};

size_t collect_body(char* ptr, size_t size, size_t nmemb, void* userdata) {
    auto* t = static_cast<HttpTransfer*>(userdata);
    size_t n = size * nmemb;
    // Enough to find a substring in a health page; a huge body is not a health page.
    if (t->body.size() < (1u << 20))
        t->body.append(ptr, std::min<size_t>(n, (1u << 20) - t->body.size()));
    return n;
}

/*
 * run_http
 *
 * One multi handle per cycle: a thousand endpoints cost one thread and one poll loop, and each transfer keeps its
 * own timeout (CURLOPT_TIMEOUT_MS), so a hung endpoint does not delay the others' results.
 */
std::vector<CheckResult> run_http(const std::vector<const CheckConfig*>& checks) {
    std::vector<CheckResult> out;
    if (checks.empty())
        return out;
    CURLM* multi = curl_multi_init();
    std::vector<HttpTransfer> transfers(checks.size());
    for (std::size_t i = 0; i < checks.size(); ++i) {
        auto& t = transfers[i];
        t.cfg = checks[i];
        t.easy = curl_easy_init();
        curl_easy_setopt(t.easy, CURLOPT_URL, t.cfg->url.c_str());
        curl_easy_setopt(t.easy, CURLOPT_TIMEOUT_MS, static_cast<long>(t.cfg->timeout));
        curl_easy_setopt(t.easy, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(t.cfg->timeout));
        curl_easy_setopt(t.easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(t.easy, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(t.easy, CURLOPT_USERAGENT, "pgdeploy-watch/" PGDEPLOY_VERSION);
        curl_easy_setopt(t.easy, CURLOPT_WRITEFUNCTION, collect_body);
        curl_easy_setopt(t.easy, CURLOPT_WRITEDATA, &t);
        curl_easy_setopt(t.easy, CURLOPT_ERRORBUFFER, t.errbuf);
        curl_easy_setopt(t.easy, CURLOPT_PRIVATE, &t);
        curl_easy_setopt(t.easy, CURLOPT_FORBID_REUSE, 1L);
        // Health pages are small; curl's default 16 KB receive buffer per transfer adds up with thousands of checks.
        curl_easy_setopt(t.easy, CURLOPT_BUFFERSIZE, 4096L);
        t.start = Clock::now();
        curl_multi_add_handle(multi, t.easy);
    }
    int running = 0;
    do {
        curl_multi_perform(multi, &running);
        if (running)
            curl_multi_poll(multi, nullptr, 0, 100, nullptr);
    } while (running);

    std::vector<bool> done(transfers.size(), false);
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        HttpTransfer* t = nullptr;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char**>(&t));
        long status = 0;
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
        std::string err;
        if (msg->data.result != CURLE_OK)
            err = t->errbuf[0] ? t->errbuf : curl_easy_strerror(msg->data.result);
        CheckResult r = classify_http(*t->cfg, status, t->body, err);
        r.latency_ms = since_ms(t->start);
        out.push_back(std::move(r));
        done[static_cast<std::size_t>(t - transfers.data())] = true;
    }
    for (std::size_t i = 0; i < transfers.size(); ++i) {
        if (!done[i])
            out.push_back(classify_http(*transfers[i].cfg, 0, "", "transfer did not complete"));
        curl_multi_remove_handle(multi, transfers[i].easy);
        curl_easy_cleanup(transfers[i].easy);
    }
    curl_multi_cleanup(multi);
    // Give the cycle's transfer buffers back to the system: an idle watcher with thousands of checks should not sit
    // on the peak of its last cycle.
    malloc_trim(0);
    return out;
}

}  // namespace

CheckResult classify_http(const CheckConfig& c, long status, const std::string& body, const std::string& curl_error) {
    CheckResult r;
    r.name = c.name;
    if (!curl_error.empty()) {
        r.status = CheckStatus::critical;
        r.detail = first_line(common::scrub_secrets(curl_error));
        return r;
    }
    if (status != c.expect_status) {
        r.status = CheckStatus::critical;
        r.detail = "HTTP " + std::to_string(status) + " (expected " + std::to_string(c.expect_status) + ")";
        return r;
    }
    if (!c.body_contains.empty() && body.find(c.body_contains) == std::string::npos) {
        r.status = CheckStatus::critical;
        r.detail = "HTTP " + std::to_string(status) + " but the body lacks \"" + first_line(c.body_contains, 60) + "\"";
        return r;
    }
    r.status = CheckStatus::ok;
    r.detail = "HTTP " + std::to_string(status);
    return r;
}

CheckResult classify_command(const CheckConfig& c, const ProcessResult& p) {
    CheckResult r;
    r.name = c.name;
    r.latency_ms = p.duration_ms;
    r.detail = describe(p);
    if (p.started && !p.timed_out && p.error.empty() && p.signal == 0 && p.exit_code == 0)
        r.status = CheckStatus::ok;
    else if (p.started && !p.timed_out && p.error.empty() && p.signal == 0 && p.exit_code == 1)
        r.status = CheckStatus::warning;
    else
        r.status = CheckStatus::critical;
    return r;
}

void init_checks() {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

/*
 * run_checks
 *
 * http checks share one multi handle on the calling thread; every other check gets a thread of its own for the
 * cycle (they block in connect, poll or waitpid). The cycle lasts as long as its slowest check's timeout at most.
 */
std::vector<CheckResult> run_checks(const std::vector<const CheckConfig*>& checks, const std::string& default_dsn) {
    init_checks();
    std::vector<const CheckConfig*> http;
    std::vector<const CheckConfig*> others;
    for (const auto* c : checks)
        (c->type == CheckType::http ? http : others).push_back(c);

    // A small pool, not a thread per check: thousands of tcp or command checks must not mean thousands of threads.
    std::vector<CheckResult> other_results(others.size());
    std::atomic<std::size_t> next{0};
    auto worker = [&] {
        for (std::size_t i = next++; i < others.size(); i = next++) {
            const CheckConfig& c = *others[i];
            try {
                switch (c.type) {
                    case CheckType::tcp:
                        other_results[i] = run_tcp(c);
                        break;
                    case CheckType::postgres:
                        other_results[i] = run_postgres(c, default_dsn);
                        break;
                    case CheckType::command:
                        other_results[i] = classify_command(c, run_process(c.argv, {}, c.timeout, c.max_output));
                        break;
                    case CheckType::http:
                        break;
                }
            } catch (const std::exception& e) {
                other_results[i].name = c.name;
                other_results[i].status = CheckStatus::critical;
                other_results[i].detail = std::string("check failed to run: ") + e.what();
            }
        }
    };
    std::vector<std::thread> threads;
    std::size_t pool = std::min<std::size_t>(others.size(), kMaxCheckThreads);
    threads.reserve(pool);
    for (std::size_t i = 0; i < pool; ++i)
        threads.emplace_back(worker);
    std::vector<CheckResult> results = run_http(http);
    for (auto& t : threads)
        t.join();
    for (auto& r : other_results)
        results.push_back(std::move(r));
    return results;
}

}  // namespace pgdeploy::watch
