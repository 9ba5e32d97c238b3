// libFuzzer target for the `-- pg_deploy: key=value` header directive parser. Every input either parses into
// known values or raises pgdeploy::UsageError naming file:line.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/exit_codes.hpp"
#include "loader/directives.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string input(reinterpret_cast<const char*>(data), size);
    try {
        pgdeploy::loader::Directives d = pgdeploy::loader::parse_directives(input, "fuzz.up.sql");
        if (d.reversibility && *d.reversibility != "reversible" && *d.reversibility != "lossy" &&
            *d.reversibility != "irreversible")
            __builtin_trap();
        if ((d.transactional || d.reversibility) && d.line_of_first <= 0)
            __builtin_trap();
    } catch (const pgdeploy::UsageError& e) {
        if (std::string(e.what()).rfind("fuzz.up.sql:", 0) != 0)
            __builtin_trap();
    }
    return 0;
}
