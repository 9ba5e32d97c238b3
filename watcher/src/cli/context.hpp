// What every CLI sub-command shares: parsing its arguments, logging set-up, connecting, and turning a Failure into
// the right exit code and message (text on stderr, or one JSON error document on stdout under --json).
#pragma once
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/args.hpp"
#include "common/connection.hpp"
#include "common/progress.hpp"
#include "common/steps.hpp"
#include "common/wait_primary.hpp"

namespace pgdeploy::cli {

struct Context {
    const CommandSpec* spec = nullptr;
    ParsedArgs args;
    bool json = false;
    bool quiet = false;
    bool log_json = false;  // --log-format json: progress lines become JSON log lines too
    // Where progress lines go (stderr, the log, or nowhere under --quiet); shared with the progress monitor.
    std::shared_ptr<common::ProgressOutput> output;

    // How long connect() waits for a writable primary (or, for read-only commands, for any server) during a
    // failover: --wait-primary, else PGDEPLOY_WAIT_PRIMARY, else 60 s; 0 = do not wait.
    long long wait_primary_ms = common::kDefaultWaitPrimaryMs;

    // connect: connection from --dsn (or libpq defaults) with the extension checked (exit 3 / exit 8), after
    // waiting out a failover (common::connect_waiting): a write command needs a writable primary (exit 9 when it
    // finds only a read-only standby), a read-only command takes a standby. The extension's "lock retry" NOTICEs
    // become progress lines while a call runs.
    common::Connection connect() const;

    // read_only_command: the command only reads (status, validate, verify, markers list): it works on a standby
    // and is run again from the start when its connection is lost.
    bool read_only_command() const;

    // holder: "pgdeploy@HOST:PID", how this process names itself in checkpoints and markers.
    static std::string holder();

    // progress: one line on stderr for humans (suppressed by --quiet; a JSON log line under --log-format json).
    void progress(const std::string& line) const;

    // step_options: how this command runs non-transactional steps (common/steps.hpp): as holder(), with progress
    // lines, `operation` naming it while it holds the deploy lock.
    common::StepOptions step_options(const std::string& operation) const;
};

// run_command: parses args against spec, sets up logging, runs body, maps every Failure (and any other exception)
// to an exit code. body returns the exit code of a completed command.
int run_command(const CommandSpec& spec, const std::vector<std::string>& args,
                const std::function<int(Context&)>& body);

// wait_primary_ms_from: the --wait-primary value, else PGDEPLOY_WAIT_PRIMARY (env_value; nullptr when unset), else
// the default; UsageError naming where a bad value came from.
long long wait_primary_ms_from(const ParsedArgs& args, const char* env_value);

// lost_connection_message: what a write command says when its connection broke mid-way (a failover): whether
// running it again resumes, or what to check first.
std::string lost_connection_message(const Context& ctx, const std::string& reason);

// emit: under --json prints doc + {"command", "exit_code"} (schema_version is always present); otherwise calls
// human(). Returns exit_code.
int emit(const Context& ctx, nlohmann::json doc, int exit_code, const std::function<void()>& human);

// failure_exit_code: exit code for a jsonb result's failure object {"sqlstate": ...}; 1 when absent.
int failure_exit_code(const nlohmann::json& failure);

// query_json_watched: conn.query_json while a progress monitor watches the call (common/progress.hpp): a long
// revert shows its elapsed time, the progress of its statement, or the session it waits for.
nlohmann::json query_json_watched(const Context& ctx, common::Connection& conn, const std::string& label,
                                  const std::string& sql, const std::vector<common::Param>& params);

// lock_retries_note: " after N lock retries" for the human summary line when the result's lock_retries holds
// retries (the entry of an attempt that gave up is not one), else "".
std::string lock_retries_note(const nlohmann::json& doc);

// jstr: the string at key, or fallback when missing/null (numbers are printed).
std::string jstr(const nlohmann::json& obj, const std::string& key, const std::string& fallback = "-");

}  // namespace pgdeploy::cli
