// Shared sub-command plumbing (see context.hpp).
#include "cli/context.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>

#include "common/exit_codes.hpp"
#include "common/lock_safety.hpp"
#include "common/logging.hpp"
#include "common/output.hpp"

namespace pgdeploy::cli {

bool Context::read_only_command() const {
    if (spec == nullptr)
        return false;
    const std::string& name = spec->name;
    if (name == "status" || name == "validate" || name == "verify")
        return true;
    return name == "markers" && (args.positionals.empty() || args.positionals[0] == "list");
}

common::Connection Context::connect() const {
    common::ConnectOptions opts;
    opts.dsn = args.get("dsn").value_or("");
    common::WaitOptions wait;
    wait.deadline_ms = wait_primary_ms;
    wait.need_writable = !read_only_command();
    wait.command = "pgdeploy " + (spec ? spec->name : std::string("command"));
    wait.report = [this](const std::string& line) { progress(line); };
    auto conn = common::connect_waiting(opts, wait);
    std::string version = conn.require_extension();
    spdlog::debug("pg_deploy {} in {}", version, conn.describe());
    conn.set_notice_handler([out = output](const common::Notice& n) {
        if (!out)
            return false;
        if (n.severity == "NOTICE" && n.message.rfind(common::kLockRetryPrefix, 0) == 0) {
            out->line(n.message);
            return true;
        }
        out->clear_status();  // the log line that follows must not land on a terminal's status line
        return false;
    });
    return conn;
}

std::string Context::holder() {
    char host[256] = {0};
    if (gethostname(host, sizeof host - 1) != 0)
        host[0] = '\0';
    return std::string("pgdeploy@") + host + ":" + std::to_string(getpid());
}

common::StepOptions Context::step_options(const std::string& operation) const {
    common::StepOptions options;
    options.holder = holder();
    options.operation = operation;
    options.progress = [this](const std::string& line) { progress(line); };
    return options;
}

void Context::progress(const std::string& line) const {
    if (output)
        output->line(line);
}

long long wait_primary_ms_from(const ParsedArgs& args, const char* env_value) {
    if (auto v = args.get("wait-primary"))
        return parse_duration_ms("wait-primary", *v);
    if (env_value != nullptr && *env_value != '\0') {
        try {
            return parse_duration_ms("wait-primary", env_value);
        } catch (const UsageError&) {
            throw UsageError(std::string("PGDEPLOY_WAIT_PRIMARY needs a duration like 60s, 500ms, 2min or 0, not \"") +
                             env_value + "\"");
        }
    }
    return common::kDefaultWaitPrimaryMs;
}

/*
 * lost_connection_message
 *		A write whose connection broke may have committed or not, and the new primary may not have its last
 *		commits (asynchronous replication): pgdeploy does not redo it on its own. Commands whose target is
 *		stated (up, load, baseline, down --to, rollback --deployment, markers execute) can simply be run again:
 *		the ledger skips what is done and non-transactional steps resume from their checkpoints. Commands that
 *		count from the newest state (down --steps, rollback of the newest deployment, markers request) would do
 *		one more thing if the first run committed, so the message asks to look first.
 */
std::string lost_connection_message(const Context& ctx, const std::string& reason) {
    std::string name = ctx.spec ? ctx.spec->name : std::string("command");
    std::string action = name == "markers" && !ctx.args.positionals.empty() ? ctx.args.positionals[0] : "";
    std::string command = "pgdeploy " + name + (action.empty() ? "" : " " + action);
    std::string head = reason + " (a failover or a server restart?) while " + command +
                       " ran; it may or may not have committed, and pgdeploy does not redo a write on its own. ";
    bool counts_from_newest = (name == "down" && !ctx.args.has("to")) ||
                              (name == "rollback" && !ctx.args.has("deployment")) ||
                              (name == "markers" && action == "request");
    if (counts_from_newest)
        return head +
               "Check `pgdeploy status` once a primary is up before running it again: if it committed, "
               "running it again would " +
               (name == "markers" ? std::string("request a second rollback") : std::string("revert one more")) + ".";
    return head +
           "Running the same command again once a primary is up resumes: applied migrations are skipped "
           "and non-transactional steps continue from their checkpoints.";
}

namespace {

void print_failure_text(const std::string& command, const Failure& f) {
    std::cerr << "pgdeploy " << command << ": error: " << f.what();
    if (!f.sqlstate().empty())
        std::cerr << " (SQLSTATE " << f.sqlstate() << ")";
    std::cerr << "\n";
    if (const auto* db = dynamic_cast<const common::DbError*>(&f)) {
        if (!db->detail().empty())
            std::cerr << "DETAIL: " << db->detail() << "\n";
        if (!db->hint().empty())
            std::cerr << "HINT: " << db->hint() << "\n";
    }
}

}  // namespace

namespace {

/*
 * run_body
 *		A read-only command whose connection breaks (the server it read from went down in a failover) is run
 *		again from the start: it has printed nothing yet, and its connect() waits for a server within
 *		--wait-primary. A write command is not redone (lost_connection_message says why and what to do).
 */
int run_body(Context& ctx, const std::function<int(Context&)>& body) {
    constexpr int kMaxRedos = 3;
    for (int redo = 0;; ++redo) {
        try {
            return body(ctx);
        } catch (const common::ConnectionLost& e) {
            if (!ctx.read_only_command())
                throw common::ConnectionLost(lost_connection_message(ctx, e.what()));
            if (ctx.wait_primary_ms == 0 || redo >= kMaxRedos)
                throw;
            ctx.progress(std::string(e.what()) + ": reconnecting to run pgdeploy " + ctx.spec->name + " again");
        }
    }
}

}  // namespace

/*
 * run_command
 *		The one place where failures become exit codes, so every sub-command reports errors the same way: a
 *		one-line message on stderr (plus the usage for usage errors), and under --json also a JSON error
 *		document on stdout, so a script that parses stdout always gets exactly one document.
 */
int run_command(const CommandSpec& spec, const std::vector<std::string>& args,
                const std::function<int(Context&)>& body) {
    Context ctx;
    ctx.spec = &spec;
    // --json is known before parsing finishes, so that a usage error can already be reported as JSON.
    for (const auto& a : args) {
        if (a == "--")
            break;
        if (a == "--json")
            ctx.json = true;
    }
    common::LogOptions log;
    if (const char* pw = std::getenv("PGPASSWORD"))
        log.secret = pw;
    common::setup_logging(log);
    try {
        ctx.args = parse_args(spec, args);
        if (ctx.args.has("help")) {
            std::cout << usage_text(spec);
            return kExitOk;
        }
        log.verbose = ctx.args.has("verbose");
        log.quiet = ctx.args.has("quiet");
        if (auto f = ctx.args.get("log-format"))
            log.format = common::parse_log_format(*f);
        reject_together(ctx.args, "verbose", "quiet");
        common::setup_logging(log);
        ctx.quiet = log.quiet;
        ctx.wait_primary_ms = wait_primary_ms_from(ctx.args, std::getenv("PGDEPLOY_WAIT_PRIMARY"));
        ctx.log_json = log.format == common::LogFormat::kJson;
        using Mode = common::ProgressOutput::Mode;
        ctx.output = std::make_shared<common::ProgressOutput>(ctx.quiet      ? Mode::kSilent
                                                              : ctx.log_json ? Mode::kLog
                                                                             : Mode::kStderr);
    } catch (const UsageError& e) {
        print_failure_text(spec.name, e);
        std::cerr << usage_line(spec);
        if (ctx.json)
            common::print_json(common::error_document(spec.name, e));
        return e.exit_code();
    }
    try {
        return run_body(ctx, body);
    } catch (const Failure& e) {
        print_failure_text(spec.name, e);
        if (dynamic_cast<const ArgumentError*>(&e))
            std::cerr << usage_line(spec);
        if (ctx.json)
            common::print_json(common::error_document(spec.name, e));
        return e.exit_code();
    } catch (const nlohmann::json::exception& e) {
        Failure f(kExitFailed, std::string("unexpected result from the extension: ") + e.what());
        print_failure_text(spec.name, f);
        if (ctx.json)
            common::print_json(common::error_document(spec.name, f));
        return kExitFailed;
    } catch (const std::exception& e) {
        Failure f(kExitFailed, std::string("internal error: ") + e.what());
        print_failure_text(spec.name, f);
        if (ctx.json)
            common::print_json(common::error_document(spec.name, f));
        return kExitFailed;
    }
}

int emit(const Context& ctx, nlohmann::json doc, int exit_code, const std::function<void()>& human) {
    if (ctx.json) {
        if (!doc.is_object())
            doc = nlohmann::json{{"result", doc}};
        doc["schema_version"] = common::kJsonSchemaVersion;
        doc["command"] = ctx.spec->name;
        doc["exit_code"] = exit_code;
        common::print_json(doc);
    } else {
        human();
    }
    return exit_code;
}

int failure_exit_code(const nlohmann::json& failure) {
    if (!failure.is_object() || !failure.contains("sqlstate") || !failure["sqlstate"].is_string())
        return kExitFailed;
    return exit_code_for_sqlstate(failure["sqlstate"].get<std::string>());
}

nlohmann::json query_json_watched(const Context& ctx, common::Connection& conn, const std::string& label,
                                  const std::string& sql, const std::vector<common::Param>& params) {
    common::ProgressMonitor monitor(conn, ctx.output);
    auto scope = monitor.watch(label);
    return conn.query_json(sql, params);
}

std::string lock_retries_note(const nlohmann::json& doc) {
    if (!doc.is_object() || !doc.contains("lock_retries") || !doc["lock_retries"].is_array())
        return "";
    size_t n = 0;
    for (const auto& r : doc["lock_retries"])
        n += r.is_object() && !r.value("gave_up", false) ? 1 : 0;
    return n == 0 ? "" : " after " + std::to_string(n) + " lock retr" + (n == 1 ? "y" : "ies");
}

std::string jstr(const nlohmann::json& obj, const std::string& key, const std::string& fallback) {
    if (!obj.is_object() || !obj.contains(key) || obj[key].is_null())
        return fallback;
    return common::cell(obj[key]);
}

}  // namespace pgdeploy::cli
