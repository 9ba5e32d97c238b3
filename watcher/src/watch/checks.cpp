#include "watch/checks.hpp"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "common/conninfo.hpp"
#include "watch/hook_env.hpp"

namespace pgdeploy::watch {

namespace {

using Clock = std::chrono::steady_clock;

// Threads for the tcp, postgres and command checks of one cycle (http checks share one curl multi handle).
constexpr std::size_t kMaxCheckThreads = 32;

// http transfers running at once (and idle connections kept for the next cycle). Enough that 5,000 checks against
// local endpoints finish in well under a second; few enough that a cycle does not hold thousands of sockets and
// buffers.
constexpr std::size_t kMaxHttpInFlight = 64;
// ... and to one host (scheme://user@host:port). A kept-alive connection occupies a worker of a thread-per-connection
// server until its keep-alive timeout (cpp-httplib: 8 threads, 5 s), so more parallel connections than the server has
// workers would starve the extra ones (and every other client of that server). A few connections still carry
// thousands of requests a second to a local endpoint.
constexpr int kMaxHttpPerHost = 4;

// host_key: the part of a URL that picks the server ("http://127.0.0.1:8080" of "http://127.0.0.1:8080/h/1").
std::string_view host_key(std::string_view url) {
    auto scheme = url.find("://");
    std::size_t from = scheme == std::string_view::npos ? 0 : scheme + 3;
    auto end = url.find_first_of("/?#", from);
    return url.substr(0, end);
}

double since_ms(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

Millis remaining_ms(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return left < 0 ? 0 : left;
}

// first_line: a libpq or curl message as a check's detail: scrubbed before it is cut, so that no part of a password
// survives the cut.
std::string first_line(std::string s, std::size_t max = 200) {
    s = common::scrub(s);
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
        r.detail = first_line(why);
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

/*
 * HttpRunner
 *
 * Lives across cycles so that a watcher with thousands of http checks does not open and close a TCP connection per
 * check per interval (that cost a third of a CPU at 5,000 checks/s): the multi handle keeps its connection cache
 * (keep-alive), and a fixed set of kMaxHttpInFlight easy handles is reused. At most kMaxHttpInFlight transfers run at
 * once; the next check starts when one finishes, and its CURLOPT_TIMEOUT_MS counts from that start (we admit
 * transfers ourselves rather than letting libcurl queue them, because a transfer libcurl holds back for a connection
 * limit has its clock running already).
 *
 * Keep-alive does not hide a dead endpoint: libcurl checks a cached connection before reusing it and retries once on
 * a fresh connection when a reused one turns out closed by the server, so a server that went away fails to connect
 * in the next cycle like before; one that hangs times out like before.
 */
class HttpRunner {
public:
    HttpRunner() : slots_(kMaxHttpInFlight) {
        multi_ = curl_multi_init();
        if (multi_)
            curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, static_cast<long>(kMaxHttpInFlight));
        free_.reserve(slots_.size());
    }
    ~HttpRunner() {
        for (auto& s : slots_) {
            if (s.easy && s.in_flight)
                curl_multi_remove_handle(multi_, s.easy);
            if (s.easy)
                curl_easy_cleanup(s.easy);
        }
        if (multi_)
            curl_multi_cleanup(multi_);
    }
    HttpRunner(const HttpRunner&) = delete;
    HttpRunner& operator=(const HttpRunner&) = delete;

    std::vector<CheckResult> run(const std::vector<const CheckConfig*>& checks);

private:
    struct Slot {
        CURL* easy = nullptr;
        const CheckConfig* cfg = nullptr;
        std::size_t index = 0;  // into the cycle's checks and results
        std::size_t host = 0;   // into hosts_
        bool in_flight = false;
        std::string body;
        char errbuf[CURL_ERROR_SIZE] = {0};
        Clock::time_point start;
    };

    static size_t collect_body(char* ptr, size_t size, size_t nmemb, void* userdata) {
        auto* s = static_cast<Slot*>(userdata);
        size_t n = size * nmemb;
        // Enough to find a substring in a health page; a huge body is not a health page.
        if (s->body.size() < kMaxBody)
            s->body.append(ptr, std::min<size_t>(n, kMaxBody - s->body.size()));
        return n;
    }

    // start: sets the slot's easy handle up for one check and adds it; false (with out[index] set) if it cannot run.
    bool start(Slot& s, const CheckConfig& c, std::size_t index, std::vector<CheckResult>& out) {
        if (!s.easy && (s.easy = curl_easy_init()) != nullptr) {
            // What every transfer has in common, set once per handle: at thousands of checks a second, resetting and
            // setting every option again for each transfer was a visible share of the watcher's CPU.
            curl_easy_setopt(s.easy, CURLOPT_NOSIGNAL, 1L);
            curl_easy_setopt(s.easy, CURLOPT_FOLLOWLOCATION, 0L);
            curl_easy_setopt(s.easy, CURLOPT_USERAGENT, "pgdeploy-watch/" PGDEPLOY_VERSION);
            curl_easy_setopt(s.easy, CURLOPT_WRITEFUNCTION, collect_body);
            curl_easy_setopt(s.easy, CURLOPT_WRITEDATA, &s);
            curl_easy_setopt(s.easy, CURLOPT_ERRORBUFFER, s.errbuf);
            curl_easy_setopt(s.easy, CURLOPT_PRIVATE, &s);
            // Health pages are small; curl's default 16 KB receive buffer per transfer adds up.
            curl_easy_setopt(s.easy, CURLOPT_BUFFERSIZE, 4096L);
        }
        if (!s.easy) {
            out[index] = classify_http(c, 0, "", "cannot create a curl handle (out of memory)");
            return false;
        }
        s.cfg = &c;
        s.index = index;
        s.errbuf[0] = '\0';
        s.body.clear();
        if (s.body.capacity() > 64 * 1024)
            std::string().swap(s.body);  // one huge page must not stay resident
        // The options that differ between checks (the connections live in the multi's cache).
        curl_easy_setopt(s.easy, CURLOPT_URL, c.url.c_str());
        curl_easy_setopt(s.easy, CURLOPT_TIMEOUT_MS, static_cast<long>(c.timeout));
        curl_easy_setopt(s.easy, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(c.timeout));
        s.start = Clock::now();
        CURLMcode mc = curl_multi_add_handle(multi_, s.easy);
        if (mc != CURLM_OK) {
            out[index] = classify_http(c, 0, "", std::string("cannot start the transfer: ") + curl_multi_strerror(mc));
            return false;
        }
        s.in_flight = true;
        return true;
    }

    void finish(Slot& s, CURLcode result, std::vector<CheckResult>& out) {
        long status = 0;
        curl_easy_getinfo(s.easy, CURLINFO_RESPONSE_CODE, &status);
        std::string err;
        if (result != CURLE_OK)
            err = s.errbuf[0] ? s.errbuf : curl_easy_strerror(result);
        CheckResult r = classify_http(*s.cfg, status, s.body, err);
        r.latency_ms = since_ms(s.start);
        out[s.index] = std::move(r);
        curl_multi_remove_handle(multi_, s.easy);
        s.in_flight = false;
    }

    // The cycle's checks grouped by host, in their order; hosts with a check waiting and a connection to spare are
    // served round-robin.
    struct HostQueue {
        std::vector<std::size_t> checks;
        std::size_t next = 0;
        int in_flight = 0;
        bool ready = false;  // in ready_
    };
    void make_ready(std::size_t h) {
        auto& q = hosts_[h];
        if (!q.ready && q.next < q.checks.size() && q.in_flight < kMaxHttpPerHost) {
            q.ready = true;
            ready_.push_back(h);
        }
    }

    static constexpr std::size_t kMaxBody = 1u << 20;

    CURLM* multi_ = nullptr;
    std::unordered_map<std::string_view, std::size_t> host_index_;
    std::vector<HostQueue> hosts_;
    std::vector<std::size_t> ready_;  // used as a queue from ready_head_
    std::size_t ready_head_ = 0;
    std::vector<Slot> slots_;  // never resized: the easy handles point into it (WRITEDATA, PRIVATE)
    std::vector<Slot*> free_;
};

std::vector<CheckResult> HttpRunner::run(const std::vector<const CheckConfig*>& checks) {
    std::vector<CheckResult> out(checks.size());
    if (checks.empty())
        return out;
    if (!multi_) {
        for (std::size_t i = 0; i < checks.size(); ++i)
            out[i] = classify_http(*checks[i], 0, "", "cannot create a curl multi handle (out of memory)");
        return out;
    }
    free_.clear();
    for (auto it = slots_.rbegin(); it != slots_.rend(); ++it)
        free_.push_back(&*it);
    host_index_.clear();
    for (auto& q : hosts_)
        q.checks.clear();
    std::size_t nhosts = 0;
    for (std::size_t i = 0; i < checks.size(); ++i) {
        auto [it, fresh] = host_index_.try_emplace(host_key(checks[i]->url), nhosts);
        if (fresh && ++nhosts > hosts_.size())
            hosts_.emplace_back();
        hosts_[it->second].checks.push_back(i);
    }
    ready_.clear();
    ready_head_ = 0;
    for (std::size_t h = 0; h < nhosts; ++h) {
        hosts_[h].next = 0;
        hosts_[h].in_flight = 0;
        hosts_[h].ready = false;
        make_ready(h);
    }
    std::size_t in_flight = 0;
    auto admit = [&] {
        while (!free_.empty() && ready_head_ < ready_.size()) {
            std::size_t h = ready_[ready_head_++];
            auto& q = hosts_[h];
            q.ready = false;
            std::size_t i = q.checks[q.next++];
            Slot* s = free_.back();
            if (start(*s, *checks[i], i, out)) {
                s->host = h;
                free_.pop_back();
                ++in_flight;
                ++q.in_flight;
            }
            make_ready(h);  // round-robin: back of the queue
            if (ready_head_ > 1024 && ready_head_ * 2 > ready_.size()) {
                ready_.erase(ready_.begin(), ready_.begin() + static_cast<std::ptrdiff_t>(ready_head_));
                ready_head_ = 0;
            }
        }
    };
    admit();
    while (in_flight > 0) {
        int running = 0;
        CURLMcode mc = curl_multi_perform(multi_, &running);
        int left = 0;
        while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            Slot* s = nullptr;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char**>(&s));
            CURLcode result = msg->data.result;  // read before finish(): removing the handle frees msg
            finish(*s, result, out);
            free_.push_back(s);
            --in_flight;
            --hosts_[s->host].in_flight;
            make_ready(s->host);
        }
        if (mc != CURLM_OK) {
            // Not expected (out of memory): report what is left as failed instead of spinning.
            std::string why = std::string("curl multi error: ") + curl_multi_strerror(mc);
            for (auto& s : slots_)
                if (s.in_flight) {
                    out[s.index] = classify_http(*s.cfg, 0, "", why);
                    curl_multi_remove_handle(multi_, s.easy);
                    s.in_flight = false;
                }
            for (std::size_t h = 0; h < nhosts; ++h)
                for (auto& q = hosts_[h]; q.next < q.checks.size(); ++q.next)
                    out[q.checks[q.next]] = classify_http(*checks[q.checks[q.next]], 0, "", why);
            break;
        }
        admit();
        if (in_flight > 0)
            curl_multi_poll(multi_, nullptr, 0, 100, nullptr);
    }
    return out;
}

std::mutex http_runner_mutex;

/*
 * run_http
 *
 * The process's runner keeps its connections from cycle to cycle. run_checks may be called from more than one thread
 * (the daemon's loop, `watch --once`, tests): a second caller while a cycle runs gets a runner of its own for its call
 * rather than waiting, so that one slow cycle never delays another.
 */
std::vector<CheckResult> run_http(const std::vector<const CheckConfig*>& checks) {
    if (checks.empty())
        return {};
    // Never destroyed: connections may stay open until exit, and no static destructor races a late caller.
    static HttpRunner* shared = new HttpRunner();
    std::unique_lock<std::mutex> lock(http_runner_mutex, std::try_to_lock);
    if (lock.owns_lock())
        return shared->run(checks);
    HttpRunner own;
    return own.run(checks);
}

}  // namespace

CheckResult classify_http(const CheckConfig& c, long status, const std::string& body, const std::string& curl_error) {
    CheckResult r;
    r.name = c.name;
    if (!curl_error.empty()) {
        r.status = CheckStatus::critical;
        r.detail = first_line(curl_error);
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
std::vector<CheckResult> run_checks(const std::vector<const CheckConfig*>& checks, const std::string& default_dsn,
                                    const HookEnvironmentConfig& environment) {
    init_checks();
    std::vector<const CheckConfig*> http;
    std::vector<std::size_t> http_at;  // index in checks of http[i]
    std::vector<const CheckConfig*> others;
    std::vector<std::size_t> others_at;
    for (std::size_t i = 0; i < checks.size(); ++i) {
        bool is_http = checks[i]->type == CheckType::http;
        (is_http ? http : others).push_back(checks[i]);
        (is_http ? http_at : others_at).push_back(i);
    }

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
                        other_results[i] = classify_command(
                            c, run_process(c.argv, child_environment(environment), c.timeout, c.max_output));
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
    std::vector<CheckResult> http_results = run_http(http);
    for (auto& t : threads)
        t.join();
    std::vector<CheckResult> results;
    if (others.empty()) {
        results = std::move(http_results);  // the checks' own order already
    } else {
        results.resize(checks.size());
        for (std::size_t i = 0; i < http_results.size(); ++i)
            results[http_at[i]] = std::move(http_results[i]);
        for (std::size_t i = 0; i < other_results.size(); ++i)
            results[others_at[i]] = std::move(other_results[i]);
    }
    return results;
}

}  // namespace pgdeploy::watch
