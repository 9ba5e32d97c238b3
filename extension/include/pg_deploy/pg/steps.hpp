// pg_deploy: the steps of non-transactional scripts (deploy.checkpoints). PostgreSQL will not run CREATE INDEX
// CONCURRENTLY, DROP INDEX CONCURRENTLY, VACUUM and the like inside a function, so deploy.up() (for an up SQL) and
// deploy.down()/deploy.rollback() (for a down SQL) record the script's statements as steps of their deployment, and a
// client runs them at top level, one at a time, through deploy.next_step(), deploy.step_done() and
// deploy.step_failed() (pg/steps.cpp). Whether a step applies or reverts is its deployment's kind: an up
// deployment's steps apply their migration, a down or rollback deployment's steps revert it.
#pragma once

#include <cstdint>
#include <string>

#include "pg_deploy/pg/engine.hpp"

namespace pgdeploy {

// plan_steps records each statement of `sql` (the up or down SQL of migration `version`) as a step of the deployment,
// in order. Planning the same migration twice for a deployment adds nothing.
void plan_steps(int64_t deployment_id, const std::string& version, const std::string& sql, const std::string& what);

// unfinished_steps: the deployment's steps that are not done, in order. Columns: id, version, step, statement, state,
// name (of the migration), lock_timeout_ms (the migration's own, from the catalog for an up, the ledger for a revert).
Rows unfinished_steps(int64_t deployment_id);

// awaiting_json is the "awaiting_nontransactional" member of a result: the migration whose steps come first among
// `steps` (unfinished_steps), {"version", "name", "steps": [{"step_id", "step", "statement", "state"}]}.
Json awaiting_json(const Rows& steps);

// notice_awaiting tells a psql user that deployment `deployment_id` (of `kind`: up, down or rollback) waits for its
// unfinished steps, and how to run them and continue.
void notice_awaiting(const std::string& kind, int64_t deployment_id, const Rows& steps);

}  // namespace pgdeploy
