// Lock safety on the client side (issue 13): the pg_deploy.lock_* settings a command or the watcher gives its
// session, the retry budget of the top-level statements `pgdeploy up` runs itself (the rule itself, backoff with
// jitter, is the extension's: pg_deploy/lock_backoff.hpp), and the wording of a retry.
//
// A retry is reported the same way wherever it happens: the extension raises a NOTICE "lock retry k/N: ..." for
// its batches, and `pgdeploy` prints the same line for its own statements (lock_retry_message). Both go into the
// JSON as `lock_retries` entries (docs/json.md):
//   {"attempt", "version", "name", ["step",] "lock": {"type","object","mode"} | null,
//    "blocker": {"pid","application_name","user","state","xact_age_ms"} | null, "waited_ms", "backoff_ms"}
// The attempt that used up the budget is the last entry, with "gave_up": true and "backoff_ms": null.
#pragma once
#include <climits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace pgdeploy::common {

class Connection;

// The primary message of every lock-retry NOTICE (and of pgdeploy's own retry lines) starts with this.
inline constexpr const char* kLockRetryPrefix = "lock retry ";

// The settings' limits (the GUCs' ranges: integer milliseconds; pg_deploy.lock_attempts up to 10000).
inline constexpr long long kMaxLockSettingMs = INT_MAX;
inline constexpr long long kMaxLockAttempts = 10000;

// LockSafety: the session settings a command asks for; unset keeps the server's value (its default, or what
// ALTER ROLE / ALTER DATABASE set).
struct LockSafety {
    std::optional<long long> lock_wait_ms;        // pg_deploy.lock_wait: waiting for the deploy lock
    std::optional<long long> lock_timeout_ms;     // pg_deploy.lock_timeout: per attempt, 0 = off
    std::optional<long long> lock_attempts;       // pg_deploy.lock_attempts
    std::optional<long long> lock_retry_time_ms;  // pg_deploy.lock_retry_time: all attempts together, 0 = no limit

    bool empty() const { return !lock_wait_ms && !lock_timeout_ms && !lock_attempts && !lock_retry_time_ms; }
};

// apply_lock_safety: the calls made on conn from now on run under the given settings, each in its own transaction
// (Connection::set_transaction_settings: never a session SET, which a transaction pooler would leak to other
// clients). Unset ones are not sent, so a command without these flags sends nothing (and works with an extension
// that predates them); calling it again replaces the previous settings (the watcher's, across reloads).
void apply_lock_safety(Connection& conn, const LockSafety& settings);

// LockRetryBudget: next_step's "lock_retry" ({"attempts", "time_ms"}): how often and how long a statement is tried
// (time_ms 0: no time limit).
struct LockRetryBudget {
    long long attempts = 30;
    long long time_ms = 60LL * 1000;
};

// describe_lock: "AccessExclusiveLock on relation public.accounts" from {"type","object","mode"}; "a lock" for null.
std::string describe_lock(const nlohmann::json& lock);

// describe_blocker: `pid 1234 (application_name "app", user "app", state "idle in transaction", transaction open
// 3.2 s)` from {"pid","application_name","user","state","xact_age_ms"} (fields the server did not show are left
// out); "an unknown session" for null.
std::string describe_blocker(const nlohmann::json& blocker);

// lock_retry_message: the live line of one retry (entry: a lock_retries entry), worded as the extension's NOTICE:
// "lock retry 2/30: step 1 of migration 0002 (add_column) waited 500 ms for AccessExclusiveLock on relation
// public.accounts; blocked by pid 1234 (...); next attempt in 340 ms".
std::string lock_retry_message(const nlohmann::json& entry, long long attempts);

// what_of: "step N of migration 0002 (add_column)" ("migration 0002 (add_column)" for an entry without a step).
std::string what_of(const nlohmann::json& entry);

}  // namespace pgdeploy::common
