// pg_deploy: the retry rule of lock-safe mode (pg_deploy/lock_backoff.hpp). Pure C++ (no postgres.h).
#include "pg_deploy/lock_backoff.hpp"

#include <algorithm>

namespace pgdeploy {

int lock_retry_backoff_ms(int failed_attempt, double draw) {
    int shift = std::clamp(failed_attempt - 1, 0, 16);
    int cap = std::min(kLockRetryMaxBackoffMs, kLockRetryFirstBackoffMs << shift);
    int low = cap / 2;
    int span = cap - low;
    return low + static_cast<int>(std::clamp(draw, 0.0, 1.0) * span);
}

bool lock_retry_allowed(int failed_attempt, int attempts, double spent_ms, int backoff_ms, int time_ms) {
    if (failed_attempt >= attempts)
        return false;
    return time_ms <= 0 || spent_ms + backoff_ms <= time_ms;
}

}  // namespace pgdeploy
