// pg_deploy: pieces shared by the SQL-callable functions.
#include "pg_deploy/pg/engine.hpp"

#include <cmath>
#include <exception>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/settings.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
#include "common/sha2.h"
#include "nodes/makefuncs.h"
}

namespace pgdeploy {

std::optional<std::string> opt_text_arg(FunctionCallInfo fcinfo, int argno) {
    if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
        return std::nullopt;
    return text_arg(fcinfo, argno);
}

std::string required_text_arg(FunctionCallInfo fcinfo, int argno, const char* name) {
    auto v = opt_text_arg(fcinfo, argno);
    if (!v)
        throw DeployError(sqlstate::null_value, std::string(name) + " must not be NULL");
    return *v;
}

std::optional<bool> opt_bool_arg(FunctionCallInfo fcinfo, int argno) {
    if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
        return std::nullopt;
    return PG_GETARG_BOOL(argno);
}

bool bool_arg(FunctionCallInfo fcinfo, int argno, const char* name) {
    auto v = opt_bool_arg(fcinfo, argno);
    if (!v)
        throw DeployError(sqlstate::null_value, std::string(name) + " must not be NULL");
    return *v;
}

std::optional<int64_t> opt_int8_arg(FunctionCallInfo fcinfo, int argno) {
    if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
        return std::nullopt;
    return PG_GETARG_INT64(argno);
}

std::optional<std::string> opt_jsonb_arg(FunctionCallInfo fcinfo, int argno) {
    if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
        return std::nullopt;
    char* s = nullptr;
    pg_guard([&] {
        Jsonb* jb = PG_GETARG_JSONB_P(argno);
        s = JsonbToCString(nullptr, &jb->root, VARSIZE(jb));
    });
    std::string out(s);
    pfree(s);
    return out;
}

void EventLog::log(const char* kind, std::optional<int64_t> deployment_id, const Cell& version,
                   std::optional<int64_t> marker_id, const Json& details) {
    if (!plan_.prepared()) {
        plan_ = Plan("SELECT deploy.log_event($1, $2, $3, $4, $5)", {TEXTOID, INT8OID, TEXTOID, INT8OID, JSONBOID});
    }
    plan_.run({p_text(std::string(kind)), p_int8(deployment_id), p_text(version), p_int8(marker_id),
               p_jsonb(json_text(details))});
}

void EventLog::log_failure(const char* kind, std::optional<int64_t> deployment_id, const Cell& version,
                           const Json& failure) {
    if (!failure_plan_.prepared()) {
        failure_plan_ =
            Plan("SELECT deploy.log_event($1, $2, $3, NULL, deploy.public_error($4), deploy.private_error($4))",
                 {TEXTOID, INT8OID, TEXTOID, JSONBOID});
    }
    failure_plan_.run({p_text(std::string(kind)), p_int8(deployment_id), p_text(version), p_jsonb(failure.dump())});
}

std::string sha256_hex(const std::string& data) {
    uint8 digest[PG_SHA256_DIGEST_LENGTH];
    int rc = 0;
    const char* error = nullptr;
    const uint8* bytes = reinterpret_cast<const uint8*>(data.data());
    size_t len = data.size();
    pg_guard([&] {
        pg_cryptohash_ctx* ctx = pg_cryptohash_create(PG_SHA256);
        if (pg_cryptohash_init(ctx) < 0 || pg_cryptohash_update(ctx, bytes, len) < 0 ||
            pg_cryptohash_final(ctx, digest, sizeof digest) < 0) {
            rc = -1;
            error = pg_cryptohash_error(ctx);
        }
        pg_cryptohash_free(ctx);
    });
    if (rc < 0)
        throw DeployError(sqlstate::internal_error, std::string("sha256 failed: ") + (error ? error : "?"));
    static const char* hex = "0123456789abcdef";
    std::string out;
    out.reserve(64);
    for (uint8 b : digest) {
        out += hex[b >> 4];
        out += hex[b & 0xf];
    }
    return out;
}

Oid relation_on_callers_path(const std::string& schema, const std::string& table) {
    const char* nsp = schema.empty() ? nullptr : schema.c_str();
    const char* rel = table.c_str();
    Oid relid = InvalidOid;
    pg_guard([&] {
        RangeVar* rv = makeRangeVar(nsp ? pstrdup(nsp) : nullptr, pstrdup(rel), -1);
        relid = RangeVarGetRelid(rv, NoLock, true);
    });
    return relid;
}

bool intact(const Cell& body, const Cell& checksum) {
    if (!body || !checksum)
        return !body && !checksum;
    return sha256_hex(*body) == *checksum;
}

SqlFailure drift_failure(const std::string& part, const std::string& version) {
    SqlFailure f;
    f.sqlstate = sqlstate::checksum_drift;
    f.message = "stored " + part + " of migration " + version +
                " does not match its checksum: it was changed outside pg_deploy and is not run";
    f.hint =
        "Compare it with the migration's files; re-register the migration (deploy.register(..., replace => "
        "true)) or restore the ledger from a backup. deploy.validate() lists every drifted body.";
    return f;
}

namespace {

/*
 * checksum_impl: deploy.checksum(text), the checksum of stored SQL for SQL callers (deploy.validate()).
 */
Datum checksum_impl(FunctionCallInfo fcinfo) {
    return PointerGetDatum(make_text(sha256_hex(text_arg(fcinfo, 0))));
}

}  // namespace

int64_t now_us() {
    return static_cast<int64_t>(GetCurrentTimestamp());
}

double ms_since(int64_t start_us) {
    double ms = static_cast<double>(now_us() - start_us) / 1000.0;
    return std::round(ms * 1000.0) / 1000.0;
}

std::string json_text(const Json& j) {
    return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string as_valid_utf8(const std::string& s) {
    return Json::parse(json_text(Json(s))).get<std::string>();
}

Datum json_result(const Json& j) {
    return make_jsonb(json_text(j));
}

Json cell_json(const Cell& c) {
    return c ? Json(*c) : Json(nullptr);
}

Datum outcome_result(const CallOutcome& outcome) {
    if (outcome.warning)
        pg_warning(outcome.warning->sqlstate, outcome.warning->message, outcome.warning->detail);
    return json_result(outcome.result);
}

Json SqlFailure::to_json() const {
    auto opt = [](const std::string& s) { return s.empty() ? Json(nullptr) : Json(s); };
    return Json{{"sqlstate", sqlstate},
                {"message", message},
                {"detail", opt(detail)},
                {"hint", opt(hint)},
                {"context", opt(context)}};
}

SqlFailure failure_from(const PgError& e) {
    SqlFailure f;
    ErrorData* d = e.data();
    f.sqlstate = e.sqlstate();
    f.message = as_valid_utf8(d->message ? d->message : "");
    f.detail = as_valid_utf8(d->detail ? d->detail : "");
    f.hint = as_valid_utf8(d->hint ? d->hint : "");
    f.context = as_valid_utf8(d->context ? d->context : "");
    if (d->internalquery && d->internalpos > 0) {
        std::string where = "at character " + std::to_string(d->internalpos) + " of the migration SQL";
        f.context = f.context.empty() ? where : where + "\n" + f.context;
    }
    return f;
}

SqlFailure failure_from(const DeployError& e) {
    SqlFailure f;
    f.sqlstate = e.code();
    f.message = e.what();
    f.detail = e.detail();
    f.hint = e.hint();
    return f;
}

namespace {

// Set by a MigrationTimer that is unwound by an error after its own deadline passed: the cancel that error carries
// is pg_deploy.statement_timeout's. Read (and cleared) by aborts_whole_call().
bool migration_timeout_fired = false;

}  // namespace

bool aborts_whole_call(const PgError& e) {
    bool ours = migration_timeout_fired;
    migration_timeout_fired = false;
    return e.data()->sqlerrcode == ERRCODE_QUERY_CANCELED && !ours;
}

MigrationTimer::MigrationTimer() {
    if (statement_timeout_ms <= 0)
        return;
    bool outer = false;
    TimestampTz outer_fin = 0;
    TimestampTz own = 0;
    int ms = statement_timeout_ms;
    pg_guard([&] {
        outer = get_timeout_active(STATEMENT_TIMEOUT);
        if (outer)
            outer_fin = get_timeout_finish_time(STATEMENT_TIMEOUT);
        TimestampTz fin = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);
        if (!outer || fin < outer_fin)
            enable_timeout_at(STATEMENT_TIMEOUT, fin);
        else
            fin = 0;
        own = fin;
    });
    migration_timeout_fired = false;
    own_finish_ = own;
    armed_ = true;
    outer_active_ = outer;
    outer_finish_ = outer_fin;
}

MigrationTimer::~MigrationTimer() {
    if (!armed_)
        return;
    if (own_finish_ != 0 && std::uncaught_exceptions() > 0 && GetCurrentTimestamp() >= own_finish_)
        migration_timeout_fired = true;
    // disable/enable_timeout only touch the timer and signal state; they do not raise in practice, but the guard
    // keeps a surprise from longjmp'ing out of a destructor.
    bool outer = outer_active_;
    TimestampTz fin = outer_finish_;
    try {
        pg_guard([&] {
            if (outer)
                enable_timeout_at(STATEMENT_TIMEOUT, fin);
            else
                disable_timeout(STATEMENT_TIMEOUT, false);
        });
    } catch (...) {
    }
}

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_checksum, pgdeploy::checksum_impl)
