// curl_floor: what libcurl alone costs for the watcher's http load, the floor under `pgdeploy watch`'s idle CPU.
//
//   curl_floor --base URL [--count N] [--seconds S] [--warmup S] [--per-host N]
//
// Every second it GETs BASE/h/0 .. BASE/h/(N-1) (the stub's load endpoints) through one curl multi handle, the way
// the watcher's HttpRunner does (watcher/src/watch/checks.cpp): the multi handle and its connection cache live for the
// whole run (keep-alive between cycles), at most --per-host transfers run at once (the watcher's kMaxHttpPerHost: one
// host), the easy handles are reused. It does nothing else: no options re-set per transfer beyond the URL, the body
// is thrown away, no result is kept. Then it sleeps until the next second, like the daemon's loop (a cycle that
// overruns its second starts the next at once: requests_per_s then says fewer than --count were made a second).
// bench/run builds it (libcurl only) and section "watcher" prints it under the watcher's own figures.
//
// After --warmup seconds it measures its own CPU (getrusage, user + system) and resident set (/proc/self/status)
// over --seconds and prints one JSON document:
//   {"count":5000,"seconds":10.0,"cpu_pct":3.1,"rss_mb":9.8,"hwm_mb":9.9,"requests_per_s":5000,"errors":0}
#include <curl/curl.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

size_t discard(char*, size_t size, size_t nmemb, void*) {
    return size * nmemb;
}

double cpu_seconds() {
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

long status_kb(const char* key) {
    std::ifstream in("/proc/self/status");
    std::string line;
    std::string prefix = std::string(key) + ":";
    while (std::getline(in, line))
        if (line.compare(0, prefix.size(), prefix) == 0)
            return std::atol(line.c_str() + prefix.size());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::string base;
    int count = 5000;
    int seconds = 10;
    int warmup = 3;
    int per_host = 4;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--base" && i + 1 < argc)
            base = argv[++i];
        else if (a == "--count" && i + 1 < argc)
            count = std::atoi(argv[++i]);
        else if (a == "--seconds" && i + 1 < argc)
            seconds = std::atoi(argv[++i]);
        else if (a == "--warmup" && i + 1 < argc)
            warmup = std::atoi(argv[++i]);
        else if (a == "--per-host" && i + 1 < argc)
            per_host = std::atoi(argv[++i]);
        else {
            std::fprintf(stderr,
                         "usage: curl_floor --base URL [--count N] [--seconds S] [--warmup S] [--per-host N]\n");
            return 2;
        }
    }
    if (base.empty() || count <= 0 || seconds <= 0 || per_host <= 0) {
        std::fprintf(stderr, "curl_floor: --base is required; counts must be positive\n");
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURLM* multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, 64L);
    std::vector<std::string> urls;
    urls.reserve(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i)
        urls.push_back(base + "/h/" + std::to_string(i));
    std::vector<CURL*> easy(static_cast<std::size_t>(per_host));
    for (auto& e : easy) {
        e = curl_easy_init();
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 2000L);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
    }

    long errors = 0;
    long done_total = 0;
    auto cycle = [&] {
        std::size_t next = 0;
        int in_flight = 0;
        for (auto* e : easy) {
            if (next >= urls.size())
                break;
            curl_easy_setopt(e, CURLOPT_URL, urls[next++].c_str());
            curl_multi_add_handle(multi, e);
            ++in_flight;
        }
        while (in_flight > 0) {
            int running = 0;
            curl_multi_perform(multi, &running);
            int left = 0;
            while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
                if (msg->msg != CURLMSG_DONE)
                    continue;
                CURL* e = msg->easy_handle;
                if (msg->data.result != CURLE_OK)
                    ++errors;
                ++done_total;
                curl_multi_remove_handle(multi, e);
                --in_flight;
                if (next < urls.size()) {
                    curl_easy_setopt(e, CURLOPT_URL, urls[next++].c_str());
                    curl_multi_add_handle(multi, e);
                    ++in_flight;
                }
            }
            if (in_flight > 0)
                curl_multi_poll(multi, nullptr, 0, 100, nullptr);
        }
    };

    auto start = Clock::now();
    auto tick = start;
    auto measure_from = start + std::chrono::seconds(warmup);
    auto end = measure_from + std::chrono::seconds(seconds);
    bool measuring = false;
    double cpu0 = 0;
    long done0 = 0;
    long errors0 = 0;
    Clock::time_point t0;
    while (Clock::now() < end) {
        if (!measuring && Clock::now() >= measure_from) {
            measuring = true;
            cpu0 = cpu_seconds();
            done0 = done_total;
            errors0 = errors;
            t0 = Clock::now();
        }
        cycle();
        tick += std::chrono::seconds(1);
        std::this_thread::sleep_until(tick);
    }
    double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    double cpu = cpu_seconds() - cpu0;
    std::printf(
        "{\"count\":%d,\"seconds\":%.1f,\"cpu_pct\":%.2f,\"rss_mb\":%.1f,\"hwm_mb\":%.1f,\"requests_per_s\":%.0f,"
        "\"errors\":%ld}\n",
        count, wall, cpu / wall * 100.0, static_cast<double>(status_kb("VmRSS")) / 1024.0,
        static_cast<double>(status_kb("VmHWM")) / 1024.0, static_cast<double>(done_total - done0) / wall,
        errors - errors0);
    for (auto* e : easy) {
        curl_multi_remove_handle(multi, e);
        curl_easy_cleanup(e);
    }
    curl_multi_cleanup(multi);
    curl_global_cleanup();
    return 0;
}
