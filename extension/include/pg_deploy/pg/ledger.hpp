// pg_deploy: ledger reads and writes shared by up, down/rollback and the non-transactional steps.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "pg_deploy/pg/engine.hpp"

namespace pgdeploy {

// A registered migration as up() needs it.
struct Migration {
    std::string version, sort_key, name, up_sql, checksum, reversibility;
    Cell down_sql, down_checksum;
    bool transactional = true;
    std::optional<int> lock_timeout_ms;  // the migration's lock_timeout directive (lock_retry.hpp)
};

// current_version: the applied row with the greatest sort_key (nullopt when nothing is applied).
Cell current_version();

// refuse_if_open_marker refuses to start while a rollback marker is open (55000, naming it).
void refuse_if_open_marker(const char* operation);

// AppliedWriter collects the migrations a call applied and writes them, with their migration_applied events, in one
// statement per flush.
class AppliedWriter {
public:
    void add(const Migration& m, double duration_ms);  // applied now
    void flush(int64_t deployment_id);

private:
    std::vector<Cell> version_, sort_key_, name_, checksum_, down_sql_, down_checksum_, reversibility_;
    std::vector<bool> transactional_;
    std::vector<Cell> lock_timeout_ms_;
    std::vector<double> duration_ms_;
    std::vector<int64_t> at_;
};

// The out-of-order state kept in deploy.ledger_stats by the trigger deploy.ledger_changed (20_engine.sql):
// `proven` when no change since the last full check can have left a pending migration older than the newest applied.
struct OrderState {
    int64_t generation = 0;
    bool proven = false;
};
OrderState order_state();
// mark_order_checked records that the full check found nothing at `generation` (a no-op if it moved meanwhile).
void mark_order_checked(int64_t generation);

// finish_deployment sets a deployment's final (or still running) state. error is a failure document: readers see its
// public part (deployments.error), admins also the private part (error_private), split by deploy.public_error().
void finish_deployment(int64_t id, const char* state, const Cell& version_after, const std::optional<Json>& error);

}  // namespace pgdeploy
