// Health checks: http (libcurl multi: one multi handle for the process, whose connections are kept alive from cycle
// to cycle, with at most 64 transfers at once), tcp (non-blocking connect), postgres (libpq, asynchronous with a
// deadline), command (argv, no shell). One cycle runs every due check concurrently and returns when the slowest has
// finished or timed out.
#pragma once
#include <string>
#include <vector>

#include "watch/config.hpp"
#include "watch/decision.hpp"
#include "watch/process.hpp"

namespace pgdeploy::watch {

// run_checks runs the given checks concurrently and returns their results in the same order (results[i] is the result
// of checks[i]); details are scrubbed (common::scrub). default_dsn is used by postgres checks without their own dsn;
// command checks run in child_environment(environment) (watch/hook_env.hpp).
std::vector<CheckResult> run_checks(const std::vector<const CheckConfig*>& checks, const std::string& default_dsn,
                                    const HookEnvironmentConfig& environment = HookEnvironmentConfig{});

// Classification, apart from the I/O so that it is unit-tested.
// curl_error: empty when a response arrived.
CheckResult classify_http(const CheckConfig& c, long status, const std::string& body, const std::string& curl_error);
// exit 0 ok, 1 warning, anything else (another code, a signal, a timeout, cannot start) critical.
CheckResult classify_command(const CheckConfig& c, const ProcessResult& p);

// Called once at start-up (curl_global_init is not thread-safe).
void init_checks();

}  // namespace pgdeploy::watch
