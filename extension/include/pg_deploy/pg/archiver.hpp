// pg_deploy: the archive that keeps what a lossy revert drops (schema deploy_archive, listed in deploy.archived).
#pragma once

#include <cstdint>
#include <string>

#include "pg_deploy/pg/engine.hpp"
#include "pg_deploy/pg/sqltext.hpp"

namespace pgdeploy {

/*
 * Archiver copies what a lossy down script is about to drop into schema deploy_archive: a dropped table entirely,
 * a dropped column together with the table's primary key (or the whole row when there is none). It reads the
 * statements with the raw parser and archives just before each statement runs, so renames earlier in the same
 * script are seen. It cannot see drops hidden in DO blocks or functions, nor objects removed by CASCADE. Each copy
 * is recorded in deploy.archived under the object's quoted name (schema.table[.column], each part quoted).
 */
class Archiver {
public:
    Archiver(int64_t deployment_id, const std::string& version, EventLog& events)
        : deployment_id_(deployment_id), version_(version), events_(events) {}

    // run_statement_by_statement runs the down SQL (with the caller's rights), archiving before each drop.
    void run_statement_by_statement(const std::string& down_sql);
    // archived lists the copies made: [{"object_type", "object_name", "archive_table", "row_count"}].
    const Json& archived() const { return archived_; }

private:
    void archive(const DropTarget& d);

    int64_t deployment_id_;
    std::string version_;
    EventLog& events_;
    Json archived_ = Json::array();
};

}  // namespace pgdeploy
