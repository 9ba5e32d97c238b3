// pg_deploy: deploy.verify() — run the verify SQL of applied migrations against the live schema, and undo it.
#include <string>
#include <vector>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/engine.hpp"
#include "pg_deploy/version.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
}

namespace pgdeploy {

namespace {

struct VerifyTarget {
    std::string version, name;
    Cell verify_sql, verify_checksum;
    bool registered = false;
};

std::vector<VerifyTarget> verify_targets(const std::optional<std::string>& only) {
    Rows rows = run_query(
        "SELECT a.version, a.name, m.verify_sql, m.verify_checksum, m.version IS NOT NULL "
        "FROM deploy.applied a LEFT JOIN deploy.migrations m ON m.version = a.version "
        "WHERE $1::text IS NULL OR a.version = $1 ORDER BY a.sort_key",
        {TEXTOID}, {p_text(only)});
    std::vector<VerifyTarget> out;
    out.reserve(rows.rows.size());
    for (Row& r : rows.rows) {
        VerifyTarget t;
        t.version = std::move(*r[0]);
        t.name = std::move(*r[1]);
        t.verify_sql = std::move(r[2]);
        t.verify_checksum = std::move(r[3]);
        t.registered = cell_bool(r[4]);
        out.push_back(std::move(t));
    }
    return out;
}

bool has_sql(const Cell& sql) {
    return sql && sql->find_first_not_of(" \t\r\n\f") != std::string::npos;
}

/*
 * verify_one runs one verify script in a subtransaction that is always rolled back, so whatever it did is undone.
 * A script passes when it raises no error. A script that no longer matches its checksum is not run (PD001) and
 * leaves a stored_sql_drift event, which persists because verify never raises for a failed check.
 */
Json verify_one(const VerifyTarget& t, EventLog& events) {
    Json entry{{"version", t.version}, {"name", t.name}};
    if (!has_sql(t.verify_sql)) {
        entry.update(Json{
            {"ok", nullptr}, {"skipped", true}, {"reason", t.registered ? "no verify SQL" : "no longer registered"}});
        return entry;
    }
    int64_t t0 = now_us();
    std::optional<SqlFailure> failure;
    if (!intact(t.verify_sql, t.verify_checksum)) {
        failure = drift_failure("verify_sql", t.version);
        events.log("stored_sql_drift", std::nullopt, t.version, std::nullopt,
                   Json{{"operation", "verify"}, {"message", failure->message}});
    } else {
        failure = failure_of([&] {
            in_rolled_back_subtransaction([&] {
                MigrationTimer timer;
                run_user_sql(*t.verify_sql);
            });
        });
    }
    entry["skipped"] = false;
    entry["duration_ms"] = ms_since(t0);
    if (!failure) {
        entry["ok"] = true;
        return entry;
    }
    entry.update(Json{{"ok", false},
                      {"sqlstate", failure->sqlstate},
                      {"message", failure->message},
                      {"detail", failure->detail.empty() ? Json(nullptr) : Json(failure->detail)}});
    pg_warning(failure->sqlstate, "verify of migration " + t.version + " failed: " + failure->message + " (SQLSTATE " +
                                      failure->sqlstate + ")");
    return entry;
}

/*
 * verify_impl: deploy.verify(version) checks the applied migrations (or one of them) with their verify SQL, which
 * runs with the caller's rights and search_path, each under pg_deploy.statement_timeout when it is set.
 */
Datum verify_impl(FunctionCallInfo fcinfo) {
    std::optional<std::string> only = opt_text_arg(fcinfo, 0);
    if (only)
        check_version(*only, "version");
    Json results = Json::array();
    int checked = 0;
    int failed = 0;
    {
        SpiSession spi;
        std::vector<VerifyTarget> targets = verify_targets(only);
        if (only && targets.empty()) {
            throw DeployError(sqlstate::no_data_found, "migration " + *only + " is not applied", {},
                              "deploy.verify() checks applied migrations only.");
        }
        EventLog events;
        for (const VerifyTarget& t : targets) {
            Json entry = verify_one(t, events);
            if (entry["skipped"] == false)
                ++checked;
            if (entry["ok"] == false)
                ++failed;
            results.push_back(std::move(entry));
        }
        spi.finish();
    }
    return json_result(Json{{"schema_version", 1},
                            {"operation", "verify"},
                            {"ok", failed == 0},
                            {"checked", checked},
                            {"failed", failed},
                            {"results", results}});
}

}  // namespace

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_verify, pgdeploy::verify_impl)
