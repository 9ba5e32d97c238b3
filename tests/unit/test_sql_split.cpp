// The extension's statement splitter (extension/src/sql_split.cpp): where PostgreSQL 15's scanner ends a statement,
// how long a statement's code is, that interrupts are checked as it scans, and that it stays linear on the inputs
// that would make a naive scanner quadratic.
#include <catch2/catch.hpp>

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include "pg_deploy/sql_split.hpp"

using pgdeploy::SplitOptions;
using pgdeploy::SqlSpan;

namespace {

// statements: the text of each span.
std::vector<std::string> statements(const std::string& sql, bool standard_conforming_strings = true) {
    SplitOptions options;
    options.standard_conforming_strings = standard_conforming_strings;
    std::vector<std::string> out;
    for (const SqlSpan& s : pgdeploy::split_sql(sql, options))
        out.push_back(sql.substr(s.begin, s.size()));
    return out;
}

using Texts = std::vector<std::string>;

}  // namespace

TEST_CASE("statements end at top-level semicolons; blanks and comments stay with a statement", "[sql_split]") {
    CHECK(statements("").empty());
    CHECK(statements("SELECT 1") == Texts{"SELECT 1"});
    CHECK(statements("SELECT 1; SELECT 2;") == Texts{"SELECT 1;", " SELECT 2;"});
    CHECK(statements("SELECT 1;\n-- the end\n") == Texts{"SELECT 1;", "\n-- the end\n"});
    CHECK(statements("-- only a comment") == Texts{"-- only a comment"});
    // Empty statements never make a span of their own.
    CHECK(statements(";;; SELECT 1;;; SELECT 2") == Texts{";;; SELECT 1;", ";; SELECT 2"});
}

TEST_CASE("a semicolon inside a literal, identifier or comment does not end a statement", "[sql_split]") {
    CHECK(statements("SELECT 'a;b'; SELECT 2;") == Texts{"SELECT 'a;b';", " SELECT 2;"});
    CHECK(statements("SELECT 'it''s;'; SELECT 2;") == Texts{"SELECT 'it''s;';", " SELECT 2;"});
    CHECK(statements("SELECT \"a;\"\"b\"; SELECT 2;") == Texts{"SELECT \"a;\"\"b\";", " SELECT 2;"});
    CHECK(statements("SELECT 1 -- ; not here\n; SELECT 2") == Texts{"SELECT 1 -- ; not here\n;", " SELECT 2"});
    CHECK(statements("SELECT /* a /* nested ; */ still ; */ 1; SELECT 2") ==
          Texts{"SELECT /* a /* nested ; */ still ; */ 1;", " SELECT 2"});
    CHECK(statements("SELECT U&'d\\0061;'; SELECT U&\"a;\"; SELECT 3") ==
          Texts{"SELECT U&'d\\0061;';", " SELECT U&\"a;\";", " SELECT 3"});
    // An unterminated literal runs to the end of the script, as in PostgreSQL (which then reports it).
    CHECK(statements("SELECT 'open; SELECT 2;") == Texts{"SELECT 'open; SELECT 2;"});
    CHECK(statements("SELECT /* open; SELECT 2;") == Texts{"SELECT /* open; SELECT 2;"});
}

TEST_CASE("backslashes escape quotes in E'' strings, and in '' strings when standard_conforming_strings is off",
          "[sql_split]") {
    CHECK(statements("SELECT E'a\\';'; SELECT 2;") == Texts{"SELECT E'a\\';';", " SELECT 2;"});
    CHECK(statements("SELECT e'\\\\'; SELECT 2;") == Texts{"SELECT e'\\\\';", " SELECT 2;"});
    // standard_conforming_strings on: the backslash is a character and the quote after it ends the literal.
    CHECK(statements("SELECT 'a\\'; SELECT 2;") == Texts{"SELECT 'a\\';", " SELECT 2;"});
    CHECK(statements("SELECT 'a\\'; SELECT 2;'; SELECT 3;", false) == Texts{"SELECT 'a\\'; SELECT 2;';", " SELECT 3;"});
    CHECK(statements("SELECT N'a\\'; SELECT 2;'; SELECT 3;", false) ==
          Texts{"SELECT N'a\\'; SELECT 2;';", " SELECT 3;"});
    // B'' and X'' never take escapes, whatever the setting; '' ends them and opens a new literal.
    CHECK(statements("SELECT X'1\\'; SELECT 2;", false) == Texts{"SELECT X'1\\';", " SELECT 2;"});
    CHECK(statements("SELECT B'01''1;0'; SELECT 2;") == Texts{"SELECT B'01''1;0';", " SELECT 2;"});
    // A word that merely ends in e does not open an E'' literal.
    CHECK(statements("SELECT somee'a\\'; SELECT 2;") == Texts{"SELECT somee'a\\';", " SELECT 2;"});
}

TEST_CASE("a literal continued over a newline keeps its kind (scan.l quotecontinue)", "[sql_split]") {
    // E'x' then, after a newline, '\';' is the same E literal: the backslash escapes the quote.
    CHECK(statements("SELECT E'x'\n'\\';' ; SELECT 2;") == Texts{"SELECT E'x'\n'\\';' ;", " SELECT 2;"});
    // A comment may sit between the two parts.
    CHECK(statements("SELECT E'x' -- c\n'\\';' ; SELECT 2;") == Texts{"SELECT E'x' -- c\n'\\';' ;", " SELECT 2;"});
    // Without a newline it is a new, plain literal, which ends at the quote after the backslash.
    CHECK(statements("SELECT E'x' '\\';' ; SELECT 2;") == Texts{"SELECT E'x' '\\';", "' ; SELECT 2;"});
    // \v is not whitespace in PostgreSQL 15.
    CHECK(statements("SELECT E'x'\v\n'\\';' ; SELECT 2;") == Texts{"SELECT E'x'\v\n'\\';", "' ; SELECT 2;"});
}

TEST_CASE("dollar quotes: any tag, only the same tag closes; $ inside a word or before a digit is no quote",
          "[sql_split]") {
    CHECK(statements("SELECT $$a;b$$; SELECT 2") == Texts{"SELECT $$a;b$$;", " SELECT 2"});
    CHECK(statements("SELECT $f$ $$; $g$; $f$; SELECT 2") == Texts{"SELECT $f$ $$; $g$; $f$;", " SELECT 2"});
    CHECK(statements("SELECT $é$;$é$; SELECT 2") == Texts{"SELECT $é$;$é$;", " SELECT 2"});
    CHECK(statements("SELECT a$b$; SELECT $1; SELECT 2") == Texts{"SELECT a$b$;", " SELECT $1;", " SELECT 2"});
    CHECK(statements("SELECT 1$x$;$x$; SELECT 2") == Texts{"SELECT 1$x$;$x$;", " SELECT 2"});
    CHECK(statements("SELECT $a b$; SELECT 2") == Texts{"SELECT $a b$;", " SELECT 2"});
}

TEST_CASE("semicolons inside parentheses or a BEGIN ATOMIC body do not end the statement", "[sql_split]") {
    CHECK(statements("CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)); "
                     "SELECT 1;") ==
          Texts{"CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2));",
                " SELECT 1;"});
    std::string f =
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\n  SELECT CASE WHEN true THEN 2 "
        "END;\nEND;";
    CHECK(statements(f + "\nSELECT 3;") == Texts{f, "\nSELECT 3;"});
    std::string p = "create or replace procedure p() begin /* c */ atomic insert into t values (1); end;";
    CHECK(statements(p + " SELECT 3") == Texts{p, " SELECT 3"});
    // BEGIN ATOMIC counts only in CREATE [OR REPLACE] FUNCTION|PROCEDURE, outside parentheses.
    CHECK(statements("SELECT begin atomic FROM t; SELECT 2;") == Texts{"SELECT begin atomic FROM t;", " SELECT 2;"});
    CHECK(statements("CREATE TABLE begin (atomic int); SELECT 2;") ==
          Texts{"CREATE TABLE begin (atomic int);", " SELECT 2;"});
    CHECK(statements("CREATE FUNCTION f(begin atomic) RETURNS int RETURN 1; SELECT 2;") ==
          Texts{"CREATE FUNCTION f(begin atomic) RETURNS int RETURN 1;", " SELECT 2;"});
    // A BEGIN not followed by ATOMIC (a transaction statement in a body) opens nothing.
    std::string g = "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC BEGIN; END;";
    CHECK(statements(g + " SELECT 2;") == Texts{g, " SELECT 2;"});
}

TEST_CASE("code counts the bytes the raw parser turns into tokens, not literals, comments or blanks", "[sql_split]") {
    auto spans = pgdeploy::split_sql("SELECT 'a long literal', $$ body $$ /* c */ -- d\n , \"id\";  SELECT 1+2");
    REQUIRE(spans.size() == 2);
    CHECK(spans[0].code == std::string("SELECT,,\"id\"").size());
    CHECK(spans[1].code == std::string("SELECT1+2").size());
}

TEST_CASE("the interrupt callback runs at least once per stride, and an exception from it stops the scan",
          "[sql_split]") {
    std::string sql;
    while (sql.size() < 4 * pgdeploy::kSplitInterruptStride)
        sql += "SELECT 'x;y' /* ; */, $$;$$;\n";
    sql += "SELECT '" + std::string(3 * pgdeploy::kSplitInterruptStride, 'x') + "';";
    std::size_t calls = 0;
    SplitOptions options;
    options.check_interrupts = [&] { ++calls; };
    pgdeploy::split_sql(sql, options);
    CHECK(calls >= sql.size() / pgdeploy::kSplitInterruptStride);

    struct Cancelled {};
    options.check_interrupts = [&] {
        if (++calls > 2)
            throw Cancelled{};
    };
    calls = 0;
    CHECK_THROWS_AS(pgdeploy::split_sql(sql, options), Cancelled);
}

TEST_CASE("for_each_batch covers the script with batches of whole statements of at least the target size",
          "[sql_split]") {
    std::string sql;
    for (int i = 0; i < 1000; ++i)
        sql += "INSERT INTO t VALUES (" + std::to_string(i) + ", 'a;b');\n";
    std::vector<SqlSpan> statements_seen, batches;
    pgdeploy::for_each_batch(
        sql, 1000, {}, [&](const SqlSpan& b) { batches.push_back(b); },
        [&](const SqlSpan& s) { statements_seen.push_back(s); });
    CHECK(statements_seen.size() == 1001);  // the 1000 statements and the final newline
    REQUIRE(!batches.empty());
    CHECK(batches.front().begin == 0);
    CHECK(batches.back().end == sql.size());
    for (std::size_t i = 0; i + 1 < batches.size(); ++i) {
        CHECK(batches[i].end == batches[i + 1].begin);
        CHECK(batches[i].size() >= 1000);
        CHECK(sql[batches[i].end - 1] == ';');  // a batch ends where a statement does
    }
}

TEST_CASE("inputs that make a naive scanner quadratic are split in linear time", "[sql_split]") {
    const std::size_t n = std::size_t{8} * 1024 * 1024;
    auto repeat = [&](const std::string& unit) {
        std::string s;
        s.reserve(n + unit.size());
        while (s.size() < n)
            s += unit;
        return s;
    };
    // Unclosed dollar quotes whose closing would be tested at every '$', quotes continued over newlines, nested
    // comments, words that look like string prefixes, a long tag, lone semicolons.
    const std::vector<std::string> inputs = {repeat("$a"),
                                             "$" + std::string(n / 2, 'a') + "$" + repeat("$" + std::string(1000, 'a')),
                                             repeat("'x'\n"),
                                             repeat("/*"),
                                             repeat("e"),
                                             repeat(";"),
                                             repeat("CREATE FUNCTION f() BEGIN ATOMIC CASE ")};
    for (const std::string& sql : inputs) {
        auto t0 = std::chrono::steady_clock::now();
        std::size_t count = 0;
        pgdeploy::split_sql(sql, {}, [&](const SqlSpan&) { ++count; });
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        INFO("input starting " << sql.substr(0, 20) << ", " << sql.size() << " bytes");
        CHECK(seconds < 5.0);  // linear: well under 0.5 s even under a sanitizer; quadratic: hours
    }
}

TEST_CASE("holds_code: comments, blanks and bare semicolons are a no-op script; a statement is not", "[sql_split]") {
    CHECK_FALSE(pgdeploy::holds_code(""));
    CHECK_FALSE(pgdeploy::holds_code("  \n\t\n"));
    CHECK_FALSE(pgdeploy::holds_code("-- nothing to do on PostgreSQL\n/* block\n comment */\n"));
    CHECK_FALSE(pgdeploy::holds_code("-- a stub\n;\n"));
    CHECK(pgdeploy::holds_code("SELECT 1"));
    CHECK(pgdeploy::holds_code("-- header\nCREATE TABLE t (id int);\n-- trailer\n"));
    CHECK(pgdeploy::holds_code("/* c */ ;\nDROP TABLE t;"));
    CHECK(pgdeploy::holds_code("x"));
}
