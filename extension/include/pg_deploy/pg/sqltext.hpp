// pg_deploy: splitting and classifying migration SQL with PostgreSQL's own raw parser.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace pgdeploy {

// A table or column that a statement drops (for archiving before a lossy revert).
struct DropTarget {
    bool is_column = false;
    std::string schema;  // empty: resolved through search_path
    std::string table;
    std::string column;  // is_column only
    bool cascade = false;
};

// The index a CREATE INDEX CONCURRENTLY builds (to clean up an INVALID leftover before a retry).
struct ConcurrentIndex {
    std::string index_name;
    std::string table_schema;  // empty: search_path
    std::string table_name;
};

struct SqlStatement {
    std::string text;                  // the statement as written (trimmed, without the final semicolon)
    int line = 1;                      // where it starts in the script
    bool transaction_control = false;  // BEGIN, COMMIT, ROLLBACK, SAVEPOINT, PREPARE TRANSACTION, ...
    std::string non_transactional;     // what makes it impossible inside a transaction block, else empty
    std::vector<DropTarget> drops;
    std::optional<ConcurrentIndex> concurrent_index;
};

// parse_sql splits a script into statements; a syntax error is thrown as 42601 naming `what` and the line.
std::vector<SqlStatement> parse_sql(const std::string& sql, const std::string& what);

}  // namespace pgdeploy
