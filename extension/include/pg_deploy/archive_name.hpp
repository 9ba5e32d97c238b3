// pg_deploy: the name of the table that keeps what a lossy revert drops (schema deploy_archive). Pure C++.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace pgdeploy {

// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1 bytes); a longer one is silently truncated.
inline constexpr std::size_t kMaxIdentifierBytes = 63;

// ClipLength returns how many leading bytes of s, at most max_bytes, end on a character boundary (pg_mbcliplen in
// the database encoding).
using ClipLength = std::function<std::size_t(std::string_view s, std::size_t max_bytes)>;

// archive_table_name is the attempt-th candidate name (attempt >= 1) for the archive of deployment_id's drop of
// table, or of its column when column is not empty: "<deployment>_<table>[_<column>]" when it fits in an
// identifier. A longer name is cut on a character boundary and ends in "_" and eight hex digits of a hash of the
// whole name, so two long names that share a prefix get different names; attempts after the first add "_<attempt>"
// (the caller tries the next attempt while a candidate is taken).
std::string archive_table_name(int64_t deployment_id, std::string_view table, std::string_view column, int attempt,
                               const ClipLength& clip);

}  // namespace pgdeploy
