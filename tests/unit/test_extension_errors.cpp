// The extension's exception → SQLSTATE rule (extension/src/errors.cpp, as_deploy_error), tested without a server:
// no C++ exception may reach a user as a bare XX000.
#include <catch2/catch.hpp>

#include <new>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "pg_deploy/errors.hpp"

using pgdeploy::as_deploy_error;
using pgdeploy::DeployError;

namespace {

template <typename F>
DeployError mapped(F&& throwing) {
    try {
        throwing();
    } catch (const std::exception& e) {
        return as_deploy_error(e);
    }
    FAIL("nothing was thrown");
    return DeployError("", "");
}

void parse(const char* text) {
    nlohmann::json j = nlohmann::json::parse(text);
    REQUIRE(j.is_null());  // not reached: every text given here is refused
}

void require_defined(const DeployError& d) {
    REQUIRE(d.code().size() == 5);
    REQUIRE(d.code() != "XX000");
    REQUIRE_FALSE(d.hint().empty());  // says what to do
}

}  // namespace

TEST_CASE("as_deploy_error keeps a DeployError as it is") {
    DeployError d = mapped([] { throw DeployError("PD005", "too old", "detail", "hint"); });
    REQUIRE(d.code() == "PD005");
    REQUIRE(std::string(d.what()) == "too old");
    REQUIRE(d.detail() == "detail");
    REQUIRE(d.hint() == "hint");
}

TEST_CASE("as_deploy_error: nlohmann::json exceptions that data can cause") {
    DeployError overflow = mapped([] { parse(R"({"x": 1e400})"); });
    require_defined(overflow);
    REQUIRE(overflow.code() == "22003");
    REQUIRE(overflow.detail().find("out_of_range.406") != std::string::npos);

    DeployError syntax = mapped([] { parse("{\"x\": \xc3"); });
    require_defined(syntax);
    REQUIRE(syntax.code() == "22P02");
    // The input quoted in nlohmann's message is cut inside a character: it is escaped, never copied raw.
    REQUIRE(syntax.detail().find("\\xc3") != std::string::npos);
    REQUIRE(syntax.detail().find('\xc3') == std::string::npos);

    DeployError utf8 = mapped([] { (void)nlohmann::json(std::string("caf\xc3")).dump(); });
    require_defined(utf8);
    REQUIRE(utf8.code() == "22021");

    DeployError type = mapped([] { (void)nlohmann::json(1).get<std::string>(); });
    require_defined(type);
    REQUIRE(type.code() == "PD010");
}

TEST_CASE("as_deploy_error: standard library exceptions") {
    require_defined(mapped([] { throw std::bad_alloc(); }));
    REQUIRE(mapped([] { throw std::bad_alloc(); }).code() == "53200");
    REQUIRE(mapped([] { (void)std::stoll("99999999999999999999"); }).code() == "22003");
    REQUIRE(mapped([] { (void)std::stoll("abc"); }).code() == "22P02");
    REQUIRE(mapped([] { std::string().reserve(std::string().max_size() + 1); }).code() == "54000");
    DeployError other = mapped([] { throw std::runtime_error("surprise"); });
    require_defined(other);
    REQUIRE(other.code() == "PD010");
    REQUIRE(other.detail() == "surprise");
}

TEST_CASE("as_deploy_error quotes at most 200 bytes of an exception's text") {
    DeployError d = mapped([] { throw std::runtime_error(std::string(5000, 'x')); });
    REQUIRE(d.detail().size() == 203);
    REQUIRE(d.detail().substr(200) == "...");
}
