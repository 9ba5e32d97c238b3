// pg_deploy: choosing a free archive table name in schema deploy_archive (the naming rule: pg_deploy/archive_name.hpp).
#pragma once

#include <cstdint>
#include <string>

namespace pgdeploy {

// free_archive_table returns an unquoted name, not yet used in schema deploy_archive, for the archive of
// deployment_id's drop of table (or of its column when column is not empty), cut on a character boundary of the
// database encoding.
std::string free_archive_table(int64_t deployment_id, const std::string& table, const std::string& column);

}  // namespace pgdeploy
