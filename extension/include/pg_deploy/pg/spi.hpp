// pg_deploy: SPI with typed parameters, plans kept per backend (SPI_keepplan), every return code checked, all through
// pg_guard.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pg_deploy/pg/boundary.hpp"

namespace pgdeploy {

using Cell = std::optional<std::string>;
using Row = std::vector<Cell>;

struct Rows {
    std::vector<Row> rows;
    uint64_t processed = 0;
    bool empty() const { return rows.empty(); }
    const Row& front() const { return rows.front(); }
};

// Param is one typed argument of a prepared statement (converted to a Datum inside the guard).
struct Param {
    enum class Kind {
        Null,
        Text,
        Int8,
        Int4,
        Bool,
        Float8,
        Jsonb,
        TextArray,
        BoolArray,
        Int8Array,
        Float8Array,
        TimestampArray  // one-dimensional arrays (bulk writes)
    } kind = Kind::Null;
    std::string text;
    int64_t integer = 0;
    double real = 0;
    bool boolean = false;
    std::vector<Cell> texts;    // TextArray (nullopt: a NULL element)
    std::vector<int64_t> ints;  // BoolArray (0/1), Int8Array, TimestampArray (PostgreSQL microseconds, now_us())
    std::vector<double> reals;  // Float8Array
};
Param p_null();
Param p_text(const std::string& s);
Param p_text(const Cell& s);
Param p_int8(int64_t v);
Param p_int8(const std::optional<int64_t>& v);
Param p_int4(int32_t v);
Param p_bool(bool v);
Param p_float8(double v);
Param p_jsonb(const std::string& json_text);
Param p_jsonb(const Cell& json_text);
Param p_text_array(std::vector<Cell> items);
Param p_bool_array(const std::vector<bool>& items);
Param p_int8_array(std::vector<int64_t> items);
Param p_float8_array(std::vector<double> items);
Param p_timestamptz_array(std::vector<int64_t> items);

// SpiSession connects on construction; finish() disconnects on the success path. On the error path the connection is
// left for PostgreSQL's (sub)transaction abort to pop, as PL/pgSQL does.
class SpiSession {
public:
    SpiSession();
    void finish();
    ~SpiSession() = default;
    SpiSession(const SpiSession&) = delete;
    SpiSession& operator=(const SpiSession&) = delete;

private:
    bool connected_ = false;
};

// Plan is one of the extension's own statements. It is prepared and run as the extension's owner with name resolution
// pinned to pg_catalog (spi.cpp, as_engine): the extension's own queries never resolve an operator or function
// through the caller's search_path and write the ledger with rights the caller lacks, while migration SQL
// (run_user_sql) keeps the caller's path and rights. The prepared plan is kept for the
// backend's life in a cache keyed by query text and parameter types (spi.cpp); PostgreSQL's plancache revalidates it.
class Plan {
public:
    Plan() = default;
    Plan(const char* sql, std::vector<Oid> types);
    Rows run(const std::vector<Param>& params = {}, long limit = 0) const;
    bool prepared() const { return plan_ != nullptr; }

private:
    SPIPlanPtr plan_ = nullptr;
    std::vector<Oid> types_;
    std::string sql_;
};

// run_query runs a statement through its kept plan (prepared on first use; as the owner, pinned path).
Rows run_query(const char* sql, std::vector<Oid> types = {}, const std::vector<Param>& params = {});

// run_query_as_caller runs one of the extension's own SQL-callable functions that runs migration SQL (deploy.up,
// deploy.rollback) with the caller's rights and search_path, as if the caller had typed it. The text must name the
// function schema-qualified and pass only typed parameters, so nothing on the caller's path can stand in for it.
Rows run_query_as_caller(const char* sql, const std::vector<Oid>& types, const std::vector<Param>& params);

// run_user_sql executes migration SQL (possibly several statements) with the caller's search_path and rights.
// Transaction control (COMMIT, ROLLBACK, ...) comes back from SPI as a return code: thrown as PD009.
void run_user_sql(const std::string& sql);

// Helpers reading cells.
int64_t cell_int8(const Cell& c);
bool cell_bool(const Cell& c);
double cell_float8(const Cell& c);

}  // namespace pgdeploy
