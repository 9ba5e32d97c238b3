// `pgdeploy up`: optionally load a directory, then deploy.up(), and drive non-transactional migrations statement by
// statement at top level through deploy.next_step / step_done / step_failed until the deployment is complete.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <iostream>

#include "cli/commands.hpp"
#include "cli/context.hpp"
#include "cli/load.hpp"
#include "common/limits.hpp"
#include "common/output.hpp"
#include "common/steps.hpp"

namespace pgdeploy::cli {

namespace {

using nlohmann::json;

// StepRecords: what the JSON of `pgdeploy up` reports about the work done at top level and the retries, across all
// rounds of deploy.up().
struct StepRecords {
    json steps = json::array();         // [{"step_id","version","step","ok","duration_ms",...}]
    json lock_retries = json::array();  // the extension's rounds' and our own, in order
};

common::Param opt(const std::optional<std::string>& v) {
    return v;
}

double elapsed_ms(std::chrono::steady_clock::time_point since) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since).count();
}

std::string progress_line(size_t index, size_t total, const std::string& version, const std::string& name,
                          const std::string& outcome) {
    std::string counter =
        total ? "[" + std::to_string(index) + "/" + std::to_string(total) + "] " : "[" + std::to_string(index) + "] ";
    return counter + version + "_" + name + " ... " + outcome;
}

double num(const json& obj, const std::string& key) {
    if (obj.is_object() && obj.contains(key) && obj[key].is_number())
        return obj[key].get<double>();
    return 0;
}

void print_up_human(const json& doc, int exit_code) {
    bool dry = doc.value("dry_run", false);
    std::string before = jstr(doc, "version_before", "(none)"), after = jstr(doc, "version_after", "(none)");
    if (exit_code == 0) {
        size_t n = doc.contains("applied") && doc["applied"].is_array() ? doc["applied"].size() : 0;
        if (n == 0 && (!doc.contains("steps") || doc["steps"].empty())) {
            std::cout << "nothing to apply: schema at " << before << (dry ? " (dry run)" : "") << "\n";
            return;
        }
        std::cout << (dry ? "dry run: would apply " : "applied ") << n << " migration" << (n == 1 ? "" : "s") << ": "
                  << before << " -> " << (dry ? jstr(doc, "target", after) : after);
        if (doc.contains("deployment_id") && !doc["deployment_id"].is_null())
            std::cout << " (deployment " << jstr(doc, "deployment_id") << ")";
        std::cout << " in " << common::format_ms(num(doc, "duration_ms")) << lock_retries_note(doc) << "\n";
        return;
    }
    const json& f = doc.contains("failed") ? doc["failed"] : json();
    std::cout << (dry ? "dry run FAILED" : "FAILED") << " at " << jstr(f, "version", "?") << " " << jstr(f, "name", "")
              << ": " << jstr(f, "message", "?") << " (SQLSTATE " << jstr(f, "sqlstate", "?") << ")\n";
    if (f.contains("detail") && !f["detail"].is_null())
        std::cout << "DETAIL: " << jstr(f, "detail") << "\n";
    if (f.contains("hint") && !f["hint"].is_null())
        std::cout << "HINT: " << jstr(f, "hint") << "\n";
    size_t kept = doc.contains("applied") && doc["applied"].is_array() ? doc["applied"].size() : 0;
    if (dry)
        std::cout << "dry run: nothing changed\n";
    else if (f.contains("step") && !f["step"].is_null())
        std::cout << "the deployment stays running with its checkpoints; schema at " << after
                  << "; fix the cause and run `pgdeploy up` again to resume from this step\n";
    else if (kept > 0)
        // Migrations before a non-transactional one are committed before its statements run (and --no-atomic
        // keeps the ones that succeeded): say what stays applied.
        std::cout << kept << " migration"
                  << (kept == 1 ? " applied before the failure stays" : "s applied before the failure stay")
                  << " applied; "
                  << "schema at " << after << "\n";
    else if (doc.value("atomic", true))
        std::cout << "nothing applied (atomic); schema still at " << before << "\n";
    else
        std::cout << "schema at " << after << "\n";
}

/*
 * Rounds
 *		deploy.up() is called again after each batch of non-transactional steps: it resumes the same deployment
 *and applies what follows. What all the rounds did together is what the command reports.
 */
struct Rounds {
    json result;                   // the last deploy.up() result
    json applied = json::array();  // every round's, and the non-transactional migrations finished here
    json failure;                  // a failed step (a failed migration is in result["failed"])
    StepRecords records;
};

void append_all(json& into, const json& from, const char* key) {
    if (from.is_object() && from.contains(key) && from[key].is_array())
        for (const auto& e : from[key])
            into.push_back(e);
}

/*
 * run_rounds
 *		A round that makes no progress ends the loop with an error rather than spinning. Every call and
 *statement runs under the progress monitor.
 */
Rounds run_rounds(const Context& ctx, common::Connection& conn, bool dry_run) {
    Rounds r;
    common::ProgressMonitor monitor(conn, ctx.output);
    size_t counter = 0;
    // The number of migrations this run will apply, for the [k/N] progress lines.
    size_t total = static_cast<size_t>(
        std::stoll(conn.query_value("SELECT deploy.pending_count($1)", {opt(ctx.args.get("target"))}).value_or("0")));
    std::string last_awaiting;
    while (true) {
        {
            auto watching = monitor.watch("deploy.up()");
            r.result = conn.query_json(
                "SELECT deploy.up(target => $1, dry_run => $2::boolean, app_version => $3, atomic => $4::boolean)",
                {opt(ctx.args.get("target")), std::string(dry_run ? "true" : "false"), opt(ctx.args.get("app-version")),
                 std::string(ctx.args.has("no-atomic") ? "false" : "true")});
        }
        if (!r.result.is_object())
            throw Failure(kExitFailed, "deploy.up() returned no result");
        append_all(r.records.lock_retries, r.result, "lock_retries");
        const json& applied =
            r.result.contains("applied") && r.result["applied"].is_array() ? r.result["applied"] : json::array();
        total = std::max(total, applied.size() + counter);
        for (const auto& a : applied) {
            ++counter;
            ctx.progress(
                progress_line(counter, total, jstr(a, "version", "?"), jstr(a, "name", ""),
                              (dry_run ? "ok (rehearsed) " : "ok ") + common::format_ms(num(a, "duration_ms"))));
            r.applied.push_back(a);
        }
        if (!r.result.value("ok", false))
            return r;
        json awaiting = r.result.contains("awaiting_nontransactional") ? r.result["awaiting_nontransactional"] : json();
        if (awaiting.is_null() || dry_run)
            return r;
        std::string key = awaiting.dump();
        if (key == last_awaiting)
            throw Failure(kExitFailed, "deploy.up() keeps waiting for the same non-transactional migration (" +
                                           jstr(awaiting, "version", "?") + ") although its steps are done");
        last_awaiting = key;
        if (!awaiting.contains("deployment_id") && r.result.contains("deployment_id"))
            awaiting["deployment_id"] = r.result["deployment_id"];
        std::string prefix =
            "[" + std::to_string(counter + 1) + "/" + std::to_string(std::max(total, counter + 1)) + "] ";
        spdlog::info("{} is non-transactional: running its statements at top level", jstr(awaiting, "version", "?"));
        double step_ms = 0;
        common::StepOptions options = ctx.step_options("pgdeploy up");
        options.monitor = &monitor;
        options.lock_retries = &r.records.lock_retries;
        r.failure = common::run_steps(conn, awaiting, options, r.records.steps, prefix, step_ms);
        if (!r.failure.is_null())
            return r;
        ++counter;
        r.applied.push_back({{"version", awaiting.value("version", "")},
                             {"name", awaiting.value("name", "")},
                             {"duration_ms", step_ms},
                             {"transactional", false}});
    }
}

/*
 * up_failure_exit_code
 *		A migration or step that failed is exit 1 whatever its own SQLSTATE (a migration raising 55000 was not a
 *		refused rollback), except where the code means something for up: drift (6) and a lock not obtained
 *		within the retry budget (4), which a script may retry later. Both come from the one mapping.
 */
int up_failure_exit_code(const json& failed) {
    int code = failure_exit_code(failed);
    return code == kExitLockHeld || code == kExitDrift ? code : kExitFailed;
}

}  // namespace

const CommandSpec& up_spec() {
    static const CommandSpec spec{
        "up",
        "[--dir DIR [--follow-symlinks]] [--target V] [--dry-run] [--app-version X] [--no-atomic] "
        "[--lock-wait DURATION] [--lock-timeout DURATION] [--lock-attempts N] [--lock-retry-time DURATION]",
        "apply pending migrations (loading DIR first), driving non-transactional ones at top level",
        with_lock_retry_options(
            {{"dir", 0, true, "DIR", "load this directory first (as pgdeploy load)"},
             {"follow-symlinks", 0, false, "", "with --dir: read migration files that are symlinks to outside DIR"},
             {"target", 0, true, "V", "apply up to and including version V"},
             {"dry-run", 0, false, "", "rehearse: run everything inside a transaction that is rolled back"},
             {"app-version", 0, true, "X",
              "the release being deployed (commit, image tag); recorded on the deployment"},
             {"no-atomic", 0, false, "",
              "keep the migrations that succeeded when a later one fails (writes a rollback marker)"},
             {"lock-wait", 0, true, "DURATION", "wait at most this long for the deploy lock (default 10s)"}}),
        0,
        0,
        ""};
    return spec;
}

/*
 * cmd_up
 *		Files are read and checked before connecting; a refused registration applies nothing. Then the rounds of
 *		deploy.up() (run_rounds), and one document for all of them.
 */
int cmd_up(const std::vector<std::string>& args) {
    return run_command(up_spec(), args, [](Context& ctx) {
        bool dry_run = ctx.args.has("dry-run");
        common::LockSafety lock = lock_flags(ctx.args);
        check_version_arg("--target", ctx.args.get("target"));
        check_length_arg(ctx.args, "app-version", common::kMaxAppVersionChars);
        std::optional<loader::LoadedDirectory> loaded;
        auto dir = ctx.args.get("dir");
        if (ctx.args.has("follow-symlinks") && !dir)
            throw ArgumentError("--follow-symlinks needs --dir");
        if (dir)
            loaded = loader::load_directory(*dir, load_options(ctx));
        auto conn = ctx.connect();
        common::apply_lock_safety(conn, lock);

        json load_doc;
        if (loaded) {
            conn.exec("BEGIN");
            RegisterReport report = register_all(conn, *loaded, *dir);
            load_doc = report.doc;
            if (report.exit_code != 0) {
                conn.exec("ROLLBACK");
                json doc = {{"ok", false},
                            {"operation", "up"},
                            {"load", load_doc},
                            {"error",
                             {{"sqlstate", report.exit_code == kExitDrift ? json("PD001") : json()},
                              {"message", "migration files refused at registration; nothing registered or applied"}}}};
                return emit(ctx, doc, report.exit_code, [&]() {
                    print_register_report(report, dry_run);
                    std::cout << "nothing applied\n";
                });
            }
            // A dry run keeps the transaction open: registration and rehearsal are rolled back together.
            if (!dry_run)
                conn.exec("COMMIT");
            spdlog::info("{}: {} new, {} unchanged, {} updated", *dir, load_doc["new"].get<int>(),
                         load_doc["unchanged"].get<int>(), load_doc["updated"].get<int>());
        }

        auto started = std::chrono::steady_clock::now();
        Rounds r = run_rounds(ctx, conn, dry_run);
        if (dry_run && loaded)
            conn.exec("ROLLBACK");

        json doc = r.result;
        doc["applied"] = r.applied;
        doc["lock_retries"] = r.records.lock_retries;
        if (!r.records.steps.empty())
            doc["steps"] = r.records.steps;
        if (!load_doc.is_null())
            doc["load"] = load_doc;
        doc["duration_ms"] = elapsed_ms(started);
        int code = kExitOk;
        if (!r.failure.is_null()) {
            doc["ok"] = false;
            doc["state"] = "failed";
            doc["failed"] = r.failure;
            // The migrations before the failed step may have been applied by an earlier run: report where the
            // schema is now, not what this run's last deploy.up() call started from.
            std::optional<std::string> now = conn.query_value("SELECT deploy.current_version()");
            doc["version_after"] = now ? json(*now) : json();
            code = up_failure_exit_code(r.failure);
        } else if (!r.result.value("ok", false)) {
            code = up_failure_exit_code(r.result.contains("failed") ? r.result["failed"] : json());
        }
        return emit(ctx, doc, code, [&]() { print_up_human(doc, code); });
    });
}

}  // namespace pgdeploy::cli
