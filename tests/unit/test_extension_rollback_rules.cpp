// The rollback rule (extension/src/rollback_rules.cpp), tested without a server: what deploy.rollback() refuses,
// what deploy.rollback_eligibility() answers and what deploy.execute_rollback() records, all from the same facts.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "pg_deploy/rollback_rules.hpp"

using namespace pgdeploy;

namespace {

// A finished up deployment, inside the default window, with one reversible migration applied.
RollbackFacts eligible() {
    RollbackFacts f;
    f.deployment_id = 7;
    f.kind = "up";
    f.state = "succeeded";
    f.applied = 1;
    f.age_s = 60;
    f.ended_at = "2026-01-01 00:00:00+00";
    f.window = "7d";
    f.window_s = 7 * 86400;
    return f;
}

std::vector<std::string> codes(const RollbackFacts& f) {
    std::vector<std::string> out;
    for (const Reason& r : rollback_reasons(f))
        out.push_back(r.code);
    return out;
}

}  // namespace

TEST_CASE("an eligible deployment has no reasons and is not refused", "[extension][rollback]") {
    RollbackFacts f = eligible();
    CHECK(rollback_reasons(f).empty());
    CHECK_FALSE(rollback_refusal(f, false));
    CHECK_FALSE(marker_refusal(f, false));
    Json doc = eligibility_document(f);
    CHECK(doc["eligible"] == true);
    CHECK(doc["eligible_with_force"] == true);
    CHECK(doc["rollback_window"] == "7d");
    CHECK(doc["later_deployments"] == Json::array());
}

TEST_CASE("the window and irreversible migrations are forceable, and refused with their own SQLSTATEs",
          "[extension][rollback]") {
    RollbackFacts f = eligible();
    f.outside_window = true;
    f.age_s = 8 * 86400;
    f.irreversible = {"3"};
    CHECK(codes(f) == std::vector<std::string>{"irreversible", "outside_window"});
    Json doc = eligibility_document(f);
    CHECK(doc["eligible"] == false);
    CHECK(doc["eligible_with_force"] == true);
    CHECK(doc["reasons"][1]["message"] == "the rollback window (pg_deploy.rollback_window = 7d) has passed");

    std::optional<DeployError> refused = rollback_refusal(f, false);
    REQUIRE(refused);
    CHECK(refused->code() == "PD006");
    CHECK(std::string(refused->what()) ==
          "deployment 7 is outside pg_deploy.rollback_window: it finished 8.0 days ago, the window is 7.0 days");
    CHECK(refused->detail() == "finished at 2026-01-01 00:00:00+00");
    CHECK_FALSE(rollback_refusal(f, true));  // irreversible ones are refused by the revert itself

    std::optional<MarkerRefusal> marker = marker_refusal(f, false);
    REQUIRE(marker);
    CHECK(marker->failure["sqlstate"] == "PD006");
    CHECK_FALSE(marker->retryable);
    CHECK(marker->failure["message"] ==
          "rollback not eligible: irreversible migrations: 3; the rollback window (pg_deploy.rollback_window = 7d) has "
          "passed");
    CHECK_FALSE(marker_refusal(f, true));

    f.outside_window = false;
    REQUIRE(marker_refusal(f, false));
    CHECK(marker_refusal(f, false)->failure["sqlstate"] == "PD002");
}

TEST_CASE("irreversible migrations are refused with PD002 unless forced", "[extension][rollback]") {
    std::optional<DeployError> refused = irreversible_refusal({"0005 (irreversible)", "0006 (x)"}, false);
    REQUIRE(refused);
    CHECK(refused->code() == "PD002");
    CHECK(std::string(refused->what()) == "irreversible migration(s) refused: 0005 (irreversible), 0006 (x)");
    CHECK_FALSE(irreversible_refusal({"0005 (irreversible)"}, true));
    CHECK_FALSE(irreversible_refusal({}, false));
}

TEST_CASE("a later deployment that builds on it is never forceable", "[extension][rollback]") {
    RollbackFacts f = eligible();
    f.later = {9, 11};
    CHECK(codes(f) == std::vector<std::string>{"later_deployments"});
    CHECK(eligibility_document(f)["eligible_with_force"] == false);
    CHECK(eligibility_document(f)["later_deployments"] == Json::array({9, 11}));
    for (bool force : {false, true}) {
        std::optional<DeployError> refused = rollback_refusal(f, force);
        REQUIRE(refused);
        CHECK(refused->code() == "55000");
        CHECK(std::string(refused->what()) ==
              "deployment 7 cannot be rolled back: deployment 9 applied migrations after it and builds on it");
        REQUIRE(marker_refusal(f, force));
        CHECK(marker_refusal(f, force)->failure["sqlstate"] == "55000");
    }
}

TEST_CASE("a running deployment: an operator may force deploy.rollback(), a marker waits", "[extension][rollback]") {
    RollbackFacts f = eligible();
    f.state = "running";
    CHECK(codes(f) == std::vector<std::string>{"still_running"});
    REQUIRE(rollback_refusal(f, false));
    CHECK(rollback_refusal(f, false)->code() == "55000");
    CHECK_FALSE(rollback_refusal(f, true));
    std::optional<MarkerRefusal> marker = marker_refusal(f, true);
    REQUIRE(marker);
    CHECK(marker->retryable);
    CHECK(marker->failure["message"] == "rollback not eligible: deployment 7 is still running");
}

TEST_CASE("kind and state refusals keep their order and SQLSTATEs", "[extension][rollback]") {
    RollbackFacts f = eligible();
    f.kind = "rollback";
    f.state = "rolled_back";
    f.rolled_back_by = 12;
    f.applied = 0;
    CHECK(codes(f) == std::vector<std::string>{"not_an_up_deployment", "already_rolled_back"});
    CHECK(rollback_reasons(f)[1].message == "deployment 7 was already rolled back by deployment 12");
    REQUIRE(rollback_refusal(f, true));
    CHECK(rollback_refusal(f, true)->code() == "22023");
    f.kind = "up";
    REQUIRE(rollback_refusal(f, true));
    CHECK(rollback_refusal(f, true)->code() == "55000");
    CHECK(std::string(rollback_refusal(f, true)->what()) == "deployment 7 is already rolled back (by deployment 12)");
}

TEST_CASE("nothing applied any more is a reason to eligibility but not a refusal to deploy.rollback()",
          "[extension][rollback]") {
    RollbackFacts f = eligible();
    f.applied = 0;
    CHECK(codes(f) == std::vector<std::string>{"nothing_applied"});
    CHECK_FALSE(rollback_refusal(f, false));
}

TEST_CASE("no candidate: nothing to roll back, not an error", "[extension][rollback]") {
    Json doc = no_candidate_document("1h");
    CHECK(doc["deployment_id"].is_null());
    CHECK(doc["eligible"] == false);
    CHECK(doc["reasons"][0]["code"] == "nothing_to_roll_back");
    CHECK(doc["rollback_window"] == "1h");
}

TEST_CASE("human_age picks the unit a person would", "[extension][rollback]") {
    CHECK(human_age(40) == "40 seconds");
    CHECK(human_age(12 * 60) == "12 minutes");
    CHECK(human_age(3.5 * 3600) == "3.5 hours");
    CHECK(human_age(8 * 86400) == "8.0 days");
}
