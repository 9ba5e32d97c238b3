#include "watch/executor.hpp"

#include <spdlog/spdlog.h>

#include <chrono>

#include "common/progress.hpp"
#include "common/steps.hpp"
#include "watch/hook_env.hpp"
#include "watch/process.hpp"

namespace pgdeploy::watch {

using nlohmann::json;

namespace {

Millis mono_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// The hook's output: at most kHookOutputMax bytes are read, the last kOutputTail are kept.
constexpr std::size_t kHookOutputMax = 64 * 1024;
constexpr std::size_t kOutputTail = 1000;

std::string tail(const std::string& s, std::size_t n) {
    return s.size() <= n ? s : sanitize_utf8(s.substr(s.size() - n));
}

// hook_output: what only administrators may read about a hook run (Ledger::log_event's private part).
json hook_output(const ProcessResult& p) {
    return {{"output", tail(p.output, kOutputTail)},
            {"output_truncated", p.truncated || p.output.size() > kOutputTail}};
}

}  // namespace

Millis retry_delay(const RollbackConfig& rb, int attempts) {
    Millis d = rb.retry_backoff;
    for (int i = 1; i < attempts && d < rb.retry_backoff_max; ++i)
        d *= 2;
    return std::min(d, rb.retry_backoff_max);
}

std::vector<ClaimableMarker> list_claimable(common::Connection& conn, const std::string& holder,
                                            const RollbackConfig& rb, bool honour_backoff) {
    std::vector<ClaimableMarker> out;
    for (const ClaimableMarker& m : Ledger(conn).claimable(holder)) {
        if (honour_backoff && m.state == MarkerState::failed && m.age_ms < retry_delay(rb, m.attempts))
            continue;
        out.push_back(m);
    }
    return out;
}

const char* to_string(ExecResult r) {
    switch (r) {
        case ExecResult::done:
            return "done";
        case ExecResult::failed:
            return "failed";
        case ExecResult::needs_attention:
            return "needs_attention";
        case ExecResult::interrupted:
            return "interrupted";
        case ExecResult::not_claimed:
            break;
    }
    return "not_claimed";
}

ExecResult result_after_failure(MarkerState s) {
    return s == MarkerState::needs_attention ? ExecResult::needs_attention : ExecResult::failed;
}

std::map<std::string, std::string> hook_variables(const MarkerInfo& m, int attempt, const std::string& watcher_id) {
    return {{"PGDEPLOY_FROM_APP_VERSION", m.from_app_version},
            {"PGDEPLOY_TO_APP_VERSION", m.to_app_version},
            {"PGDEPLOY_FROM_SCHEMA_VERSION", m.from_schema_version},
            {"PGDEPLOY_TO_SCHEMA_VERSION", m.to_schema_version},
            {"PGDEPLOY_DEPLOYMENT_ID", std::to_string(m.deployment_id)},
            {"PGDEPLOY_MARKER_ID", std::to_string(m.id)},
            {"PGDEPLOY_ATTEMPT", std::to_string(attempt)},
            {"PGDEPLOY_REASON", m.reason},
            {"PGDEPLOY_WATCHER_ID", watcher_id}};
}

bool send_alert(const WatchConfig& cfg, const std::string& kind, const std::string& message, std::int64_t deployment_id,
                std::int64_t marker_id, const std::function<bool()>& tick) {
    spdlog::critical("ALERT {}: {}", kind, message);
    if (cfg.alert.command.empty())
        return true;
    Environment env = child_environment(cfg.hook_environment,
                                        {{"PGDEPLOY_ALERT_KIND", kind},
                                         {"PGDEPLOY_ALERT_MESSAGE", message},
                                         {"PGDEPLOY_DEPLOYMENT_ID", deployment_id ? std::to_string(deployment_id) : ""},
                                         {"PGDEPLOY_MARKER_ID", marker_id ? std::to_string(marker_id) : ""},
                                         {"PGDEPLOY_WATCHER_ID", cfg.watcher_id}});
    ProcessResult p = run_process(cfg.alert.command, env, cfg.alert.timeout, 4096, tick);
    bool ok = p.started && !p.timed_out && p.signal == 0 && p.exit_code == 0 && p.error.empty();
    if (!ok)
        spdlog::error("alert command failed: {}", describe(p));
    return ok;
}

json ExecOutcome::to_json() const {
    return {{"marker_id", marker_id},      {"deployment_id", deployment_id == 0 ? json(nullptr) : json(deployment_id)},
            {"result", to_string(result)}, {"error", error.empty() ? json(nullptr) : json(error)},
            {"hook_ran", hook_ran},        {"hook_attempt", hook_attempt},
            {"rollback", rollback},        {"steps", steps}};
}

ExecOutcome RollbackExecutor::claim_and_execute(std::int64_t marker_id) {
    try {
        if (!ledger_.claim(cfg_.watcher_id, cfg_.rollback.lease, marker_id)) {
            ExecOutcome o;
            o.marker_id = marker_id;
            o.result = ExecResult::not_claimed;
            return o;
        }
    } catch (const common::DbError& e) {
        // PD007: another holder has it, or it was finished meanwhile: not ours to run.
        if (e.sqlstate() != "PD007" && e.sqlstate() != "P0002")
            throw;
        ExecOutcome o;
        o.marker_id = marker_id;
        o.result = ExecResult::not_claimed;
        o.error = e.what();
        spdlog::info("marker {}: not claimed: {}", marker_id, e.what());
        return o;
    }
    return execute_claimed(marker_id);
}

/*
 * RollbackExecutor::run_hook
 *
 * The app hook runs at most once per marker unless a run was cut short (a crash, a kill, a stop request): then it
 * runs again and PGDEPLOY_ATTEMPT says which run it is, so a hook that is not naturally idempotent can tell. A run
 * that finished is remembered as a watcher_hook_done event and never repeated.
 */
bool RollbackExecutor::run_hook(const MarkerInfo& m, ExecOutcome& out) {
    if (cfg_.rollback.command.empty())
        return true;
    if (m.hook_done) {
        spdlog::info("marker {}: the app hook already completed; not running it again", m.id);
        return true;
    }
    int attempt = m.hook_runs + 1;
    out.hook_attempt = attempt;
    out.hook_ran = true;
    ledger_.log_event("watcher_hook_started", m.deployment_id, m.id,
                      {{"attempt", attempt},
                       {"holder", cfg_.watcher_id},
                       {"argv0", cfg_.rollback.command[0]},
                       {"from_app_version", m.from_app_version},
                       {"to_app_version", m.to_app_version}});
    spdlog::warn("marker {}: running the app rollback hook {} (attempt {}, app {} -> {})", m.id,
                 cfg_.rollback.command[0], attempt, m.from_app_version, m.to_app_version);
    Millis last_renew = mono_ms();
    Millis renew_every = std::max<Millis>(1000, cfg_.rollback.lease / 3);
    bool renew_failed = false;
    auto tick = [&]() {
        if (mono_ms() - last_renew >= renew_every) {
            last_renew = mono_ms();
            try {
                ledger_.renew_lease(m.id, cfg_.watcher_id, cfg_.rollback.lease);
            } catch (const std::exception& e) {
                spdlog::error("marker {}: cannot renew the lease: {}", m.id, e.what());
                renew_failed = true;
            }
        }
        return tick_ ? tick_() : true;
    };
    ProcessResult p = run_process(cfg_.rollback.command,
                                  child_environment(cfg_.hook_environment, hook_variables(m, attempt, cfg_.watcher_id)),
                                  cfg_.rollback.timeout, kHookOutputMax, tick);
    if (p.error == "interrupted") {
        out.result = ExecResult::interrupted;
        out.error = "stopped while the app hook was running";
        spdlog::warn("marker {}: app hook interrupted by shutdown; the marker stays ours and resumes at next start",
                     m.id);
        return false;
    }
    bool ok = p.started && !p.timed_out && p.signal == 0 && p.exit_code == 0;
    if (!p.output.empty())
        spdlog::info("marker {}: app hook output (last {} bytes):\n{}", m.id, std::min(p.output.size(), kOutputTail),
                     tail(p.output, kOutputTail));
    if (ok) {
        ledger_.log_event("watcher_hook_done", m.deployment_id, m.id,
                          {{"attempt", attempt}, {"duration_ms", p.duration_ms}, {"output_bytes", p.output.size()}},
                          hook_output(p));
        spdlog::info("marker {}: app hook done in {:.0f} ms", m.id, p.duration_ms);
        return true;
    }
    // The error goes to the marker and the events, which deploy_reader reads: the hook's output stays out of it.
    out.error = "app rollback hook failed: " + describe(p, false);
    ledger_.log_event(
        "watcher_hook_failed", m.deployment_id, m.id,
        {{"attempt", attempt}, {"error", out.error}, {"output_bytes", p.output.size()}, {"renew_failed", renew_failed}},
        hook_output(p));
    spdlog::error("marker {}: {}", m.id, out.error);
    return false;
}

/*
 * RollbackExecutor::revert_database
 *
 * deploy.execute_rollback() for the marker. A revert that stops at the steps of a down SQL (DROP INDEX CONCURRENTLY,
 * ...) is driven to its end by common::execute_marker: the steps run at top level on a connection of their own while
 * this one renews the lease, the tick keeps the watchdog fed (a step may wait minutes for old transactions), and a
 * stop request cancels the statement and leaves the marker ours, to resume at the next start. The configuration's
 * lock safety is applied before each revert (so that a reload counts and a removed key goes back to the server's
 * setting), and a progress monitor whose lines go to the log watches the calls: a revert that waits for the
 * application's locks or rewrites a table says so while it runs.
 */
bool RollbackExecutor::revert_database(const MarkerInfo& m, ExecOutcome& out) {
    common::apply_lock_safety(conn_, cfg_.rollback.lock);
    common::ProgressMonitor monitor(conn_,
                                    std::make_shared<common::ProgressOutput>(common::ProgressOutput::Mode::kLog));
    auto watching = monitor.watch("marker " + std::to_string(m.id) + ": deploy.execute_rollback()");
    common::StepOptions options;
    options.holder = cfg_.watcher_id;
    options.operation = "pgdeploy watcher " + cfg_.watcher_id;
    options.progress = [&m](const std::string& line) { spdlog::info("marker {}: {}", m.id, line); };
    options.tick = [this]() { return tick_ ? tick_() : true; };
    auto connect_steps = [this]() {
        common::ConnectOptions opts;
        opts.dsn = cfg_.database.dsn;
        opts.application_name = "pgdeploy-watch-steps";
        return common::Connection::connect(opts);
    };
    try {
        common::MarkerRun run =
            common::execute_marker(conn_, connect_steps, m.id, cfg_.rollback.force, cfg_.rollback.lease, options);
        out.rollback = run.result;
        out.steps = run.steps;
    } catch (const common::Cancelled& e) {
        out.result = ExecResult::interrupted;
        out.error = "stopped while a step of the revert was running";
        spdlog::warn("marker {}: {}; the marker stays ours and resumes at next start", m.id, out.error);
        return false;
    } catch (const common::DbError& e) {
        // Refused before it could record anything (deploy lock held by a running deploy: 55P03, ...): record the
        // failed attempt ourselves so the lease is released and the retry budget counts it.
        out.error = std::string("database revert refused: ") + e.what();
        spdlog::error("marker {}: {}", m.id, out.error);
        out.result = result_after_failure(ledger_.fail_attempt(
            m.id, cfg_.watcher_id, {{"message", e.what()}, {"sqlstate", e.sqlstate()}, {"step", "execute_rollback"}}));
        return false;
    }
    if (out.rollback.value("ok", false))
        return true;
    out.result = result_after_failure(marker_state_from(out.rollback.value("state", "failed")));
    const auto& err = out.rollback["error"];
    out.error = "database revert failed: " + (err.is_object() && err.contains("message") && err["message"].is_string()
                                                  ? err["message"].get<std::string>()
                                                  : out.rollback.dump());
    spdlog::error("marker {}: {}", m.id, out.error);
    return false;
}

/*
 * RollbackExecutor::execute_claimed
 *
 * Order app_first (default): the app goes back first, so old code never runs against a schema it does not know
 * about for longer than the hook takes; the database revert follows. database_first is for apps whose old release
 * cannot start against the new schema. Either way a failed step keeps the marker (failed, retried with backoff, then
 * needs_attention through the extension's attempt count).
 */
ExecOutcome RollbackExecutor::execute_claimed(std::int64_t marker_id) {
    ExecOutcome out;
    out.marker_id = marker_id;
    MarkerInfo m = ledger_.marker_info(marker_id);
    out.deployment_id = m.deployment_id;
    bool app_first = cfg_.rollback.order == RollbackOrder::app_first;
    ledger_.log_event("watcher_rollback_started", m.deployment_id, m.id,
                      {{"holder", cfg_.watcher_id},
                       {"attempt", m.attempts},
                       {"order", app_first ? "app_first" : "database_first"},
                       {"from_app_version", m.from_app_version},
                       {"to_app_version", m.to_app_version},
                       {"from_schema_version", m.from_schema_version},
                       {"to_schema_version", m.to_schema_version}});

    auto hook_failed = [&]() {
        if (out.result == ExecResult::interrupted)
            return out;
        out.result = result_after_failure(
            ledger_.fail_attempt(m.id, cfg_.watcher_id, {{"message", out.error}, {"step", "app_hook"}}));
        return out;
    };
    auto database = [&]() { return revert_database(m, out); };

    if (app_first) {
        if (!run_hook(m, out))
            return hook_failed();
        if (!database())
            return out;
    } else {
        if (!database())
            return out;
        if (!run_hook(m, out)) {
            if (out.result == ExecResult::interrupted)
                return out;
            // The marker is done (the database is back), so the marker cannot carry a retry: a person must.
            out.result = ExecResult::needs_attention;
            ledger_.log_event("watcher_needs_attention", m.deployment_id, m.id,
                              {{"error", out.error}, {"step", "app_hook"}});
            return out;
        }
    }
    out.result = ExecResult::done;
    spdlog::warn("marker {}: deployment {} rolled back (app {} -> {}, schema {} -> {})", m.id, m.deployment_id,
                 m.from_app_version, m.to_app_version, m.from_schema_version, m.to_schema_version);
    return out;
}

}  // namespace pgdeploy::watch
