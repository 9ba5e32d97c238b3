// `pgdeploy watch` and `pgdeploy once`: argument parsing and the three modes of watch (run, --check-config,
// --status). Exit codes are the frozen ones of docs/architecture.md.
#include "watch/entry.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "cli/args.hpp"
#include "cli/context.hpp"
#include "common/connection.hpp"
#include "common/exit_codes.hpp"
#include "common/logging.hpp"
#include "common/output.hpp"
#include "common/wait_primary.hpp"
#include "watch/checks.hpp"
#include "watch/config.hpp"
#include "watch/daemon.hpp"
#include "watch/decision.hpp"
#include "watch/executor.hpp"
#include "watch/ledger.hpp"

namespace pgdeploy::watch {

using nlohmann::json;

namespace {

struct Args {
    std::string config;
    bool check_config = false;
    bool status = false;
    bool json = false;
    bool help = false;
    std::string log_level;
    common::LockSafety lock;  // once: --lock-timeout, --lock-attempts, --lock-retry-time over rollback.lock_*
    long long wait_primary_ms = common::kDefaultWaitPrimaryMs;  // once: --wait-primary, else PGDEPLOY_WAIT_PRIMARY
};

const char* kWatchUsage =
    "usage: pgdeploy watch --config FILE [--log-level LEVEL]   run the watcher (systemd: Type=notify)\n"
    "       pgdeploy watch --check-config --config FILE [--json]  validate a configuration (exit 0 or 2)\n"
    "       pgdeploy watch --status --config FILE [--json]      show the running watcher's view (state_file)\n";
const char* kOnceUsage =
    "usage: pgdeploy once --config FILE [--json] [--log-level LEVEL] [--lock-timeout DURATION] [--lock-attempts N]\n"
    "                     [--lock-retry-time DURATION] [--wait-primary DURATION]\n";

// The lock flags of once, as `pgdeploy up` has them (cli::lock_flags: same syntax, same limits, same messages).
// --wait-primary rides along: the same parsing, into the same ParsedArgs.
const char* const kOnceLockFlags[] = {"lock-timeout", "lock-attempts", "lock-retry-time", "wait-primary"};

// once_lock_flag: records --lock-* [=]VALUE of once in lock_args; false when s is not one of them.
template <typename Value>
bool once_lock_flag(const std::string& s, Value& value, cli::ParsedArgs& lock_args) {
    for (const char* name : kOnceLockFlags) {
        std::string flag = std::string("--") + name;
        if (s != flag && s.rfind(flag + "=", 0) != 0)
            continue;
        if (lock_args.has(name))
            throw UsageError(flag + " given more than once");
        std::string v = value(flag);
        if (v.empty())
            throw UsageError("option " + flag + " needs a non-empty value");
        lock_args.values[name] = v;
        return true;
    }
    return false;
}

Args parse_args(const std::vector<std::string>& args, bool watch) {
    Args a;
    cli::ParsedArgs lock_args;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& s = args[i];
        auto value = [&](const std::string& flag) -> std::string {
            auto eq = s.find('=');
            if (eq != std::string::npos)
                return s.substr(eq + 1);
            if (i + 1 >= args.size())
                throw UsageError(flag + " needs a value");
            return args[++i];
        };
        if (s == "--config" || s.rfind("--config=", 0) == 0)
            a.config = value("--config");
        else if (s == "--json")
            a.json = true;
        else if (s == "--log-level" || s.rfind("--log-level=", 0) == 0)
            a.log_level = value("--log-level");
        else if (s == "-h" || s == "--help")
            a.help = true;
        else if (watch && s == "--check-config")
            a.check_config = true;
        else if (watch && s == "--status")
            a.status = true;
        else if (!watch && once_lock_flag(s, value, lock_args))
            continue;
        else
            throw UsageError("unknown argument \"" + s + "\"");
    }
    a.lock = cli::lock_flags(lock_args);
    if (!watch)
        a.wait_primary_ms = cli::wait_primary_ms_from(lock_args, std::getenv("PGDEPLOY_WAIT_PRIMARY"));
    if (a.help)
        return a;
    if (a.check_config && a.status)
        throw UsageError("--check-config and --status cannot be combined");
    if (a.config.empty()) {
        if (const char* env = std::getenv("PGDEPLOY_WATCH_CONFIG"))
            a.config = env;
    }
    if (a.config.empty())
        throw UsageError("--config FILE is required");
    return a;
}

void setup_logs(const WatchConfig& cfg, const std::string& level_override) {
    common::LogOptions lo;
    lo.format = cfg.logging.format == "json" ? common::LogFormat::kJson : common::LogFormat::kPlain;
    common::setup_logging(lo);
    std::string level = level_override.empty() ? cfg.logging.level : level_override;
    spdlog::set_level(spdlog::level::from_str(level == "warning" ? "warn" : level));
}

int fail(const std::string& command, const Failure& f, bool as_json) {
    if (as_json)
        common::print_json(common::error_document(command, f));
    else
        std::cerr << "pgdeploy " << command << ": " << f.what() << "\n";
    return f.exit_code();
}

int check_config(const Args& a) {
    WatchConfig cfg = load_config(a.config);
    if (a.json) {
        json checks = json::array();
        for (const auto& c : cfg.checks)
            checks.push_back({{"name", c.name},
                              {"type", to_string(c.type)},
                              {"interval", format_duration(c.interval)},
                              {"critical", c.critical}});
        common::print_json({{"schema_version", 1},
                            {"command", "watch --check-config"},
                            {"ok", true},
                            {"config_file", a.config},
                            {"watcher_id", cfg.watcher_id},
                            {"checks", checks}});
    } else {
        std::cout << a.config << ": OK (" << cfg.checks.size() << " checks, watcher \"" << cfg.watcher_id << "\")\n";
    }
    return kExitOk;
}

/*
 * show_status
 *
 * The running daemon writes its view to state_file (atomically, about four times a second); --status reads it, so it
 * works without a database connection and without the metrics server. "stale" tells a dead daemon from a live one.
 */
int show_status(const Args& a) {
    WatchConfig cfg = load_config(a.config);
    if (cfg.state_file.empty())
        throw UsageError("state_file is not set in " + a.config + ": the daemon publishes nothing to read");
    std::ifstream in(cfg.state_file);
    if (!in)
        throw Failure(kExitFailed, "no state in " + cfg.state_file + ": is `pgdeploy watch` running?");
    std::stringstream ss;
    ss << in.rdbuf();
    json st;
    try {
        st = json::parse(ss.str());
    } catch (const json::exception& e) {
        throw Failure(kExitFailed, "state file " + cfg.state_file + " is not valid JSON: " + e.what());
    }
    long long now =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    long long updated = st.value("updated_at_epoch_ms", 0LL);
    long long stale_after = st.value("stale_after_ms", 10000LL);
    st["stale"] = now - updated > stale_after;
    if (a.json) {
        common::print_json(st);
    } else {
        std::cout << "watcher " << st.value("watcher_id", "?") << " (pid " << st.value("pid", 0L) << ")"
                  << (st.value("leader", false) ? ", leader" : ", follower")
                  << (st.value("connected", false) ? "" : ", database DOWN")
                  << (st["stale"].get<bool>() ? ", STALE" : "") << "\n";
        // A failover freeze (watch/freeze.hpp): since when and why, so that "no rollback" is not mistaken for health.
        if (st.value("frozen", false) && st["freeze"].is_object()) {
            const json& f = st["freeze"];
            std::cout << "FROZEN since " << f.value("since", "?") << " (" << f.value("reason", "?")
                      << "): no writable primary, decisions wait for it: " << f.value("detail", "") << "\n";
        }
        std::vector<std::vector<std::string>> rows;
        for (const auto& c : st["checks"]) {
            rows.push_back({c.value("name", ""), c.value("type", ""), c.value("state", ""),
                            c["last"].is_object() ? c["last"].value("status", "") : "-",
                            c["last"].is_object() ? c["last"].value("detail", "") : "-",
                            std::to_string(c.value("consecutive_failures", 0)),
                            common::format_ms(c["last"].is_object() ? c["last"].value("latency_ms", 0.0) : 0.0)});
        }
        std::cout << common::render_table({"check", "type", "state", "last", "detail", "fails", "latency"}, rows);
        if (st["deployment"].is_object())
            std::cout << "deployment " << st["deployment"].value("id", 0L) << " ("
                      << st["deployment"].value("app_version", "") << ") " << st["deployment"].value("state", "")
                      << "\n";
        if (st["last_decision"].is_object())
            std::cout << "last decision: " << st["last_decision"].value("message", "") << "\n";
    }
    return kExitOk;
}

void override_lock_safety(common::LockSafety& cfg, const common::LockSafety& flags) {
    if (flags.lock_timeout_ms)
        cfg.lock_timeout_ms = flags.lock_timeout_ms;
    if (flags.lock_attempts)
        cfg.lock_attempts = flags.lock_attempts;
    if (flags.lock_retry_time_ms)
        cfg.lock_retry_time_ms = flags.lock_retry_time_ms;
}

/*
 * run_once_cycle
 *
 * One cycle for a systemd timer (the lazy rollback: no daemon, a timer runs it): execute every claimable marker
 * with the app hook, then, when something was rolled back and checks are configured, run the checks until health
 * recovers or decision.health_recovery passes. Exit 0 nothing to do / all done and healthy, 1 an attempt failed
 * (will be retried), 10 a marker needs attention or health did not recover.
 */
int run_once_cycle(const Args& a) {
    WatchConfig cfg = load_config(a.config);
    setup_logs(cfg, a.log_level);
    override_lock_safety(cfg.rollback.lock, a.lock);
    common::ConnectOptions opts;
    opts.dsn = cfg.database.dsn;
    opts.application_name = "pgdeploy-once";
    common::WaitOptions wait;
    wait.deadline_ms = a.wait_primary_ms;
    wait.command = "pgdeploy once";
    common::Connection conn = common::connect_waiting(opts, wait);
    conn.require_extension();

    std::vector<ExecOutcome> outcomes;
    RollbackExecutor exec(cfg, conn, {});
    for (const auto& m : list_claimable(conn, cfg.watcher_id, cfg.rollback, false)) {
        spdlog::info("marker {} ({}): executing", m.id, to_string(m.state));
        try {
            outcomes.push_back(exec.claim_and_execute(m.id));
        } catch (const common::DbError& e) {
            // One marker's trouble must not hide the others: report it, go on. (A lost connection still ends the
            // cycle with exit 3.)
            ExecOutcome o;
            o.marker_id = m.id;
            o.result = ExecResult::failed;
            o.error = e.what();
            spdlog::error("marker {}: {}", m.id, e.what());
            outcomes.push_back(o);
        }
    }
    bool any_done = false, any_failed = false, any_attention = false;
    for (const auto& o : outcomes) {
        any_done |= o.result == ExecResult::done;
        any_failed |= o.result == ExecResult::failed;
        any_attention |= o.result == ExecResult::needs_attention;
    }

    json recovered = nullptr;
    if (any_done && !cfg.checks.empty()) {
        DecisionEngine engine(cfg);
        Millis start = monotonic_ms();
        Millis deadline = start + cfg.decision.health_recovery;
        bool ok = false;
        while (!ok && monotonic_ms() <= deadline) {
            std::vector<const CheckConfig*> all;
            for (const auto& c : cfg.checks)
                all.push_back(&c);
            for (const auto& r : run_checks(all, cfg.database.dsn, cfg.hook_environment)) {
                spdlog::debug("check {}: {} {}", r.name, to_string(r.status), r.detail);
                engine.record(r, monotonic_ms());
            }
            ok = engine.all_critical_healthy();
            if (!ok)
                std::this_thread::sleep_for(std::chrono::milliseconds(shortest_interval(cfg)));
        }
        recovered = ok;
        Ledger ledger(conn);
        for (const auto& o : outcomes) {
            if (o.result != ExecResult::done)
                continue;
            ledger.log_event(ok ? "watcher_rollback_done" : "watcher_rollback_unrecovered", o.deployment_id,
                             o.marker_id,
                             {{"recovered", ok},
                              {"recovery_ms", monotonic_ms() - start},
                              {"watcher_id", cfg.watcher_id},
                              {"by", "once"}});
        }
        if (!ok) {
            const ExecOutcome& first = *std::find_if(outcomes.begin(), outcomes.end(),
                                                     [](const ExecOutcome& o) { return o.result == ExecResult::done; });
            send_alert(cfg, "unrecovered",
                       "health did not recover within " + format_duration(cfg.decision.health_recovery) +
                           " after pgdeploy once rolled back deployment " + std::to_string(first.deployment_id),
                       first.deployment_id, first.marker_id);
        }
    }

    for (const auto& o : outcomes)
        if (o.result == ExecResult::needs_attention)
            send_alert(cfg, "needs_attention",
                       "rollback marker " + std::to_string(o.marker_id) + " of deployment " +
                           std::to_string(o.deployment_id) + " needs attention: " + o.error,
                       o.deployment_id, o.marker_id);
    int code = kExitOk;
    if (any_failed)
        code = kExitFailed;
    if (any_attention || (recovered.is_boolean() && !recovered.get<bool>()))
        code = kExitNeedsAttention;
    if (a.json) {
        json markers = json::array();
        for (const auto& o : outcomes)
            markers.push_back(o.to_json());
        common::print_json({{"schema_version", 1},
                            {"command", "once"},
                            {"ok", code == kExitOk},
                            {"markers", markers},
                            {"recovered", recovered},
                            {"exit_code", code}});
    } else {
        if (outcomes.empty())
            std::cout << "nothing to do: no pending rollback marker\n";
        for (const auto& o : outcomes)
            std::cout << "marker " << o.marker_id << " (deployment " << o.deployment_id << "): " << to_string(o.result)
                      << (o.error.empty() ? "" : ": " + o.error) << "\n";
        if (recovered.is_boolean())
            std::cout << (recovered.get<bool>() ? "health recovered\n" : "health did NOT recover\n");
    }
    return code;
}

}  // namespace

int run_watch(const std::vector<std::string>& args) {
    bool as_json = false;
    for (const auto& s : args)
        as_json |= s == "--json";
    try {
        Args a = parse_args(args, true);
        if (a.help) {
            std::cout << kWatchUsage;
            return kExitOk;
        }
        if (a.check_config)
            return check_config(a);
        if (a.status)
            return show_status(a);
        WatchConfig cfg = load_config(a.config);
        setup_logs(cfg, a.log_level);
        return run_daemon(a.config, std::move(cfg));
    } catch (const ConfigError& e) {
        return fail("watch", UsageError(e.what()), as_json);
    } catch (const Failure& e) {
        return fail("watch", e, as_json);
    } catch (const std::exception& e) {
        return fail("watch", Failure(kExitFailed, e.what()), as_json);
    }
}

/*
 * run_once_resuming
 *		once resumes itself after a lost connection (a failover): it claims markers under its watcher_id, so the
 *		next cycle resumes what this one held (its hook is not run again once done), and a marker's state
 *machine never executes a rollback twice. The reconnection waits for a writable primary within --wait-primary.
 */
int run_once_resuming(const Args& a) {
    constexpr int kMaxRedos = 3;
    for (int redo = 0;; ++redo) {
        try {
            return run_once_cycle(a);
        } catch (const common::ConnectionLost& e) {
            if (a.wait_primary_ms == 0 || redo >= kMaxRedos)
                throw;
            spdlog::warn("{}: reconnecting to resume pgdeploy once (the markers it holds are resumed)", e.what());
        }
    }
}

int run_once(const std::vector<std::string>& args) {
    bool as_json = false;
    for (const auto& s : args)
        as_json |= s == "--json";
    try {
        Args a = parse_args(args, false);
        if (a.help) {
            std::cout << kOnceUsage;
            return kExitOk;
        }
        return run_once_resuming(a);
    } catch (const ConfigError& e) {
        return fail("once", UsageError(e.what()), as_json);
    } catch (const Failure& e) {
        return fail("once", e, as_json);
    } catch (const std::exception& e) {
        return fail("once", Failure(kExitFailed, e.what()), as_json);
    }
}

}  // namespace pgdeploy::watch
