// The migration file loader: reads a directory in one of three layouts and returns validated migrations, sorted
// in natural version order, ready for deploy.register. Nothing here talks to the server: every check that can be
// made on the files is made before anything is sent (`pgdeploy load` registers all or nothing).
//
// Layouts (detected in this order):
//   sqitch  – sqitch.plan + deploy/ revert/ verify/; version = the change's position in the plan, zero-padded
//             (0001, 0002, ...), name = the change name. The BEGIN;/COMMIT; (or ROLLBACK;) lines that Sqitch's
//             templates wrap scripts in are dropped: the extension runs each migration in its own subtransaction.
//   flyway  – V<ver>__<name>.sql, optional U<ver>__<name>.sql undo; `_` in <ver> means `.` (V1_2 = 1.2).
//   native  – <version>_<name>.up.sql, .down.sql, optional .verify.sql.
//
// Every error is a UsageError (exit 2) naming the file (and line where there is one).
//
// Files: every file read must resolve inside DIR (after DIR itself is resolved): a symlink, or a symlinked
// sub-directory such as Sqitch's deploy/, that leads out of it is refused unless follow_symlinks is set
// (`--follow-symlinks`). The check is made on the file actually opened, so a link swapped in meanwhile is caught too.
#pragma once
#include <optional>
#include <string>
#include <vector>

namespace pgdeploy::loader {

struct Migration {
    std::string version;
    std::string name;
    std::string up_sql;
    std::optional<std::string> down_sql;
    std::optional<std::string> verify_sql;
    std::optional<bool> transactional;         // from `-- pg_deploy: transaction=...`; nullopt = detect
    std::optional<bool> down_transactional;    // the same directive in the down script; nullopt = detect
    std::optional<std::string> reversibility;  // from `-- pg_deploy: reversible=...`; nullopt = default
    std::optional<std::string> lock_timeout;   // from `-- pg_deploy: lock_timeout=...`, as "<n>ms"
    std::string up_path, down_path, verify_path;
};

struct LoadedDirectory {
    std::string layout;                 // "native", "sqitch" or "flyway"
    std::vector<Migration> migrations;  // natural version order
};

struct LoadOptions {
    bool follow_symlinks = false;  // read files that resolve outside DIR (symlinks to shared files)
};

// load_directory: reads and validates DIR; throws UsageError on the first problem.
LoadedDirectory load_directory(const std::string& dir, const LoadOptions& options = {});

// ---- pieces, exposed for unit tests and fuzzing ----------------------------------------------------------------

// check_sql_text: refuses empty (whitespace-only) text, NUL bytes and invalid UTF-8 (naming the line); returns the
// text without a leading UTF-8 byte-order mark.
std::string check_sql_text(const std::string& bytes, const std::string& path);

enum class FileKind { kUp, kDown, kVerify };

struct NativeName {
    std::string version, name;
    FileKind kind;
};
// parse_native_name: "0001_init.up.sql" → {0001, init, up}; nullopt when the name does not have that shape.
std::optional<NativeName> parse_native_name(const std::string& file_name);

struct FlywayName {
    std::string version, name;
    bool undo;
};
// parse_flyway_name: "V1_2__add_users.sql" → {1.2, add_users, false}; nullopt when it is not V/U<ver>__<name>.sql;
// throws UsageError for R__/B files and versions that are not dot-separated numbers.
std::optional<FlywayName> parse_flyway_name(const std::string& file_name);

struct SqitchChange {
    std::string name;
    std::vector<std::string> requires_;  // dependencies from [...], for the report only: plan order is applied
    std::string note;
    std::string rework_tag;  // non-empty for an earlier instance of a reworked change: deploy/name@tag.sql
    int line = 0;
};
struct SqitchPlan {
    std::string project;
    std::vector<SqitchChange> changes;
};
// parse_sqitch_plan: the plan format (pragmas %k=v, change lines `name [deps] timestamp planner <email> # note`,
// tags `@tag ...`, comments and blank lines). Throws UsageError("PATH:LINE: ...").
SqitchPlan parse_sqitch_plan(const std::string& text, const std::string& path);

// strip_sqitch_transaction: removes a leading `BEGIN;` and trailing `COMMIT;`/`ROLLBACK;` line when both are there.
std::string strip_sqitch_transaction(const std::string& sql);

}  // namespace pgdeploy::loader
