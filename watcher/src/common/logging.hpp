// Logging set-up shared by every pgdeploy sub-command: spdlog to stderr, plain text or JSON lines.
//
// Call setup_logging() once at start-up; afterwards use spdlog::info/debug/... anywhere. Every message passes
// through scrub_secrets() in the sink, so a password that slips into a log call is still never written.
// stdout is reserved for command output (and for the single JSON document under --json).
#pragma once
#include <chrono>
#include <string>

namespace pgdeploy::common {

// iso_utc: "2026-11-22T03:26:00.123Z", the time format of every log line and document pgdeploy writes.
std::string iso_utc(std::chrono::system_clock::time_point tp);

enum class LogFormat { kPlain, kJson };

struct LogOptions {
    LogFormat format = LogFormat::kPlain;
    bool verbose = false;  // debug level
    bool quiet = false;    // warnings and errors only
    std::string secret;    // a password known at start-up (PGPASSWORD), also scrubbed verbatim
};

// parse_log_format: "plain" or "json"; throws UsageError otherwise.
LogFormat parse_log_format(const std::string& value);

// setup_logging: installs the stderr logger as spdlog's default logger (name "pgdeploy").
void setup_logging(const LogOptions& options);

// add_log_secret: one more value to scrub verbatim from every later log line (e.g. a password read from a config).
void add_log_secret(const std::string& secret);

}  // namespace pgdeploy::common
