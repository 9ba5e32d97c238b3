// pg_deploy: the one table of input length limits. A value far longer than any sane one is refused where it enters,
// before it is stored and later handed to a hook's argv or environment (where a 200 kB reason made exec fail with
// E2BIG) or shown on a dashboard.
#include "pg_deploy/pg/limits.hpp"

#include <cstring>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/boundary.hpp"

extern "C" {
#include "mb/pg_wchar.h"
}

namespace pgdeploy {

namespace {

struct Limit {
    const char* argument;
    int max_chars;
};

// Characters, not bytes. JSON arguments (metadata, details) are measured as their text.
constexpr Limit kLimits[] = {
    {"reason", 1000}, {"note", 1000},      {"app_version", 200}, {"holder", 200},    {"name", 200},
    {"kind", 64},     {"metadata", 65536}, {"details", 65536},   {"resolution", 64}, {"operation", 200},
};

int limit_of(const std::string& argument) {
    for (const Limit& l : kLimits) {
        if (argument == l.argument)
            return l.max_chars;
    }
    throw DeployError(sqlstate::invalid_parameter, "no length limit is defined for argument \"" + argument + "\"", {},
                      "The arguments with limits are listed in docs/sql-reference.md, \"Limits\".");
}

}  // namespace

void check_input_length(const std::string& argument, const std::string& value) {
    int max_chars = limit_of(argument);
    if (value.size() <= static_cast<std::size_t>(max_chars))
        return;  // bytes >= characters: short enough without counting
    int chars = 0;
    const char* data = value.data();
    int len = static_cast<int>(value.size() > 0x3fffffff ? 0x3fffffff : value.size());
    pg_guard([&] { chars = pg_mbstrlen_with_len(data, len); });
    if (chars <= max_chars)
        return;
    throw DeployError(
        sqlstate::string_too_long,
        argument + " is too long: " + std::to_string(chars) + " characters, at most " + std::to_string(max_chars), {},
        "Shorten it; the limits are listed in docs/sql-reference.md, \"Limits\".");
}

void check_input_length(const std::string& argument, const std::optional<std::string>& value) {
    if (value)
        check_input_length(argument, *value);
}

std::string clip_to_limit(const std::string& argument, const std::string& value) {
    int max_chars = limit_of(argument) - 3;
    if (value.size() <= static_cast<std::size_t>(max_chars))
        return value;
    int chars = 0;
    int cut = 0;
    const char* data = value.data();
    int len = static_cast<int>(value.size() > 0x3fffffff ? 0x3fffffff : value.size());
    pg_guard([&] {
        chars = pg_mbstrlen_with_len(data, len);
        if (chars > max_chars)
            cut = pg_mbcharcliplen(data, len, max_chars);
    });
    if (chars <= max_chars + 3)
        return value;
    return value.substr(0, static_cast<std::size_t>(cut)) + "...";
}

namespace {

/*
 * check_input_length_impl: deploy.check_input_length(argument, value), the same check for the PL/pgSQL functions.
 */
Datum check_input_length_impl(FunctionCallInfo fcinfo) {
    if (PG_ARGISNULL(0))
        throw DeployError(sqlstate::null_value, "argument must not be NULL");
    std::string argument = text_arg(fcinfo, 0);
    if (!PG_ARGISNULL(1))
        check_input_length(argument, text_arg(fcinfo, 1));
    else
        (void)limit_of(argument);
    PG_RETURN_VOID();
}

}  // namespace

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_check_input_length, pgdeploy::check_input_length_impl)
