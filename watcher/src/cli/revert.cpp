// `pgdeploy down`, `pgdeploy rollback` and `pgdeploy baseline`: thin front ends over deploy.down, deploy.rollback
// and deploy.baseline.
#include <iostream>

#include "cli/commands.hpp"
#include "cli/context.hpp"
#include "common/limits.hpp"
#include "common/output.hpp"

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
    return doc.contains("failed") ? failure_exit_code(doc["failed"]) : kExitFailed;
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
    if (code == kExitOk) {
        if (rows.empty()) {
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
        return;
    }
    const json& f = doc.contains("failed") ? doc["failed"] : json();
    std::cout << ctx.spec->name << " refused or failed at " << jstr(f, "version", "?") << ": "
              << jstr(f, "message", "?") << " (SQLSTATE " << jstr(f, "sqlstate", "?") << ")\n";
    if (f.contains("hint") && !f["hint"].is_null())
        std::cout << "HINT: " << jstr(f, "hint") << "\n";
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
        json doc = query_json_watched(ctx, conn, "deploy.down()",
                                      std::string("SELECT deploy.down(") +
                                          (by_version ? "to_version => $1" : "steps => $1::integer") +
                                          ", force => $2::boolean, dry_run => $3::boolean, app_version => $4)",
                                      {by_version ? opt(ctx.args.get("to")) : common::Param(steps.value_or("1")),
                                       flag(ctx, "force"), flag(ctx, "dry-run"), opt(ctx.args.get("app-version"))});
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
        json doc = query_json_watched(
            ctx, conn, "deploy.rollback()",
            "SELECT deploy.rollback(deployment_id => $1::bigint, force => $2::boolean, reason => $3, "
            "dry_run => $4::boolean)",
            {deployment, flag(ctx, "force"), opt(ctx.args.get("reason")), flag(ctx, "dry-run")});
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
