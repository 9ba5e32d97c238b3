// pg_deploy: the retry rule of lock-safe mode, in one place for the extension (its migration and revert batches,
// src/pg/lock_retry.cpp) and pgdeploy (the statements it runs at top level, watcher/src/cli/steps.cpp), so that both
// back off and give up alike. Pure C++ (no postgres.h); the random draw is the caller's.
#pragma once

namespace pgdeploy {

// The backoff between lock-timeout retries: the n-th wait is drawn from [cap/2, cap], cap = min(max, first * 2^(n-1)).
inline constexpr int kLockRetryFirstBackoffMs = 200;
inline constexpr int kLockRetryMaxBackoffMs = 1000;

// lock_retry_backoff_ms: the pause after failed attempt n (1-based); draw (0 <= draw < 1) picks the point in the
// upper half of the range, so that clients blocked by the same transaction do not all come back at once. The cap
// keeps a deploy from lagging more than about a second behind the end of the blocking transaction.
int lock_retry_backoff_ms(int failed_attempt, double draw);

// lock_retry_allowed: whether the batch (or statement) whose attempt n hit the lock timeout is tried again after a
// pause of backoff_ms, spent_ms after its first attempt began: n < attempts (pg_deploy.lock_attempts), and the pause
// ends within time_ms (pg_deploy.lock_retry_time; 0 = no time limit).
bool lock_retry_allowed(int failed_attempt, int attempts, double spent_ms, int backoff_ms, int time_ms);

}  // namespace pgdeploy
