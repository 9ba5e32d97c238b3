// pg_deploy: the C++ exception that carries a SQLSTATE to the PostgreSQL boundary.
// Pure C++ (no postgres.h): thrown anywhere in the engine, turned into ereport(ERROR) only by the
// boundary wrapper (pg/boundary.hpp) once every C++ object has gone out of scope.
#pragma once

#include <stdexcept>
#include <string>

namespace pgdeploy {

// SQLSTATEs used by pg_deploy (docs/architecture.md, "SQLSTATEs").
namespace sqlstate {
inline constexpr const char* null_value = "22004";
inline constexpr const char* invalid_parameter = "22023";
inline constexpr const char* syntax_error = "42601";
inline constexpr const char* insufficient_privilege = "42501";
inline constexpr const char* lock_not_available = "55P03";
inline constexpr const char* program_limit_exceeded = "54000";
inline constexpr const char* object_not_in_prerequisite_state = "55000";
inline constexpr const char* no_data_found = "P0002";
inline constexpr const char* internal_error = "XX000";
inline constexpr const char* checksum_drift = "PD001";
inline constexpr const char* irreversible = "PD002";
inline constexpr const char* migration_failed = "PD003";
inline constexpr const char* non_transactional = "PD004";
inline constexpr const char* schema_too_old = "PD005";
inline constexpr const char* outside_rollback_window = "PD006";
inline constexpr const char* state_conflict = "PD007";
inline constexpr const char* ambiguous_version = "PD008";
inline constexpr const char* transaction_control = "PD009";
}  // namespace sqlstate

// DeployError is what the engine throws for every refusal it decides itself.
class DeployError : public std::runtime_error {
public:
    DeployError(std::string code, const std::string& message, std::string detail = {}, std::string hint = {})
        : std::runtime_error(message), code_(std::move(code)), detail_(std::move(detail)), hint_(std::move(hint)) {}

    const std::string& code() const noexcept { return code_; }
    const std::string& detail() const noexcept { return detail_; }
    const std::string& hint() const noexcept { return hint_; }

private:
    std::string code_;
    std::string detail_;
    std::string hint_;
};

}  // namespace pgdeploy
