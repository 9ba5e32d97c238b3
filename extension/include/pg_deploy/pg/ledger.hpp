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
    Cell down_sql;
    bool transactional = true;
};

// current_version: the applied row with the greatest sort_key (nullopt when nothing is applied).
Cell current_version();

// open_marker_guard refuses to start while a rollback marker is open (55000, naming it).
void refuse_if_open_marker(const char* operation);

// mark_applied inserts the applied row of m for deployment_id and logs migration_applied.
class AppliedWriter {
public:
    void write(const Migration& m, int64_t deployment_id, double duration_ms, EventLog& events);

private:
    Plan plan_;
};

// finish_deployment sets a deployment's final (or still running) state.
void finish_deployment(int64_t id, const char* state, const Cell& version_after, const std::optional<Json>& error);

}  // namespace pgdeploy
