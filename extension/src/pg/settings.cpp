// pg_deploy: module initialisation and the pg_deploy.* settings.
#include <climits>

#include "pg_deploy/pg/postgres.hpp"
#include "pg_deploy/pg/settings.hpp"

extern "C" {
PG_MODULE_MAGIC;
void _PG_init(void);
}

namespace pgdeploy {

namespace {
// The defaults, defined here only: the SQL functions read the settings themselves (the module is loaded whenever
// they run, through the engine), never a fallback of their own.
constexpr int kDefaultLockWaitMs = 10 * 1000;  // 10s
constexpr int kDefaultStatementTimeoutMs = 0;  // off
constexpr bool kDefaultAllowOutOfOrder = false;
constexpr int kDefaultRollbackWindowS = 7 * 24 * 3600;  // 7d
constexpr int kDefaultMaxRollbackAttempts = 3;
constexpr int kDefaultLockTimeoutMs = 500;
constexpr int kDefaultLockAttempts = 30;
constexpr int kDefaultLockRetryTimeMs = 60 * 1000;  // 1 min
}  // namespace

int lock_wait_ms = kDefaultLockWaitMs;
int statement_timeout_ms = kDefaultStatementTimeoutMs;
bool allow_out_of_order = kDefaultAllowOutOfOrder;
int rollback_window_s = kDefaultRollbackWindowS;
int max_rollback_attempts = kDefaultMaxRollbackAttempts;
int lock_timeout_ms = kDefaultLockTimeoutMs;
int lock_attempts = kDefaultLockAttempts;
int lock_retry_time_ms = kDefaultLockRetryTimeMs;

}  // namespace pgdeploy

/*
 * _PG_init defines the settings. All are PGC_USERSET: a deploy script sets them per session or per call (SET LOCAL),
 * and a DBA pins defaults with ALTER DATABASE / ALTER ROLE. The prefix is reserved so a typo is refused.
 */
extern "C" void _PG_init(void) {
    using namespace pgdeploy;
    DefineCustomIntVariable("pg_deploy.lock_wait", "How long a deploy operation waits for the deploy lock.",
                            "0 fails at once when another session holds it.", &lock_wait_ms, kDefaultLockWaitMs, 0,
                            INT_MAX, PGC_USERSET, GUC_UNIT_MS, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("pg_deploy.statement_timeout", "Time limit for the SQL of one migration (0 = no limit).",
                            nullptr, &statement_timeout_ms, kDefaultStatementTimeoutMs, 0, INT_MAX, PGC_USERSET,
                            GUC_UNIT_MS, nullptr, nullptr, nullptr);
    DefineCustomBoolVariable("pg_deploy.allow_out_of_order",
                             "Apply pending migrations older than the newest applied one.", nullptr,
                             &allow_out_of_order, kDefaultAllowOutOfOrder, PGC_USERSET, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable(
        "pg_deploy.rollback_window", "How long after a deployment it may be rolled back without force.", nullptr,
        &rollback_window_s, kDefaultRollbackWindowS, 0, INT_MAX, PGC_USERSET, GUC_UNIT_S, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("pg_deploy.max_rollback_attempts",
                            "Attempts at executing a rollback marker before it needs attention.", nullptr,
                            &max_rollback_attempts, kDefaultMaxRollbackAttempts, 1, 1000, PGC_USERSET, 0, nullptr,
                            nullptr, nullptr);
    DefineCustomIntVariable("pg_deploy.lock_timeout",
                            "How long a statement of a migration or a revert waits for a lock before its batch is "
                            "rolled back and retried.",
                            "0 turns lock-safe mode off: statements wait as long as lock_timeout and "
                            "statement_timeout allow, without retries.",
                            &lock_timeout_ms, kDefaultLockTimeoutMs, 0, INT_MAX, PGC_USERSET, GUC_UNIT_MS, nullptr,
                            nullptr, nullptr);
    DefineCustomIntVariable("pg_deploy.lock_attempts",
                            "Attempts at a batch whose statements hit pg_deploy.lock_timeout.", nullptr, &lock_attempts,
                            kDefaultLockAttempts, 1, 10000, PGC_USERSET, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("pg_deploy.lock_retry_time",
                            "Total time the attempts at a batch that hits pg_deploy.lock_timeout may take.",
                            "0 = no time limit (pg_deploy.lock_attempts still applies).", &lock_retry_time_ms,
                            kDefaultLockRetryTimeMs, 0, INT_MAX, PGC_USERSET, GUC_UNIT_MS, nullptr, nullptr, nullptr);
    MarkGUCPrefixReserved("pg_deploy");
}
