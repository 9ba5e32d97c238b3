// watch_cycle: times the watcher's check cycle, exactly the code `pgdeploy watch` runs each interval.
//
//   watch_cycle --config FILE [--cycles N] [--pause-ms MS]
//
// It parses the watcher configuration with pgdeploy's own parser (watch/config.hpp) and calls pgdeploy's own
// run_checks() (watch/checks.hpp) over every check, N times, timing each call with a monotonic clock. The daemon's
// main loop does the same call with the checks that are due; measuring it here leaves out nothing but the decision
// engine's bookkeeping and the debug log lines. Prints one JSON document:
//   {"checks":1000,"cycles_ms":[...],"ok":[...],"critical":[...]}
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "watch/checks.hpp"
#include "watch/config.hpp"

int main(int argc, char** argv) {
    std::string config;
    int cycles = 5;
    int pause_ms = 200;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--config" && i + 1 < argc)
            config = argv[++i];
        else if (a == "--cycles" && i + 1 < argc)
            cycles = std::atoi(argv[++i]);
        else if (a == "--pause-ms" && i + 1 < argc)
            pause_ms = std::atoi(argv[++i]);
        else {
            std::cerr << "usage: watch_cycle --config FILE [--cycles N] [--pause-ms MS]\n";
            return 2;
        }
    }
    try {
        auto cfg = pgdeploy::watch::load_config(config);
        std::vector<const pgdeploy::watch::CheckConfig*> all;
        for (const auto& c : cfg.checks)
            all.push_back(&c);
        pgdeploy::watch::init_checks();
        nlohmann::json out;
        out["checks"] = all.size();
        out["cycles_ms"] = nlohmann::json::array();
        out["ok"] = nlohmann::json::array();
        out["critical"] = nlohmann::json::array();
        out["first_problem"] = nullptr;
        for (int n = 0; n < cycles; ++n) {
            auto start = std::chrono::steady_clock::now();
            auto results = pgdeploy::watch::run_checks(all, cfg.database.dsn);
            double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
            int ok = 0, critical = 0;
            for (const auto& r : results) {
                if (r.status == pgdeploy::watch::CheckStatus::ok)
                    ++ok;
                else {
                    ++critical;
                    if (out["first_problem"].is_null())
                        out["first_problem"] = r.name + ": " + r.detail;
                }
            }
            out["cycles_ms"].push_back(ms);
            out["ok"].push_back(ok);
            out["critical"].push_back(critical);
            std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
        }
        std::cout << out.dump() << "\n";
    } catch (const std::exception& e) {
        std::cerr << "watch_cycle: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
