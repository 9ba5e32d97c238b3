// pg_deploy: what an exception that is not a DeployError means to a user. Pure C++ (no postgres.h).
#include "pg_deploy/errors.hpp"

#include <cstdio>
#include <new>

#include <nlohmann/json.hpp>

namespace pgdeploy {

namespace {

constexpr std::size_t kMaxQuoted = 200;

// excerpt quotes an exception's text for a message: at most kMaxQuoted bytes, bytes outside printable ASCII as \xNN
// (nlohmann quotes the input it choked on, which may be cut inside a character or be in no encoding at all).
std::string excerpt(const char* what) {
    std::string out;
    std::size_t n = 0;
    for (const char* p = what ? what : ""; *p != '\0'; ++p, ++n) {
        if (n == kMaxQuoted) {
            out += "...";
            break;
        }
        unsigned char c = static_cast<unsigned char>(*p);
        if (c < 0x20 || c >= 0x7f) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        } else {
            out += static_cast<char>(c);
        }
    }
    return out;
}

DeployError unexpected(const std::string& what) {
    return DeployError(sqlstate::unexpected_exception, "internal error in pg_deploy: an unexpected C++ exception", what,
                       "This is a bug in pg_deploy, not in your migrations: report it with the call that failed and "
                       "this message.");
}

// json_error: nlohmann::json exception ids are documented (json.nlohmann.me/home/exceptions); the ones user data can
// cause get their own SQLSTATE.
DeployError json_error(const nlohmann::json::exception& e) {
    std::string what = excerpt(e.what());
    if (e.id >= 101 && e.id <= 199) {
        return DeployError(sqlstate::invalid_text_representation, "pg_deploy could not parse a JSON text", what,
                           "Pass valid JSON (a jsonb argument always is).");
    }
    if (e.id == 316) {
        return DeployError(sqlstate::character_not_in_repertoire,
                           "pg_deploy cannot write text that is not valid UTF-8 into its JSON results and events", what,
                           "pg_deploy's JSON is UTF-8: use a UTF8 database, or keep names and messages ASCII.");
    }
    if (e.id == 406 || e.id == 407) {
        return DeployError(sqlstate::numeric_out_of_range, "a JSON number is out of range for pg_deploy", what,
                           "pg_deploy reads JSON numbers as 64-bit integers or double precision: write larger "
                           "numbers as strings (\"1e400\").");
    }
    return unexpected(what);
}

}  // namespace

/*
 * as_deploy_error: std::stoll/std::stod signal with invalid_argument/out_of_range, container growth with
 * length_error, allocation with bad_alloc. The order of the checks matters: the standard exceptions share bases.
 */
DeployError as_deploy_error(const std::exception& e) {
    if (const auto* d = dynamic_cast<const DeployError*>(&e))
        return *d;
    if (const auto* j = dynamic_cast<const nlohmann::json::exception*>(&e))
        return json_error(*j);
    std::string what = excerpt(e.what());
    if (dynamic_cast<const std::bad_alloc*>(&e)) {
        return DeployError(sqlstate::out_of_memory, "out of memory in pg_deploy", what, out_of_memory_hint);
    }
    if (dynamic_cast<const std::length_error*>(&e)) {
        return DeployError(sqlstate::program_limit_exceeded, "a value is too large for pg_deploy", what,
                           "Split the migration or the call into smaller pieces.");
    }
    if (dynamic_cast<const std::out_of_range*>(&e)) {
        return DeployError(sqlstate::numeric_out_of_range, "pg_deploy read a number that is out of range", what,
                           "Check the values stored in schema deploy; report it if they look right.");
    }
    if (dynamic_cast<const std::invalid_argument*>(&e)) {
        return DeployError(sqlstate::invalid_text_representation, "pg_deploy read a value it could not convert", what,
                           "Check the values stored in schema deploy; report it if they look right.");
    }
    return unexpected(what);
}

}  // namespace pgdeploy
