// Waiting out a failover: the pure rules (no libpq here, so the unit tests need no server).
//
// While a standby is being promoted there is no writable server for a few seconds to a minute. A pgdeploy command
// waits for one up to a deadline (--wait-primary, PGDEPLOY_WAIT_PRIMARY; docs/pgdeploy.md, "Failover"), but only
// for troubles that a failover causes: a server that refuses connections, is starting up, shutting down or in
// recovery, or is (still) a read-only standby. A bad password, an unknown database or a missing extension do not
// get better by waiting and fail at once.
#pragma once
#include <string>

namespace pgdeploy::common {

// The default deadline of --wait-primary.
inline constexpr long long kDefaultWaitPrimaryMs = 60000;

enum class ConnectTrouble {
    kFatal,       // waiting does not help (authentication, unknown database or role, bad conninfo, TLS, ...)
    kServerDown,  // no server accepts connections yet (refused, starting up, shutting down, in recovery, timeout)
    kReadOnly,    // a server answered, but it is a read-only standby (libpq's target_session_attrs said so)
};

// classify_connect_error: what libpq's message about a failed connection means. A multi-host DSN yields one
// message per host: any fatal part makes it fatal (the password is wrong everywhere), else a read-only part makes
// it kReadOnly (a standby is up, the primary is not), else a failover part makes it kServerDown; a message with no
// part known to pass is fatal.
ConnectTrouble classify_connect_error(const std::string& message);

// backoff_delay_ms: how long to sleep before reconnect attempt number `attempt` (0 = after the first failure):
// exponential from 250 ms, doubling up to 5 s, with "equal jitter" (half fixed, half jitter01 in [0, 1) of it) so
// that many waiting clients do not reconnect in step; never more than remaining_ms (the deadline), never negative.
long long backoff_delay_ms(int attempt, long long remaining_ms, double jitter01);

// format_duration_ms: a duration as pgdeploy's flags spell it: "60s", "500ms", "2min", "1h", "1500ms".
std::string format_duration_ms(long long ms);

// wait_progress: "(12 s of 60 s)", the part of a waiting message that tells how long it has waited.
std::string wait_progress(long long waited_ms, long long deadline_ms);

// kWaitReportEveryMs: a waiting command says what it waits for at most this often.
inline constexpr long long kWaitReportEveryMs = 2000;

}  // namespace pgdeploy::common
