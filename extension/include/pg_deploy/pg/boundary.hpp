// pg_deploy: the C++ / PostgreSQL boundary (STYLE.md).
//
// Three rules, each with one helper here:
//  1. No C++ exception crosses into PostgreSQL: every SQL-callable function runs through call_sql_function(), which
//     catches everything, lets the C++ objects die, and only then raises the PostgreSQL ERROR.
//  2. No PostgreSQL ERROR (a longjmp) jumps over a live C++ object: every call into PostgreSQL that may raise runs
//     inside pg_guard(), which turns the ERROR into a PgError exception. The body of a pg_guard lambda must hold no
//     C++ object with a destructor and must not throw (it runs inside PG_TRY).
//  3. Subtransactions are begun, released and rolled back as PL/Python does (plpy_spi.c): memory context and
//     resource owner are restored on both paths.
#pragma once

#include <utility>

#include <exception>
#include <string>
#include <type_traits>

#include "pg_deploy/pg/postgres.hpp"

namespace pgdeploy {

// PgError carries a PostgreSQL error (copied out of the error state) through C++ frames.
class PgError : public std::exception {
public:
    explicit PgError(ErrorData* data) : data_(data) {}
    ErrorData* data() const noexcept { return data_; }
    const char* what() const noexcept override;
    std::string sqlstate() const;  // five characters

private:
    ErrorData* data_;  // palloc'd in TopTransactionContext: survives subtransaction rollback
};

// pg_guard_invoke runs fn(arg) inside PG_TRY; a PostgreSQL ERROR becomes a thrown PgError (after PG_END_TRY).
void pg_guard_invoke(void (*fn)(void*), void* arg);

template <typename F>
void pg_guard(F&& body) {
    using Body = std::remove_reference_t<F>;
    pg_guard_invoke([](void* p) { (*static_cast<Body*>(p))(); }, &body);
}

// call_sql_function is the wrapper every SQL-callable function goes through.
Datum call_sql_function(FunctionCallInfo fcinfo, Datum (*impl)(FunctionCallInfo));

// Subtransactions (plpy_spi.c). begin/commit/rollback restore CurrentMemoryContext and CurrentResourceOwner.
struct SubTransaction {
    MemoryContext memory_context;
    ResourceOwner resource_owner;
};
SubTransaction begin_subtransaction();
void commit_subtransaction(const SubTransaction& sub);
void rollback_subtransaction(const SubTransaction& sub);

// run_in_subtransaction runs body in a subtransaction. When body throws, the subtransaction is rolled back and the
// exception rethrown; when it returns, the subtransaction is released (keep_on_success) or rolled back anyway.
template <typename F>
void run_in_subtransaction(F&& body, bool keep_on_success) {
    SubTransaction sub = begin_subtransaction();
    try {
        body();
    } catch (...) {
        rollback_subtransaction(sub);
        throw;
    }
    if (keep_on_success)
        commit_subtransaction(sub);
    else
        rollback_subtransaction(sub);
}

// in_subtransaction: released when body returns, rolled back when it throws.
template <typename F>
void in_subtransaction(F&& body) {
    run_in_subtransaction(std::forward<F>(body), true);
}

// in_rolled_back_subtransaction: always rolled back (dry runs, rehearsals).
template <typename F>
void in_rolled_back_subtransaction(F&& body) {
    run_in_subtransaction(std::forward<F>(body), false);
}

// Helpers that allocate in PostgreSQL memory, guarded.
text* make_text(const std::string& s);
Datum make_jsonb(const std::string& json_text);
std::string text_arg(FunctionCallInfo fcinfo, int argno);  // caller checks PG_ARGISNULL first

// Messages and levels below ERROR are safe to emit through the guard.
void pg_notice(const std::string& message, const std::string& hint = {});
void pg_warning(const std::string& sqlstate, const std::string& message, const std::string& detail = {});

}  // namespace pgdeploy

// Declares an SQL-callable function whose implementation is `impl` (Datum impl(FunctionCallInfo)).
#define PGDEPLOY_SQL_FUNCTION(sqlname, impl)              \
    extern "C" {                                          \
    PG_FUNCTION_INFO_V1(sqlname);                         \
    Datum sqlname(PG_FUNCTION_ARGS) {                     \
        return pgdeploy::call_sql_function(fcinfo, impl); \
    }                                                     \
    }
