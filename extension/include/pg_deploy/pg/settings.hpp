// pg_deploy: the settings (pg_deploy.*, defined with their defaults in src/pg/settings.cpp) and the deploy lock
// (src/pg/lock.cpp), whose key lives here only.
#pragma once
#include <optional>
#include <string>

namespace pgdeploy {

extern int lock_wait_ms;           // pg_deploy.lock_wait
extern int statement_timeout_ms;   // pg_deploy.statement_timeout (0 = off)
extern bool allow_out_of_order;    // pg_deploy.allow_out_of_order
extern int rollback_window_s;      // pg_deploy.rollback_window
extern int max_rollback_attempts;  // pg_deploy.max_rollback_attempts
extern int lock_timeout_ms;        // pg_deploy.lock_timeout: the longest a migration's statement waits for a lock
extern int lock_attempts;          // pg_deploy.lock_attempts: attempts at a batch that hits the lock timeout
extern int lock_retry_time_ms;     // pg_deploy.lock_retry_time: total time for those attempts (0 = no limit)

// The deploy advisory lock: class key 'PDEP', key2 1 (docs/architecture.md, "Locks").
inline constexpr int kLockClassKey = 1346651472;
inline constexpr int kDeployLockKey = 1;

// acquire_deploy_lock takes the transaction-scoped deploy lock, waiting at most pg_deploy.lock_wait, also for a live
// deploy lease (deploy.leases) of another holder than lease_holder; on timeout it throws 55P03 naming the holder. It
// refuses REPEATABLE READ and SERIALIZABLE (25000): the ledger must be read after the lock is taken.
void acquire_deploy_lock(const char* operation, const std::optional<std::string>& lease_holder = std::nullopt);

// acquire_deploy_lock_for_step: the lock alone, for the report on a step the caller was handed (deploy.step_done,
// deploy.step_failed): the step's own holder reports it, whoever holds the lease now.
void acquire_deploy_lock_for_step(const char* operation);

}  // namespace pgdeploy
