// `pgdeploy load DIR`: read, validate, and register all migrations in one transaction (all or nothing).
#include "cli/load.hpp"

#include <spdlog/spdlog.h>

#include <iostream>

#include "cli/commands.hpp"
#include "cli/context.hpp"
#include "common/output.hpp"

namespace pgdeploy::cli {

namespace {

common::Param opt(const std::optional<std::string>& v) {
    return v;
}

common::Param opt_bool(const std::optional<bool>& v) {
    if (!v)
        return std::nullopt;
    return std::string(*v ? "true" : "false");
}

/*
 * Registration passes replace => true: the files are the source of truth for pending migrations, so an edited
 * pending file is "updated". The extension still refuses a changed up script of an applied migration (drift, PD001).
 *
 * exit_code_for_refusal
 *		Drift is its own exit code (6): a script can tell "someone edited an applied migration" apart from a bad
 *		file. Anything else the extension refuses at registration is a bad migration file (2).
 */
int exit_code_for_refusal(const std::string& sqlstate) {
    if (sqlstate == "PD001")
        return kExitDrift;
    if (sqlstate == "55P03")
        return kExitLockHeld;
    if (sqlstate == "42501")
        return kExitFailed;
    return kExitUsage;
}

// array_literal: a PostgreSQL text[] literal ({"a","b",NULL}) for one parameter, so the batch needs no SQL building.
std::string array_literal(const std::vector<common::Param>& values) {
    std::string out = "{";
    for (size_t i = 0; i < values.size(); ++i) {
        if (i)
            out += ',';
        if (!values[i]) {
            out += "NULL";
            continue;
        }
        out += '"';
        for (char c : *values[i]) {
            if (c == '"' || c == '\\')
                out += '\\';
            out += c;
        }
        out += '"';
    }
    return out + "}";
}

/*
 * register_batch
 *		The common case, every file accepted, in one round trip: one deploy.register() call per row of an
 *		unnest() over array parameters, in version order. Returns nullopt when the server refused something
 *		(the batch is rolled back to its savepoint), so the caller can go file by file and report every
 *		refusal, not only the first. A lock timeout is not about the files and is rethrown.
 */
std::optional<std::vector<std::string>> register_batch(common::Connection& conn,
                                                       const loader::LoadedDirectory& loaded) {
    std::vector<common::Param> versions, names, ups, downs, verifies, transactional, reversibility, lock_timeouts,
        down_transactional;
    for (const auto& m : loaded.migrations) {
        versions.push_back(m.version);
        names.push_back(m.name);
        ups.push_back(m.up_sql);
        downs.push_back(m.down_sql);
        verifies.push_back(m.verify_sql);
        transactional.push_back(opt_bool(m.transactional));
        reversibility.push_back(m.reversibility);
        lock_timeouts.push_back(m.lock_timeout);
        down_transactional.push_back(opt_bool(m.down_transactional));
    }
    conn.exec("SAVEPOINT pgdeploy_batch");
    try {
        common::Result r = conn.exec(
            "SELECT deploy.register(version => r.v, name => r.n, up_sql => r.u, down_sql => r.d, verify_sql => r.vf, "
            "transactional => r.t, reversibility => r.rv, replace => true, lock_timeout => r.lt, "
            "down_transactional => r.dt) "
            "FROM pg_catalog.unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.text[], "
            "                       $4::pg_catalog.text[], $5::pg_catalog.text[], $6::boolean[], "
            "$7::pg_catalog.text[], $8::pg_catalog.text[], $9::boolean[]) "
            "WITH ORDINALITY AS r(v, n, u, d, vf, t, rv, lt, dt, ord) ORDER BY r.ord",
            {array_literal(versions), array_literal(names), array_literal(ups), array_literal(downs),
             array_literal(verifies), array_literal(transactional), array_literal(reversibility),
             array_literal(lock_timeouts), array_literal(down_transactional)});
        conn.exec("RELEASE SAVEPOINT pgdeploy_batch");
        std::vector<std::string> statuses;
        for (int i = 0; i < r.rows(); ++i)
            statuses.push_back(r.is_null(i, 0) ? "" : r.value(i, 0));
        if (statuses.size() != loaded.migrations.size())
            throw Failure(kExitFailed, "deploy.register() returned " + std::to_string(statuses.size()) +
                                           " results for " + std::to_string(loaded.migrations.size()) + " files");
        return statuses;
    } catch (const common::DbError& e) {
        if (e.sqlstate() == "55P03")
            throw;
        spdlog::debug("batch registration refused ({}: {}); registering file by file to report every refusal",
                      e.sqlstate(), e.what());
        conn.exec("ROLLBACK TO SAVEPOINT pgdeploy_batch");
        return std::nullopt;
    }
}

}  // namespace

RegisterReport register_all(common::Connection& conn, const loader::LoadedDirectory& loaded, const std::string& dir) {
    RegisterReport report;
    nlohmann::json rows = nlohmann::json::array();
    int counts_new = 0, counts_unchanged = 0, counts_updated = 0, counts_refused = 0;
    std::optional<std::vector<std::string>> batch;
    if (!loaded.migrations.empty())
        batch = register_batch(conn, loaded);
    for (size_t i = 0; i < loaded.migrations.size(); ++i) {
        const auto& m = loaded.migrations[i];
        nlohmann::json row = {{"version", m.version}, {"name", m.name}, {"file", m.up_path}};
        try {
            std::optional<std::string> status;
            if (batch) {
                status = (*batch)[i];
            } else {
                conn.exec("SAVEPOINT pgdeploy_register");
                status = conn.query_value(
                    "SELECT deploy.register(version => $1, name => $2, up_sql => $3, down_sql => $4, "
                    "verify_sql => $5, transactional => $6::boolean, reversibility => $7, replace => true, "
                    "lock_timeout => $8, down_transactional => $9::boolean)",
                    {m.version, m.name, m.up_sql, opt(m.down_sql), opt(m.verify_sql), opt_bool(m.transactional),
                     opt(m.reversibility), opt(m.lock_timeout), opt_bool(m.down_transactional)});
                conn.exec("RELEASE SAVEPOINT pgdeploy_register");
            }
            std::string s = status.value_or("");
            if (s == "registered") {
                row["status"] = "new";
                ++counts_new;
            } else if (s == "unchanged") {
                row["status"] = "unchanged";
                ++counts_unchanged;
            } else if (s == "updated") {
                row["status"] = "updated";
                ++counts_updated;
            } else {
                row["status"] = s;
            }
        } catch (const common::DbError& e) {
            // 55P03 (lock) and lost connections are not about this file: stop at once.
            if (e.sqlstate() == "55P03")
                throw;
            conn.exec("ROLLBACK TO SAVEPOINT pgdeploy_register");
            row["status"] = "refused";
            row["sqlstate"] = e.sqlstate();
            row["message"] = e.what();
            if (!e.detail().empty())
                row["detail"] = e.detail();
            ++counts_refused;
            int code = exit_code_for_refusal(e.sqlstate());
            // Drift outranks the other refusals: it is the one that needs a person.
            if (report.exit_code == 0 || code == kExitDrift)
                report.exit_code = code;
            spdlog::error("{}: {} (SQLSTATE {})", m.up_path, e.what(), e.sqlstate());
        }
        rows.push_back(row);
    }
    report.doc = {
        {"directory", dir},          {"layout", loaded.layout},   {"new", counts_new}, {"unchanged", counts_unchanged},
        {"updated", counts_updated}, {"refused", counts_refused}, {"migrations", rows}};
    return report;
}

void print_register_report(const RegisterReport& report, bool dry_run) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& r : report.doc["migrations"]) {
        std::string note = r.contains("message") ? jstr(r, "sqlstate") + ": " + jstr(r, "message") : "";
        rows.push_back({jstr(r, "version"), jstr(r, "name"), jstr(r, "status"), note});
    }
    std::cout << common::render_table({"VERSION", "NAME", "RESULT", "NOTE"}, rows);
    const auto& d = report.doc;
    std::cout << d["new"].get<int>() << " new, " << d["unchanged"].get<int>() << " unchanged, "
              << d["updated"].get<int>() << " updated, " << d["refused"].get<int>() << " refused ("
              << d["layout"].get<std::string>() << " layout)";
    if (report.exit_code != 0)
        std::cout << "; nothing registered";
    else if (dry_run)
        std::cout << "; dry run: nothing registered";
    std::cout << "\n";
}

const CommandSpec& load_spec() {
    static const CommandSpec spec{
        "load",
        "DIR [--dry-run] [--follow-symlinks] [--lock-wait DURATION]",
        "register migration files (native, Sqitch or Flyway layout) in one transaction",
        {{"dry-run", 0, false, "", "validate and register, then roll back: shows what would change"},
         {"follow-symlinks", 0, false, "", "read migration files that are symlinks to outside DIR (refused otherwise)"},
         {"lock-wait", 0, true, "DURATION", "wait at most this long for the deploy lock (e.g. 10s)"}},
        1,
        1,
        "DIR"};
    return spec;
}

loader::LoadOptions load_options(const Context& ctx) {
    loader::LoadOptions options;
    options.follow_symlinks = ctx.args.has("follow-symlinks");
    return options;
}

/*
 * cmd_load
 *		Files are read and validated completely before connecting, so a bad directory never opens a transaction.
 */
int cmd_load(const std::vector<std::string>& args) {
    return run_command(load_spec(), args, [](Context& ctx) {
        const std::string dir = ctx.args.positionals[0];
        bool dry_run = ctx.args.has("dry-run");
        common::LockSafety lock = lock_flags(ctx.args);
        loader::LoadedDirectory loaded = loader::load_directory(dir, load_options(ctx));
        spdlog::debug("{}: {} migrations ({} layout)", dir, loaded.migrations.size(), loaded.layout);
        auto conn = ctx.connect();
        common::apply_lock_safety(conn, lock);
        conn.exec("BEGIN");
        RegisterReport report = register_all(conn, loaded, dir);
        if (report.exit_code != 0 || dry_run)
            conn.exec("ROLLBACK");
        else
            conn.exec("COMMIT");
        nlohmann::json doc = report.doc;
        doc["ok"] = report.exit_code == 0;
        doc["dry_run"] = dry_run;
        return emit(ctx, doc, report.exit_code, [&]() { print_register_report(report, dry_run); });
    });
}

}  // namespace pgdeploy::cli
