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

private:
    Plan plan_;
};

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

// Migration error as reported in results and stored in deployments.error.
struct SqlFailure {
    std::string sqlstate, message, detail, hint, context;
    Json to_json() const;
};
SqlFailure failure_from(const PgError& e);
SqlFailure failure_from(const DeployError& e);
// is_user_cancel: a cancel request (not a timeout) must abort the whole call, not be recorded as a failed migration.
bool is_user_cancel(const PgError& e);

// failure_of runs the user SQL of one migration (body) and returns its error as a SqlFailure, or nothing when it
// succeeded. A cancel request is rethrown: it aborts the whole call, and so does running out of memory. Any other
// C++ exception (the engine's own work around the SQL, e.g. archiving) is that migration's failure with a defined
// SQLSTATE (as_deploy_error), so up/down/rollback still record it and return ok:false as documented.
template <typename F>
std::optional<SqlFailure> failure_of(F&& body) {
    try {
        body();
    } catch (const PgError& e) {
        if (is_user_cancel(e))
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
};

}  // namespace pgdeploy
