// Password scrubbing (common/conninfo) and the SQLSTATE → exit code map (common/exit_codes): no server needed.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "common/conninfo.hpp"
#include "common/exit_codes.hpp"
#include "common/output.hpp"

using pgdeploy::common::scrub_conninfo;
using pgdeploy::common::scrub_secrets;

TEST_CASE("scrub_conninfo hides key=value passwords", "[common][conninfo]") {
    CHECK(scrub_conninfo("host=db password=s3cret dbname=app") == "host=db password=*** dbname=app");
    CHECK(scrub_conninfo("password=s3cret") == "password=***");
    CHECK(scrub_conninfo("host=db password = s3cret port=5") == "host=db password = *** port=5");
    CHECK(scrub_conninfo("host=db password='a b\\' c' port=5") == "host=db password='***' port=5");
    CHECK(scrub_conninfo("host=db PASSWORD=s3cret") == "host=db PASSWORD=***");
    CHECK(scrub_conninfo("host=db sslpassword=keypass sslkey=/k") == "host=db sslpassword=*** sslkey=/k");
    CHECK(scrub_conninfo("host=db dbname=app") == "host=db dbname=app");
}

TEST_CASE("scrub_conninfo hides URI passwords", "[common][conninfo]") {
    CHECK(scrub_conninfo("postgresql://alice:s3cret@db.example:5432/app") ==
          "postgresql://alice:***@db.example:5432/app");
    CHECK(scrub_conninfo("postgres://alice:s3cret@h1,h2/app?target_session_attrs=read-write") ==
          "postgres://alice:***@h1,h2/app?target_session_attrs=read-write");
    CHECK(scrub_conninfo("postgresql://alice@db/app") == "postgresql://alice@db/app");
    CHECK(scrub_conninfo("postgresql://db/app?password=s3cret&sslmode=require") ==
          "postgresql://db/app?password=***&sslmode=require");
    CHECK(scrub_conninfo("postgresql://alice:p@ss@db/app") == "postgresql://alice:***@db/app");
    CHECK(scrub_conninfo("postgresql://:s3cret@db/app") == "postgresql://:***@db/app");
    CHECK(scrub_conninfo("postgresql://db:5432/app") == "postgresql://db:5432/app");
}

TEST_CASE("scrub_secrets works inside free text and removes known secrets", "[common][conninfo]") {
    CHECK(scrub_secrets("connecting to postgresql://u:pw1234@h/db now") == "connecting to postgresql://u:***@h/db now");
    CHECK(scrub_secrets("dsn \"host=h password=pw1234\" failed") == "dsn \"host=h password=***\" failed");
    CHECK(scrub_secrets("auth failed for hunter22 today", "hunter22") == "auth failed for *** today");
    CHECK(scrub_secrets("passwords are fine here", "") == "passwords are fine here");
    CHECK(scrub_secrets("password authentication failed for user \"x\"") ==
          "password authentication failed for user \"x\"");
    CHECK(scrub_secrets("ab", "ab") == "ab");  // too short to search for
}

TEST_CASE("scrub_secrets covers URLs of any scheme, env dumps and JSON", "[common][conninfo]") {
    // A check URL or a hook's output.
    CHECK(scrub_secrets("GET https://svc:tok3n@api.example/health failed") ==
          "GET https://svc:***@api.example/health failed");
    CHECK(scrub_secrets("redis://:r3dis@cache:6379/0") == "redis://:***@cache:6379/0");
    CHECK(scrub_secrets("\"http://u:pw99@h\" and user@example.com") == "\"http://u:***@h\" and user@example.com");
    // An environment dump (`env`) and shell assignments.
    CHECK(scrub_secrets("PGPASSWORD=env-secret\nPATH=/usr/bin") == "PGPASSWORD=***\nPATH=/usr/bin");
    CHECK(scrub_secrets("export DB_PASSWORD='x y z'; run") == "export DB_PASSWORD='***'; run");
    // JSON and YAML-ish.
    CHECK(scrub_secrets(R"({"user": "app", "password": "js0n-secret", "port": 5})") ==
          R"({"user": "app", "password": "***", "port": 5})");
    CHECK(scrub_secrets("password: yaml-secret\nuser: app") == "password: ***\nuser: app");
    // Words that merely contain the keyword stay.
    CHECK(scrub_secrets("passwordless=true password_file=/p") == "passwordless=true password_file=/p");
}

TEST_CASE("scrub() removes every registered secret; DSN passwords register themselves", "[common][conninfo]") {
    using namespace pgdeploy::common;
    CHECK(scrub("token reg-secret-1 here") == "token reg-secret-1 here");
    register_secret("reg-secret-1");
    register_secret("x");  // too short: ignored, or every x would go
    CHECK(scrub("token reg-secret-1 here, x") == "token *** here, x");
    CHECK(register_dsn_secrets("host=db password='dsn secret 2' sslpassword=ssl-secret-3"));
    CHECK(register_dsn_secrets("postgresql://u:uri-secret-4@h/db"));
    CHECK_FALSE(register_dsn_secrets("host=db password='unterminated"));
    CHECK(scrub("a dsn secret 2 b ssl-secret-3 c uri-secret-4") == "a *** b *** c ***");
    nlohmann::json doc = {{"error", "server said reg-secret-1"}, {"list", {"postgresql://u:pw7@h"}}, {"n", 3}};
    scrub_json(doc);
    CHECK(doc["error"] == "server said ***");
    CHECK(doc["list"][0] == "postgresql://u:***@h");
    CHECK(doc["n"] == 3);
}

TEST_CASE("libpq's message about an unparsable DSN loses every quoted piece but keywords", "[common][conninfo]") {
    using pgdeploy::common::scrub_unparsable_dsn_error;
    CHECK(scrub_unparsable_dsn_error("missing \"=\" after \"ss\" in connection info string", "host=h password=pa ss") ==
          "missing \"=\" after \"***\" in connection info string");
    CHECK(scrub_unparsable_dsn_error("unexpected spaces found in \"postgresql://u:pa ss@h/db\", use percent-encoded "
                                     "spaces (%20) instead",
                                     "postgresql://u:pa ss@h/db") ==
          "unexpected spaces found in \"***\", use percent-encoded spaces (%20) instead");
    CHECK(scrub_unparsable_dsn_error("invalid connection option \"hots\"", "hots=db password=zz") ==
          "invalid connection option \"hots\"");
}

TEST_CASE("exit codes follow the frozen SQLSTATE map", "[common][exit]") {
    using namespace pgdeploy;
    CHECK(exit_code_for_sqlstate("55P03") == 4);
    CHECK(exit_code_for_sqlstate("PD002") == 5);
    CHECK(exit_code_for_sqlstate("PD001") == 6);
    CHECK(exit_code_for_sqlstate("PD006") == 7);
    CHECK(exit_code_for_sqlstate("55000") == 7);
    CHECK(exit_code_for_sqlstate("08006") == 3);
    CHECK(exit_code_for_sqlstate("42P01") == 1);
    CHECK(exit_code_for_sqlstate("") == 1);
}

TEST_CASE("tables align on code points and error documents carry the contract's keys", "[common][output]") {
    using pgdeploy::common::render_table;
    std::string t = render_table({"A", "NAME"}, {{"0001", "héllo"}, {"2", "x"}});
    CHECK(t == "A     NAME\n----  -----\n0001  héllo\n2     x\n");
    pgdeploy::Failure f(4, "lock held", "55P03");
    auto doc = pgdeploy::common::error_document("up", f);
    CHECK(doc["schema_version"] == 1);
    CHECK(doc["ok"] == false);
    CHECK(doc["exit_code"] == 4);
    CHECK(doc["error"]["sqlstate"] == "55P03");
    CHECK(doc["error"]["message"] == "lock held");
}

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/logging.hpp"

namespace {

// capture_stderr: runs fn with fd 2 redirected to a temporary file and returns what was written.
template <typename Fn>
std::string capture_stderr(Fn fn) {
    char path[] = "/tmp/pgdeploy-log-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    std::fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    fn();
    std::fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    unlink(path);
    return ss.str();
}

}  // namespace

TEST_CASE("log lines never carry a password, in plain and JSON format", "[common][logging]") {
    using namespace pgdeploy::common;
    LogOptions opts;
    opts.secret = "pgpass-from-env";
    setup_logging(opts);
    std::string plain = capture_stderr([] {
        spdlog::info("connecting with host=db password=hunter2x and postgresql://u:s3cr3t@db/app");
        spdlog::warn("libpq said: password pgpass-from-env was wrong");
        spdlog::debug("debug is off by default");
    });
    CHECK(plain.find("hunter2x") == std::string::npos);
    CHECK(plain.find("s3cr3t") == std::string::npos);
    CHECK(plain.find("pgpass-from-env") == std::string::npos);
    CHECK(plain.find("password=***") != std::string::npos);
    CHECK(plain.find("postgresql://u:***@db/app") != std::string::npos);
    CHECK(plain.find("debug is off") == std::string::npos);

    opts.format = LogFormat::kJson;
    opts.verbose = true;
    setup_logging(opts);
    pgdeploy::common::register_secret("later-secret");
    std::string json_lines = capture_stderr([] {
        spdlog::debug("dsn \"host=x password='a b c'\" and later-secret");
        spdlog::error("quote \" and newline \n inside");
    });
    std::istringstream lines(json_lines);
    std::string line;
    int count = 0;
    while (std::getline(lines, line)) {
        auto j = nlohmann::json::parse(line);  // every line is one JSON object
        CHECK(j.contains("ts"));
        CHECK(j.contains("level"));
        CHECK(j["msg"].get<std::string>().find("later-secret") == std::string::npos);
        CHECK(j["msg"].get<std::string>().find("a b c") == std::string::npos);
        ++count;
    }
    CHECK(count == 2);
    setup_logging(LogOptions{});
}
