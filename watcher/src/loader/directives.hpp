// Header directives of a migration file: `-- pg_deploy: key=value ...` lines in the leading comment block.
//
//   -- pg_deploy: transaction=off            the script runs statement by statement at top level (pgdeploy up, and
//                                            in a down script pgdeploy rollback/down/once and the watcher)
//   -- pg_deploy: reversible=lossy           reversible|lossy|irreversible (up script only)
//   -- pg_deploy: transaction=off, reversible=irreversible
//   -- pg_deploy: lock_timeout=2s               its statements wait at most this long for a lock
//   (pg_deploy.lock_timeout)
//
// Only the comment block at the top of the file is read (blank lines and `--` lines; the first other line ends
// it). An unknown key or value is an error naming file:line, so a typo never silently changes how a migration runs.
#pragma once
#include <optional>
#include <string>

namespace pgdeploy::loader {

struct Directives {
    std::optional<bool> transactional;         // nullopt: the extension detects
    std::optional<std::string> reversibility;  // nullopt: reversible if a down script exists, else irreversible
    std::optional<long long> lock_timeout_ms;  // nullopt: the server's pg_deploy.lock_timeout
    int line_of_first = 0;                     // 0 when the file has none (for "directives only in .up.sql")
    int line_of_reversible = 0;                // where reversible= is (0: nowhere): only an up script may say it
};

// trim: s without leading and trailing white space (the loader's reading of names, keys and values).
std::string trim(const std::string& s);

// parse_directives: throws UsageError("PATH:LINE: ...") for a malformed or unknown directive.
Directives parse_directives(const std::string& text, const std::string& path);

}  // namespace pgdeploy::loader
