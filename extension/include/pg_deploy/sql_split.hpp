// pg_deploy: statement boundaries of a SQL script, found without PostgreSQL (pure C++, no postgres.h).
//
// The extension parses and runs a big script in batches of whole statements, with an interrupt check between two
// batches (pg/sqltext.cpp): PostgreSQL's raw parser cannot be interrupted, so one call over 50 MB would hold a cancel
// for seconds. This splitter only proposes where statements end; the raw parser still reads every byte, and a
// boundary the splitter got wrong shows up as a syntax error in a batch, which pg/sqltext.cpp answers by parsing the
// rest of the script in one piece (docs/sql-reference.md, "Script size").
#pragma once

#include <cstddef>
#include <functional>
#include <string_view>
#include <vector>

namespace pgdeploy {

// Bytes [begin, end) of a script. A statement's span ends just past its semicolon (the last one at the end of the
// script); the spans of a script are consecutive and cover it whole, comments and blanks included. Semicolons with
// nothing before them (;;) stay in the span of the statement that follows.
struct SqlSpan {
    std::size_t begin = 0;
    std::size_t end = 0;
    // The bytes of the span outside string constants, dollar quotes, comments and blanks: what the raw parser turns
    // into tokens and nodes, hence what its time grows with (a long literal costs little per byte).
    std::size_t code = 0;
    std::size_t size() const { return end - begin; }
};

using SpanSink = std::function<void(const SqlSpan&)>;

// How often split_sql calls SplitOptions::check_interrupts by default: at least once per this many bytes of input
// (a quarter of a batch, sqltext.hpp; about a millisecond of scanning).
inline constexpr std::size_t kSplitInterruptStride = std::size_t{256} * 1024;

struct SplitOptions {
    // The session's standard_conforming_strings: off makes a backslash escape a quote in '...' as it does in E'...'.
    bool standard_conforming_strings = true;
    // Called as the scan advances, at least once per interrupt_stride bytes; may throw to abandon the split.
    std::function<void()> check_interrupts;
    std::size_t interrupt_stride = kSplitInterruptStride;
};

/*
 * split_sql cuts a script at the semicolons that end statements, as PostgreSQL 15's scanner (scan.l) reads them: not
 * inside '...', E'...', B'...', X'...', U&'...' strings (with their continuation over a newline), "..." identifiers,
 * $tag$ quotes, -- or nested C-style comments, parentheses (CREATE RULE ... DO (a; b)), nor inside the BEGIN ATOMIC
 * ... END body of a CREATE FUNCTION or PROCEDURE. One pass, linear in the size of the script; on_statement gets each
 * statement's span as soon as its end is found.
 */
void split_sql(std::string_view sql, const SplitOptions& options, const SpanSink& on_statement);

// split_sql: every span, collected (tests and fuzzing; the extension streams).
std::vector<SqlSpan> split_sql(std::string_view sql, const SplitOptions& options = {});

// holds_code: false for a script of only comments, blanks and semicolons (a deliberate no-op migration). The raw
// parser has the last word at registration; this is the cheap test that apply and revert use to say so.
bool holds_code(std::string_view sql, const SplitOptions& options = {});

/*
 * for_each_batch joins consecutive statements into batches of at least `target` bytes (the last one may be smaller)
 * and passes each batch to on_batch as soon as it is complete; on_statement, when given, sees every statement first.
 * The batches cover the script whole; a statement larger than target ends the batch it is in. Memory stays constant
 * whatever the number of statements.
 */
void for_each_batch(std::string_view sql, std::size_t target, const SplitOptions& options, const SpanSink& on_batch,
                    const SpanSink& on_statement = {});

}  // namespace pgdeploy
