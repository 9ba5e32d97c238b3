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

// The text of a JSON member that may be null or absent ("" then).
std::string text_of(const json& row, const char* key) {
    auto it = row.find(key);
    return it == row.end() || !it->is_string() ? std::string() : it->get<std::string>();
}

template <typename T>
T number_of(const json& row, const char* key, T fallback = 0) {
    auto it = row.find(key);
    return it == row.end() || !it->is_number() ? fallback : it->get<T>();
}

bool flag_of(const json& row, const char* key) {
    auto it = row.find(key);
    return it != row.end() && it->is_boolean() && it->get<bool>();
}

// The API's rows come back as JSON objects keyed by column name, so a column the extension adds later is ignored
// instead of shifting the others.
json rows_of(common::Connection& conn, const std::string& from, const std::vector<Param>& params) {
    return conn.query_json("SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(r)), '[]') FROM " + from + " r",
                           params);
}

}  // namespace

const char* to_string(MarkerState s) {
    switch (s) {
        case MarkerState::pending:
            return "pending";
        case MarkerState::in_progress:
            return "in_progress";
        case MarkerState::done:
            return "done";
        case MarkerState::failed:
            return "failed";
        case MarkerState::needs_attention:
            return "needs_attention";
        case MarkerState::unknown:
            break;
    }
    return "unknown";
}

MarkerState marker_state_from(const std::string& s) {
    for (MarkerState m : {MarkerState::pending, MarkerState::in_progress, MarkerState::done, MarkerState::failed,
                          MarkerState::needs_attention})
        if (s == to_string(m))
            return m;
    return MarkerState::unknown;
}

/*
 * Ledger::read_view
 *		deploy.watch_view() in one round trip. Ages come from the server and are turned into times on the
 *		watcher's clock here, so that clock skew between hosts does not move the watch window.
 */
DeploymentView Ledger::read_view(Millis now) {
    json rows = rows_of(conn_, "deploy.watch_view()", {});
    DeploymentView v;
    if (rows.empty())
        return v;
    const json& row = rows[0];
    if (row.value("last_rollback_age_ms", json()).is_number())
        v.last_rollback_at = now - number_of<Millis>(row, "last_rollback_age_ms");
    if (!row.value("deployment_id", json()).is_number())
        return v;
    v.id = number_of<std::int64_t>(row, "deployment_id");
    v.state = text_of(row, "state");
    v.app_version = text_of(row, "app_version");
    v.version_before = text_of(row, "version_before");
    v.version_after = text_of(row, "version_after");
    v.finished_at = now - number_of<Millis>(row, "age_ms");
    if (row.value("irreversible_versions", json()).is_array())
        for (const auto& version : row["irreversible_versions"])
            v.irreversible_versions.push_back(version.get<std::string>());
    v.has_marker = flag_of(row, "judged");
    if (row.value("target_deployment_id", json()).is_number()) {
        TargetInfo t;
        t.deployment_id = number_of<std::int64_t>(row, "target_deployment_id");
        t.app_version = text_of(row, "target_app_version");
        t.schema_version = text_of(row, "target_schema_version");
        t.failing = flag_of(row, "target_failing");
        v.target = t;
    }
    return v;
}

bool Ledger::try_lead(const std::string& holder, Millis ttl) {
    auto v = conn_.query_value("SELECT deploy.try_watcher_leadership($1, $2::interval)", {holder, interval_param(ttl)});
    return v && *v == "t";
}

bool Ledger::release_lead(const std::string& holder) {
    auto v = conn_.query_value("SELECT deploy.release_watcher_leadership($1)", {holder});
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
    auto r = conn_.exec("SELECT id FROM deploy.held_markers($1)", {holder});
    std::vector<std::int64_t> ids;
    for (int i = 0; i < r.rows(); ++i)
        ids.push_back(std::stoll(r.value(i, 0)));
    return ids;
}

std::vector<ClaimableMarker> Ledger::claimable(const std::string& holder) {
    std::vector<ClaimableMarker> out;
    for (const json& row : rows_of(conn_, "deploy.claimable_markers($1)", {holder})) {
        ClaimableMarker m;
        m.id = number_of<std::int64_t>(row, "id");
        m.state = marker_state_from(text_of(row, "state"));
        m.attempts = number_of<int>(row, "attempts");
        m.age_ms = number_of<Millis>(row, "idle_ms");
        m.own = flag_of(row, "own");
        out.push_back(m);
    }
    return out;
}

void Ledger::renew_lease(std::int64_t marker_id, const std::string& holder, Millis lease) {
    conn_.exec("SELECT deploy.renew_lease($1::bigint, $2, $3::interval)",
               {std::to_string(marker_id), holder, interval_param(lease)});
}

MarkerInfo Ledger::marker_info(std::int64_t marker_id) {
    json rows = rows_of(conn_, "deploy.marker_context($1::bigint)", {std::to_string(marker_id)});
    if (rows.empty())
        throw Failure(kExitFailed, "unknown marker " + std::to_string(marker_id));
    const json& row = rows[0];
    MarkerInfo m;
    m.id = number_of<std::int64_t>(row, "id");
    m.deployment_id = number_of<std::int64_t>(row, "deployment_id");
    m.attempts = number_of<int>(row, "attempts");
    m.reason = text_of(row, "reason");
    m.from_app_version = text_of(row, "from_app_version");
    m.to_app_version = text_of(row, "to_app_version");
    m.from_schema_version = text_of(row, "from_schema_version");
    m.to_schema_version = text_of(row, "to_schema_version");
    m.hook_runs = number_of<int>(row, "hook_runs");
    m.hook_done = flag_of(row, "hook_done");
    return m;
}

/*
 * Ledger::fail_attempt
 *
 * A failed app hook is a failed attempt of the marker just like a failed revert: the extension's
 * fail_marker_attempt (finish_marker_attempt, for the marker's holder) keeps the error, releases the lease and decides
 * failed (claimable again) or needs_attention after pg_deploy.max_rollback_attempts, so the watcher and `pgdeploy once`
 * share one retry budget.
 */
MarkerState Ledger::fail_attempt(std::int64_t marker_id, const std::string& holder, const json& failure) {
    auto v = conn_.query_value("SELECT deploy.fail_marker_attempt($1::bigint, $2, $3::pg_catalog.jsonb)",
                               {std::to_string(marker_id), holder, json_param(failure)});
    return marker_state_from(v.value_or(""));
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
    auto v = conn_.query_value("SELECT deploy.pending_count()");
    return v ? std::stoi(*v) : 0;
}

}  // namespace pgdeploy::watch
