// The client half of non-transactional steps, shared by `pgdeploy up`, `down`, `rollback`, `markers execute`, `once`
// and the watcher. PostgreSQL refuses CREATE INDEX CONCURRENTLY, DROP INDEX CONCURRENTLY and friends inside a
// function, so the extension plans such a script (an up SQL, or a revert's down SQL) as steps and hands them out one
// at a time (deploy.next_step); this code runs each at top level and reports it (deploy.step_done / step_failed).
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "common/connection.hpp"
#include "common/lock_safety.hpp"
#include "common/progress.hpp"

namespace pgdeploy::common {

struct StepOptions {
    std::string holder;                     // recorded on each checkpoint (deploy.next_step's holder)
    std::string operation = "pgdeploy up";  // names this client while it holds the deploy lease
    // The deploy lease's ttl: short enough that a killed client holds up the next run by less than
    // pg_deploy.lock_wait (10 s), which waits for it; long enough to ride out a renewal late by a few seconds.
    // A marker's steps use at most the marker's lease, so whoever may claim the marker may also run its steps.
    long long lease_ttl_ms = 8000;
    std::function<void(const std::string&)> progress;  // one line per step outcome; may be empty
    // Empty: statements run as they always did. Set: called about every 100 ms while a statement runs and before
    // each step; false cancels the statement and ends run_steps with Cancelled (the step stays running: the next
    // client's next_step hands it out again).
    std::function<bool()> tick;
    // Set: each statement runs under this monitor (elapsed time, pg_stat_progress_*, the session it waits for).
    ProgressMonitor* monitor = nullptr;
    // Set: receives an entry per lock-timeout retry of a statement run here (the shape of the extension's
    // lock_retries); the retries happen whether it is set or not.
    nlohmann::json* lock_retries = nullptr;
};

// step_lock_timeout_ms: next_step's "lock_timeout_ms" when it is a positive integer; 0 otherwise (null, absent: the
// statement runs without a lock timeout of ours: CONCURRENTLY statements).
long long step_lock_timeout_ms(const nlohmann::json& step);

// step_retry_budget: next_step's "lock_retry" ({"attempts","time_ms"}); the defaults where absent.
LockRetryBudget step_retry_budget(const nlohmann::json& step);

/*
 * run_steps drives the steps of the running deployment named by awaiting["deployment_id"] (the newest running one
 * when absent) until none is left: cleanup statements first (what a failed attempt left behind), then the statement,
 * on `conn` in autocommit. A statement with a lock_timeout_ms runs under it and is retried after a lock timeout with
 * backoff and jitter within its lock_retry budget (the rule of pg_deploy/lock_backoff.hpp, as the extension's own
 * batches). Appends one entry per step to steps_log and adds the steps' time to total_ms; `counter`
 * prefixes the progress lines. Returns the failure object of the step that failed, or null when every step is done.
 */
nlohmann::json run_steps(Connection& conn, const nlohmann::json& awaiting, const StepOptions& options,
                         nlohmann::json& steps_log, const std::string& counter, double& total_ms);

// What executing a marker gave: deploy.execute_rollback()'s last document (after a failed step: ok false, the
// marker's new state and the failure as its error), and the steps run.
struct MarkerRun {
    nlohmann::json result;
    nlohmann::json steps = nlohmann::json::array();
};

/*
 * execute_marker runs deploy.execute_rollback(marker, options.holder, force) and, while the marker's revert stops at
 * the steps of a down SQL, runs them on a connection of their own (connect_steps, opened once) and executes the
 * marker again to finish. The lease is renewed on `conn` every lease_ms / 3 while steps run. A failed step ends the
 * attempt as failed (deploy.fail_marker_attempt): the revert deployment keeps its checkpoints for the next attempt.
 * Server refusals of execute_rollback or next_step propagate as DbError; a stop request as Cancelled.
 */
MarkerRun execute_marker(Connection& conn, const std::function<Connection()>& connect_steps, std::int64_t marker_id,
                         bool force, std::int64_t lease_ms, const StepOptions& options);

}  // namespace pgdeploy::common
