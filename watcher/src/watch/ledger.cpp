#include "watch/ledger.hpp"

#include <libpq-fe.h>

#include "common/conninfo.hpp"
#include "common/limits.hpp"

namespace pgdeploy::watch {

using common::Param;
using nlohmann::json;

namespace {

Param id_param(std::int64_t v) {
    return v > 0 ? Param(std::to_string(v)) : Param(std::nullopt);
}

std::string interval_param(Millis ms) {
    return std::to_string(ms) + " milliseconds";
}

/*
 * json_param
 *		Everything the watcher writes into the ledger as JSON passes here: scrubbed (a check's
 *		detail or a server message may carry a DSN) and cut to the extension's limit, so that a
 *		decision over thousands of checks is still recorded.
 */
std::string json_param(json doc) {
    common::scrub_json(doc);
    common::fit_json(doc);
    return doc.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string text_or_empty(const common::Result& r, int row, int col) {
    return r.is_null(row, col) ? std::string() : r.value(row, col);
}

// The current deployment, the release before it, and what the rules need about both, in one round trip.
// "Failing" for the target: any deployment of the same release (same app_version, or the same row) that a watcher
// saw unhealthy or that got a rollback marker. Like every query of pgdeploy's own, it names its functions,
// operators and types in pg_catalog or deploy (common/connection.hpp).
constexpr const char* kViewSql = R"SQL(
WITH cur AS (
    SELECT d.* FROM deploy.deployments d WHERE d.kind OPERATOR(pg_catalog.=) 'up' ORDER BY d.id DESC LIMIT 1
), tgt AS (
    SELECT t.* FROM deploy.deployments t, cur
    WHERE t.id OPERATOR(pg_catalog.<) cur.id AND t.kind OPERATOR(pg_catalog.=) ANY ('{up,baseline}')
      AND t.state OPERATOR(pg_catalog.=) 'succeeded'
    ORDER BY t.id DESC LIMIT 1
)
SELECT cur.id, cur.state, cur.app_version, cur.version_before, cur.version_after,
       (extract(epoch FROM (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-)
                            coalesce(cur.finished_at, cur.started_at))) OPERATOR(pg_catalog.*) 1000)::bigint,
       (SELECT coalesce(pg_catalog.string_agg(a.version, ',' ORDER BY a.sort_key), '') FROM deploy.applied a
         WHERE a.deployment_id OPERATOR(pg_catalog.=) cur.id
           AND a.reversibility OPERATOR(pg_catalog.=) 'irreversible'),
       EXISTS (SELECT 1 FROM deploy.rollback_markers m WHERE m.deployment_id OPERATOR(pg_catalog.=) cur.id)
       OR EXISTS (SELECT 1 FROM deploy.events e
                  WHERE e.deployment_id OPERATOR(pg_catalog.=) cur.id
                    AND e.kind OPERATOR(pg_catalog.=) 'watcher_decision'
                    AND (e.details OPERATOR(pg_catalog.->>) 'kind')
                        OPERATOR(pg_catalog.=) ANY ('{rollback,freeze,would_rollback}')),
       tgt.id, tgt.app_version, tgt.version_after,
       (tgt.id IS NOT NULL AND EXISTS (
            SELECT 1 FROM deploy.deployments x
            WHERE (x.id OPERATOR(pg_catalog.=) tgt.id
                   OR (tgt.app_version IS NOT NULL AND x.app_version OPERATOR(pg_catalog.=) tgt.app_version))
              AND (EXISTS (SELECT 1 FROM deploy.rollback_markers m
                           WHERE m.deployment_id OPERATOR(pg_catalog.=) x.id)
                   OR EXISTS (SELECT 1 FROM deploy.events e
                              WHERE e.deployment_id OPERATOR(pg_catalog.=) x.id
                                AND e.kind OPERATOR(pg_catalog.=) 'watcher_unhealthy')))),
       (SELECT (extract(epoch FROM (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-)
                                    pg_catalog.max(m.requested_at))) OPERATOR(pg_catalog.*) 1000)::bigint
          FROM deploy.rollback_markers m)
FROM (SELECT 1) one LEFT JOIN cur ON true LEFT JOIN tgt ON true
)SQL";

}  // namespace

DeploymentView Ledger::read_view(Millis now) {
    auto r = conn_.exec(kViewSql);
    DeploymentView v;
    if (r.rows() == 0)
        return v;
    if (!r.is_null(0, 12))
        v.last_rollback_at = now - std::stoll(r.value(0, 12));
    if (r.is_null(0, 0))
        return v;
    v.id = std::stoll(r.value(0, 0));
    v.state = r.value(0, 1);
    v.app_version = text_or_empty(r, 0, 2);
    v.version_before = text_or_empty(r, 0, 3);
    v.version_after = text_or_empty(r, 0, 4);
    v.finished_at = now - (r.is_null(0, 5) ? 0 : std::stoll(r.value(0, 5)));
    std::string irr = r.value(0, 6);
    std::size_t pos = 0;
    while (!irr.empty() && pos <= irr.size()) {
        auto comma = irr.find(',', pos);
        v.irreversible_versions.push_back(
            irr.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos));
        if (comma == std::string::npos)
            break;
        pos = comma + 1;
    }
    v.has_marker = r.value(0, 7) == "t";
    if (!r.is_null(0, 8)) {
        TargetInfo t;
        t.deployment_id = std::stoll(r.value(0, 8));
        t.app_version = text_or_empty(r, 0, 9);
        t.schema_version = text_or_empty(r, 0, 10);
        t.failing = r.value(0, 11) == "t";
        v.target = t;
    }
    return v;
}

bool Ledger::try_lead() {
    auto v = conn_.query_value("SELECT pg_catalog.pg_try_advisory_lock($1::int, $2::int)",
                               {std::to_string(kLockClass), std::to_string(kLeaderLockKey)});
    return v && *v == "t";
}

void Ledger::listen() {
    conn_.exec("LISTEN pg_deploy");
}

int Ledger::drain_notifications() {
    PGconn* c = conn_.raw();
    if (!PQconsumeInput(c))
        throw Failure(kExitConnect, "lost the database connection: " + common::scrub(PQerrorMessage(c)));
    int n = 0;
    while (PGnotify* note = PQnotifies(c)) {
        ++n;
        PQfreemem(note);
    }
    if (PQstatus(c) != CONNECTION_OK)
        throw Failure(kExitConnect, "lost the database connection");
    return n;
}

std::int64_t Ledger::request_rollback(const std::string& reason, std::int64_t deployment_id, const json& details) {
    auto v = conn_.query_value("SELECT deploy.request_rollback($1, $2::bigint, $3::pg_catalog.jsonb)",
                               {common::truncate_chars(common::scrub(reason), common::kMaxReasonChars),
                                id_param(deployment_id), json_param(details)});
    return v ? std::stoll(*v) : 0;
}

std::optional<std::int64_t> Ledger::claim(const std::string& holder, Millis lease, std::int64_t marker_id) {
    auto r = conn_.exec("SELECT id FROM deploy.claim_marker($1, $2::interval, $3::bigint)",
                        {holder, interval_param(lease), id_param(marker_id)});
    if (r.rows() == 0)
        return std::nullopt;
    return std::stoll(r.value(0, 0));
}

std::vector<std::int64_t> Ledger::own_in_progress(const std::string& holder) {
    auto r = conn_.exec(
        "SELECT id FROM deploy.rollback_markers "
        "WHERE state OPERATOR(pg_catalog.=) 'in_progress' AND holder OPERATOR(pg_catalog.=) $1 ORDER BY id",
        {holder});
    std::vector<std::int64_t> ids;
    for (int i = 0; i < r.rows(); ++i)
        ids.push_back(std::stoll(r.value(i, 0)));
    return ids;
}

void Ledger::renew_lease(std::int64_t marker_id, const std::string& holder, Millis lease) {
    conn_.exec("SELECT deploy.renew_lease($1::bigint, $2, $3::interval)",
               {std::to_string(marker_id), holder, interval_param(lease)});
}

MarkerInfo Ledger::marker_info(std::int64_t marker_id) {
    auto r = conn_.exec(R"SQL(
SELECT m.id, m.deployment_id, m.state, m.holder, m.attempts, m.reason,
       d.app_version,
       (SELECT t.app_version FROM deploy.deployments t
         WHERE t.id OPERATOR(pg_catalog.<) d.id AND t.kind OPERATOR(pg_catalog.=) ANY ('{up,baseline}')
           AND t.state OPERATOR(pg_catalog.=) 'succeeded'
         ORDER BY t.id DESC LIMIT 1),
       coalesce(d.version_after, deploy.current_version()),
       coalesce(m.target_version, d.version_before),
       (SELECT pg_catalog.count(*) FROM deploy.events e
         WHERE e.marker_id OPERATOR(pg_catalog.=) m.id AND e.kind OPERATOR(pg_catalog.=) 'watcher_hook_started'),
       EXISTS (SELECT 1 FROM deploy.events e
               WHERE e.marker_id OPERATOR(pg_catalog.=) m.id AND e.kind OPERATOR(pg_catalog.=) 'watcher_hook_done')
FROM deploy.rollback_markers m JOIN deploy.deployments d ON d.id OPERATOR(pg_catalog.=) m.deployment_id
WHERE m.id OPERATOR(pg_catalog.=) $1::bigint)SQL",
                        {std::to_string(marker_id)});
    MarkerInfo m;
    if (r.rows() == 0)
        throw Failure(kExitFailed, "unknown marker " + std::to_string(marker_id));
    m.id = std::stoll(r.value(0, 0));
    m.deployment_id = std::stoll(r.value(0, 1));
    m.state = r.value(0, 2);
    m.holder = text_or_empty(r, 0, 3);
    m.attempts = std::stoi(r.value(0, 4));
    m.reason = r.value(0, 5);
    m.from_app_version = text_or_empty(r, 0, 6);
    m.to_app_version = text_or_empty(r, 0, 7);
    m.from_schema_version = text_or_empty(r, 0, 8);
    m.to_schema_version = text_or_empty(r, 0, 9);
    m.hook_runs = std::stoi(r.value(0, 10));
    m.hook_done = r.value(0, 11) == "t";
    return m;
}

json Ledger::execute_rollback(std::int64_t marker_id, const std::string& holder, bool force) {
    return conn_.query_json("SELECT deploy.execute_rollback($1::bigint, $2, $3::boolean)",
                            {std::to_string(marker_id), holder, force ? "true" : "false"});
}

/*
 * Ledger::fail_attempt
 *
 * A failed app hook is a failed attempt of the marker just like a failed revert: the extension's
 * fail_marker_attempt (finish_marker_attempt, for the marker's holder) keeps the error, releases the lease and decides
 * failed (claimable again) or needs_attention after pg_deploy.max_rollback_attempts, so the watcher and `pgdeploy once`
 * share one retry budget.
 */
std::string Ledger::fail_attempt(std::int64_t marker_id, const std::string& holder, const json& failure) {
    auto v = conn_.query_value(
        "SELECT deploy.fail_marker_attempt($1::bigint, $2, $3::pg_catalog.jsonb)",
        {std::to_string(marker_id), holder, json_param(failure)});
    return v.value_or("");
}

std::int64_t Ledger::log_event(const std::string& kind, std::int64_t deployment_id, std::int64_t marker_id,
                               const json& details, const json& private_details) {
    auto v = conn_.query_value(
        "SELECT deploy.log_event($1, $2::bigint, NULL, $3::bigint, $4::pg_catalog.jsonb, $5::pg_catalog.jsonb)",
        {kind, id_param(deployment_id), id_param(marker_id), json_param(details),
         private_details.is_null() ? Param(std::nullopt) : Param(json_param(private_details))});
    return v ? std::stoll(*v) : 0;
}

int Ledger::pending_migrations() {
    auto v = conn_.query_value(
        "SELECT pg_catalog.count(*) FROM deploy.migrations m WHERE NOT EXISTS "
        "(SELECT 1 FROM deploy.applied a WHERE a.version OPERATOR(pg_catalog.=) m.version)");
    return v ? std::stoi(*v) : 0;
}

}  // namespace pgdeploy::watch
