// Waiting out a failover: the pure rules (see wait_primary.hpp).
#include "common/wait_primary.hpp"

#include <algorithm>
#include <cctype>
#include <vector>

namespace pgdeploy::common {

namespace {

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

bool contains_any(const std::string& text, const std::vector<const char*>& needles) {
    for (const char* n : needles)
        if (text.find(n) != std::string::npos)
            return true;
    return false;
}

}  // namespace

/*
 * classify_connect_error
 *		Decided on libpq's and the server's (untranslated) wording, because a failed connection has no SQLSTATE
 *		in libpq's API. The fatal list is checked first: with a multi-host DSN, one host refusing the password
 *		means the password is wrong, and waiting a minute would only hide that.
 */
ConnectTrouble classify_connect_error(const std::string& message) {
    const std::string m = lower(message);
    static const std::vector<const char*> fatal = {
        "password authentication failed",
        "no password supplied",
        "authentication failed",
        "no pg_hba.conf entry",
        "does not exist",  // database or role
        "permission denied",
        "invalid connection",
        "invalid connection option",
        "invalid port",
        "invalid sslmode",
        "could not translate host name",  // a typo in the host waits for nothing
        "ssl error",
        "certificate",
        "server does not support ssl",
        "too many connections for role",
        "out of memory",
    };
    static const std::vector<const char*> read_only = {
        "session is read-only",                  // target_session_attrs=read-write (libpq 14 and later)
        "server is in hot standby mode",         // target_session_attrs=primary
        "could not make a writable connection",  // target_session_attrs=read-write (libpq 13 and older)
        "server is in read-only mode",
    };
    static const std::vector<const char*> down = {
        "connection refused",
        "no such file or directory",  // the Unix socket is gone while the server is down
        "the database system is starting up",
        "the database system is shutting down",
        "the database system is in recovery mode",
        "the database system is not yet accepting connections",
        "the database system is not accepting connections",
        "hot standby mode is disabled",
        "server closed the connection unexpectedly",
        "timeout expired",
        "connection timed out",
        "no route to host",
        "network is unreachable",
        "connection reset by peer",
        "server is not accepting connections",
    };
    if (contains_any(m, fatal))
        return ConnectTrouble::kFatal;
    if (contains_any(m, read_only))
        return ConnectTrouble::kReadOnly;
    if (contains_any(m, down))
        return ConnectTrouble::kServerDown;
    return ConnectTrouble::kFatal;
}

long long backoff_delay_ms(int attempt, long long remaining_ms, double jitter01) {
    if (remaining_ms <= 0)
        return 0;
    constexpr long long kFirstMs = 250, kMaxMs = 5000;
    long long base = kFirstMs;
    for (int i = 0; i < attempt && base < kMaxMs; ++i)
        base *= 2;
    base = std::min(base, kMaxMs);
    jitter01 = std::clamp(jitter01, 0.0, 1.0);
    const long long fixed = base / 2;  // the half that does not vary
    const auto jittered = static_cast<long long>(static_cast<double>(base - fixed) * jitter01);
    long long delay = fixed + jittered;
    return std::min(delay, remaining_ms);
}

std::string format_duration_ms(long long ms) {
    if (ms % 3600000 == 0 && ms >= 3600000)
        return std::to_string(ms / 3600000) + "h";
    if (ms % 60000 == 0 && ms >= 60000 && ms < 3600000 && ms / 60000 != 1)
        return std::to_string(ms / 60000) + "min";
    if (ms % 1000 == 0)
        return std::to_string(ms / 1000) + "s";
    return std::to_string(ms) + "ms";
}

std::string wait_progress(long long waited_ms, long long deadline_ms) {
    return "(" + std::to_string(waited_ms / 1000) + " s of " + std::to_string(deadline_ms / 1000) + " s)";
}

}  // namespace pgdeploy::common
