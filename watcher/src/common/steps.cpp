// The client half of non-transactional steps (see steps.hpp).
#include "common/steps.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <random>
#include <thread>

#include "common/output.hpp"
#include "pg_deploy/lock_backoff.hpp"

namespace pgdeploy::common {

namespace {

using nlohmann::json;

double elapsed_ms(std::chrono::steady_clock::time_point since) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since).count();
}

// jstr: the text at key (numbers printed), or fallback when missing or null.
std::string jstr(const json& obj, const std::string& key, const std::string& fallback = "-") {
    if (!obj.is_object() || !obj.contains(key) || obj[key].is_null())
        return fallback;
    return cell(obj[key]);
}

void report(const StepOptions& options, const std::string& line) {
    if (options.progress)
        options.progress(line);
}

// exec_statement runs one statement at top level: plainly, or with the options' tick while the server works on it.
void exec_statement(Connection& conn, const std::string& sql, const StepOptions& options) {
    if (options.tick)
        conn.exec_ticking(sql, options.tick);
    else
        conn.exec(sql);
}

// watched: the options' monitor watching `label` while the returned scope lives (nothing without a monitor).
std::optional<ProgressMonitor::Scope> watched(const StepOptions& options, const std::string& label,
                                              std::chrono::milliseconds poll = std::chrono::milliseconds(1000)) {
    if (!options.monitor)
        return std::nullopt;
    return options.monitor->watch(label, poll);
}

double jitter() {
    thread_local std::mt19937 rng{std::random_device{}()};
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

/*
 * with_lock_timeout
 *		The statement preceded by a transaction-local lock_timeout in one simple query: PostgreSQL runs the two
 *as one implicit transaction, so the setting ends with the statement, on the same server connection, also behind
 *PgBouncer in transaction mode (a session SET would stay behind on a pooled server connection, and apply to whichever
 *client gets it next). next_step hands a lock timeout only to statements that may run in a transaction block.
 */
std::string with_lock_timeout(const std::string& sql, long long ms) {
    return "SELECT pg_catalog.set_config('lock_timeout', '" + std::to_string(ms) + "ms', true);\n" + sql;
}

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
DbError gave_up(const DbError& last, const json& entry, const LockRetryBudget& budget, double total_ms,
                long long timeout_ms) {
    std::string message = what_of(entry) + " could not take " + describe_lock(entry["lock"]) + " within " +
                          std::to_string(timeout_ms) + " ms in " + cell(entry["attempt"]) + " attempt(s) over " +
                          format_ms(total_ms) + ": blocked by " + describe_blocker(entry["blocker"]);
    std::string detail = std::string(last.what()) +
                         "; the budget is pg_deploy.lock_attempts = " + std::to_string(budget.attempts) +
                         " and pg_deploy.lock_retry_time = " + std::to_string(budget.time_ms) + " ms";
    return DbError("55P03", message, detail,
                   "End the blocking transaction (or SELECT pg_terminate_backend(pid)), or allow more with "
                   "--lock-attempts and --lock-retry-time; the next run resumes at this step.");
}

void record_retry(const StepOptions& options, const json& entry) {
    if (options.lock_retries)
        options.lock_retries->push_back(entry);
}

/*
 * run_statement
 *		A statement next_step hands out with a lock_timeout_ms runs under that lock_timeout and is tried again
 *		after a lock timeout (55P03), with backoff and jitter, within next_step's lock_retry budget: the
 *		application never queues behind it for longer than one timeout. A statement without one (CONCURRENTLY:
 *		it never blocks the application's reads and writes, and must be allowed to wait for old transactions)
 *		runs once, without a lock timeout of ours.
 */
void run_statement(Connection& conn, const json& step, const std::string& label, const StepOptions& options) {
    const std::string sql = step["statement"].get<std::string>();
    const long long timeout = step_lock_timeout_ms(step);
    if (timeout == 0) {
        auto watching = watched(options, label);
        exec_statement(conn, sql, options);
        return;
    }
    const LockRetryBudget budget = step_retry_budget(step);
    const auto first = std::chrono::steady_clock::now();
    for (int attempt = 1;; ++attempt) {
        try {
            auto watching = watched(options, label, poll_for(timeout));
            exec_statement(conn, with_lock_timeout(sql, timeout), options);
            return;
        } catch (const DbError& e) {
            if (e.sqlstate() != "55P03")
                throw;
            json entry = retry_entry(step, attempt, options.monitor ? options.monitor->last_wait() : json(), timeout);
            int pause = lock_retry_backoff_ms(attempt, jitter());
            if (!lock_retry_allowed(attempt, static_cast<int>(budget.attempts), elapsed_ms(first), pause,
                                    static_cast<int>(budget.time_ms))) {
                entry["gave_up"] = true;
                record_retry(options, entry);
                throw gave_up(e, entry, budget, elapsed_ms(first), timeout);
            }
            entry["backoff_ms"] = pause;
            record_retry(options, entry);
            report(options, lock_retry_message(entry, budget.attempts));
            std::this_thread::sleep_for(std::chrono::milliseconds(pause));
        }
    }
}

/*
 * DeployLease
 *		The deploy lease (deploy.acquire_deploy_lease) while this client runs statements at top level: between
 *		next_step() and step_done() no transaction holds the deploy lock, and the lease keeps every other deploy
 *		operation out (a second `pgdeploy up` would otherwise be handed the same running step). It is a row, not
 *		session state, so it works behind PgBouncer in transaction mode. renew_if_due() renews it every third of
 *		its ttl, from a connection of its own (the statement keeps this one busy); a client that dies blocks the
 *		others for at most the ttl, and next_step refuses a step whose statement a backend still executes.
 */
class DeployLease {
public:
    DeployLease(Connection& conn, std::string holder, const std::string& operation)
        : conn_(conn), holder_(std::move(holder)), last_(std::chrono::steady_clock::now()) {
        conn.exec("SELECT deploy.acquire_deploy_lease($1, $2, $3::pg_catalog.interval)",
                  {holder_, operation, std::to_string(kTtlMs) + " milliseconds"});
    }
    ~DeployLease() {
        try {
            Connection& c = conn_.ok() ? conn_ : renewer();
            c.exec("SELECT deploy.release_deploy_lease($1)", {holder_});
        } catch (const std::exception& e) {
            spdlog::debug("cannot release the deploy lease (it expires by itself): {}", e.what());
        }
    }
    DeployLease(const DeployLease&) = delete;
    DeployLease& operator=(const DeployLease&) = delete;

    // renew_if_due: false when the lease was lost (it expired and another client took it): stop.
    bool renew_if_due() {
        if (elapsed_ms(last_) < kTtlMs / 3.0)
            return true;
        try {
            auto held = renewer().query_value("SELECT deploy.renew_deploy_lease($1, $2::pg_catalog.interval)",
                                              {holder_, std::to_string(kTtlMs) + " milliseconds"});
            last_ = std::chrono::steady_clock::now();
            if (held.value_or("f") != "t") {
                spdlog::error("the deploy lease of \"{}\" expired and was taken over: stopping", holder_);
                return false;
            }
        } catch (const Failure& e) {
            // The server may be failing over: the statement's own connection tells; try again next tick.
            spdlog::warn("cannot renew the deploy lease: {}", e.what());
            renewer_.reset();
            last_ = std::chrono::steady_clock::now();
        }
        return true;
    }

private:
    // Short enough that a killed client holds up the next run by less than pg_deploy.lock_wait (10 s), which waits
    // for it; long enough to ride out a renewal that is late by a few seconds.
    static constexpr long long kTtlMs = 8000;

    Connection& renewer() {
        if (!renewer_)
            renewer_.emplace(Connection::connect_with(conn_.sibling_settings("pgdeploy-lease", 5)));
        return *renewer_;
    }

    Connection& conn_;
    std::string holder_;
    std::optional<Connection> renewer_;
    std::chrono::steady_clock::time_point last_;
};

// renewing: the options with a tick that also renews the lease (false, cancelling the statement, once it is lost).
StepOptions renewing(const StepOptions& options, DeployLease& lease) {
    StepOptions out = options;
    out.tick = [&lease, tick = options.tick]() { return lease.renew_if_due() && (!tick || tick()); };
    return out;
}

}  // namespace

long long step_lock_timeout_ms(const json& step) {
    if (!step.is_object() || !step.contains("lock_timeout_ms") || !step["lock_timeout_ms"].is_number_integer())
        return 0;
    return std::max<long long>(0, step["lock_timeout_ms"].get<long long>());
}

LockRetryBudget step_retry_budget(const json& step) {
    LockRetryBudget budget;
    if (!step.is_object() || !step.contains("lock_retry") || !step["lock_retry"].is_object())
        return budget;
    const json& r = step["lock_retry"];
    if (r.contains("attempts") && r["attempts"].is_number_integer())
        budget.attempts = std::max<long long>(1, r["attempts"].get<long long>());
    if (r.contains("time_ms") && r["time_ms"].is_number())
        budget.time_ms = std::max<long long>(0, r["time_ms"].get<long long>());
    return budget;
}

namespace {

json drive_steps(Connection& conn, const Param& dep_param, const StepOptions& options, json& steps_log,
                 const std::string& counter, double& total_ms) {
    const std::string& holder = options.holder;
    while (true) {
        if (options.tick && !options.tick())
            throw Cancelled("stopped between two steps");
        json step =
            conn.query_json("SELECT deploy.next_step(deployment_id => $1::bigint, holder => $2)", {dep_param, holder});
        if (step.is_null() || (step.is_object() && step.value("done", false)) ||
            (step.is_object() && !step.contains("statement")))
            return nullptr;
        json id = step.contains("step_id") ? step["step_id"] : step["id"];
        std::string step_id = id.is_string() ? id.get<std::string>() : id.dump();
        std::string version = jstr(step, "version", "?"), name = jstr(step, "name", "");
        std::string label = version + (name.empty() ? "" : "_" + name) + " step " + jstr(step, "step", "?") +
                            (step.contains("steps") ? "/" + jstr(step, "steps") : "");
        auto started = std::chrono::steady_clock::now();
        try {
            json cleanup = step.contains("cleanup") ? step["cleanup"] : json::array();
            if (cleanup.is_string())
                cleanup = json::array({cleanup});
            if (cleanup.is_array())
                for (const auto& c : cleanup) {
                    if (!c.is_string() || c.get<std::string>().empty())
                        continue;
                    spdlog::info("{}: cleanup: {}", label, c.get<std::string>());
                    exec_statement(conn, c.get<std::string>(), options);
                }
            spdlog::debug("{}: {}", label, step["statement"].get<std::string>());
            run_statement(conn, step, label, options);
        } catch (const DbError& e) {
            double ms = elapsed_ms(started);
            report(options, counter + label + " ... FAILED " + format_ms(ms) + ": " + e.sqlstate() + " " + e.what());
            conn.query_value("SELECT deploy.step_failed($1::bigint, $2, $3)", {step_id, e.sqlstate(), e.what()});
            json failure = e.to_json();
            failure["version"] = version;
            failure["name"] = name;
            failure["step"] = step.contains("step") ? step["step"] : json();
            failure["statement"] = step["statement"];
            steps_log.push_back({{"step_id", id},
                                 {"version", version},
                                 {"step", failure["step"]},
                                 {"ok", false},
                                 {"sqlstate", e.sqlstate()},
                                 {"duration_ms", ms}});
            return failure;
        }
        double ms = elapsed_ms(started);
        conn.query_value("SELECT deploy.step_done($1::bigint)", {step_id});
        total_ms += ms;
        report(options, counter + label + " ... ok " + format_ms(ms));
        steps_log.push_back({{"step_id", id},
                             {"version", version},
                             {"step", step.contains("step") ? step["step"] : json()},
                             {"ok", true},
                             {"duration_ms", ms}});
    }
}

}  // namespace

/*
 * run_steps
 *		The client half of a non-transactional script: PostgreSQL refuses CREATE INDEX CONCURRENTLY and
 *		friends inside a function, so the extension hands out one statement at a time and we run it at top
 *		level on this connection (autocommit). Cleanup statements come first: on a resume they remove what a
 *		failed attempt left behind (an INVALID index). Returns the failure object, or null when every step is
 *		done.
 */
json run_steps(Connection& conn, const json& awaiting, const StepOptions& options, json& steps_log,
               const std::string& counter, double& total_ms) {
    json deployment = awaiting.is_object() && awaiting.contains("deployment_id") ? awaiting["deployment_id"] : json();
    Param dep_param;
    if (deployment.is_number_integer())
        dep_param = std::to_string(deployment.get<long long>());
    const std::string& holder = options.holder;
    DeployLease lease(conn, holder, options.operation);
    const StepOptions leased = renewing(options, lease);
    return drive_steps(conn, dep_param, leased, steps_log, counter, total_ms);
}

namespace {

json execute_rollback(Connection& conn, std::int64_t marker_id, const std::string& holder, bool force) {
    return conn.query_json("SELECT deploy.execute_rollback($1::bigint, $2, $3::boolean)",
                           {std::to_string(marker_id), holder, std::string(force ? "true" : "false")});
}

// with_lease_renewal: the options' tick, plus a renewal of the marker's lease on `conn` every lease_ms / 3 (conn is
// idle while the steps run on their own connection).
StepOptions with_lease_renewal(const StepOptions& options, Connection& conn, std::int64_t marker_id,
                               std::int64_t lease_ms) {
    StepOptions renewing = options;
    auto last = std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
    std::int64_t every_ms = std::max<std::int64_t>(1000, lease_ms / 3);
    renewing.tick = [&conn, options, marker_id, lease_ms, last, every_ms]() {
        if (elapsed_ms(*last) >= static_cast<double>(every_ms)) {
            *last = std::chrono::steady_clock::now();
            conn.exec("SELECT deploy.renew_lease($1::bigint, $2, $3::interval)",
                      {std::to_string(marker_id), options.holder, std::to_string(lease_ms) + " milliseconds"});
        }
        return options.tick ? options.tick() : true;
    };
    return renewing;
}

// failed_attempt ends the marker's attempt after a failed step and returns the document to report.
json failed_attempt(Connection& conn, std::int64_t marker_id, const std::string& holder, json result,
                    const json& failure) {
    json error = {{"sqlstate", failure.value("sqlstate", json())},
                  {"message", "step " + jstr(failure, "step", "?") + " of the down SQL of migration " +
                                  jstr(failure, "version", "?") + " failed: " + jstr(failure, "message", "?")},
                  {"step", "nontransactional_step"},
                  {"version", failure.value("version", json())}};
    auto state = conn.query_value("SELECT deploy.fail_marker_attempt($1::bigint, $2, $3::pg_catalog.jsonb)",
                                  {std::to_string(marker_id), holder, error.dump()});
    result["ok"] = false;
    result["state"] = state.value_or("failed");
    result["error"] = error;
    result["failed_step"] = failure;
    return result;
}

}  // namespace

MarkerRun execute_marker(Connection& conn, const std::function<Connection()>& connect_steps, std::int64_t marker_id,
                         bool force, std::int64_t lease_ms, const StepOptions& options) {
    MarkerRun run;
    std::optional<Connection> steps_conn;
    std::string last_awaiting;
    while (true) {
        run.result = execute_rollback(conn, marker_id, options.holder, force);
        json awaiting = run.result.value("awaiting_nontransactional", json());
        if (!run.result.value("ok", false) || !awaiting.is_object())
            return run;
        if (awaiting.dump() == last_awaiting)
            throw Failure(kExitFailed, "marker " + std::to_string(marker_id) +
                                           ": the revert keeps waiting for the same steps although they are done");
        last_awaiting = awaiting.dump();
        const json& rollback = run.result.value("rollback", json::object());
        awaiting["deployment_id"] = rollback.value("deployment_id", json());
        spdlog::info("marker {}: the down SQL of migration {} runs at top level, statement by statement", marker_id,
                     jstr(awaiting, "version", "?"));
        if (!steps_conn)
            steps_conn = connect_steps();
        double ms = 0;
        json failure =
            run_steps(*steps_conn, awaiting, with_lease_renewal(options, conn, marker_id, lease_ms), run.steps, "", ms);
        if (!failure.is_null()) {
            run.result = failed_attempt(conn, marker_id, options.holder, run.result, failure);
            return run;
        }
    }
}

}  // namespace pgdeploy::common
