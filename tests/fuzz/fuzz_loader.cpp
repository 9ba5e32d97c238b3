// libFuzzer target for the migration-file loader's text parsers: file content checks (UTF-8, NUL, empty), file
// name parsing (native and Flyway), the Sqitch plan parser and the BEGIN/COMMIT stripper. Any input must either
// parse or raise pgdeploy::UsageError (exit 2); anything else (a crash, another exception, a sanitizer report)
// is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/exit_codes.hpp"
#include "loader/loader.hpp"
#include "loader/version.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string input(reinterpret_cast<const char*>(data), size);
    using namespace pgdeploy::loader;
    try {
        std::string text = check_sql_text(input, "fuzz.sql");
        // Valid text is UTF-8 without NULs: the Sqitch transaction stripper must keep it that way.
        std::string stripped = strip_sqitch_transaction(text);
        check_sql_text(stripped + "\n;", "stripped.sql");
    } catch (const pgdeploy::UsageError&) {
    }
    try {
        SqitchPlan plan = parse_sqitch_plan(input, "sqitch.plan");
        for (const auto& c : plan.changes)
            if (c.name.empty() || c.line <= 0)
                __builtin_trap();
    } catch (const pgdeploy::UsageError&) {
    }
    // File names are short: fuzz the first line as one.
    std::string name = input.substr(0, input.find('\n'));
    try {
        if (auto n = parse_native_name(name)) {
            if (n->version.empty() || n->name.empty())
                __builtin_trap();
            (void)is_valid_version(n->version);
        }
        if (auto f = parse_flyway_name(name)) {
            if (f->version.empty() || !is_valid_version(f->version.size() <= 64 ? f->version : "x"))
                __builtin_trap();
        }
    } catch (const pgdeploy::UsageError&) {
    }
    // The natural order must be antisymmetric.
    size_t half = input.size() / 2;
    std::string a = input.substr(0, half), b = input.substr(half);
    if (compare_versions(a, b) != -compare_versions(b, a))
        __builtin_trap();
    return 0;
}
