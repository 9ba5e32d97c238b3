// pgdeploy's exit codes (frozen; docs/architecture.md) and the exception that carries one up to main().
//
// Every sub-command returns one of these. Code paths that must stop early throw pgdeploy::Failure, which main()
// (and run_watch/run_once) turn into a one-line message on stderr, or into a JSON error document under --json.
#pragma once
#include <stdexcept>
#include <string>

namespace pgdeploy {

enum ExitCode : int {
    kExitOk = 0,               // success, or nothing to do
    kExitFailed = 1,           // the operation ran and failed (migration failed, verify failed, validate problems)
    kExitUsage = 2,            // usage or configuration error (flags, config, bad migration files)
    kExitConnect = 3,          // cannot connect to the database
    kExitLockHeld = 4,         // deploy lock held by another session (55P03)
    kExitIrreversible = 5,     // irreversible migration refused (PD002)
    kExitDrift = 6,            // checksum drift refused (PD001)
    kExitRollbackRefused = 7,  // outside the rollback window (PD006) or not eligible (55000)
    kExitExtension = 8,        // extension missing or wrong version
    kExitReadOnly = 9,         // the server is a read-only standby (a write command needs the primary; 25006)
    kExitNeedsAttention = 10,  // watcher: rollback did not recover health / marker needs attention
};

// exit_code_for_sqlstate: the frozen mapping from a server error to an exit code, kept in one place so the CLI and
// the watcher agree. Errors without a specific meaning are "the operation failed" (1).
int exit_code_for_sqlstate(const std::string& sqlstate);

// Failure: an error that ends the command with a given exit code. sqlstate is empty for client-side errors.
class Failure : public std::runtime_error {
public:
    Failure(int exit_code, const std::string& message, std::string sqlstate = {})
        : std::runtime_error(message), exit_code_(exit_code), sqlstate_(std::move(sqlstate)) {}
    int exit_code() const { return exit_code_; }
    const std::string& sqlstate() const { return sqlstate_; }

private:
    int exit_code_;
    std::string sqlstate_;
};

// UsageError: a Failure with exit code 2 (bad flags, bad files, bad config).
class UsageError : public Failure {
public:
    explicit UsageError(const std::string& message) : Failure(kExitUsage, message) {}
};

}  // namespace pgdeploy
