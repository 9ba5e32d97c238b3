// The extension's archive table naming rule (extension/src/archive_name.cpp), tested without a server: the clip
// function stands in for pg_mbcliplen in a UTF-8 database.
#include <catch2/catch.hpp>

#include <set>
#include <string>

#include "pg_deploy/archive_name.hpp"

using pgdeploy::archive_table_name;
using pgdeploy::kMaxIdentifierBytes;

namespace {

// utf8_clip: the longest prefix of at most max bytes that does not end inside a UTF-8 sequence.
std::size_t utf8_clip(std::string_view s, std::size_t max) {
    if (s.size() <= max)
        return s.size();
    std::size_t n = max;
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80)
        --n;
    return n;
}

// complete_utf8: every sequence in s is whole (a cut inside a character leaves a lead byte without its tail).
bool complete_utf8(const std::string& s) {
    for (std::size_t i = 0; i < s.size();) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
        if (len == 0 || i + len > s.size())
            return false;
        for (std::size_t k = 1; k < len; ++k) {
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80)
                return false;
        }
        i += len;
    }
    return true;
}

std::string repeat(const std::string& s, int n) {
    std::string out;
    for (int i = 0; i < n; ++i)
        out += s;
    return out;
}

}  // namespace

TEST_CASE("archive_table_name keeps a name that fits as it is") {
    REQUIRE(archive_table_name(3, "audit", "", 1, utf8_clip) == "3_audit");
    REQUIRE(archive_table_name(3, "customers", "score", 1, utf8_clip) == "3_customers_score");
    REQUIRE(archive_table_name(3, repeat("🚀", 15), "", 1, utf8_clip) == "3_" + repeat("🚀", 15));  // 62 bytes
}

TEST_CASE("archive_table_name cuts long multibyte names between characters, within an identifier") {
    for (const std::string& ch : {std::string("é"), std::string("表"), std::string("🚀"), std::string("x")}) {
        for (int count = 1; count <= 70; ++count) {
            std::string table = repeat(ch, count);
            for (const std::string& column : {std::string(), repeat("ü", count)}) {
                for (int attempt = 1; attempt <= 12; ++attempt) {
                    std::string name = archive_table_name(123456, table, column, attempt, utf8_clip);
                    INFO(ch << " x " << count << ", column bytes " << column.size() << ", attempt " << attempt);
                    REQUIRE(name.size() <= kMaxIdentifierBytes);
                    REQUIRE(complete_utf8(name));
                    REQUIRE(name.rfind("123456_", 0) == 0);
                }
            }
        }
    }
}

TEST_CASE("archive_table_name gives long names that share a prefix different names") {
    std::string prefix = repeat("表", 20);
    std::string b = archive_table_name(2, prefix + "ab", "", 1, utf8_clip);
    std::string c = archive_table_name(2, prefix + "ac", "", 1, utf8_clip);
    REQUIRE(b != c);
    REQUIRE(b.substr(0, b.size() - 8) == c.substr(0, c.size() - 8));  // the same cut, then eight hex digits
    // The same object always gets the same name (the hash is stable across runs and platforms).
    REQUIRE(b == archive_table_name(2, prefix + "ab", "", 1, utf8_clip));
    REQUIRE(archive_table_name(2, repeat("é", 31), "", 1, utf8_clip) == "2_" + repeat("é", 26) + "_47fc1472");
}

TEST_CASE("archive_table_name: every attempt is a different name") {
    for (const std::string& table : {std::string("audit"), repeat("é", 31), repeat("x", 61)}) {
        std::set<std::string> names;
        for (int attempt = 1; attempt <= 200; ++attempt)
            names.insert(archive_table_name(7, table, "", attempt, utf8_clip));
        REQUIRE(names.size() == 200);
    }
    REQUIRE(archive_table_name(7, "audit", "", 2, utf8_clip) == "7_audit_2");
}

TEST_CASE("archive_table_name: a table and a column name that run together stay apart by attempt") {
    // "a_b" + "c" and "a" + "b_c" give the same "<id>_a_b_c": the caller's taken() check moves the second on.
    REQUIRE(archive_table_name(1, "a_b", "c", 1, utf8_clip) == archive_table_name(1, "a", "b_c", 1, utf8_clip));
    REQUIRE(archive_table_name(1, "a", "b_c", 2, utf8_clip) == "1_a_b_c_2");
}
