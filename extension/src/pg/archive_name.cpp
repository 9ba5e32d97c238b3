// pg_deploy: a free archive table name, cut on character boundaries of the database encoding.
#include "pg_deploy/pg/archive_name.hpp"

#include "pg_deploy/archive_name.hpp"
#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/spi.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
#include "mb/pg_wchar.h"
}

namespace pgdeploy {

namespace {

// A name cut inside a multibyte character is invalid text: every later use of it (JSON, the client) fails.
std::size_t clip_in_database_encoding(std::string_view s, std::size_t max_bytes) {
    int keep = 0;
    const char* p = s.data();
    int len = static_cast<int>(s.size());
    int limit = static_cast<int>(max_bytes);
    pg_guard([&] { keep = pg_mbcliplen(p, len, limit); });
    return static_cast<std::size_t>(keep);
}

// taken: a relation or a type of that name would make CREATE TABLE fail (every table also creates a row type).
bool taken(const std::string& name) {
    Rows r = run_query(
        "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'deploy_archive' AND c.relname = $1 "
        "UNION ALL SELECT 1 FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = 'deploy_archive' AND t.typname = $1",
        {TEXTOID}, {p_text(name)});
    return !r.empty();
}

}  // namespace

std::string free_archive_table(int64_t deployment_id, const std::string& table, const std::string& column) {
    constexpr int kMaxAttempts = 1000;
    for (int attempt = 1; attempt <= kMaxAttempts; ++attempt) {
        std::string name = archive_table_name(deployment_id, table, column, attempt, clip_in_database_encoding);
        if (!taken(name))
            return name;
    }
    throw DeployError(sqlstate::program_limit_exceeded,
                      "no free archive table name for " + table + (column.empty() ? "" : "." + column) + " after " +
                          std::to_string(kMaxAttempts) + " attempts",
                      {}, "Drop expired archive tables in schema deploy_archive (see deploy.archived).");
}

}  // namespace pgdeploy
