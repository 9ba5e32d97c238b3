// Logging set-up shared by every pgdeploy sub-command: spdlog to stderr, plain text or JSON lines.
//
// Call setup_logging() once at start-up; afterwards use spdlog::info/debug/... anywhere. Every message passes
// through common::scrub() in the sink, so a password that slips into a log call is still never written.
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
    std::string secret;    // one more password known at start-up, scrubbed verbatim (PGPASSWORD always is)
};

// parse_log_format: "plain" or "json"; throws UsageError otherwise.
LogFormat parse_log_format(const std::string& value);

// setup_logging: installs the stderr logger as spdlog's default logger (name "pgdeploy").
void setup_logging(const LogOptions& options);

}  // namespace pgdeploy::common
