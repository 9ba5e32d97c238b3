// Sub-command dispatch for `pgdeploy` (main.cpp calls main_dispatch).
#include <iostream>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "common/exit_codes.hpp"
#include "watch/entry.hpp"

namespace pgdeploy::cli {

namespace {

const char* kOverview =
    "usage: pgdeploy COMMAND [OPTIONS]\n"
    "\n"
    "commands:\n"
    "  load DIR          register migration files (native, Sqitch or Flyway layout) in one transaction\n"
    "  up                apply pending migrations (--dir DIR loads first)\n"
    "  down              revert the newest migrations (--steps N | --to V)\n"
    "  rollback          revert a whole deployment (default: the newest)\n"
    "  baseline          mark migrations up to --through V as applied without running them\n"
    "  status            current version, pending, last deployment, lock, markers, checkpoints\n"
    "  validate          ledger problems (exit 1 when any)\n"
    "  verify [VERSION]  run verify SQL, rolled back (exit 1 when any fails)\n"
    "  markers           list | request | execute ID | resolve ID\n"
    "  watch             the health watcher daemon\n"
    "  once              one watcher cycle (for a systemd timer)\n"
    "  version           print the version\n"
    "\n"
    "common options: --dsn DSN, --json, --log-format plain|json, --wait-primary DURATION, -v/--verbose,\n"
    "                -q/--quiet, -h/--help\n"
    "exit codes: 0 ok, 1 failed, 2 usage, 3 cannot connect, 4 lock held, 5 irreversible, 6 drift,\n"
    "            7 rollback refused, 8 extension missing, 9 read-only standby, 10 needs attention\n"
    "`pgdeploy COMMAND --help` shows a command's options; docs/pgdeploy.md is the reference.\n";

}  // namespace

/*
 * main_dispatch
 *		No exception escapes: every command wraps its body in run_command, and this function guards the rest, so
 *		the exit code is always one of the documented ones.
 */
int main_dispatch(int argc, char** argv) {
    try {
        if (argc < 2) {
            std::cerr << kOverview;
            return kExitUsage;
        }
        std::string command = argv[1];
        std::vector<std::string> args(argv + 2, argv + argc);
        if (command == "help" || command == "--help" || command == "-h") {
            std::cout << kOverview;
            return kExitOk;
        }
        if (command == "version" || command == "--version") {
            std::cout << "pgdeploy " << PGDEPLOY_VERSION << "\n";
            return kExitOk;
        }
        if (command == "load")
            return cmd_load(args);
        if (command == "up")
            return cmd_up(args);
        if (command == "down")
            return cmd_down(args);
        if (command == "rollback")
            return cmd_rollback(args);
        if (command == "baseline")
            return cmd_baseline(args);
        if (command == "status")
            return cmd_status(args);
        if (command == "validate")
            return cmd_validate(args);
        if (command == "verify")
            return cmd_verify(args);
        if (command == "markers")
            return cmd_markers(args);
        if (command == "watch")
            return pgdeploy::watch::run_watch(args);
        if (command == "once")
            return pgdeploy::watch::run_once(args);
        std::cerr << "pgdeploy: unknown command \"" << command << "\"\n" << kOverview;
        return kExitUsage;
    } catch (const std::exception& e) {
        std::cerr << "pgdeploy: internal error: " << e.what() << "\n";
        return kExitFailed;
    } catch (...) {
        std::cerr << "pgdeploy: internal error\n";
        return kExitFailed;
    }
}

}  // namespace pgdeploy::cli
