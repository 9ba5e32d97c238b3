// pg_deploy: lock-safe batches (docs/architecture.md, "Lock-safe mode"). A migration's or a revert's statements wait
// at most a short lock timeout for a lock; when one gives up (55P03), the whole batch subtransaction is rolled back,
// which releases every lock it had taken so the application's queries queued behind the waiting statement run on, and
// the batch is tried again after a backoff with jitter, within a budget of attempts and time. Each retry is told while
// it happens (a NOTICE naming the lock and the blocking session, a lock_retry event) and summed up in the result.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "pg_deploy/pg/engine.hpp"

namespace pgdeploy {

// The lock timeout a statement of a migration runs under: the migration's own (its lock_timeout directive), else
// pg_deploy.lock_timeout. 0 means lock-safe mode is off for it: it waits as the session's settings allow.
int effective_lock_timeout_ms(const std::optional<int>& migration_ms);

/*
 * top_level_lock_policy is how a client runs a statement of a non-transactional migration at top level
 * (deploy.next_step()): {"lock_timeout_ms": N or null, "lock_retry": {"attempts", "time_ms"}}. The client sends
 * the timeout with the statement in one implicit transaction (set_config(..., true)), never as session state,
 * which a transaction pooler would leak to other clients. So statements that refuse a transaction block get none:
 * CONCURRENTLY ones take only locks that the application's reads and writes never queue behind, and must wait for
 * older transactions as PostgreSQL requires (a short timeout would only make them fail and rebuild); the rest
 * (VACUUM, REINDEX SCHEMA, ALTER SYSTEM, ...) run as PostgreSQL runs them.
 */
Json top_level_lock_policy(const std::string& statement, const std::optional<int>& migration_ms);

/*
 * with_lock_timeout runs body (a migration's or a revert's SQL) with lock_timeout set to `ms` and a probe that records
 * which lock the statement waits for, so that a timeout can name the lock and its holder. ms = 0 runs body unchanged.
 * It must run inside a subtransaction that is rolled back when body throws: the setting is restored by that rollback
 * (the GUC nest level) on the error path, and here on success.
 */
void with_lock_timeout(int ms, const std::function<void()>& body);

/*
 * LockRetry is the retry loop of one call (deploy.up(), down(), rollback()): one budget for the whole call, one list
 * of retries for its result. The caller's loop:
 *
 *     do { batch = attempt(); }     // inside its subtransaction: if (retry.decide(failure)) roll the batch back
 *     while (retry.after_rollback(batch.failure, version, name));
 */
class LockRetry {
public:
    LockRetry(const char* operation, EventLog& events, std::optional<int64_t> deployment_id);

    // decide is asked inside the batch's subtransaction, with the batch's failure: true when it is a lock timeout
    // that will be retried (the caller must then roll the batch back, even where a failure would otherwise keep what
    // ran before it).
    bool decide(const std::optional<SqlFailure>& failure);

    // after_rollback, once the batch's subtransaction is gone: when decide() said retry, it reports the retry and
    // sleeps the backoff, and returns true (attempt again). When the failure is a lock timeout that is not retried
    // (the budget ran out), it rewrites the failure to name the lock, the blocking session and the attempts. False.
    bool after_rollback(std::optional<SqlFailure>& failure, const std::string& version, const std::string& name);

    // The retries so far, for the result document's "lock_retries".
    const Json& retries() const { return retries_; }

private:
    Json describe_wait(const std::string& version, const std::string& name) const;

    const char* operation_;
    EventLog& events_;
    std::optional<int64_t> deployment_id_;
    int64_t started_us_;
    int attempt_ = 1;  // the attempt that just ran
    int timeout_ms_ = 0;
    bool retry_pending_ = false;
    int backoff_ms_ = 0;
    Json retries_ = Json::array();
};

// sleep_ms waits on the latch, so a cancel or a terminate ends the wait (and the call) at once.
void sleep_ms(int ms);

}  // namespace pgdeploy
