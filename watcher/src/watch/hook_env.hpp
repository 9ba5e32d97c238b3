// The environment of every program the watcher starts: the rollback hook, the alert command and command checks.
//
// Built from scratch, never inherited: the watcher's own environment holds what its programs must not see
// (PGPASSWORD, systemd's NOTIFY_SOCKET, credentials of the service manager). A program gets
//   - PATH=/usr/bin:/bin, and HOME, LANG, LC_ALL, TZ when the watcher has them;
//   - the names of hook_environment.pass that the watcher has, and the values of hook_environment.set;
//   - the PGDEPLOY_* variables of its contract, each at most kMaxHookValueChars characters and scrubbed.
// docs/pgdeploy.md, "The hook's environment", is the reference; keep the two in step.
#pragma once
#include <map>
#include <string>

#include "watch/config.hpp"

namespace pgdeploy::watch {

using Environment = std::map<std::string, std::string>;

inline constexpr const char* kDefaultHookPath = "/usr/bin:/bin";

// A PGDEPLOY_* value longer than this is cut (common::truncate_chars): however long a reason or a message in the
// ledger is, exec never fails with E2BIG (the kernel refuses one string over 128 KiB). The contract's values take at
// most 10 x 16 KiB, set's at most 64 x 4 KiB, and pass copies values the watcher's own exec accepted.
inline constexpr std::size_t kMaxHookValueChars = 4096;

// Bounds of hook_environment, checked by the configuration reader.
inline constexpr std::size_t kMaxHookEnvNames = 64;
inline constexpr std::size_t kMaxHookEnvNameChars = 128;
inline constexpr std::size_t kMaxHookEnvValueBytes = 4096;

// hook_env_name_problem: why `name` may not appear in hook_environment ("" when it may): not a portable variable
// name, the database password (use a passfile), a PGDEPLOY_* name (the contract's), or one of systemd's.
std::string hook_env_name_problem(const std::string& name);

// child_environment: the complete environment of a program the watcher starts; `contract` holds its PGDEPLOY_*
// variables.
Environment child_environment(const HookEnvironmentConfig& cfg, const Environment& contract = {});

}  // namespace pgdeploy::watch
