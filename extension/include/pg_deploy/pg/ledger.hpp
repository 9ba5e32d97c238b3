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
    bool down_transactional = true;      // copied with down_sql into the applied row
    std::optional<int> lock_timeout_ms;  // the migration's lock_timeout directive (lock_retry.hpp)
};

// stored_sql_drift refuses a migration whose stored up or down SQL no longer matches its checksum (changed by a
// superuser or a tampered restore after registration): it is never run, and its down SQL is never copied.
std::optional<SqlFailure> stored_sql_drift(const Migration& m);

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
    std::vector<bool> transactional_, down_transactional_;
    std::vector<Cell> lock_timeout_ms_;
    std::vector<double> duration_ms_;
    std::vector<int64_t> at_;
};

// One migration a revert took out of the ledger: its down SQL ran (or, forced, nothing did).
struct RevertedMigration {
    std::string version, name, reversibility;
    bool sql_run = true;
    int64_t from_deployment = 0;  // the deployment that had applied it
    double duration_ms = 0;
    int64_t archived = 0;  // archive entries of what a lossy down SQL dropped
    int64_t at = 0;        // now_us() when it was done
};

// remove_reverted deletes the reverted migrations' applied rows and writes their migration_reverted events under the
// revert deployment, in one statement (applied_count is kept by the trigger on deploy.applied). The one way a
// migration leaves the ledger: a revert's batch and the last step of a non-transactional down SQL both end here.
void remove_reverted(int64_t deployment_id, const std::vector<RevertedMigration>& reverted);

// A deployment that is still running: it waits for non-transactional steps (of an up SQL in an up deployment, of a
// down SQL in a down or rollback deployment), or its client was interrupted.
struct RunningDeployment {
    int64_t id = 0;
    std::string kind;                // up | down | rollback
    std::optional<int64_t> reverts;  // rollback: the deployment it undoes
    std::string waits_for;           // the version whose steps are not done ("" when none are left)
    bool is_revert() const { return kind == "down" || kind == "rollback"; }
};
// newest_running: the newest running deployment (of a revert kind only, when reverts_only).
std::optional<RunningDeployment> newest_running(bool reverts_only);

// running_refusal is the error `operation` gets while deployment `d` runs: it names it and says how to finish it
// (55000).
DeployError running_refusal(const std::string& operation, const RunningDeployment& d);

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
