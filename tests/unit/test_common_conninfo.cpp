// Password scrubbing (common/conninfo) and the SQLSTATE → exit code map (common/exit_codes): no server needed.
#include <catch2/catch.hpp>

#include "common/conninfo.hpp"
#include "common/exit_codes.hpp"
#include "common/output.hpp"

using pgdeploy::common::scrub_conninfo;
using pgdeploy::common::scrub_secrets;

TEST_CASE("scrub_conninfo hides key=value passwords", "[common][conninfo]") {
    CHECK(scrub_conninfo("host=db password=s3cret dbname=app") == "host=db password=*** dbname=app");
    CHECK(scrub_conninfo("password=s3cret") == "password=***");
    CHECK(scrub_conninfo("host=db password = s3cret port=5") == "host=db password=*** port=5");
    CHECK(scrub_conninfo("host=db password='a b\\' c' port=5") == "host=db password=*** port=5");
    CHECK(scrub_conninfo("host=db PASSWORD=s3cret") == "host=db password=***");
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
}

TEST_CASE("scrub_secrets works inside free text and removes known secrets", "[common][conninfo]") {
    CHECK(scrub_secrets("connecting to postgresql://u:pw1234@h/db now") == "connecting to postgresql://u:***@h/db now");
    CHECK(scrub_secrets("dsn \"host=h password=pw1234\" failed") == "dsn \"host=h password=***\" failed");
    CHECK(scrub_secrets("auth failed for hunter22 today", "hunter22") == "auth failed for *** today");
    CHECK(scrub_secrets("passwords are fine here", "") == "passwords are fine here");
    CHECK(scrub_secrets("ab", "ab") == "ab");  // too short to search for
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
    add_log_secret("later-secret");
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
