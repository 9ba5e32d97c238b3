// The strict argument parser (cli/args): every bad-flag case is a usage error with a clear one-line message.
#include <catch2/catch.hpp>

#include "cli/args.hpp"

using namespace pgdeploy::cli;

namespace {

const CommandSpec& spec() {
    static const CommandSpec s{"up",
                               "",
                               "test",
                               {{"target", 0, true, "V", ""},
                                {"dry-run", 0, false, "", ""},
                                {"steps", 0, true, "N", ""},
                                {"to", 0, true, "V", ""}},
                               0,
                               1,
                               "DIR"};
    return s;
}

std::string error_of(const std::vector<std::string>& args) {
    try {
        parse_args(spec(), args);
    } catch (const ArgumentError& e) {
        CHECK(e.exit_code() == 2);
        return e.what();
    }
    return "(no error)";
}

}  // namespace

TEST_CASE("valid command lines parse", "[cli][args]") {
    auto a = parse_args(spec(), {"--target", "0003", "--dry-run", "--json", "-v", "dir"});
    CHECK(a.get("target") == "0003");
    CHECK(a.has("dry-run"));
    CHECK(a.has("json"));
    CHECK(a.has("verbose"));
    REQUIRE(a.positionals.size() == 1);
    CHECK(a.positionals[0] == "dir");

    auto b = parse_args(spec(), {"dir", "--target=0004", "--dsn", "host=x"});
    CHECK(b.get("target") == "0004");
    CHECK(b.get("dsn") == "host=x");
    CHECK(b.positionals == std::vector<std::string>{"dir"});

    auto c = parse_args(spec(), {"--", "--not-an-option"});
    CHECK(c.positionals == std::vector<std::string>{"--not-an-option"});

    // A value that looks like an option is still the value of the option before it.
    auto d = parse_args(spec(), {"--target", "--x"});
    CHECK(d.get("target") == "--x");
}

TEST_CASE("bad command lines are usage errors", "[cli][args]") {
    CHECK(error_of({"--bogus"}) == "unknown option --bogus");
    CHECK(error_of({"-x"}) == "unknown option -x");
    CHECK(error_of({"--targ", "1"}) == "unknown option --targ (did you mean --target?)");
    CHECK(error_of({"--target"}) == "option --target needs a value");
    CHECK(error_of({"--target="}) == "option --target needs a non-empty value");
    CHECK(error_of({"--dry-run=yes"}) == "option --dry-run does not take a value");
    CHECK(error_of({"--dry-run", "--dry-run"}) == "--dry-run given more than once");
    CHECK(error_of({"a", "b"}) == "unexpected argument \"b\"");
    CHECK(error_of({"--log-format"}) == "option --log-format needs a value");
}

TEST_CASE("missing positional, conflicts, numbers and durations", "[cli][args]") {
    CommandSpec load{"load", "DIR", "", {}, 1, 1, "DIR"};
    CHECK_THROWS_WITH(parse_args(load, {}), "missing argument DIR");
    CHECK_NOTHROW(parse_args(load, {"--help"}));  // --help needs no positional

    auto a = parse_args(spec(), {"--steps", "2", "--to", "0003"});
    CHECK_THROWS_WITH(reject_together(a, "steps", "to"), "--steps and --to cannot be used together");

    CHECK(parse_positive_int("steps", "3") == 3);
    CHECK_THROWS_WITH(parse_positive_int("steps", "0"), "--steps must be between 1 and 1000000, not 0");
    CHECK_THROWS_WITH(parse_positive_int("steps", "-1"), "--steps needs a positive integer, not \"-1\"");
    CHECK_THROWS_WITH(parse_positive_int("steps", "2x"), "--steps needs a positive integer, not \"2x\"");

    CHECK_NOTHROW(check_version_arg("--target", std::string("0001")));
    CHECK_NOTHROW(check_version_arg("--target", std::nullopt));
    CHECK_THROWS_WITH(check_version_arg("--target", std::string("a b")),
                      "--target \"a b\" is not a valid version (1-64 characters from A-Z a-z 0-9 . _ -, starting "
                      "with a letter or digit)");

    CHECK(parse_duration_ms("lock-wait", "10s") == 10000);
    CHECK(parse_duration_ms("lock-wait", "10") == 10000);
    CHECK(parse_duration_ms("lock-wait", "250ms") == 250);
    CHECK(parse_duration_ms("lock-wait", "2min") == 120000);
    CHECK_THROWS_AS(parse_duration_ms("lock-wait", "soon"), ArgumentError);
    CHECK_THROWS_AS(parse_duration_ms("lock-wait", "10 s"), ArgumentError);
}

TEST_CASE("over-long text options are usage errors naming the limit", "[cli][args]") {
    static const CommandSpec s{"rollback", "", "test", {{"reason", 0, true, "TEXT", ""}}, 0, 0, ""};
    auto args = parse_args(s, {"--reason", std::string(1000, 'r')});
    CHECK_NOTHROW(check_length_arg(args, "reason", 1000));
    CHECK_NOTHROW(check_length_arg(parse_args(s, {}), "reason", 1000));
    std::string euros;
    for (int i = 0; i < 1000; ++i)
        euros += "\xE2\x82\xAC";  // 1000 characters, 3000 bytes: within the limit
    CHECK_NOTHROW(check_length_arg(parse_args(s, {"--reason", euros}), "reason", 1000));
    try {
        check_length_arg(parse_args(s, {"--reason", std::string(std::size_t{200} * 1024, 'r')}), "reason", 1000);
        FAIL("expected an ArgumentError");
    } catch (const ArgumentError& e) {
        CHECK(e.exit_code() == 2);
        CHECK(std::string(e.what()) == "--reason is 204800 characters long; at most 1000 are allowed");
    }
}
