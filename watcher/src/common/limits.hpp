// Maximum lengths of the text pgdeploy hands to the extension, and the helpers that keep values inside them.
//
// The extension enforces the same limits (SQLSTATE 22001); pgdeploy checks them first so that a command line with an
// over-long value is a usage error (exit 2) before anything is sent, and so that the watcher never loses a rollback
// because the reason or the details it composed were too long (docs/pgdeploy.md, "Length limits").
#pragma once
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>

namespace pgdeploy::common {

inline constexpr std::size_t kMaxReasonChars = 1000;     // rollback / marker reason
inline constexpr std::size_t kMaxAppVersionChars = 200;  // deployments.app_version
inline constexpr std::size_t kMaxHolderChars = 200;      // marker and step holder
inline constexpr std::size_t kMaxNameChars = 200;        // migration name
inline constexpr std::size_t kMaxDetailsBytes =
    std::size_t{64} * 1024;  // metadata / event details, as PostgreSQL's jsonb text

// utf8_chars: the number of characters (code points) of UTF-8 text, as PostgreSQL's length() counts them.
std::size_t utf8_chars(const std::string& s);

// truncate_chars: s itself when it has at most max_chars characters; otherwise its beginning (cut on a character
// boundary) followed by kTruncatedMarker, max_chars characters in all.
inline constexpr const char* kTruncatedMarker = "...[truncated]";
std::string truncate_chars(const std::string& s, std::size_t max_chars);

// json_text_size: the length of the document as PostgreSQL prints a jsonb (`{"a": 1, "b": [1, 2]}`: one space after
// every ':' and ','), which is what the extension measures.
std::size_t json_text_size(const nlohmann::json& doc);

// fit_json: makes an object fit in max_bytes (json_text_size). Long strings are shortened first; then the largest
// members lose elements (arrays, objects) or are replaced by null, until the document fits. What was cut is listed
// under "truncated" ({"member": number of elements dropped, or "value"}). Returns whether anything was cut.
bool fit_json(nlohmann::json& doc, std::size_t max_bytes = kMaxDetailsBytes);

}  // namespace pgdeploy::common
