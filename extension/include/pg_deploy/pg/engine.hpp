// pg_deploy: pieces shared by the SQL-callable functions of the engine (arguments, events, JSON, timing).
#pragma once

#include <cstdint>
#include <new>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/spi.hpp"

namespace pgdeploy {

using Json = nlohmann::ordered_json;

// Arguments. NULL where a value is required is 22004; the message names the argument.
std::optional<std::string> opt_text_arg(FunctionCallInfo fcinfo, int argno);
std::string required_text_arg(FunctionCallInfo fcinfo, int argno, const char* name);
std::optional<bool> opt_bool_arg(FunctionCallInfo fcinfo, int argno);
bool bool_arg(FunctionCallInfo fcinfo, int argno, const char* name);  // NULL refused
std::optional<int64_t> opt_int8_arg(FunctionCallInfo fcinfo, int argno);
std::optional<std::string> opt_jsonb_arg(FunctionCallInfo fcinfo, int argno);  // as JSON text

// EventLog writes events through deploy.log_event (the only writer of deploy.events), prepared once per call.
class EventLog {
public:
    void log(const char* kind, std::optional<int64_t> deployment_id, const Cell& version,
             std::optional<int64_t> marker_id, const Json& details);
    // log_failure records an error (SqlFailure::to_json() plus context keys): what readers may see goes into
    // details, the rest into private_details (deploy.public_error / deploy.private_error decide which is which).
    void log_failure(const char* kind, std::optional<int64_t> deployment_id, const Cell& version, const Json& failure);

private:
    Plan plan_;
    Plan failure_plan_;
};

// caller_may_see_activity is PostgreSQL's rule for pg_stat_activity's details (lock.cpp): what the engine, reading as
// the extension's owner, may show a caller about another session.
bool caller_may_see_activity(Oid caller, Oid holder_role);

// Monotonic-enough wall clock for durations (GetCurrentTimestamp, microseconds).
int64_t now_us();
double ms_since(int64_t start_us);

// json_text is JSON text for the database. Bytes that are not UTF-8 (text from a SQL_ASCII or LATIN1 database, where
// nlohmann's plain dump() would throw) become U+FFFD instead of failing the call; UTF-8 text is kept as it is.
std::string json_text(const Json& j);
// as_valid_utf8 is s with the same replacement, for text that other code will dump() (migration errors).
std::string as_valid_utf8(const std::string& s);

// SQL-callable result: jsonb built from JSON text in the caller's memory context.
Datum json_result(const Json& j);
// cell_json is a text cell as JSON: a string, or null.
Json cell_json(const Cell& c);

// Warning is a WARNING that tells a psql user that a call failed without raising (the failure is recorded and
// returned as ok:false).
struct Warning {
    std::string sqlstate, message, detail;
};
// CallOutcome is what deploy.up(), deploy.down() and deploy.rollback() end with: the result document and the warning,
// if any.
struct CallOutcome {
    Json result;
    std::optional<Warning> warning;
};
// outcome_result raises the outcome's warning, if any, then returns its result. Called after the call's SPI session
// is finished, so the WARNING comes last.
Datum outcome_result(const CallOutcome& outcome);

// Migration error as reported in results and stored in deployments.error.
struct SqlFailure {
    std::string sqlstate, message, detail, hint, context;
    Json to_json() const;
};
SqlFailure failure_from(const PgError& e);
SqlFailure failure_from(const DeployError& e);
// aborts_whole_call: a cancel request, or the caller's own statement_timeout, aborts the whole call instead of being
// recorded as a failed migration. Only a cancel that pg_deploy's own per-migration timer caused (MigrationTimer, which
// knows when it fired) is a failure of that migration. Decided from what the code knows, never from the message
// text, which lc_messages translates.
bool aborts_whole_call(const PgError& e);

// failure_of runs the user SQL of one migration (body) and returns its error as a SqlFailure, or nothing when it
// succeeded. A cancel request is rethrown: it aborts the whole call, and so does running out of memory. Any other
// C++ exception (the engine's own work around the SQL, e.g. archiving) is that migration's failure with a defined
// SQLSTATE (as_deploy_error), so up/down/rollback still record it and return ok:false as documented.
template <typename F>
std::optional<SqlFailure> failure_of(F&& body) {
    try {
        body();
    } catch (const PgError& e) {
        if (aborts_whole_call(e))
            throw;
        return failure_from(e);
    } catch (const DeployError& e) {
        return failure_from(e);
    } catch (const std::bad_alloc&) {
        throw;
    } catch (const std::exception& e) {
        return failure_from(as_deploy_error(e));
    }
    return std::nullopt;
}

// relation_on_callers_path resolves a table that user SQL names (schema may be empty) the way that SQL will: under
// the caller's search_path, since the engine's own statements resolve names in pg_catalog only. InvalidOid when
// there is none.
Oid relation_on_callers_path(const std::string& schema, const std::string& table);

// sha256_hex is the checksum of stored SQL (up, down and verify alike): hex SHA-256 of its bytes. The one definition;
// SQL reaches it as deploy.checksum(text).
std::string sha256_hex(const std::string& data);
// intact: the stored body still matches the checksum taken when it was registered (a NULL body matches a NULL one).
bool intact(const Cell& body, const Cell& checksum);
// drift_failure is the refusal to run stored SQL that no longer matches its checksum (PD001).
SqlFailure drift_failure(const std::string& part, const std::string& version);

// MigrationTimer arms the statement timeout for one migration (pg_deploy.statement_timeout) and restores the
// caller's statement timeout afterwards. SPI statements do not arm statement_timeout themselves (only top-level
// statements do), so the timer is armed directly.
class MigrationTimer {
public:
    MigrationTimer();
    ~MigrationTimer();
    MigrationTimer(const MigrationTimer&) = delete;
    MigrationTimer& operator=(const MigrationTimer&) = delete;

private:
    bool armed_ = false;
    bool outer_active_ = false;
    int64_t outer_finish_ = 0;
    int64_t own_finish_ = 0;  // when pg_deploy.statement_timeout fires (armed only when before the caller's)
};

}  // namespace pgdeploy
