// `pgdeploy status`, `pgdeploy validate` and `pgdeploy verify`: read-side front ends over deploy.status,
// deploy.validate and deploy.verify, as aligned tables for people or the extension's jsonb for machines.
#include <iostream>

#include "cli/commands.hpp"
#include "cli/context.hpp"
#include "common/output.hpp"

namespace pgdeploy::cli {

namespace {

using nlohmann::json;

const json& arr(const json& doc, const char* key) {
    static const json empty = json::array();
    return doc.is_object() && doc.contains(key) && doc[key].is_array() ? doc[key] : empty;
}

void print_status_human(const json& s) {
    std::vector<std::vector<std::string>> summary;
    summary.push_back({"current version", jstr(s, "current_version", "(none)") + "  (" + jstr(s, "applied_count", "0") +
                                              " applied, " + jstr(s, "pending_count", "0") + " pending)"});
    const json& d = s.contains("last_deployment") ? s["last_deployment"] : json();
    if (d.is_object())
        summary.push_back(
            {"last deployment", "#" + jstr(d, "id") + " " + jstr(d, "kind") + " " + jstr(d, "state") +
                                    (d.value("interrupted", false) ? " (interrupted: run it again)" : "") + "  app " +
                                    jstr(d, "app_version") + "  " + jstr(d, "version_before", "(none)") + " -> " +
                                    jstr(d, "version_after", "(none)") + "  " + jstr(d, "started_at")});
    else
        summary.push_back({"last deployment", "(none)"});
    const json& server = s.contains("server") ? s["server"] : json();
    if (server.is_object())
        summary.push_back({"server", server.value("in_recovery", false) ? "read-only standby (in recovery)"
                                     : server.value("read_only", false)
                                         ? "read-only server (default_transaction_read_only)"
                                         : "primary (read-write)"});
    const json& l = s.contains("lock_holder") ? s["lock_holder"] : json();
    summary.push_back({"deploy lock", l.is_object() ? "held by pid " + jstr(l, "pid") + " (" +
                                                          jstr(l, "application_name") + ") since " + jstr(l, "since")
                                                    : "free"});
    for (const auto& lease : arr(s, "leases"))
        summary.push_back(
            {lease.value("lease", "") == "deploy" ? "deploy lease" : "watcher leader",
             jstr(lease, "holder") +
                 (lease.contains("operation") && !lease["operation"].is_null() ? " (" + jstr(lease, "operation") + ")"
                                                                               : "") +
                 (lease.value("expired", false) ? "  expired at " : "  until ") + jstr(lease, "expires_at")});
    for (const auto& row : summary)
        std::cout << row[0] << std::string(17 - row[0].size(), ' ') << row[1] << "\n";

    std::vector<std::vector<std::string>> rows;
    for (const auto& p : arr(s, "pending"))
        rows.push_back({jstr(p, "version"), jstr(p, "name"), p.value("transactional", true) ? "yes" : "no (top level)",
                        jstr(p, "reversibility")});
    if (!rows.empty())
        std::cout << "\npending\n" << common::render_table({"VERSION", "NAME", "TRANSACTIONAL", "REVERSIBILITY"}, rows);

    rows.clear();
    for (const auto& m : arr(s, "open_markers"))
        rows.push_back({jstr(m, "id"), jstr(m, "deployment_id"), jstr(m, "state"), jstr(m, "attempts"),
                        jstr(m, "holder"), jstr(m, "reason")});
    if (!rows.empty())
        std::cout << "\nopen rollback markers\n"
                  << common::render_table({"ID", "DEPLOYMENT", "STATE", "ATTEMPTS", "HOLDER", "REASON"}, rows);

    rows.clear();
    for (const auto& c : arr(s, "running_checkpoints"))
        rows.push_back({jstr(c, "deployment_id"), jstr(c, "version"), jstr(c, "step"), jstr(c, "state"),
                        jstr(c, "attempts"),
                        c.contains("error") && c["error"].is_object() ? jstr(c["error"], "message") : "-"});
    if (!rows.empty())
        std::cout << "\nunfinished checkpoints\n"
                  << common::render_table({"DEPLOYMENT", "VERSION", "STEP", "STATE", "ATTEMPTS", "ERROR"}, rows);

    rows.clear();
    for (const auto& a : arr(s, "archived"))
        rows.push_back({jstr(a, "version"), jstr(a, "object_type"), jstr(a, "object_name"), jstr(a, "archive_table"),
                        jstr(a, "row_count"), jstr(a, "expires_at")});
    if (!rows.empty())
        std::cout << "\narchived data\n"
                  << common::render_table({"VERSION", "TYPE", "OBJECT", "ARCHIVE", "ROWS", "EXPIRES"}, rows);

    rows.clear();
    for (const auto& a : arr(s, "applied"))
        rows.push_back({jstr(a, "version"), jstr(a, "name"), jstr(a, "deployment_id"), jstr(a, "applied_at"),
                        a.value("baseline", false) ? "baseline" : ""});
    if (!rows.empty())
        std::cout << "\napplied (newest first)\n"
                  << common::render_table({"VERSION", "NAME", "DEPLOYMENT", "APPLIED AT", ""}, rows);
}

}  // namespace

int cmd_status(const std::vector<std::string>& args) {
    static const CommandSpec spec{"status",
                                  "",
                                  "show the current version, pending migrations, last deployment, "
                                  "lock holder, open markers and unfinished checkpoints",
                                  {},
                                  0,
                                  0,
                                  ""};
    return run_command(spec, args, [](Context& ctx) {
        auto conn = ctx.connect();
        json doc = conn.query_json("SELECT deploy.status()");
        // Status works on a hot standby (deploy.status() only reads); say which kind of server answered.
        if (doc.is_object())
            doc["server"] = conn.server_role().to_json();
        return emit(ctx, doc, kExitOk, [&]() { print_status_human(doc); });
    });
}

int cmd_validate(const std::vector<std::string>& args) {
    static const CommandSpec spec{"validate",
                                  "",
                                  "check the ledger: checksum drift, applied but unregistered, out-of-order pending "
                                  "(exit 1 when there are problems)",
                                  {},
                                  0,
                                  0,
                                  ""};
    return run_command(spec, args, [](Context& ctx) {
        auto conn = ctx.connect();
        json doc = conn.query_json("SELECT deploy.validate()");
        int code = doc.value("ok", false) ? kExitOk : kExitFailed;
        return emit(ctx, doc, code, [&]() {
            if (code == kExitOk) {
                std::cout << "ok: no problems\n";
                return;
            }
            std::vector<std::vector<std::string>> rows;
            for (const auto& p : arr(doc, "problems"))
                rows.push_back({jstr(p, "kind"), jstr(p, "version"), jstr(p, "name"), jstr(p, "message", "")});
            std::cout << common::render_table({"PROBLEM", "VERSION", "NAME", "NOTE"}, rows);
            std::cout << rows.size() << " problem" << (rows.size() == 1 ? "" : "s") << "\n";
        });
    });
}

int cmd_verify(const std::vector<std::string>& args) {
    static const CommandSpec spec{
        "verify", "[VERSION]", "run the verify SQL of applied migrations (rolled back; exit 1 when any fails)", {}, 0,
        1,        "VERSION"};
    return run_command(spec, args, [](Context& ctx) {
        common::Param version;
        if (!ctx.args.positionals.empty())
            version = ctx.args.positionals[0];
        check_version_arg("VERSION", version);
        auto conn = ctx.connect();
        json doc = conn.query_json("SELECT deploy.verify(version => $1)", {version});
        int code = doc.value("ok", false) ? kExitOk : kExitFailed;
        return emit(ctx, doc, code, [&]() {
            std::vector<std::vector<std::string>> rows;
            for (const auto& r : arr(doc, "results")) {
                std::string result = r.value("skipped", false) ? "skipped" : r.value("ok", false) ? "ok" : "FAILED";
                std::string note =
                    r.contains("message") ? jstr(r, "sqlstate") + ": " + jstr(r, "message") : jstr(r, "reason", "");
                rows.push_back({jstr(r, "version"), jstr(r, "name"), result,
                                r.contains("duration_ms") ? common::format_ms(r["duration_ms"].get<double>()) : "",
                                note});
            }
            std::cout << common::render_table({"VERSION", "NAME", "RESULT", "TIME", "NOTE"}, rows);
            std::cout << jstr(doc, "checked", "0") << " checked, " << jstr(doc, "failed", "0") << " failed\n";
        });
    });
}

}  // namespace pgdeploy::cli
