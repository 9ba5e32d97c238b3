// The client half of a non-transactional migration (see steps.hpp).
#include "cli/steps.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>

#include "cli/context.hpp"
#include "common/output.hpp"
#include "pg_deploy/lock_backoff.hpp"

namespace pgdeploy::cli {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double elapsed_ms(Clock::time_point since) {
    return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

double jitter() {
    thread_local std::mt19937 rng{std::random_device{}()};
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

/*
 * SessionDeployLock
 *		Holds the deploy lock at session level while this client runs top-level statements
 *		(deploy.hold_deploy_lock: the extension owns the lock's key, its bounded wait and the error naming the
 *		holder). The extension's functions take the same lock per transaction, so between next_step() and
 *		step_done() nothing else would keep a second `pgdeploy up` from being handed the same running step and
 *		starting a duplicate concurrent build. The same session may still call deploy.* (advisory locks are
 *		re-entrant per session). If this process dies, the lock lives exactly as long as its backend: while the
 *		statement still runs, nobody else starts it again.
 */
class SessionDeployLock {
public:
    explicit SessionDeployLock(common::Connection& conn) : conn_(conn) {
        conn.exec("SELECT deploy.hold_deploy_lock('pgdeploy up')");
    }
    ~SessionDeployLock() {
        try {
            if (conn_.ok())
                conn_.exec("SELECT deploy.release_deploy_lock()");
        } catch (...) {
            // The session ends soon anyway, and with it the lock.
        }
    }
    SessionDeployLock(const SessionDeployLock&) = delete;
    SessionDeployLock& operator=(const SessionDeployLock&) = delete;

private:
    common::Connection& conn_;
};

/*
 * ScopedLockTimeout
 *		The session's lock_timeout for one statement: set before it, the previous value restored after it, also
 *		when it failed (autocommit: nothing is left aborted that would refuse the restore).
 */
class ScopedLockTimeout {
public:
    ScopedLockTimeout(common::Connection& conn, long long ms) : conn_(conn) {
        previous_ = conn.query_value("SELECT pg_catalog.current_setting('lock_timeout')").value_or("0");
        conn.exec("SELECT pg_catalog.set_config('lock_timeout', $1, false)", {std::to_string(ms) + "ms"});
    }
    ~ScopedLockTimeout() {
        try {
            if (conn_.ok())
                conn_.exec("SELECT pg_catalog.set_config('lock_timeout', $1, false)", {previous_});
        } catch (const std::exception& e) {
            spdlog::debug("cannot restore lock_timeout: {}", e.what());
        }
    }
    ScopedLockTimeout(const ScopedLockTimeout&) = delete;
    ScopedLockTimeout& operator=(const ScopedLockTimeout&) = delete;

private:
    common::Connection& conn_;
    std::string previous_;
};

// poll_for: sample often enough to see the blocker before a lock timeout of ms fires.
std::chrono::milliseconds poll_for(long long ms) {
    return std::chrono::milliseconds(std::clamp<long long>(ms / 4, 50, 1000));
}

json retry_entry(const json& step, int attempt, const json& wait, long long waited_ms) {
    const json& lock = wait.is_object() && wait.contains("lock") ? wait["lock"] : json();
    const json& blocker = wait.is_object() && wait.contains("blocker") ? wait["blocker"] : json();
    return {{"attempt", attempt},
            {"version", step.value("version", "")},
            {"name", step.value("name", "")},
            {"step", step.contains("step") ? step["step"] : json()},
            {"lock", lock},
            {"blocker", blocker},
            {"waited_ms", waited_ms},
            {"backoff_ms", nullptr}};
}

/*
 * gave_up
 *		The error of a statement whose retry budget is spent: 55P03 like the server's, worded as the extension's
 *		own give-up, naming the lock and the session that kept it, which the server's "canceling statement due
 *		to lock timeout" does not.
 */
common::DbError gave_up(const common::DbError& last, const json& entry, const common::LockRetryBudget& budget,
                        double total_ms, long long timeout_ms) {
    std::string message = common::what_of(entry) + " could not take " + common::describe_lock(entry["lock"]) +
                          " within " + std::to_string(timeout_ms) + " ms in " + common::cell(entry["attempt"]) +
                          " attempt(s) over " + common::format_ms(total_ms) + ": blocked by " +
                          common::describe_blocker(entry["blocker"]);
    std::string detail = std::string(last.what()) +
                         "; the budget is pg_deploy.lock_attempts = " + std::to_string(budget.attempts) +
                         " and pg_deploy.lock_retry_time = " + std::to_string(budget.time_ms) + " ms";
    return common::DbError("55P03", message, detail,
                           "End the blocking transaction (or SELECT pg_terminate_backend(pid)), or allow more with "
                           "--lock-attempts and --lock-retry-time; `pgdeploy up` resumes at this step.");
}

/*
 * run_statement
 *		A statement next_step hands out with a lock_timeout_ms runs under that lock_timeout and is tried again
 *		after a lock timeout (55P03), with backoff and jitter, within next_step's lock_retry budget: the
 *		application never queues behind it for longer than one timeout. A statement without one (CONCURRENTLY:
 *		it never blocks the application's reads and writes, and must be allowed to wait for old transactions)
 *		runs once, without a lock timeout of ours.
 */
void run_statement(const Context& ctx, common::Connection& conn, common::ProgressMonitor& monitor, const json& step,
                   const std::string& label, json& lock_retries) {
    const std::string sql = step["statement"].get<std::string>();
    const long long timeout = step_lock_timeout_ms(step);
    if (timeout == 0) {
        auto watching = monitor.watch(label);
        conn.exec(sql);
        return;
    }
    const common::LockRetryBudget budget = step_retry_budget(step);
    const auto first = Clock::now();
    for (int attempt = 1;; ++attempt) {
        try {
            auto watching = monitor.watch(label, poll_for(timeout));
            ScopedLockTimeout limit(conn, timeout);
            conn.exec(sql);
            return;
        } catch (const common::DbError& e) {
            if (e.sqlstate() != "55P03")
                throw;
            json entry = retry_entry(step, attempt, monitor.last_wait(), timeout);
            int pause = lock_retry_backoff_ms(attempt, jitter());
            if (!lock_retry_allowed(attempt, static_cast<int>(budget.attempts), elapsed_ms(first), pause,
                                    static_cast<int>(budget.time_ms))) {
                entry["gave_up"] = true;
                lock_retries.push_back(entry);
                throw gave_up(e, entry, budget, elapsed_ms(first), timeout);
            }
            entry["backoff_ms"] = pause;
            lock_retries.push_back(entry);
            ctx.progress(common::lock_retry_message(entry, budget.attempts));
            std::this_thread::sleep_for(std::chrono::milliseconds(pause));
        }
    }
}

// run_cleanup: on a resume, what a failed attempt left behind (an INVALID index) goes first.
void run_cleanup(common::Connection& conn, const json& step, const std::string& label) {
    json cleanup = step.contains("cleanup") ? step["cleanup"] : json::array();
    if (cleanup.is_string())
        cleanup = json::array({cleanup});
    if (!cleanup.is_array())
        return;
    for (const auto& c : cleanup) {
        if (!c.is_string() || c.get<std::string>().empty())
            continue;
        spdlog::info("{}: cleanup: {}", label, c.get<std::string>());
        conn.exec(c.get<std::string>());
    }
}

std::string step_label(const json& step) {
    std::string version = jstr(step, "version", "?"), name = jstr(step, "name", "");
    return version + (name.empty() ? "" : "_" + name) + " step " + jstr(step, "step", "?") +
           (step.contains("steps") ? "/" + jstr(step, "steps") : "");
}

}  // namespace

long long step_lock_timeout_ms(const json& step) {
    if (!step.is_object() || !step.contains("lock_timeout_ms") || !step["lock_timeout_ms"].is_number_integer())
        return 0;
    return std::max<long long>(0, step["lock_timeout_ms"].get<long long>());
}

common::LockRetryBudget step_retry_budget(const json& step) {
    common::LockRetryBudget budget;
    if (!step.is_object() || !step.contains("lock_retry") || !step["lock_retry"].is_object())
        return budget;
    const json& r = step["lock_retry"];
    if (r.contains("attempts") && r["attempts"].is_number_integer())
        budget.attempts = std::max<long long>(1, r["attempts"].get<long long>());
    if (r.contains("time_ms") && r["time_ms"].is_number())
        budget.time_ms = std::max<long long>(0, r["time_ms"].get<long long>());
    return budget;
}

/*
 * run_steps
 *		Cleanup statements come first: on a resume they remove what a failed attempt left behind. Each statement
 *		is reported back with step_done or step_failed (the server's SQLSTATE), so the ledger's checkpoints say
 *		where a later `pgdeploy up` resumes.
 */
json run_steps(const Context& ctx, common::Connection& conn, common::ProgressMonitor& monitor, const json& awaiting,
               StepRecords& records, const std::string& counter, double& total_ms) {
    json deployment = awaiting.is_object() && awaiting.contains("deployment_id") ? awaiting["deployment_id"] : json();
    common::Param dep_param;
    if (deployment.is_number_integer())
        dep_param = std::to_string(deployment.get<long long>());
    const std::string holder = Context::holder();
    SessionDeployLock lock(conn);
    while (true) {
        json step =
            conn.query_json("SELECT deploy.next_step(deployment_id => $1::bigint, holder => $2)", {dep_param, holder});
        if (step.is_null() || (step.is_object() && step.value("done", false)) ||
            (step.is_object() && !step.contains("statement")))
            return nullptr;
        json id = step.contains("step_id") ? step["step_id"] : step["id"];
        std::string step_id = id.is_string() ? id.get<std::string>() : id.dump();
        std::string label = step_label(step);
        json step_no = step.contains("step") ? step["step"] : json();
        auto started = Clock::now();
        try {
            run_cleanup(conn, step, label);
            spdlog::debug("{}: {}", label, step["statement"].get<std::string>());
            run_statement(ctx, conn, monitor, step, label, records.lock_retries);
        } catch (const common::DbError& e) {
            double ms = elapsed_ms(started);
            ctx.progress(counter + label + " ... FAILED " + common::format_ms(ms) + ": " + e.sqlstate() + " " +
                         e.what());
            conn.query_value("SELECT deploy.step_failed($1::bigint, $2, $3)", {step_id, e.sqlstate(), e.what()});
            json failure = e.to_json();
            failure["version"] = jstr(step, "version", "?");
            failure["name"] = jstr(step, "name", "");
            failure["step"] = step_no;
            failure["statement"] = step["statement"];
            records.steps.push_back({{"step_id", id},
                                     {"version", failure["version"]},
                                     {"step", step_no},
                                     {"ok", false},
                                     {"sqlstate", e.sqlstate()},
                                     {"duration_ms", ms}});
            return failure;
        }
        double ms = elapsed_ms(started);
        conn.query_value("SELECT deploy.step_done($1::bigint)", {step_id});
        total_ms += ms;
        ctx.progress(counter + label + " ... ok " + common::format_ms(ms));
        records.steps.push_back({{"step_id", id},
                                 {"version", jstr(step, "version", "?")},
                                 {"step", step_no},
                                 {"ok", true},
                                 {"duration_ms", ms}});
    }
}

}  // namespace pgdeploy::cli
