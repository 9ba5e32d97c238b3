// pg_deploy: GUC variables (pg_deploy.*), defined in _PG_init (src/pg/settings.cpp).
#pragma once

namespace pgdeploy {

extern int lock_wait_ms;           // pg_deploy.lock_wait
extern int statement_timeout_ms;   // pg_deploy.statement_timeout (0 = off)
extern bool allow_out_of_order;    // pg_deploy.allow_out_of_order
extern int rollback_window_s;      // pg_deploy.rollback_window
extern int max_rollback_attempts;  // pg_deploy.max_rollback_attempts

// The deploy advisory lock: class key 'PDEP', key2 1 (docs/architecture.md, "Locks").
inline constexpr int kLockClassKey = 1346651472;
inline constexpr int kDeployLockKey = 1;

// acquire_deploy_lock takes the transaction-scoped deploy lock, waiting at most pg_deploy.lock_wait; on timeout it
// throws 55P03 naming the holder.
void acquire_deploy_lock(const char* operation);

}  // namespace pgdeploy
