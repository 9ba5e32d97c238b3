// pg_deploy: migration versions — validation and the natural sort key. Pure C++.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace pgdeploy {

inline constexpr std::size_t kMaxVersionLength = 64;

// version_problem returns why a version is not acceptable, or nothing when it is.
std::optional<std::string> version_problem(std::string_view version);

// version_key returns the natural-order key of a valid version: comparing keys bytewise (COLLATE "C") orders
// versions naturally (digit runs as numbers, digits before letters). Equal keys mean ambiguous spellings
// ("10" and "010").
std::string version_key(std::string_view version);

// check_version throws DeployError 22023 when version_problem finds something.
void check_version(std::string_view version, std::string_view what = "version");

}  // namespace pgdeploy
