// The retry rule of lock-safe mode (extension/src/lock_backoff.cpp), shared by the extension's batches and the
// statements pgdeploy runs at top level: the backoff range per attempt, and when the budget is spent. The random draw
// and the time spent are inputs: nothing here sleeps.
#include <catch2/catch.hpp>

#include "pg_deploy/lock_backoff.hpp"

using namespace pgdeploy;

TEST_CASE("the backoff doubles from 200 ms up to 1 s, the draw choosing in the upper half", "[extension][lock]") {
    CHECK(lock_retry_backoff_ms(1, 0.0) == 100);
    CHECK(lock_retry_backoff_ms(1, 0.999) == 199);
    CHECK(lock_retry_backoff_ms(2, 0.0) == 200);
    CHECK(lock_retry_backoff_ms(3, 0.5) == 600);
    CHECK(lock_retry_backoff_ms(4, 0.0) == 500);  // capped: [500, 1000]
    CHECK(lock_retry_backoff_ms(30, 1.0) == 1000);
    CHECK(lock_retry_backoff_ms(10000, 0.0) == 500);  // no overflow for the largest pg_deploy.lock_attempts
    CHECK(lock_retry_backoff_ms(1, 7.0) == 200);      // the draw is clamped to [0, 1]
    CHECK(lock_retry_backoff_ms(0, 0.0) == 100);      // as attempt 1
    for (int attempt = 1; attempt < 40; ++attempt)
        for (double draw : {0.0, 0.25, 0.5, 0.75, 0.999}) {
            int d = lock_retry_backoff_ms(attempt, draw);
            CHECK(d >= 100);
            CHECK(d <= kLockRetryMaxBackoffMs);
        }
}

TEST_CASE("a retry happens only within the attempts and the time of the budget", "[extension][lock]") {
    CHECK(lock_retry_allowed(1, 3, 600, 100, 10000));
    CHECK(lock_retry_allowed(2, 3, 1200, 200, 10000));
    CHECK_FALSE(lock_retry_allowed(3, 3, 1800, 400, 10000));  // the third attempt was the last
    CHECK_FALSE(lock_retry_allowed(1, 1, 0, 100, 60000));     // one attempt: never a retry
    CHECK(lock_retry_allowed(1, 30, 900, 100, 1000));         // the pause ends at the budget: still allowed
    CHECK_FALSE(lock_retry_allowed(1, 30, 950, 100, 1000));   // it would end past it
    CHECK(lock_retry_allowed(29, 30, 1e9, 1000, 0));          // 0: no time limit, attempts only
    CHECK_FALSE(lock_retry_allowed(30, 30, 0, 1000, 0));
}
