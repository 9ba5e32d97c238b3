// The extension's pure C++ version rules (extension/src/version.cpp), tested without a server.
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/version.hpp"

using pgdeploy::version_key;
using pgdeploy::version_problem;

TEST_CASE("version_key orders digit runs as numbers, digits before letters") {
    std::vector<std::string> v{"10", "2", "1.10", "1.9", "1", "a1", "1a", "100", "0001_x"};
    std::sort(v.begin(), v.end(),
              [](const std::string& a, const std::string& b) { return version_key(a) < version_key(b); });
    REQUIRE(v == std::vector<std::string>{"1", "1.9", "1.10", "0001_x", "1a", "2", "10", "100", "a1"});
}

TEST_CASE("version_key: leading zeros give the same key") {
    REQUIRE(version_key("010") == version_key("10"));
    REQUIRE(version_key("0") == version_key("000"));
    REQUIRE(version_key("1.10") == "011.0210");
}

TEST_CASE("version_problem names what is wrong") {
    REQUIRE_FALSE(version_problem("0001_add-users.v2"));
    REQUIRE(version_problem("")->find("empty") != std::string::npos);
    REQUIRE(version_problem("1 0")->find("whitespace") != std::string::npos);
    REQUIRE(version_problem("1\n")->find("control character") != std::string::npos);
    REQUIRE(version_problem(std::string(65, '1'))->find("too long") != std::string::npos);
    REQUIRE_FALSE(version_problem(std::string(64, '1')));
    REQUIRE(version_problem("1/2")->find("\"/\"") != std::string::npos);
    REQUIRE(version_problem(".1")->find("start with") != std::string::npos);
    REQUIRE_THROWS_AS(pgdeploy::check_version("bad version"), pgdeploy::DeployError);
}
