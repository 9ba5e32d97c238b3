// `pgdeploy down`, `pgdeploy rollback` and `pgdeploy baseline`: thin front ends over deploy.down, deploy.rollback
// and deploy.baseline. A revert that stops at the steps of a down SQL that must run at top level (DROP INDEX
// CONCURRENTLY, ...) is driven here: its steps run on this connection and the revert is called again to finish.
#include <chrono>
#include <iostream>

#include "cli/commands.hpp"
#include "cli/context.hpp"
#include "common/limits.hpp"
#include "common/output.hpp"
#include "common/steps.hpp"

namespace pgdeploy::cli {

namespace {

using nlohmann::json;

common::Param opt(const std::optional<std::string>& v) {
    return v;
}
common::Param flag(const Context& ctx, const std::string& name) {
    return std::string(ctx.args.has(name) ? "true" : "false");
}

const json& list_of(const json& doc) {
    static const json empty = json::array();
    for (const char* key : {"reverted", "undone", "applied"})
        if (doc.contains(key) && doc[key].is_array() && !doc[key].empty())
            return doc[key];
    return empty;
}

/*
 * revert_exit_code
 *		A revert that the extension refused by returning ok=false carries the reason's SQLSTATE: PD002
 *		(irreversible) → 5, PD006 / 55000 (window, not eligible) → 7; a down script that failed → 1.
 */
int revert_exit_code(const json& doc) {
    if (doc.value("ok", false))
        return kExitOk;
    if (!doc.contains("failed") || (doc["failed"].is_object() && doc["failed"].contains("step")))
        return kExitFailed;  // a down SQL's step that failed is a failed revert, whatever its SQLSTATE
    return failure_exit_code(doc["failed"]);
}

// The revert and the steps it ran: the last document of the revert, and the failure of a step (null if none).
struct RevertRun {
    json doc;
    json steps = json::array();
    json lock_retries = json::array();  // accumulated over the rounds (the last document has only its own)
    json failure;
};

/*
 * drive_revert calls the revert (`call`, deploy.down or deploy.rollback with the command's arguments) and, while it
 * stops at the steps of a down SQL, runs them at top level and calls it again: the extension resumes the same
 * revert deployment, so a killed pgdeploy is resumed by running the same command again. A round that makes no
 * progress ends with an error rather than spinning.
 */
RevertRun drive_revert(const Context& ctx, common::Connection& conn, const std::function<json()>& call) {
    RevertRun run;
    std::string last_awaiting;
    common::ProgressMonitor monitor(conn, ctx.output);
    common::StepOptions options = ctx.step_options("pgdeploy " + ctx.spec->name);
    options.monitor = &monitor;
    options.lock_retries = &run.lock_retries;
    while (true) {
        run.doc = call();
        if (!run.doc.is_object())
            throw Failure(kExitFailed, ctx.spec->name + " returned no result");
        for (const auto& entry : run.doc.value("lock_retries", json::array()))
            run.lock_retries.push_back(entry);
        json awaiting = run.doc.value("awaiting_nontransactional", json());
        if (!run.doc.value("ok", false) || !awaiting.is_object() || run.doc.value("dry_run", false))
            return run;
        if (awaiting.dump() == last_awaiting)
            throw Failure(kExitFailed, ctx.spec->name + " keeps waiting for the same steps of migration " +
                                           jstr(awaiting, "version", "?") + " although they are done");
        last_awaiting = awaiting.dump();
        awaiting["deployment_id"] = run.doc.value("deployment_id", json());
        ctx.progress("the down SQL of " + jstr(awaiting, "version", "?") + "_" + jstr(awaiting, "name", "") +
                     " runs at top level, statement by statement");
        double ms = 0;
        run.failure = common::run_steps(conn, awaiting, options, run.steps, "", ms);
        if (!run.failure.is_null())
            return run;
    }
}

// revert_document: the last document of the revert, with the steps it ran; after a failed step, ok false and the
// step's failure (the deployment stays running with its checkpoints).
json revert_document(common::Connection& conn, const RevertRun& run) {
    json doc = run.doc;
    doc["lock_retries"] = run.lock_retries;  // every round's, the extension's and the steps' own, in order
    if (!run.steps.empty())
        doc["steps"] = run.steps;
    if (!run.failure.is_null()) {
        doc["ok"] = false;
        doc["state"] = "failed";
        doc["failed"] = run.failure;
        std::optional<std::string> now = conn.query_value("SELECT deploy.current_version()");
        doc["version_after"] = now ? json(*now) : json();
    }
    return doc;
}

void print_revert_human(const Context& ctx, const json& doc, int code) {
    bool dry = doc.value("dry_run", false);
    const json& rows_json = list_of(doc);
    std::vector<std::vector<std::string>> rows;
    for (const auto& r : rows_json)
        rows.push_back({jstr(r, "version"), jstr(r, "name"),
                        r.contains("duration_ms") && r["duration_ms"].is_number()
                            ? common::format_ms(r["duration_ms"].get<double>())
                            : ""});
    const json awaiting = doc.value("awaiting_nontransactional", json());
    auto not_rehearsed = [&]() {
        if (dry && awaiting.is_object())
            std::cout << "dry run: the down SQL of " << jstr(awaiting, "version") << " " << jstr(awaiting, "name", "")
                      << " runs at top level and was not rehearsed, nor anything after it\n";
    };
    if (code == kExitOk) {
        if (rows.empty()) {
            if (dry && awaiting.is_object())
                not_rehearsed();
            else
                std::cout << "nothing to revert: schema at " << jstr(doc, "version_before", "(none)") << "\n";
            return;
        }
        std::cout << common::render_table({"VERSION", "NAME", "TIME"}, rows);
        std::cout << (dry ? "dry run: would revert " : "reverted ") << rows.size() << " migration"
                  << (rows.size() == 1 ? "" : "s") << ": " << jstr(doc, "version_before", "(none)") << " -> "
                  << jstr(doc, "version_after", "(none)");
        if (doc.contains("deployment_id") && !doc["deployment_id"].is_null())
            std::cout << " (deployment " << jstr(doc, "deployment_id") << ")";
        std::cout << lock_retries_note(doc) << "\n";
        not_rehearsed();
        return;
    }
    const json& f = doc.contains("failed") ? doc["failed"] : json();
    bool step = f.contains("step") && !f["step"].is_null();
    std::cout << ctx.spec->name << " refused or failed at " << jstr(f, "version", "?")
              << (step ? " step " + jstr(f, "step") : "") << ": " << jstr(f, "message", "?") << " (SQLSTATE "
              << jstr(f, "sqlstate", "?") << ")\n";
    if (f.contains("hint") && !f["hint"].is_null())
        std::cout << "HINT: " << jstr(f, "hint") << "\n";
    if (step)
        std::cout << ctx.spec->name << " deployment " << jstr(doc, "deployment_id")
                  << " stays running with its checkpoints; schema at " << jstr(doc, "version_after", "(none)")
                  << "; fix the cause and run `pgdeploy " << ctx.spec->name << "` again to resume from this step\n";
    else
        std::cout << "nothing reverted; schema still at " << jstr(doc, "version_before", "(none)") << "\n";
}

}  // namespace

int cmd_down(const std::vector<std::string>& args) {
    static const CommandSpec spec{
        "down",
        "[--steps N | --to V] [--force] [--dry-run] [--app-version X] [--lock-wait DURATION] "
        "[--lock-timeout DURATION] [--lock-attempts N] [--lock-retry-time DURATION]",
        "revert the newest applied migrations from their stored down SQL (default: one)",
        with_lock_retry_options(
            {{"steps", 0, true, "N", "revert the N newest migrations (default 1)"},
             {"to", 0, true, "V", "revert everything newer than version V (V stays applied)"},
             {"force", 0, false, "", "revert irreversible migrations too (their down SQL, if any, or nothing)"},
             {"dry-run", 0, false, "", "rehearse inside a transaction that is rolled back"},
             {"app-version", 0, true, "X", "the release the app goes back to; recorded on the deployment"},
             {"lock-wait", 0, true, "DURATION", "wait at most this long for the deploy lock"}}),
        0,
        0,
        ""};
    return run_command(spec, args, [](Context& ctx) {
        reject_together(ctx.args, "steps", "to");
        check_version_arg("--to", ctx.args.get("to"));
        check_length_arg(ctx.args, "app-version", common::kMaxAppVersionChars);
        std::optional<std::string> steps;
        if (auto s = ctx.args.get("steps"))
            steps = std::to_string(parse_positive_int("steps", *s));
        common::LockSafety lock = lock_flags(ctx.args);
        auto conn = ctx.connect();
        common::apply_lock_safety(conn, lock);
        // Either steps or to_version is passed, never both: the other keeps the function's default.
        const bool by_version = ctx.args.has("to");
        RevertRun run = drive_revert(ctx, conn, [&]() {
            return query_json_watched(ctx, conn, "deploy.down()",
                                      std::string("SELECT deploy.down(") +
                                          (by_version ? "to_version => $1" : "steps => $1::integer") +
                                          ", force => $2::boolean, dry_run => $3::boolean, app_version => $4)",
                                      {by_version ? opt(ctx.args.get("to")) : common::Param(steps.value_or("1")),
                                       flag(ctx, "force"), flag(ctx, "dry-run"), opt(ctx.args.get("app-version"))});
        });
        json doc = revert_document(conn, run);
        int code = revert_exit_code(doc);
        return emit(ctx, doc, code, [&]() { print_revert_human(ctx, doc, code); });
    });
}

int cmd_rollback(const std::vector<std::string>& args) {
    static const CommandSpec spec{
        "rollback",
        "[--deployment ID] [--force] [--reason TEXT] [--dry-run] [--lock-wait DURATION] [--lock-timeout DURATION] "
        "[--lock-attempts N] [--lock-retry-time DURATION]",
        "revert everything a deployment applied (default: the newest revertible one)",
        with_lock_retry_options(
            {{"deployment", 0, true, "ID", "the deployment to roll back (default: the newest up deployment)"},
             {"force", 0, false, "", "past the rollback window, and through irreversible migrations"},
             {"reason", 0, true, "TEXT", "why: recorded on the rollback deployment and its events"},
             {"dry-run", 0, false, "", "rehearse inside a transaction that is rolled back"},
             {"lock-wait", 0, true, "DURATION", "wait at most this long for the deploy lock"}}),
        0,
        0,
        ""};
    return run_command(spec, args, [](Context& ctx) {
        std::optional<std::string> deployment;
        if (auto d = ctx.args.get("deployment"))
            deployment = std::to_string(parse_positive_int("deployment", *d, 999999999));
        check_length_arg(ctx.args, "reason", common::kMaxReasonChars);
        common::LockSafety lock = lock_flags(ctx.args);
        auto conn = ctx.connect();
        common::apply_lock_safety(conn, lock);
        RevertRun run = drive_revert(ctx, conn, [&]() {
            return query_json_watched(
                ctx, conn, "deploy.rollback()",
                "SELECT deploy.rollback(deployment_id => $1::bigint, force => $2::boolean, reason => $3, "
                "dry_run => $4::boolean)",
                {deployment, flag(ctx, "force"), opt(ctx.args.get("reason")), flag(ctx, "dry-run")});
        });
        json doc = revert_document(conn, run);
        int code = revert_exit_code(doc);
        return emit(ctx, doc, code, [&]() { print_revert_human(ctx, doc, code); });
    });
}

int cmd_baseline(const std::vector<std::string>& args) {
    static const CommandSpec spec{
        "baseline",
        "--through V [--app-version X] [--lock-wait DURATION]",
        "mark registered migrations up to V as applied without running them (adopting an existing database)",
        {{"through", 0, true, "V", "the newest version the database already has (required)"},
         {"app-version", 0, true, "X", "the release running now; recorded on the baseline deployment"},
         {"lock-wait", 0, true, "DURATION", "wait at most this long for the deploy lock"}},
        0,
        0,
        ""};
    return run_command(spec, args, [](Context& ctx) {
        if (!ctx.args.has("through"))
            throw ArgumentError("--through V is required");
        check_version_arg("--through", ctx.args.get("through"));
        check_length_arg(ctx.args, "app-version", common::kMaxAppVersionChars);
        common::LockSafety lock = lock_flags(ctx.args);
        auto conn = ctx.connect();
        common::apply_lock_safety(conn, lock);
        json doc = conn.query_json("SELECT deploy.baseline(through => $1, app_version => $2)",
                                   {ctx.args.get("through"), opt(ctx.args.get("app-version"))});
        int code = doc.value("ok", true) ? kExitOk : kExitFailed;
        return emit(ctx, doc, code, [&]() {
            std::cout << "baseline through " << ctx.args.get("through").value() << ": "
                      << jstr(doc, "count", jstr(doc, "marked", "?")) << " migration(s) marked applied";
            if (doc.contains("deployment_id") && !doc["deployment_id"].is_null())
                std::cout << " (deployment " << jstr(doc, "deployment_id") << ")";
            std::cout << "\n";
        });
    });
}

}  // namespace pgdeploy::cli
