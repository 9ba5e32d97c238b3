// pg_deploy: the ledger's side of the rollback rule (pg_deploy/rollback_rules.hpp decides): which deployment a
// rollback targets by default, and the facts that decide whether it may be rolled back.
#pragma once

#include <cstdint>
#include <optional>

#include "pg_deploy/rollback_rules.hpp"

namespace pgdeploy {

// newest_revertible_deployment is the default target of deploy.rollback(), deploy.rollback_eligibility() and
// deploy.request_rollback(): the newest up deployment that finished (succeeded or failed) and still has migrations
// applied.
std::optional<int64_t> newest_revertible_deployment();

// rollback_facts reads what decides whether deployment `id` may be rolled back now; nothing when it does not exist.
std::optional<RollbackFacts> rollback_facts(int64_t id);

}  // namespace pgdeploy
