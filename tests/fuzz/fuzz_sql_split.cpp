// libFuzzer target for the extension's statement splitter (extension/src/sql_split.cpp), which decides where
// deploy.register(), deploy.up() and the reverts cut a big script into batches for PostgreSQL's raw parser.
//
// The first input byte holds options; the rest is the script:
//   bit 0  standard_conforming_strings off
//   bits 3-7 = 10101 (0xA8): huge: the script is repeated past 16 KiB, the way a 50 MB migration repeats its
//          statements, and scanned with a 256-byte interrupt stride (the extension's is 256 KiB: the same paths,
//          sixty times over, at a cost an instrumented build can afford). Megabytes are the unit tests' and
//          tests/reliability/test_big_inputs.py's
//   bit 2  multibyte: bytes 0x01-0x08 become UTF-8 sequences, valid (é, €, an emoji) and invalid (a lone lead
//          byte, 0xFF, a surrogate, an overlong '/'), so short inputs reach the identifier and dollar-tag rules for
//          bytes >= 0x80
// Properties checked (a violation traps): the spans cover the script in order; every span but the last ends with
// a semicolon; code <= size; the interrupt callback runs at least once per stride; a span split again on its own
// is that one span with the same code (the scanner's state is fully reset at a boundary, so a batch parses alone
// as it would in place); batches are unions of whole spans, each at least the target but the last.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "pg_deploy/sql_split.hpp"

namespace {

using pgdeploy::SqlSpan;

void require(bool ok) {
    if (!ok)
        __builtin_trap();
}

std::string widen(const std::string& in) {
    static const char* const kSequences[] = {"\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "\xC3",
                                             "\xFF",     "\xED\xA0\x80", "\xC0\xAF",         "\xE2\x82"};
    std::string out;
    for (char c : in) {
        unsigned char u = static_cast<unsigned char>(c);
        if (u >= 1 && u <= 8)
            out += kSequences[u - 1];
        else
            out += c;
    }
    return out;
}

void check_spans(const std::string& sql, const std::vector<SqlSpan>& spans) {
    std::size_t at = 0;
    for (std::size_t i = 0; i < spans.size(); ++i) {
        const SqlSpan& s = spans[i];
        require(s.begin == at && s.end > s.begin && s.end <= sql.size() && s.code <= s.size());
        if (i + 1 < spans.size())
            require(sql[s.end - 1] == ';');
        at = s.end;
    }
    require(at == sql.size());
}

// check_alone: the first and last few spans, split again on their own, come back whole.
void check_alone(const std::string& sql, const std::vector<SqlSpan>& spans, const pgdeploy::SplitOptions& options) {
    for (std::size_t i = 0; i < spans.size(); ++i) {
        if (i >= 4 && i + 4 < spans.size())
            continue;
        const SqlSpan& s = spans[i];
        std::vector<SqlSpan> again = pgdeploy::split_sql(std::string_view(sql).substr(s.begin, s.size()), options);
        require(again.size() == 1 && again[0].begin == 0 && again[0].end == s.size() && again[0].code == s.code);
    }
}

void check_batches(const std::string& sql, const std::vector<SqlSpan>& spans, const pgdeploy::SplitOptions& options) {
    const std::size_t target = 64;
    std::vector<SqlSpan> batches;
    pgdeploy::for_each_batch(sql, target, options, [&](const SqlSpan& b) { batches.push_back(b); });
    std::size_t span = 0;
    for (std::size_t i = 0; i < batches.size(); ++i) {
        require(span < spans.size() && batches[i].begin == spans[span].begin);
        while (span < spans.size() && spans[span].end < batches[i].end)
            ++span;
        require(span < spans.size() && spans[span].end == batches[i].end);
        ++span;
        if (i + 1 < batches.size())
            require(batches[i].size() >= target);
    }
    require(span == spans.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0)
        return 0;
    const uint8_t flags = data[0];
    std::string sql(reinterpret_cast<const char*>(data + 1), size - 1);
    if (flags & 4)
        sql = widen(sql);
    pgdeploy::SplitOptions options;
    options.standard_conforming_strings = !(flags & 1);
    if ((flags & 0xF8) == 0xA8 && !sql.empty()) {
        options.interrupt_stride = 256;
        std::string unit = sql;
        while (sql.size() < 16 * 1024)
            sql += unit;
    }
    std::size_t calls = 0;
    options.check_interrupts = [&] { ++calls; };

    std::vector<SqlSpan> spans = pgdeploy::split_sql(sql, options);
    check_spans(sql, spans);
    require(calls >= sql.size() / options.interrupt_stride);
    check_alone(sql, spans, options);
    check_batches(sql, spans, options);
    return 0;
}
