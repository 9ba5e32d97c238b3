// Length limits (common/limits): character counting, truncation with a marker, and fitting JSON into the extension's
// 64 kB for event details, measured the way PostgreSQL prints a jsonb.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "common/limits.hpp"

using namespace pgdeploy::common;
using nlohmann::json;

TEST_CASE("utf8_chars counts characters, not bytes", "[common][limits]") {
    CHECK(utf8_chars("") == 0);
    CHECK(utf8_chars("abc") == 3);
    CHECK(utf8_chars("h\xC3\xA9llo") == 5);                  // é is two bytes
    CHECK(utf8_chars("\xE2\x82\xAC\xF0\x9F\x98\x80") == 2);  // € and an emoji
}

TEST_CASE("truncate_chars keeps short text and cuts long text on a character boundary", "[common][limits]") {
    CHECK(truncate_chars("short", 10) == "short");
    CHECK(truncate_chars(std::string(10, 'x'), 10) == std::string(10, 'x'));
    std::string cut = truncate_chars(std::string(100, 'x'), 20);
    CHECK(utf8_chars(cut) == 20);
    CHECK(cut == std::string(6, 'x') + kTruncatedMarker);
    std::string euros;
    for (int i = 0; i < 3000; ++i)
        euros += "\xE2\x82\xAC";
    std::string e = truncate_chars(euros, 1000);
    CHECK(utf8_chars(e) == 1000);
    CHECK(e.rfind(kTruncatedMarker) == e.size() - std::string(kTruncatedMarker).size());
    CHECK(e.compare(0, 3, "\xE2\x82\xAC") == 0);
    CHECK((e.size() - std::string(kTruncatedMarker).size()) % 3 == 0);  // no character cut in half
}

TEST_CASE("json_text_size is the length of PostgreSQL's jsonb text", "[common][limits]") {
    // PostgreSQL 15: length('{"a":1,"b":[1,2],"c":"x,y:z"}'::jsonb::text) is 35: {"a": 1, "b": [1, 2], "c": "x,y:z"}
    CHECK(json_text_size(json::parse(R"({"a":1,"b":[1,2],"c":"x,y:z"})")) == 35);
    CHECK(json_text_size(json::parse(R"({"q":"say \"a, b\""})")) == std::string(R"({"q": "say \"a, b\""})").size());
}

TEST_CASE("fit_json leaves small documents alone and makes big ones fit", "[common][limits]") {
    json small = {{"kind", "rollback"}, {"checks", {"a", "b"}}};
    json copy = small;
    CHECK_FALSE(fit_json(small));
    CHECK(small == copy);

    // A decision over 5000 failing checks: the per-check state alone is ~1.5 MB.
    json big = {{"kind", "rollback"}, {"message", std::string(300000, 'm')}, {"watcher_id", "w1"}};
    json names = json::array();
    json checks = json::object();
    for (int i = 0; i < 5000; ++i) {
        std::string n = "check-" + std::to_string(i);
        names.push_back(n);
        checks[n] = {{"state", "failing"}, {"consecutive_failures", 3}, {"detail", std::string(200, 'd')}};
    }
    big["triggering_checks"] = names;
    big["checks"] = checks;
    CHECK(fit_json(big));
    CHECK(json_text_size(big) <= kMaxDetailsBytes);
    CHECK(big["kind"] == "rollback");  // small members survive whole
    CHECK(big["watcher_id"] == "w1");
    CHECK(utf8_chars(big["message"].get<std::string>()) == 1000);
    CHECK(big["triggering_checks"].size() > 100);  // as much as fits is kept, from the start
    CHECK(big["triggering_checks"][0] == "check-0");
    CHECK(big["truncated"]["long_strings"].get<int>() >= 1);
    CHECK(big["truncated"]["checks"].get<int>() + static_cast<int>(big["checks"].size()) == 5000);

    json tiny_budget = {{"a", std::string(500, 'a')}, {"b", std::string(500, 'b')}};
    CHECK(fit_json(tiny_budget, 200));
    CHECK(json_text_size(tiny_budget) <= 200);

    json not_object = json::array({std::string(100, 'x')});
    CHECK(fit_json(not_object, 50));
    CHECK(not_object == json{{"truncated", "value"}});
}
