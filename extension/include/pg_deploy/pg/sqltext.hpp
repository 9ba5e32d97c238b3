// pg_deploy: splitting and classifying migration SQL with PostgreSQL's own raw parser.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "pg_deploy/sql_split.hpp"

namespace pgdeploy {

// A table or column that a statement drops (for archiving before a lossy revert).
struct DropTarget {
    bool is_column = false;
    std::string schema;  // empty: resolved through search_path
    std::string table;
    std::string column;  // is_column only
    bool cascade = false;
};

// The index work of a concurrent statement, which decides what an interrupted or failed run of it leaves behind
// (index_leftovers, pg/steps.cpp): CREATE INDEX CONCURRENTLY an INVALID index of that name, DROP INDEX CONCURRENTLY
// an INVALID index (or nothing, when the drop finished), REINDEX ... CONCURRENTLY INVALID <name>_ccnew/_ccold indexes.
struct ConcurrentIndex {
    enum class Action { create, drop, reindex_index, reindex_table };
    Action action = Action::create;
    std::string schema;      // empty: search_path. The table's (create, reindex_table) or the index's (drop,
                             // reindex_index)
    std::string index_name;  // create, drop, reindex_index
    std::string table_name;  // create, reindex_table
};

struct SqlStatement {
    std::string text;                  // the statement as written (trimmed, without the final semicolon)
    int line = 1;                      // where it starts in the script
    bool transaction_control = false;  // BEGIN, COMMIT, ROLLBACK, SAVEPOINT, PREPARE TRANSACTION, ...
    std::string non_transactional;     // what makes it impossible inside a transaction block, else empty
    std::vector<DropTarget> drops;
    std::optional<ConcurrentIndex> concurrent_index;
};

using StatementSink = std::function<void(const SqlStatement&)>;

// for_each_statement parses a script and hands each statement to sink, in order, without keeping them: memory stays
// bounded whatever the number of statements. Linear in the size of the script; a cancel or terminate request is
// honoured between two batches. A syntax error is thrown as 42601 naming `what` and the line; a statement over
// kMaxStatementCodeBytes as 54000.
void for_each_statement(const std::string& sql, const std::string& what, const StatementSink& sink);

// parse_sql: for_each_statement, collected.
std::vector<SqlStatement> parse_sql(const std::string& sql, const std::string& what);

/*
 * A script is parsed and run in batches of whole statements of about this many bytes, with an interrupt check
 * between two batches: PostgreSQL's raw parser cannot be interrupted and reads 20 to 50 MB/s, so one call over a
 * 50 MB script held a cancel for over two seconds. A script this size or smaller is one batch: parsed and run as
 * one string, exactly as before batches existed.
 */
inline constexpr std::size_t kStatementBatchBytes = std::size_t{256} * 1024;

// Limits of deploy.register() (docs/sql-reference.md, "Size limits"), both refused with 54000. A script is
// up_sql, down_sql or verify_sql. A statement is limited in SqlSpan::code, the bytes its parse time grows with:
// one raw_parser call over a single statement cannot be interrupted, and 1 MB of the densest SQL (1+1+...) takes
// about 0.3 s, while string constants, dollar quotes and comments cost a few ns per byte.
inline constexpr std::size_t kMaxScriptBytes = std::size_t{64} * 1024 * 1024;
inline constexpr std::size_t kMaxStatementCodeBytes = std::size_t{1024} * 1024;

// check_script_size refuses a script over kMaxScriptBytes, naming `what`.
void check_script_size(const std::string& sql, const std::string& what);

// statement_batches cuts sql into batches (sql_split.hpp's for_each_batch, with the session's
// standard_conforming_strings), checking for interrupts as it scans; on_statement sees each statement first.
void statement_batches(const std::string& sql, const SpanSink& on_batch, const SpanSink& on_statement = {});

// check_for_interrupts is CHECK_FOR_INTERRUPTS() behind pg_guard: a pending cancel or statement timeout is thrown
// as a PgError (57014); a pending terminate ends the backend (FATAL), as it does anywhere in PostgreSQL.
void check_for_interrupts();

}  // namespace pgdeploy
