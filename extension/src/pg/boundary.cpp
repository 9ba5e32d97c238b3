// pg_deploy: the C++ / PostgreSQL boundary. See include/pg_deploy/pg/boundary.hpp for the rules.
#include "pg_deploy/pg/boundary.hpp"

#include <cstring>
#include <new>

#include "pg_deploy/errors.hpp"

namespace pgdeploy {

const char* PgError::what() const noexcept {
    return (data_ && data_->message) ? data_->message : "PostgreSQL error";
}

std::string PgError::sqlstate() const {
    return data_ ? std::string(unpack_sql_state(data_->sqlerrcode)) : std::string(sqlstate::internal_error);
}

/*
 * pg_guard_invoke is the only PG_TRY in the engine. The error is copied into TopTransactionContext so that it
 * outlives a subtransaction rollback and SPI_finish on its way up; the throw happens after PG_END_TRY, never inside.
 */
void pg_guard_invoke(void (*fn)(void*), void* arg) {
    MemoryContext volatile caller_context = CurrentMemoryContext;
    ErrorData* volatile error = nullptr;
    PG_TRY();
    { fn(arg); }
    PG_CATCH();
    {
        MemoryContextSwitchTo(TopTransactionContext);
        error = CopyErrorData();
        FlushErrorState();
        MemoryContextSwitchTo(caller_context);
    }
    PG_END_TRY();
    if (error != nullptr)
        throw PgError(error);
}

namespace {

// copy_for_report duplicates a C++ string into PostgreSQL memory without ever raising (we are inside a catch).
char* copy_for_report(const char* s, const char* fallback) {
    if (s == nullptr)
        return nullptr;
    std::size_t len = std::strlen(s);
    char* out = static_cast<char*>(MemoryContextAllocExtended(CurrentMemoryContext, len + 1, MCXT_ALLOC_NO_OOM));
    if (out == nullptr)
        return const_cast<char*>(fallback);
    std::memcpy(out, s, len + 1);
    return out;
}

int sqlstate_code(const char* s) {
    if (s == nullptr || std::strlen(s) != 5)
        return ERRCODE_INTERNAL_ERROR;
    return MAKE_SQLSTATE(s[0], s[1], s[2], s[3], s[4]);
}

// Report is an ERROR to raise, in PostgreSQL memory (or static strings), once every C++ object is gone.
struct Report {
    int code = ERRCODE_INTERNAL_ERROR;
    char* message = nullptr;
    char* detail = nullptr;
    char* hint = nullptr;
};

Report out_of_memory_report() {
    Report r;
    r.code = ERRCODE_OUT_OF_MEMORY;
    r.message = const_cast<char*>("out of memory in pg_deploy");
    r.hint = const_cast<char*>(out_of_memory_hint);
    return r;
}

// report_of describes any exception with a defined SQLSTATE (as_deploy_error). It never throws: we are inside a catch.
Report report_of(const std::exception& e) noexcept {
    try {
        DeployError d = as_deploy_error(e);
        Report r;
        r.code = sqlstate_code(d.code().c_str());
        r.message = copy_for_report(d.what(), "pg_deploy error (message lost: out of memory)");
        if (!d.detail().empty())
            r.detail = copy_for_report(d.detail().c_str(), nullptr);
        if (!d.hint().empty())
            r.hint = copy_for_report(d.hint().c_str(), nullptr);
        return r;
    } catch (...) {
        return out_of_memory_report();  // describing it needed memory that is not there
    }
}

}  // namespace

/*
 * call_sql_function runs impl and converts whatever escapes it. Everything needed for the report is copied into
 * PostgreSQL memory inside the catch blocks; the ERROR is raised after them, when the exception objects and every
 * C++ frame of impl are gone, so the longjmp skips no destructor. Every C++ exception gets a defined SQLSTATE
 * (report_of); XX000 is left to PostgreSQL's own internal errors.
 */
Datum call_sql_function(FunctionCallInfo fcinfo, Datum (*impl)(FunctionCallInfo)) {
    ErrorData* pg_error = nullptr;
    bool failed = false;
    Report report;
    Datum result = (Datum)0;

    try {
        result = impl(fcinfo);
    } catch (const PgError& e) {
        pg_error = e.data();
    } catch (const std::bad_alloc&) {
        failed = true;
        report = out_of_memory_report();
    } catch (const std::exception& e) {
        failed = true;
        report = report_of(e);
    } catch (...) {
        failed = true;
        report.code = sqlstate_code(sqlstate::unexpected_exception);
        report.message = const_cast<char*>("internal error in pg_deploy: an exception of unknown type");
        report.hint = const_cast<char*>("This is a bug in pg_deploy; report it with the call that failed.");
    }

    if (pg_error != nullptr)
        ReThrowError(pg_error);
    if (failed) {
        ereport(ERROR,
                (errcode(report.code), errmsg_internal("%s", report.message ? report.message : "pg_deploy error"),
                 report.detail ? errdetail_internal("%s", report.detail) : 0,
                 report.hint ? errhint("%s", report.hint) : 0));
    }
    return result;
}

SubTransaction begin_subtransaction() {
    SubTransaction sub{CurrentMemoryContext, CurrentResourceOwner};
    pg_guard([&] { BeginInternalSubTransaction(nullptr); });
    // Stay in the caller's memory context, as PL/Python does: results outlive the subtransaction.
    MemoryContextSwitchTo(sub.memory_context);
    return sub;
}

void commit_subtransaction(const SubTransaction& sub) {
    pg_guard([&] { ReleaseCurrentSubTransaction(); });
    MemoryContextSwitchTo(sub.memory_context);
    CurrentResourceOwner = sub.resource_owner;
}

void rollback_subtransaction(const SubTransaction& sub) {
    pg_guard([&] { RollbackAndReleaseCurrentSubTransaction(); });
    MemoryContextSwitchTo(sub.memory_context);
    CurrentResourceOwner = sub.resource_owner;
}

text* make_text(const std::string& s) {
    text* t = nullptr;
    const char* data = s.data();
    int len = static_cast<int>(s.size());
    pg_guard([&] { t = cstring_to_text_with_len(data, len); });
    return t;
}

Datum make_jsonb(const std::string& json_text) {
    Datum d = (Datum)0;
    const char* s = json_text.c_str();
    pg_guard([&] { d = DirectFunctionCall1(jsonb_in, CStringGetDatum(s)); });
    return d;
}

std::string text_arg(FunctionCallInfo fcinfo, int argno) {
    char* s = nullptr;
    pg_guard([&] { s = text_to_cstring(PG_GETARG_TEXT_PP(argno)); });
    std::string out(s);
    pfree(s);
    return out;
}

void pg_notice(const std::string& message, const std::string& hint) {
    const char* m = message.c_str();
    const char* h = hint.empty() ? nullptr : hint.c_str();
    pg_guard([&] { ereport(NOTICE, (errmsg_internal("%s", m), h ? errhint("%s", h) : 0)); });
}

void pg_warning(const std::string& sqlstate, const std::string& message, const std::string& detail) {
    int code = sqlstate_code(sqlstate.c_str());
    const char* m = message.c_str();
    const char* d = detail.empty() ? nullptr : detail.c_str();
    pg_guard([&] { ereport(WARNING, (errcode(code), errmsg_internal("%s", m), d ? errdetail_internal("%s", d) : 0)); });
}

}  // namespace pgdeploy
