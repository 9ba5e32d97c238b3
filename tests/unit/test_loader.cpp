// The migration file loader (loader/): native, Sqitch and Flyway layouts, header directives, and every bad-input
// case with its exact message. Files are written to a fresh temporary directory per test; no server.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "common/exit_codes.hpp"
#include "loader/directives.hpp"
#include "loader/loader.hpp"
#include "loader/version.hpp"

namespace fs = std::filesystem;
using namespace pgdeploy::loader;

namespace {

struct TempDir {
    fs::path path;
    TempDir() {
        std::random_device rd;
        path = fs::temp_directory_path() / ("pgdeploy-loader-" + std::to_string(getpid()) + "-" + std::to_string(rd()));
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::permissions(path, fs::perms::owner_all, ec);
        fs::remove_all(path, ec);
    }
    void write(const std::string& rel, const std::string& content) const {
        fs::create_directories((path / rel).parent_path());
        std::ofstream(path / rel, std::ios::binary) << content;
    }
    std::string str() const { return path.string(); }
};

std::string load_error(const std::string& dir) {
    try {
        load_directory(dir);
    } catch (const pgdeploy::UsageError& e) {
        CHECK(e.exit_code() == 2);
        return e.what();
    }
    return "(no error)";
}

}  // namespace

TEST_CASE("versions: validity and natural order", "[loader][version]") {
    CHECK(is_valid_version("0001"));
    CHECK(is_valid_version("1.2.3-rc_1"));
    CHECK_FALSE(is_valid_version(""));
    CHECK_FALSE(is_valid_version("-1"));
    CHECK_FALSE(is_valid_version("1 2"));
    CHECK_FALSE(is_valid_version(std::string(65, '1')));
    CHECK(compare_versions("2", "10") < 0);
    CHECK(compare_versions("1.9", "1.10") < 0);
    CHECK(compare_versions("10", "010") == 0);
    CHECK(compare_versions("1a", "1") > 0);
    CHECK(compare_versions("9", "a") < 0);
}

TEST_CASE("native layout with directives", "[loader][native]") {
    TempDir d;
    d.write("0002_add_index.up.sql", "-- pg_deploy: transaction=off\nCREATE INDEX CONCURRENTLY i ON t (x);\n");
    d.write("0002_add_index.down.sql", "-- pg_deploy: transaction=off\nDROP INDEX CONCURRENTLY i;\n");
    d.write("0001_init.up.sql", "-- the first one\n-- pg_deploy: reversible=lossy\n\nCREATE TABLE t (x int);\n");
    d.write("0001_init.down.sql", "DROP TABLE t;\n");
    d.write("0001_init.verify.sql", "SELECT x FROM t WHERE false;\n");
    d.write("10_late.up.sql", "SELECT 1;\n");
    d.write("README.md", "not a migration");
    auto loaded = load_directory(d.str());
    CHECK(loaded.layout == "native");
    REQUIRE(loaded.migrations.size() == 3);
    const auto& m1 = loaded.migrations[0];
    CHECK(m1.version == "0001");
    CHECK(m1.name == "init");
    CHECK(m1.reversibility == std::optional<std::string>("lossy"));
    CHECK_FALSE(m1.transactional.has_value());
    CHECK_FALSE(m1.down_transactional.has_value());
    CHECK(m1.verify_sql.has_value());
    CHECK(loaded.migrations[1].version == "0002");
    CHECK(loaded.migrations[1].transactional == std::optional<bool>(false));
    CHECK(loaded.migrations[1].down_transactional == std::optional<bool>(false));
    CHECK(loaded.migrations[2].version == "10");  // natural order: 2 < 10
    CHECK_FALSE(loaded.migrations[2].down_sql.has_value());
}

TEST_CASE("directives: strict keys and values, header block only", "[loader][directives]") {
    auto d = parse_directives("-- pg_deploy: transaction=off, reversible=irreversible\nSELECT 1;\n", "f.up.sql");
    CHECK(d.transactional == std::optional<bool>(false));
    CHECK(d.reversibility == std::optional<std::string>("irreversible"));
    CHECK(d.line_of_first == 1);
    // After the first statement line, comments are not directives.
    auto later = parse_directives("SELECT 1;\n-- pg_deploy: transaction=banana\n", "f.up.sql");
    CHECK_FALSE(later.transactional.has_value());
    CHECK_THROWS_WITH(parse_directives("\n-- pg_deploy: transactions=off\n", "f.up.sql"),
                      "f.up.sql:2: unknown pg_deploy directive \"transactions\" (known: transaction, reversible, "
                      "lock_timeout)");
    CHECK_THROWS_WITH(parse_directives("-- pg_deploy: transaction=maybe\n", "f.up.sql"),
                      "f.up.sql:1: transaction must be on or off, not \"maybe\"");
    CHECK_THROWS_WITH(parse_directives("-- pg_deploy: reversible=sometimes\n", "f.up.sql"),
                      "f.up.sql:1: reversible must be reversible, lossy or irreversible, not \"sometimes\"");
    CHECK_THROWS_WITH(parse_directives("-- pg_deploy:\n", "f.up.sql"), "f.up.sql:1: empty pg_deploy directive");
    CHECK_THROWS_WITH(parse_directives("-- pg_deploy: transaction\n", "f.up.sql"),
                      "f.up.sql:1: pg_deploy directive \"transaction\" is not key=value");
    CHECK_THROWS_WITH(parse_directives("-- pg_deploy: transaction=on transaction=off\n", "f.up.sql"),
                      "f.up.sql:1: transaction given twice with different values");
}

TEST_CASE("directives: lock_timeout is a duration in milliseconds", "[loader][directives]") {
    CHECK(parse_directives("-- pg_deploy: lock_timeout=2s\n", "f.up.sql").lock_timeout_ms ==
          std::optional<long long>(2000));
    CHECK(parse_directives("-- pg_deploy: lock_timeout=250ms, transaction=off\n", "f.up.sql").lock_timeout_ms ==
          std::optional<long long>(250));
    CHECK_FALSE(parse_directives("-- pg_deploy: reversible=lossy\n", "f.up.sql").lock_timeout_ms.has_value());
    CHECK_THROWS_WITH(parse_directives("-- pg_deploy: lock_timeout=soon\n", "f.up.sql"),
                      "f.up.sql:1: lock_timeout must be a duration such as 2s or 500ms, not \"soon\"");
    CHECK_THROWS_WITH(parse_directives("-- pg_deploy: lock_timeout=1s lock_timeout=2s\n", "f.up.sql"),
                      "f.up.sql:1: lock_timeout given twice with different values");
}

TEST_CASE("native layout: every bad input is refused with its file", "[loader][native][bad]") {
    SECTION("missing directory") {
        CHECK(load_error("/nonexistent/pgdeploy-dir") == "/nonexistent/pgdeploy-dir: no such directory");
    }
    SECTION("a file, not a directory") {
        TempDir d;
        d.write("f", "x");
        CHECK(load_error(d.str() + "/f") == d.str() + "/f: not a directory");
    }
    SECTION("empty directory") {
        TempDir d;
        CHECK(load_error(d.str()) == d.str() + ": no migration files found");
    }
    SECTION("down without up") {
        TempDir d;
        d.write("0001_init.down.sql", "DROP TABLE t;");
        CHECK(load_error(d.str()) == d.str() + "/0001_init.down.sql: has no matching up script (0001_init.up.sql)");
    }
    SECTION("same version twice") {
        TempDir d;
        d.write("0001_a.up.sql", "SELECT 1;");
        d.write("0001_b.up.sql", "SELECT 2;");
        CHECK(load_error(d.str()) ==
              d.str() + "/0001_b.up.sql: version 0001 is used by two different names (\"a\" and \"b\")");
    }
    SECTION("same version in two spellings") {
        TempDir d;
        d.write("1_a.up.sql", "SELECT 1;");
        d.write("01_b.up.sql", "SELECT 2;");
        CHECK(load_error(d.str()).find(": two migrations with the same version: ") != std::string::npos);
    }
    SECTION("unparsable file name") {
        TempDir d;
        d.write("init.sql", "SELECT 1;");
        CHECK(load_error(d.str()) == d.str() +
                                         "/init.sql: cannot parse a version from the file name (expected "
                                         "<version>_<name>.up.sql, .down.sql, .verify.sql, or Flyway's "
                                         "V<version>__<name>.sql)");
    }
    SECTION("invalid version characters") {
        TempDir d;
        d.write("-1_x.up.sql", "SELECT 1;");
        CHECK(load_error(d.str()).find("invalid version \"-1\"") != std::string::npos);
    }
    SECTION("unknown directive names file and line") {
        TempDir d;
        d.write("0001_init.up.sql", "-- header\n-- pg_deploy: transacton=off\nSELECT 1;");
        CHECK(load_error(d.str()) == d.str() +
                                         "/0001_init.up.sql:2: unknown pg_deploy directive \"transacton\" (known: "
                                         "transaction, reversible, lock_timeout)");
    }
    SECTION("reversible in a down script (transaction is the down script's own)") {
        TempDir d;
        d.write("0001_init.up.sql", "SELECT 1;");
        d.write("0001_init.down.sql", "-- pg_deploy: transaction=off\n-- pg_deploy: reversible=lossy\nSELECT 1;");
        CHECK(load_error(d.str()) == d.str() + "/0001_init.down.sql:2: pg_deploy directives belong in the up script (" +
                                         d.str() + "/0001_init.up.sql)");
    }
    SECTION("directive in a verify script") {
        TempDir d;
        d.write("0001_init.up.sql", "SELECT 1;");
        d.write("0001_init.verify.sql", "-- pg_deploy: transaction=off\nSELECT 1;");
        CHECK(load_error(d.str()) == d.str() + "/0001_init.verify.sql:1: pg_deploy directives belong in the up " +
                                         "script (" + d.str() + "/0001_init.up.sql)");
    }
    SECTION("reversible=lossy without a down script") {
        TempDir d;
        d.write("0001_init.up.sql", "-- pg_deploy: reversible=lossy\nSELECT 1;");
        CHECK(load_error(d.str()) ==
              d.str() + "/0001_init.up.sql:1: declares reversible=lossy but there is no down script");
    }
    SECTION("not UTF-8") {
        TempDir d;
        d.write("0001_init.up.sql", "SELECT 1;\nSELECT '\xff\xfe';\n");
        CHECK(load_error(d.str()) == d.str() + "/0001_init.up.sql:2: not valid UTF-8 (byte offset 18)");
    }
    SECTION("overlong UTF-8 is not UTF-8") {
        TempDir d;
        d.write("0001_init.up.sql", "SELECT '\xc0\xaf';");
        CHECK(load_error(d.str()) == d.str() + "/0001_init.up.sql:1: not valid UTF-8 (byte offset 8)");
    }
    SECTION("NUL byte") {
        TempDir d;
        d.write("0001_init.up.sql", std::string("SELECT 1;\0", 10));
        CHECK(load_error(d.str()) == d.str() + "/0001_init.up.sql:1: contains a NUL byte (not a text file)");
    }
    SECTION("unreadable file") {
        if (geteuid() == 0) {
            // root reads everything: use a directory where a file is expected to get a read error instead.
            TempDir d;
            fs::create_directories(d.path / "0001_init.up.sql");
            d.write("0001_init.down.sql", "SELECT 1;");
            // A directory named like an up script is skipped (not a regular file): the down has no up.
            CHECK(load_error(d.str()) == d.str() + "/0001_init.down.sql: has no matching up script (0001_init.up.sql)");
        } else {
            TempDir d;
            d.write("0001_init.up.sql", "SELECT 1;");
            fs::permissions(d.path / "0001_init.up.sql", fs::perms::none);
            CHECK(load_error(d.str()).find("0001_init.up.sql: cannot read") != std::string::npos);
        }
    }
    SECTION("broken symlink and FIFO named like migrations") {
        TempDir d;
        d.write("0001_init.up.sql", "SELECT 1;");
        fs::create_symlink("/nonexistent/target.sql", d.path / "0002_gone.up.sql");
        CHECK(load_error(d.str()) ==
              d.str() + "/0002_gone.up.sql: not a readable regular file (broken symlink, FIFO or device?)");
        TempDir f;
        f.write("0001_init.up.sql", "SELECT 1;");
        REQUIRE(mkfifo((f.path / "0001_init.down.sql").c_str(), 0600) == 0);
        CHECK(load_error(f.str()) ==
              f.str() + "/0001_init.down.sql: not a readable regular file (broken symlink, FIFO or device?)");
    }
    SECTION("a symlink to a real file is read") {
        TempDir d;
        d.write("real/0001_init.sql", "SELECT 1;");
        fs::create_symlink(d.path / "real/0001_init.sql", d.path / "0001_init.up.sql");
        CHECK(load_directory(d.str()).migrations.at(0).up_sql == "SELECT 1;");
    }
    SECTION("mixed layouts") {
        TempDir d;
        d.write("0001_init.up.sql", "SELECT 1;");
        d.write("V2__more.sql", "SELECT 2;");
        CHECK(load_error(d.str()) == d.str() +
                                         ": mixes native (<version>_<name>.up.sql) and Flyway "
                                         "(V<version>__<name>.sql) files");
    }
}

TEST_CASE("a UTF-8 byte order mark is dropped", "[loader]") {
    CHECK(check_sql_text("\xEF\xBB\xBFSELECT 1;", "f") == "SELECT 1;");
    CHECK(check_sql_text("SELECT 'héllo ✓ 😀';", "f") == "SELECT 'héllo ✓ 😀';");
}

TEST_CASE("flyway layout", "[loader][flyway]") {
    TempDir d;
    d.write("V1__init.sql", "CREATE TABLE t (x int);");
    d.write("U1__init.sql", "DROP TABLE t;");
    d.write("V1.2__add_col.sql", "ALTER TABLE t ADD y int;");
    d.write("V1_10__later.sql", "SELECT 1;");
    d.write("V2__last.sql", "-- pg_deploy: reversible=irreversible\nSELECT 1;");
    auto loaded = load_directory(d.str());
    CHECK(loaded.layout == "flyway");
    REQUIRE(loaded.migrations.size() == 4);
    CHECK(loaded.migrations[0].version == "1");
    CHECK(loaded.migrations[0].down_sql == std::optional<std::string>("DROP TABLE t;"));
    CHECK(loaded.migrations[1].version == "1.2");
    CHECK(loaded.migrations[1].name == "add_col");
    CHECK(loaded.migrations[2].version == "1.10");
    CHECK(loaded.migrations[3].reversibility == std::optional<std::string>("irreversible"));

    CHECK(parse_flyway_name("V3_1__x.sql")->version == "3.1");
    CHECK_FALSE(parse_flyway_name("0001_x.up.sql").has_value());
    CHECK_THROWS_WITH(
        parse_flyway_name("R__views.sql"),
        "R__views.sql: repeatable Flyway migrations (R__) are not supported: pg_deploy migrations have versions");
    CHECK_THROWS_WITH(parse_flyway_name("V1a__x.sql"),
                      "V1a__x.sql: Flyway version \"1a\" is not made of numbers separated by . or _");
    CHECK_THROWS_WITH(parse_flyway_name("V__x.sql"),
                      "V__x.sql: a Flyway name needs a version and a description (V1__name.sql)");

    TempDir u;
    u.write("V1__a.sql", "SELECT 1;");
    u.write("U2__b.sql", "SELECT 1;");
    CHECK(load_error(u.str()) == u.str() + "/U2__b.sql: undo migration without a V2__*.sql");

    TempDir dup;
    dup.write("V1__a.sql", "SELECT 1;");
    dup.write("V1.0__b.sql", "SELECT 1;");  // different key: 1 vs 1.0, both fine
    CHECK(load_directory(dup.str()).migrations.size() == 2);
    dup.write("V01__c.sql", "SELECT 1;");  // same natural key as V1
    CHECK(load_error(dup.str()).find("two migrations with the same version") != std::string::npos);
}

TEST_CASE("sqitch plan parsing", "[loader][sqitch]") {
    const std::string plan =
        "%syntax-version=1.0.0\n"
        "%project=flipr\n"
        "%uri=https://example.com/flipr/\n"
        "\n"
        "# a comment\n"
        "appschema 2012-12-30T00:00:00Z Marge N. O'Vera <marge@example.com> # Add schema.\n"
        "users [appschema] 2013-01-01T00:00:00Z Marge <marge@example.com> # Users table.\n"
        "@v1.0 2013-01-02T00:00:00Z Marge <marge@example.com> # Tag v1.0.\n"
        "+flips [appschema users !nothing] 2013-01-03T00:00:00Z Marge <marge@example.com>\n"
        "users [users@v1.0] 2013-01-04T00:00:00Z Marge <marge@example.com> # Rework users.\r\n";
    auto p = parse_sqitch_plan(plan, "sqitch.plan");
    CHECK(p.project == "flipr");
    REQUIRE(p.changes.size() == 4);
    CHECK(p.changes[0].name == "appschema");
    CHECK(p.changes[0].note == "Add schema.");
    CHECK(p.changes[1].requires_ == std::vector<std::string>{"appschema"});
    CHECK(p.changes[1].rework_tag == "v1.0");  // the earlier instance reads deploy/users@v1.0.sql
    CHECK(p.changes[2].requires_.size() == 3);
    CHECK(p.changes[3].rework_tag.empty());
    CHECK(p.changes[3].line == 10);

    CHECK_THROWS_WITH(parse_sqitch_plan("x 2013-01-01 Marge <m@x>\n", "p"),
                      "p:1: expected a timestamp like 2013-12-31T23:59:59Z, found \"2013-01-01\"");
    CHECK_THROWS_WITH(parse_sqitch_plan("x 2013-01-01T00:00:00Z Marge\n", "p"),
                      "p:1: expected the planner as Name <email> after the timestamp");
    CHECK_THROWS_WITH(parse_sqitch_plan("x [a 2013-01-01T00:00:00Z Marge <m@x>\n", "p"),
                      "p:1: unterminated dependency list '['");
    CHECK_THROWS_WITH(parse_sqitch_plan("@t 2013-01-01T00:00:00Z M <m@x>\n", "p"), "p:1: tag @t before any change");
    CHECK_THROWS_WITH(parse_sqitch_plan("x 2013-01-01T00:00:00Z M <m@x>\nx 2013-01-01T00:00:00Z M <m@x>\n", "p"),
                      "p:2: change x is listed twice without a tag in between");
    CHECK_THROWS_WITH(parse_sqitch_plan("-x 2013-01-01T00:00:00Z M <m@x>\n", "p"),
                      "p:1: changes marked for revert in the plan (-name) are not supported");
    CHECK_THROWS_WITH(parse_sqitch_plan("x\n", "p"), "p:1: missing timestamp and planner after \"x\"");
    CHECK_THROWS_WITH(parse_sqitch_plan("%syntax-version=2.0.0\n", "p"),
                      "p:1: unsupported sqitch plan syntax-version 2.0.0");
}

TEST_CASE("sqitch project layout", "[loader][sqitch]") {
    TempDir d;
    d.write("sqitch.plan",
            "%project=app\n"
            "schema 2020-01-01T00:00:00Z Dev <dev@example.com>\n"
            "widgets [schema] 2020-01-02T00:00:00Z Dev <dev@example.com> # widgets\n");
    d.write("deploy/schema.sql", "-- Deploy app:schema to pg\n\nBEGIN;\n\nCREATE SCHEMA app;\n\nCOMMIT;\n");
    d.write("revert/schema.sql", "BEGIN;\nDROP SCHEMA app;\nCOMMIT;\n");
    d.write("verify/schema.sql", "BEGIN;\nSELECT 1/count(*) FROM pg_namespace WHERE nspname = 'app';\nROLLBACK;\n");
    d.write("deploy/widgets.sql", "CREATE TABLE app.widgets (id int);\n");
    auto loaded = load_directory(d.str());
    CHECK(loaded.layout == "sqitch");
    REQUIRE(loaded.migrations.size() == 2);
    CHECK(loaded.migrations[0].version == "0001");
    CHECK(loaded.migrations[0].name == "schema");
    CHECK(loaded.migrations[0].up_sql.find("BEGIN;\n") == std::string::npos);
    CHECK(loaded.migrations[0].up_sql.find("CREATE SCHEMA app;") != std::string::npos);
    CHECK(loaded.migrations[0].up_sql.find("\nCOMMIT;") == std::string::npos);
    CHECK(loaded.migrations[0].verify_sql->find("ROLLBACK;\n") == std::string::npos);
    CHECK(loaded.migrations[1].version == "0002");
    CHECK_FALSE(loaded.migrations[1].down_sql.has_value());

    d.write("sqitch.plan",
            "%project=app\nschema 2020-01-01T00:00:00Z Dev <dev@example.com>\n"
            "gone 2020-01-01T00:00:00Z Dev <dev@example.com>\n");
    CHECK(load_error(d.str()) ==
          d.str() + "/sqitch.plan:3: change gone has no deploy script " + d.str() + "/deploy/gone.sql");
    d.write("sqitch.plan", "%project=app\n");
    CHECK(load_error(d.str()) == d.str() + "/sqitch.plan: the plan has no changes");
}

TEST_CASE("strip_sqitch_transaction only strips a matching pair", "[loader][sqitch]") {
    CHECK(strip_sqitch_transaction("BEGIN;\nSELECT 1;\nCOMMIT;\n") ==
          "-- (BEGIN; removed by pgdeploy load)\nSELECT 1;\n-- (COMMIT; removed by pgdeploy load)\n");
    CHECK(strip_sqitch_transaction("SELECT 1;\nCOMMIT;\n") == "SELECT 1;\nCOMMIT;\n");
    CHECK(strip_sqitch_transaction("BEGIN;\nSELECT 1;\n") == "BEGIN;\nSELECT 1;\n");
}

TEST_CASE("a symlink out of the migration directory is refused unless asked for", "[loader][symlinks]") {
    TempDir outside;
    outside.write("secret.sql", "SELECT 'not a migration';");
    outside.write("deploy/init.sql", "SELECT 1;");

    SECTION("a native file") {
        TempDir d;
        d.write("0001_init.up.sql", "SELECT 1;");
        fs::create_symlink(outside.path / "secret.sql", d.path / "0002_leak.up.sql");
        std::string err = load_error(d.str());
        CHECK_THAT(err, Catch::Matchers::StartsWith(d.str() + "/0002_leak.up.sql: is a symlink to " +
                                                    fs::canonical(outside.path / "secret.sql").string() +
                                                    ", outside the migration directory"));
        CHECK_THAT(err, Catch::Matchers::Contains("--follow-symlinks"));
        LoadOptions follow;
        follow.follow_symlinks = true;
        auto loaded = load_directory(d.str(), follow);
        REQUIRE(loaded.migrations.size() == 2);
        CHECK(loaded.migrations[1].up_sql == "SELECT 'not a migration';");
    }
    SECTION("a relative link that climbs out") {
        TempDir d;
        fs::create_symlink(fs::relative(outside.path / "secret.sql", d.path), d.path / "0001_up.up.sql");
        CHECK_THAT(load_error(d.str()), Catch::Matchers::Contains("outside the migration directory"));
    }
    SECTION("a symlinked sub-directory (Sqitch's deploy/)") {
        TempDir d;
        d.write("sqitch.plan", "%project=p\ninit 2020-01-01T00:00:00Z A <a@b>\n");
        fs::create_symlink(outside.path / "deploy", d.path / "deploy");
        CHECK_THAT(load_error(d.str()), Catch::Matchers::Contains("/deploy/init.sql: is a symlink to "));
        LoadOptions follow;
        follow.follow_symlinks = true;
        CHECK(load_directory(d.str(), follow).migrations.at(0).up_sql == "SELECT 1;");
    }
    SECTION("a dangling revert script in Sqitch is refused, not skipped") {
        TempDir d;
        d.write("sqitch.plan", "%project=p\ninit 2020-01-01T00:00:00Z A <a@b>\n");
        d.write("deploy/init.sql", "SELECT 1;");
        fs::create_directories(d.path / "revert");
        fs::create_symlink(d.path / "gone.sql", d.path / "revert/init.sql");
        CHECK_THAT(load_error(d.str()), Catch::Matchers::Contains("/revert/init.sql: cannot read"));
    }
    SECTION("the directory itself may be reached through a symlink") {
        TempDir d;
        d.write("m/0001_init.up.sql", "SELECT 1;");
        fs::create_symlink(d.path / "m", d.path / "current");
        CHECK(load_directory((d.path / "current").string()).migrations.size() == 1);
    }
}

TEST_CASE("a migration name longer than the extension stores is refused", "[loader]") {
    TempDir d;
    d.write("0001_" + std::string(200, 'n') + ".up.sql", "SELECT 1;");
    CHECK(load_directory(d.str()).migrations.at(0).name.size() == 200);
    TempDir e;
    std::string name = std::string(100, 'n') + std::string(101, 'x');
    e.write("0001_" + name + ".up.sql", "SELECT 1;");
    CHECK(load_error(e.str()) ==
          e.str() + "/0001_" + name + ".up.sql: the migration name is 201 characters long; at most 200 are allowed");
    TempDir s;
    std::string change(201, 'c');
    s.write("sqitch.plan", "%project=p\n" + change + " 2020-01-01T00:00:00Z A <a@b>\n");
    s.write("deploy/" + change + ".sql", "SELECT 1;");
    CHECK_THAT(load_error(s.str()), Catch::Matchers::Contains("the migration name is 201 characters long"));
}

TEST_CASE("empty and comment-only scripts load as no-op migrations; an empty verify script is no verify",
          "[loader][native]") {
    TempDir d;
    d.write("0001_placeholder.up.sql", "");
    d.write("0001_placeholder.down.sql", "-- nothing to undo\n");
    d.write("0001_placeholder.verify.sql", "  \n");
    d.write("0002_other_engine_only.up.sql", "-- this change was for another database engine\n");
    d.write("0002_other_engine_only.down.sql", "\n");
    d.write("0003_lock.up.sql", "-- pg_deploy: lock_timeout=3s\nALTER TABLE t ADD COLUMN y int;\n");
    auto loaded = load_directory(d.str());
    REQUIRE(loaded.migrations.size() == 3);
    CHECK(loaded.migrations[0].up_sql.empty());
    CHECK(loaded.migrations[0].down_sql == std::optional<std::string>("-- nothing to undo\n"));
    CHECK_FALSE(loaded.migrations[0].verify_sql.has_value());
    CHECK(loaded.migrations[1].down_sql == std::optional<std::string>("\n"));
    CHECK_FALSE(loaded.migrations[1].lock_timeout.has_value());
    CHECK(loaded.migrations[2].lock_timeout == std::optional<std::string>("3000ms"));
}
