// The environment of the programs the watcher starts (see hook_env.hpp).
#include "watch/hook_env.hpp"

#include <cctype>
#include <cstdlib>

#include "common/conninfo.hpp"
#include "common/limits.hpp"

namespace pgdeploy::watch {

namespace {

// Copied from the watcher when it has them: where the program's home and locale are is not a secret.
constexpr const char* kInherited[] = {"HOME", "LANG", "LC_ALL", "TZ"};

// The service manager's channels to the watcher; a program that wrote to NOTIFY_SOCKET could declare the watcher
// ready or feed its watchdog.
constexpr const char* kSystemdNames[] = {"NOTIFY_SOCKET", "WATCHDOG_PID",   "WATCHDOG_USEC",        "LISTEN_FDS",
                                         "LISTEN_PID",    "LISTEN_FDNAMES", "CREDENTIALS_DIRECTORY"};

void copy_if_set(Environment& env, const std::string& name) {
    if (const char* v = std::getenv(name.c_str()))
        env[name] = v;
}

}  // namespace

std::string hook_env_name_problem(const std::string& name) {
    if (name.empty() || name.size() > kMaxHookEnvNameChars)
        return "must be 1 to " + std::to_string(kMaxHookEnvNameChars) + " characters long";
    if (std::isdigit(static_cast<unsigned char>(name[0])))
        return "must not start with a digit";
    for (char c : name)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_'))
            return "may contain only letters, digits and '_'";
    if (name == "PGPASSWORD")
        return "the database password is never handed to a program (give it a passfile: PGPASSFILE)";
    if (name.rfind("PGDEPLOY_", 0) == 0)
        return "PGDEPLOY_* variables are set by the watcher";
    for (const char* s : kSystemdNames)
        if (name == s)
            return "belongs to the service manager and the watcher";
    return "";
}

/*
 * child_environment
 *		Later sources win: the minimal set, then pass, then set, then the contract. The configuration reader
 *		refuses contract names in pass and set, so a hook always sees the contract's values.
 */
Environment child_environment(const HookEnvironmentConfig& cfg, const Environment& contract) {
    Environment env;
    env["PATH"] = kDefaultHookPath;
    for (const char* name : kInherited)
        copy_if_set(env, name);
    for (const auto& name : cfg.pass)
        copy_if_set(env, name);
    for (const auto& [name, value] : cfg.set)
        env[name] = value;
    for (const auto& [name, value] : contract)
        env[name] = common::truncate_chars(common::scrub(value), kMaxHookValueChars);
    return env;
}

}  // namespace pgdeploy::watch
