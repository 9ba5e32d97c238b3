// `pgdeploy markers [list|request|execute ID|resolve ID]`: rollback markers from the command line, for operators
// and for timers that do not run the watcher.
#include <iostream>

#include "cli/commands.hpp"
#include "cli/context.hpp"
#include "common/limits.hpp"
#include "common/output.hpp"
#include "common/steps.hpp"

namespace pgdeploy::cli {

namespace {

using nlohmann::json;

const CommandSpec& markers_spec() {
    static const CommandSpec spec{
        "markers",
        "[list [--open] [--limit N] | request --reason TEXT [--deployment ID] | execute ID [--force] | "
        "resolve ID --resolution done|abandoned [--note TEXT]]",
        "list, request, execute or resolve rollback markers",
        {{"open", 0, false, "", "list: only markers that are not closed"},
         {"limit", 0, true, "N", "list: at most N markers, newest first (default 50)"},
         {"reason", 0, true, "TEXT", "request: why the deployment should be rolled back"},
         {"deployment", 0, true, "ID", "request: the deployment to roll back (default: the newest revertible one)"},
         {"force", 0, false, "", "execute: past the rollback window and through irreversible migrations"},
         {"resolution", 0, true, "done|abandoned", "resolve: how the marker was closed by hand"},
         {"note", 0, true, "TEXT", "resolve: a note for the audit log"},
         {"lock-wait", 0, true, "DURATION", "execute: wait at most this long for the deploy lock"}},
        0,
        2,
        "ACTION [ID]"};
    return spec;
}

// only_for: refuses options that belong to another action, so a typo'd command line never half-applies.
void only_for(const Context& ctx, const std::string& action, const std::vector<std::string>& allowed) {
    static const std::vector<std::string> action_options = {"open",  "limit",      "reason", "deployment",
                                                            "force", "resolution", "note",   "lock-wait"};
    for (const auto& o : action_options) {
        if (!ctx.args.has(o))
            continue;
        bool ok = false;
        for (const auto& a : allowed)
            ok = ok || a == o;
        if (!ok)
            throw ArgumentError("--" + o + " does not apply to markers " + action);
    }
}

std::string marker_id_arg(const Context& ctx, const std::string& action) {
    if (ctx.args.positionals.size() < 2)
        throw ArgumentError("markers " + action + " needs a marker ID");
    return std::to_string(parse_positive_int("marker ID", ctx.args.positionals[1], 999999999));
}

void print_markers(const json& markers) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& m : markers)
        rows.push_back({jstr(m, "id"), jstr(m, "deployment_id"), jstr(m, "state"), jstr(m, "attempts"),
                        jstr(m, "target_version"), jstr(m, "holder"), jstr(m, "requested_at"), jstr(m, "reason")});
    if (rows.empty()) {
        std::cout << "no rollback markers\n";
        return;
    }
    std::cout << common::render_table(
        {"ID", "DEPLOYMENT", "STATE", "ATTEMPTS", "TARGET", "HOLDER", "REQUESTED", "REASON"}, rows);
}

}  // namespace

int cmd_markers(const std::vector<std::string>& args) {
    return run_command(markers_spec(), args, [](Context& ctx) {
        std::string action = ctx.args.positionals.empty() ? "list" : ctx.args.positionals[0];
        if (action == "list") {
            only_for(ctx, action, {"open", "limit"});
            if (ctx.args.positionals.size() > 1)
                throw ArgumentError("markers list takes no ID");
            std::string limit = std::to_string(parse_positive_int("limit", ctx.args.get("limit").value_or("50")));
            auto conn = ctx.connect();
            json markers =
                conn.query_json("SELECT deploy.list_markers(open_only => $1::boolean, max_rows => $2::integer)",
                                {std::string(ctx.args.has("open") ? "true" : "false"), limit});
            json doc = {{"ok", true}, {"operation", "markers"}, {"markers", markers}};
            return emit(ctx, doc, kExitOk, [&]() { print_markers(markers); });
        }
        if (action == "request") {
            only_for(ctx, action, {"reason", "deployment"});
            if (ctx.args.positionals.size() > 1)
                throw ArgumentError("markers request takes no ID (use --deployment)");
            if (!ctx.args.has("reason"))
                throw ArgumentError("markers request needs --reason TEXT");
            check_length_arg(ctx.args, "reason", common::kMaxReasonChars);
            common::Param deployment;
            if (auto d = ctx.args.get("deployment"))
                deployment = std::to_string(parse_positive_int("deployment", *d, 999999999));
            auto conn = ctx.connect();
            auto id = conn.query_value("SELECT deploy.request_rollback(reason => $1, deployment_id => $2::bigint)",
                                       {ctx.args.get("reason"), deployment});
            json doc = {
                {"ok", true}, {"operation", "request_rollback"}, {"marker_id", id ? json(std::stoll(*id)) : json()}};
            return emit(ctx, doc, kExitOk,
                        [&]() { std::cout << "rollback marker " << id.value_or("?") << " pending\n"; });
        }
        if (action == "execute") {
            only_for(ctx, action, {"force", "lock-wait"});
            std::string id = marker_id_arg(ctx, action);
            common::LockSafety lock = lock_flags(ctx.args);
            auto conn = ctx.connect();
            common::apply_lock_safety(conn, lock);
            json doc;
            try {
                // A revert that stops at the steps of a down SQL is driven to its end (steps on a connection of
                // their own, the lease renewed on this one; execute_rollback_begin's claim takes 5 minutes).
                common::MarkerRun run = common::execute_marker(
                    conn,
                    [&ctx, &lock]() {
                        common::Connection steps = ctx.connect();
                        common::apply_lock_safety(steps, lock);
                        return steps;
                    },
                    std::stoll(id), ctx.args.has("force"), std::int64_t{5} * 60 * 1000,
                    ctx.step_options("pgdeploy markers"));
                doc = run.result;
                if (!run.steps.empty())
                    doc["steps"] = run.steps;
            } catch (const common::DbError& e) {
                // A marker that gave up after its attempts is the operator's problem now: exit 10, as the watcher.
                if (e.sqlstate() == "PD007" && std::string(e.what()).find("needs attention") != std::string::npos)
                    throw Failure(kExitNeedsAttention, e.what(), e.sqlstate());
                throw;
            }
            int code = kExitOk;
            if (!doc.value("ok", false)) {
                code = doc.value("state", "") == "needs_attention"
                           ? kExitNeedsAttention
                           : failure_exit_code(doc.contains("error") ? doc["error"] : json());
            }
            return emit(ctx, doc, code, [&]() {
                if (code == kExitOk)
                    std::cout << "marker " << id << ": " << jstr(doc, "state") << " ("
                              << (doc.value("already_done", false) ? "already done" : jstr(doc, "resolution", "done"))
                              << ")\n";
                else
                    std::cout << "marker " << id << ": " << jstr(doc, "state") << " after attempt "
                              << jstr(doc, "attempts") << ": "
                              << (doc.contains("error") ? jstr(doc["error"], "message") : "?") << "\n";
            });
        }
        if (action == "resolve") {
            only_for(ctx, action, {"resolution", "note"});
            std::string id = marker_id_arg(ctx, action);
            auto resolution = ctx.args.get("resolution");
            if (!resolution)
                throw ArgumentError("markers resolve needs --resolution done|abandoned");
            if (*resolution != "done" && *resolution != "abandoned")
                throw ArgumentError("--resolution must be done or abandoned, not \"" + *resolution + "\"");
            auto conn = ctx.connect();
            json doc =
                conn.query_json("SELECT deploy.resolve_marker(marker_id => $1::bigint, resolution => $2, note => $3)",
                                {id, resolution, ctx.args.get("note")});
            return emit(ctx, doc, kExitOk,
                        [&]() { std::cout << "marker " << id << " resolved: " << jstr(doc, "resolution") << "\n"; });
        }
        throw ArgumentError("unknown markers action \"" + action + "\" (list, request, execute, resolve)");
    });
}

}  // namespace pgdeploy::cli
