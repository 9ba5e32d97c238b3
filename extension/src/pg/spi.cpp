// pg_deploy: SPI helpers. Every SPI call runs inside pg_guard; conversions to Datums happen inside the guard (they
// palloc) and C++ strings are built outside it.
#include "pg_deploy/pg/spi.hpp"

#include <string>
#include <unordered_map>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/sqltext.hpp"

extern "C" {
#include "catalog/pg_namespace.h"
#include "catalog/pg_type_d.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
}

namespace pgdeploy {

Param p_null() {
    return Param{};
}
Param p_text(const std::string& s) {
    Param p;
    p.kind = Param::Kind::Text;
    p.text = s;
    return p;
}
Param p_text(const Cell& s) {
    return s ? p_text(*s) : p_null();
}
Param p_int8(int64_t v) {
    Param p;
    p.kind = Param::Kind::Int8;
    p.integer = v;
    return p;
}
Param p_int8(const std::optional<int64_t>& v) {
    return v ? p_int8(*v) : p_null();
}
Param p_int4(int32_t v) {
    Param p;
    p.kind = Param::Kind::Int4;
    p.integer = v;
    return p;
}
Param p_bool(bool v) {
    Param p;
    p.kind = Param::Kind::Bool;
    p.boolean = v;
    return p;
}
Param p_float8(double v) {
    Param p;
    p.kind = Param::Kind::Float8;
    p.real = v;
    return p;
}
Param p_jsonb(const std::string& json_text) {
    Param p;
    p.kind = Param::Kind::Jsonb;
    p.text = json_text;
    return p;
}
Param p_jsonb(const Cell& json_text) {
    return json_text ? p_jsonb(*json_text) : p_null();
}

Param p_text_array(std::vector<Cell> items) {
    Param p;
    p.kind = Param::Kind::TextArray;
    p.texts = std::move(items);
    return p;
}
Param p_bool_array(const std::vector<bool>& items) {
    Param p;
    p.kind = Param::Kind::BoolArray;
    p.ints.assign(items.begin(), items.end());
    return p;
}
Param p_int8_array(std::vector<int64_t> items) {
    Param p;
    p.kind = Param::Kind::Int8Array;
    p.ints = std::move(items);
    return p;
}
Param p_float8_array(std::vector<double> items) {
    Param p;
    p.kind = Param::Kind::Float8Array;
    p.reals = std::move(items);
    return p;
}
Param p_timestamptz_array(std::vector<int64_t> items) {
    Param p;
    p.kind = Param::Kind::TimestampArray;
    p.ints = std::move(items);
    return p;
}

SpiSession::SpiSession() {
    int rc = 0;
    pg_guard([&] { rc = SPI_connect(); });
    if (rc != SPI_OK_CONNECT)
        throw DeployError(sqlstate::internal_error, "SPI_connect failed");
    connected_ = true;
}

void SpiSession::finish() {
    if (!connected_)
        return;
    connected_ = false;
    int rc = 0;
    pg_guard([&] { rc = SPI_finish(); });
    if (rc != SPI_OK_FINISH)
        throw DeployError(sqlstate::internal_error, "SPI_finish failed");
}

namespace {

/*
 * extension_owner is the role that owns schema deploy, i.e. the role that ran CREATE EXTENSION. The engine's own
 * queries run as this role: the ledger tables are written only through the extension's functions, never by their
 * callers directly (docs/security.md).
 */
Oid extension_owner() {
    Oid owner = InvalidOid;
    pg_guard([&] {
        Oid nsp = get_namespace_oid("deploy", false);
        HeapTuple tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
        if (!HeapTupleIsValid(tup))
            elog(ERROR, "cache lookup failed for schema deploy");
        owner = ((Form_pg_namespace)GETSTRUCT(tup))->nspowner;
        ReleaseSysCache(tup);
    });
    return owner;
}

/*
 * as_engine runs body (PostgreSQL code that may raise; no C++ objects, no throw) the way a SECURITY DEFINER function
 * with SET search_path would, but for one statement: as the extension's owner, with name resolution pinned to
 * pg_catalog alone. It is an override search path (namespace.c), not the search_path GUC: parse analysis and the
 * plancache's revalidation both see it, so a kept plan is never re-planned under the caller's path and no operator
 * or function the caller can create is ever chosen (the caller's path is only in effect for migration SQL, which
 * runs through run_user_sql). Both are restored on the error path too.
 */
template <typename F>
void as_engine(Oid owner, F&& body) {
    pg_guard([&] {
        Oid saved_user = InvalidOid;
        int saved_context = 0;
        GetUserIdAndSecContext(&saved_user, &saved_context);
        OverrideSearchPath path{};
        path.schemas = NIL;
        path.addCatalog = true;
        path.addTemp = false;
        PushOverrideSearchPath(&path);
        SetUserIdAndSecContext(owner, saved_context | SECURITY_LOCAL_USERID_CHANGE);
        PG_TRY();
        { body(); }
        PG_FINALLY();
        {
            SetUserIdAndSecContext(saved_user, saved_context);
            PopOverrideSearchPath();
        }
        PG_END_TRY();
    });
}

Rows collect_rows(uint64_t processed) {
    Rows out;
    out.processed = processed;
    SPITupleTable* table = SPI_tuptable;
    if (table == nullptr)
        return out;
    TupleDesc desc = table->tupdesc;
    int natts = desc->natts;
    std::vector<char*> values(static_cast<std::size_t>(natts));
    out.rows.reserve(processed);
    for (uint64_t r = 0; r < processed; ++r) {
        HeapTuple tuple = table->vals[r];
        char** slots = values.data();
        pg_guard([&] {
            for (int c = 0; c < natts; ++c)
                slots[c] = SPI_getvalue(tuple, desc, c + 1);
        });
        Row row;
        row.reserve(static_cast<std::size_t>(natts));
        for (int c = 0; c < natts; ++c) {
            if (values[c] == nullptr) {
                row.emplace_back(std::nullopt);
            } else {
                row.emplace_back(std::string(values[c]));
                pfree(values[c]);
            }
        }
        out.rows.push_back(std::move(row));
    }
    pg_guard([&] { SPI_freetuptable(table); });
    return out;
}

}  // namespace

namespace {

/*
 * The engine's statements are a fixed set of string literals, so their prepared plans are kept for the life of the
 * backend (SPI_keepplan), keyed by the query text and the parameter types, as PL/pgSQL keeps its plans. Preparing
 * every statement again on every call was 21 % of deploy.register() (docs/benchmarks.md, §4).
 *
 * Invalidation is PostgreSQL's plancache: a kept plan records the relations and functions it depends on, and DDL on
 * them (DROP EXTENSION + CREATE EXTENSION in the same session, ALTER EXTENSION UPDATE, ALTER TABLE) marks it invalid;
 * the next execution parses the stored query text again, and every text names deploy.* fully qualified, so it
 * resolves to the new objects (tested by sql/plan_cache.sql). Plans are prepared and executed under the same pinned
 * path (as_engine), so the plancache never re-analyses one under the caller's search_path. The
 * cache is bounded; beyond the bound a statement is prepared per call as before, so a caller building texts
 * dynamically cannot grow it without limit.
 */
constexpr std::size_t kMaxKeptPlans = 512;

std::unordered_map<std::string, SPIPlanPtr>& kept_plans() {
    static std::unordered_map<std::string, SPIPlanPtr> plans;
    return plans;
}

std::string plan_key(const std::string& sql, const std::vector<Oid>& types) {
    std::string key;
    key.reserve(sql.size() + types.size() * 11 + 1);
    for (Oid t : types) {
        key += std::to_string(t);
        key += ',';
    }
    key += '|';
    key += sql;
    return key;
}

}  // namespace

Plan::Plan(const char* sql, std::vector<Oid> types) : types_(std::move(types)), sql_(sql) {
    std::string key = plan_key(sql_, types_);
    auto& cache = kept_plans();
    auto found = cache.find(key);
    if (found != cache.end() && found->second != nullptr) {
        plan_ = found->second;
        return;
    }
    SPIPlanPtr plan = nullptr;
    int nargs = static_cast<int>(types_.size());
    Oid* argtypes = types_.data();
    const char* query = sql_.c_str();
    as_engine(extension_owner(), [&] { plan = SPI_prepare(query, nargs, argtypes); });
    if (plan == nullptr) {
        throw DeployError(sqlstate::internal_error,
                          std::string("SPI_prepare failed: ") + SPI_result_code_string(SPI_result));
    }
    if (cache.size() < kMaxKeptPlans) {
        // Reserve the map slot first: if the insert throws (bad_alloc) the plan stays in the SPI procedure context
        // and is freed by SPI_finish, as before. Once kept it lives in CacheMemoryContext and is never freed.
        auto slot = cache.emplace(std::move(key), nullptr).first;
        int rc = 0;
        try {
            pg_guard([&] { rc = SPI_keepplan(plan); });
        } catch (...) {
            cache.erase(slot);
            throw;
        }
        if (rc != 0)
            cache.erase(slot);
        else
            slot->second = plan;
    }
    plan_ = plan;
}

namespace {

// array_datum builds the one-dimensional array of an array Param. It pallocs: call it inside pg_guard only.
Datum array_datum(const Param& p) {
    std::size_t n = p.kind == Param::Kind::TextArray     ? p.texts.size()
                    : p.kind == Param::Kind::Float8Array ? p.reals.size()
                                                         : p.ints.size();
    Oid type = p.kind == Param::Kind::TextArray     ? TEXTOID
               : p.kind == Param::Kind::BoolArray   ? BOOLOID
               : p.kind == Param::Kind::Int8Array   ? INT8OID
               : p.kind == Param::Kind::Float8Array ? FLOAT8OID
                                                    : TIMESTAMPTZOID;
    if (n == 0)
        return PointerGetDatum(construct_empty_array(type));
    Datum* elems = static_cast<Datum*>(palloc(sizeof(Datum) * n));
    bool* nulls = static_cast<bool*>(palloc(sizeof(bool) * n));
    for (std::size_t k = 0; k < n; ++k) {
        nulls[k] = false;
        switch (p.kind) {
            case Param::Kind::TextArray:
                nulls[k] = !p.texts[k].has_value();
                elems[k] = nulls[k] ? (Datum)0
                                    : PointerGetDatum(cstring_to_text_with_len(p.texts[k]->data(),
                                                                               static_cast<int>(p.texts[k]->size())));
                break;
            case Param::Kind::BoolArray:
                elems[k] = BoolGetDatum(p.ints[k] != 0);
                break;
            case Param::Kind::Int8Array:
                elems[k] = Int64GetDatum(p.ints[k]);
                break;
            case Param::Kind::Float8Array:
                elems[k] = Float8GetDatum(p.reals[k]);
                break;
            default:
                elems[k] = TimestampTzGetDatum(p.ints[k]);
                break;
        }
    }
    int dims[1] = {static_cast<int>(n)};
    int lbs[1] = {1};
    int16 typlen = 0;
    bool typbyval = false;
    char typalign = 0;
    get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
    return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, type, typlen, typbyval, typalign));
}

}  // namespace

namespace {

// to_datums converts params into values/nulls (both sized params.size()). It pallocs: call it inside pg_guard only.
void to_datums(const std::vector<Param>& params, Datum* vals, char* nl) {
    for (std::size_t i = 0; i < params.size(); ++i) {
        const Param& p = params[i];
        nl[i] = ' ';
        switch (p.kind) {
            case Param::Kind::Null:
                nl[i] = 'n';
                vals[i] = (Datum)0;
                break;
            case Param::Kind::Text:
                vals[i] = PointerGetDatum(cstring_to_text_with_len(p.text.data(), (int)p.text.size()));
                break;
            case Param::Kind::Int8:
                vals[i] = Int64GetDatum(p.integer);
                break;
            case Param::Kind::Int4:
                vals[i] = Int32GetDatum((int32)p.integer);
                break;
            case Param::Kind::Bool:
                vals[i] = BoolGetDatum(p.boolean);
                break;
            case Param::Kind::Float8:
                vals[i] = Float8GetDatum(p.real);
                break;
            case Param::Kind::Jsonb:
                vals[i] = DirectFunctionCall1(jsonb_in, CStringGetDatum(p.text.c_str()));
                break;
            case Param::Kind::TextArray:
            case Param::Kind::BoolArray:
            case Param::Kind::Int8Array:
            case Param::Kind::Float8Array:
            case Param::Kind::TimestampArray:
                vals[i] = array_datum(p);
                break;
        }
    }
}

}  // namespace

Rows Plan::run(const std::vector<Param>& params, long limit) const {
    std::size_t n = params.size();
    if (n != types_.size())
        throw DeployError(sqlstate::internal_error, "wrong number of parameters for " + sql_);
    std::vector<Datum> values(n + 1);
    std::vector<char> nulls(n + 1, ' ');
    Datum* vals = values.data();
    char* nl = nulls.data();
    SPIPlanPtr plan = plan_;
    int rc = 0;
    uint64 processed = 0;
    Oid owner = extension_owner();
    pg_guard([&] { to_datums(params, vals, nl); });
    as_engine(owner, [&] {
        rc = SPI_execute_plan(plan, vals, nl, false, limit);
        processed = SPI_processed;
    });
    if (rc < 0) {
        throw DeployError(sqlstate::internal_error,
                          std::string("pg_deploy ledger query failed: ") + SPI_result_code_string(rc), sql_);
    }
    return collect_rows(processed);
}

Rows run_query_as_caller(const char* sql, const std::vector<Oid>& types, const std::vector<Param>& params) {
    std::size_t n = params.size();
    if (n != types.size())
        throw DeployError(sqlstate::internal_error, std::string("wrong number of parameters for ") + sql);
    std::vector<Datum> values(n + 1);
    std::vector<char> nulls(n + 1, ' ');
    std::vector<Oid> argtypes(types);
    Datum* vals = values.data();
    char* nl = nulls.data();
    Oid* tps = argtypes.data();
    int rc = 0;
    uint64 processed = 0;
    pg_guard([&] {
        to_datums(params, vals, nl);
        rc = SPI_execute_with_args(sql, static_cast<int>(n), tps, vals, nl, false, 0);
        processed = SPI_processed;
    });
    if (rc < 0)
        throw DeployError(sqlstate::internal_error, std::string("SPI_execute_with_args failed: ") + sql);
    return collect_rows(processed);
}

Rows run_query(const char* sql, std::vector<Oid> types, const std::vector<Param>& params) {
    Plan plan(sql, std::move(types));
    return plan.run(params);
}

namespace {

// execute_user_sql runs one batch of migration SQL through SPI_execute.
void execute_user_sql(const char* query) {
    int rc = 0;
    pg_guard([&] {
        rc = SPI_execute(query, false, 0);
        if (SPI_tuptable != nullptr)
            SPI_freetuptable(SPI_tuptable);
    });
    if (rc == SPI_ERROR_TRANSACTION) {
        throw DeployError(sqlstate::transaction_control,
                          "migration SQL must not control transactions (COMMIT, ROLLBACK, BEGIN, SAVEPOINT)", {},
                          "pg_deploy runs each migration in its own subtransaction; remove the statement.");
    }
    if (rc == SPI_ERROR_COPY) {
        throw DeployError(sqlstate::non_transactional, "COPY to or from the client cannot run inside a migration", {},
                          "Use INSERT statements, or COPY from a server file.");
    }
    if (rc < 0) {
        throw DeployError(sqlstate::internal_error, std::string("SPI_execute failed: ") + SPI_result_code_string(rc));
    }
}

}  // namespace

/*
 * run_user_sql runs a big script one batch of statements at a time (sqltext.hpp), so that a cancel waits for one
 * batch at most; a script of one batch runs as one SPI_execute, as it always did. SPI_execute parses each batch
 * itself, as it parsed the whole script before.
 */
void run_user_sql(const std::string& sql) {
    statement_batches(sql, [&](const SqlSpan& batch) {
        check_for_interrupts();
        if (batch.size() == sql.size())
            execute_user_sql(sql.c_str());
        else
            execute_user_sql(sql.substr(batch.begin, batch.size()).c_str());
    });
}

int64_t cell_int8(const Cell& c) {
    return c ? std::stoll(*c) : 0;
}
bool cell_bool(const Cell& c) {
    return c && *c == "t";
}
double cell_float8(const Cell& c) {
    return c ? std::stod(*c) : 0.0;
}

}  // namespace pgdeploy
