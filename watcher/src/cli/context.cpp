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

common::Connection Context::connect() const {
    common::ConnectOptions opts;
    opts.dsn = args.get("dsn").value_or("");
    auto conn = common::Connection::connect(opts);
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
        return body(ctx);
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
