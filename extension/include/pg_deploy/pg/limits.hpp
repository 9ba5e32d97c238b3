// pg_deploy: maximum lengths of the text that callers hand to the ledger (docs/sql-reference.md, "Limits").
#pragma once

#include <optional>
#include <string>

namespace pgdeploy {

// check_input_length throws 22001 when value is longer than the limit of `argument` (in characters); an argument
// with no limit in the table is an internal error, so a new argument cannot silently go unchecked.
void check_input_length(const std::string& argument, const std::string& value);
void check_input_length(const std::string& argument, const std::optional<std::string>& value);

// clip_to_limit shortens a value the engine composes itself (a marker reason quoting an error message) to the limit
// of `argument`, on a character boundary, ending with "...".
std::string clip_to_limit(const std::string& argument, const std::string& value);

}  // namespace pgdeploy
