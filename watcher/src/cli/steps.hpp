// The client half of a non-transactional migration: PostgreSQL refuses CREATE INDEX CONCURRENTLY and friends inside
// a function, so deploy.next_step() hands out one statement at a time and `pgdeploy up` runs it at top level.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "common/connection.hpp"
#include "common/lock_safety.hpp"
#include "common/progress.hpp"

namespace pgdeploy::cli {

struct Context;

// StepRecords: what the JSON of `pgdeploy up` reports about the work done at top level and the retries, across all
// rounds of deploy.up().
struct StepRecords {
    nlohmann::json steps = nlohmann::json::array();         // [{"step_id","version","step","ok","duration_ms",...}]
    nlohmann::json lock_retries = nlohmann::json::array();  // the extension's rounds' and our own, in order
};

// run_steps: runs the awaiting migration's steps until next_step() has none left; counter prefixes the progress
// lines ("[2/3] "), total_ms receives the steps' time. Returns the failure object ({"sqlstate","message",...,
// "version","name","step","statement"}), or null when every step is done.
nlohmann::json run_steps(const Context& ctx, common::Connection& conn, common::ProgressMonitor& monitor,
                         const nlohmann::json& awaiting, StepRecords& records, const std::string& counter,
                         double& total_ms);

// step_lock_timeout_ms: next_step's "lock_timeout_ms" when it is a positive integer; 0 otherwise (null, absent: the
// statement runs without a lock timeout of ours).
long long step_lock_timeout_ms(const nlohmann::json& step);

// step_retry_budget: next_step's "lock_retry" ({"attempts","time_ms"}); the defaults where absent.
common::LockRetryBudget step_retry_budget(const nlohmann::json& step);

}  // namespace pgdeploy::cli
