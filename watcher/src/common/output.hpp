// Output helpers: the single JSON document of --json, JSON error documents, and aligned text tables.
//
// Rules (docs/architecture.md): under --json exactly one JSON document goes to stdout and it carries
// "schema_version": 1; logs and progress go to stderr.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/exit_codes.hpp"

namespace pgdeploy::common {

inline constexpr int kJsonSchemaVersion = 1;

// Data printed on stdout passes common::scrub here: a failed migration's message or a marker's reason may quote a
// DSN or the password itself.

// print_json: writes the document (pretty-printed, one trailing newline, scrubbed) to stdout and flushes.
void print_json(const nlohmann::json& doc);

// error_document: {"schema_version":1,"ok":false,"command":...,"error":{"sqlstate","message",...},"exit_code":N}
// for a failure; DbError details (detail, hint, context) are included when present.
nlohmann::json error_document(const std::string& command, const Failure& failure);

// cell: a JSON value shown in a table cell or a human line (scrubbed): null → "-", strings bare, numbers as printed,
// others compact JSON.
std::string cell(const nlohmann::json& value);

// render_table: left-aligned columns separated by two spaces, a header line and a dashed rule; widths count
// UTF-8 code points, not bytes. Rows shorter than the header are padded with empty cells.
std::string render_table(const std::vector<std::string>& headers, const std::vector<std::vector<std::string>>& rows);

// format_ms: 12 → "12 ms", 1534.2 → "1.53 s".
std::string format_ms(double ms);

}  // namespace pgdeploy::common
