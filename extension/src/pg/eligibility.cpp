// pg_deploy: the ledger's side of the rollback rule — the default target and the facts — and the SQL functions that
// expose it: deploy.rollback_eligibility() and deploy.newest_revertible_deployment().
#include "pg_deploy/pg/eligibility.hpp"

#include <string>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/engine.hpp"
#include "pg_deploy/pg/settings.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
}

namespace pgdeploy {

namespace {

// rollback_window_setting is pg_deploy.rollback_window as SHOW prints it ("7d"): what the eligibility document
// reports, and, read as an interval, the window itself (so "7d" is seven calendar days, as the document says).
std::string rollback_window_setting() {
    char* shown = nullptr;
    pg_guard([&] { shown = GetConfigOptionByName("pg_deploy.rollback_window", nullptr, false); });
    std::string out(shown);
    pfree(shown);
    return out;
}

template <typename T>
std::vector<T> json_list(const Cell& c) {
    return c ? Json::parse(*c).get<std::vector<T>>() : std::vector<T>();
}

}  // namespace

std::optional<int64_t> newest_revertible_deployment() {
    Rows d = run_query(
        "SELECT d.id FROM deploy.deployments d WHERE d.kind = 'up' AND d.state IN ('succeeded', 'failed') "
        "AND EXISTS (SELECT 1 FROM deploy.applied a WHERE a.deployment_id = d.id) ORDER BY d.id DESC LIMIT 1");
    if (d.empty())
        return std::nullopt;
    return cell_int8(d.front()[0]);
}

/*
 * rollback_facts reads the deployment, what of it is still applied, and the later deployments that build on it, in one
 * statement. The window is judged on clock_timestamp() (not now(), the transaction's start): the decision is made
 * after the deploy lock, on the clock that stamped finished_at.
 */
std::optional<RollbackFacts> rollback_facts(int64_t id) {
    std::string window = rollback_window_setting();
    Rows r = run_query(
        "SELECT d.kind, d.state, d.rolled_back_by, d.app_version, d.version_before, d.version_after, "
        "pg_catalog.to_char(w.ended, 'YYYY-MM-DD HH24:MI:SSOF'), EXTRACT(EPOCH FROM w.now - w.ended)::float8, "
        "w.now > w.ended + w.len, pg_catalog.to_jsonb(w.ended + w.len)::text, EXTRACT(EPOCH FROM w.len)::float8, "
        "mine.applied, mine.irreversible::text, mine.lossy::text, "
        "(SELECT pg_catalog.jsonb_agg(DISTINCT a.deployment_id ORDER BY a.deployment_id) FROM deploy.applied a "
        " WHERE a.deployment_id > d.id)::text "
        "FROM deploy.deployments d "
        "CROSS JOIN LATERAL (SELECT coalesce(d.finished_at, d.started_at) AS ended, "
        " pg_catalog.clock_timestamp() AS now, $2::interval AS len) w "
        "CROSS JOIN LATERAL (SELECT count(*) AS applied, "
        " pg_catalog.jsonb_agg(a.version ORDER BY a.sort_key) FILTER (WHERE a.down_sql IS NULL) AS irreversible, "
        " pg_catalog.jsonb_agg(a.version ORDER BY a.sort_key) FILTER (WHERE a.reversibility = 'lossy') AS lossy "
        " FROM deploy.applied a WHERE a.deployment_id = d.id) mine "
        "WHERE d.id = $1",
        {INT8OID, TEXTOID}, {p_int8(id), p_text(window)});
    if (r.empty())
        return std::nullopt;
    const Row& row = r.front();
    RollbackFacts f;
    f.deployment_id = id;
    f.kind = row[0].value_or("");
    f.state = row[1].value_or("");
    if (row[2])
        f.rolled_back_by = cell_int8(row[2]);
    f.app_version = row[3];
    f.version_before = row[4];
    f.version_after = row[5];
    f.ended_at = row[6].value_or("?");
    f.age_s = cell_float8(row[7]);
    f.outside_window = cell_bool(row[8]);
    f.window_ends_at = Json::parse(row[9].value_or("null"));
    f.window_s = cell_float8(row[10]);
    f.window = window;
    f.applied = cell_int8(row[11]);
    f.irreversible = json_list<std::string>(row[12]);
    f.lossy = json_list<std::string>(row[13]);
    f.later = json_list<int64_t>(row[14]);
    return f;
}

namespace {

/*
 * rollback_eligibility_impl: deploy.rollback_eligibility(deployment_id) answers "may this deployment be rolled back
 * now, and if not, why?" before anyone tries (the watcher asks it before deciding). Default: the deployment
 * deploy.rollback() would pick; none is an answer (nothing_to_roll_back), not an error. Unknown id: P0002.
 */
Datum rollback_eligibility_impl(FunctionCallInfo fcinfo) {
    std::optional<int64_t> given = opt_int8_arg(fcinfo, 0);
    Json answer;
    {
        SpiSession spi;
        std::optional<int64_t> target = given ? given : newest_revertible_deployment();
        if (!target) {
            answer = no_candidate_document(rollback_window_setting());
        } else {
            std::optional<RollbackFacts> facts = rollback_facts(*target);
            if (!facts)
                throw DeployError(sqlstate::no_data_found, "unknown deployment " + std::to_string(*target));
            answer = eligibility_document(*facts);
        }
        spi.finish();
    }
    return json_result(answer);
}

// newest_revertible_deployment_impl: deploy.newest_revertible_deployment(), for deploy.request_rollback().
Datum newest_revertible_deployment_impl(FunctionCallInfo fcinfo) {
    std::optional<int64_t> id;
    {
        SpiSession spi;
        id = newest_revertible_deployment();
        spi.finish();
    }
    if (!id) {
        fcinfo->isnull = true;
        return (Datum)0;
    }
    PG_RETURN_INT64(*id);
}

}  // namespace

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_rollback_eligibility, pgdeploy::rollback_eligibility_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_newest_revertible_deployment, pgdeploy::newest_revertible_deployment_impl)
