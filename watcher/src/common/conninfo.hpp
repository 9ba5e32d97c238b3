// Conninfo handling: scrubbing passwords out of anything that may be logged or printed.
//
// pgdeploy passes connection strings to libpq untouched (key=value conninfo or postgresql:// URIs, service=,
// PG* variables and .pgpass all work natively); this file only makes sure a password never reaches a log line,
// an error message or JSON output.
#pragma once
#include <string>

namespace pgdeploy::common {

// scrub_conninfo: the conninfo or URI with every password replaced by ***:
//   "host=db password=s3cret"          -> "host=db password=***"
//   "host=db password='a b\' c'"       -> "host=db password=***"
//   "postgresql://u:s3cret@h/db"       -> "postgresql://u:***@h/db"
//   "postgresql://h/db?password=s3cret" -> "postgresql://h/db?password=***"
std::string scrub_conninfo(const std::string& conninfo);

// scrub_secrets: the same treatment for free text (log messages, libpq error messages) that may embed a conninfo
// or URI anywhere. Also removes the literal `secret` when it is non-empty (e.g. PGPASSWORD's value).
std::string scrub_secrets(const std::string& text, const std::string& secret = {});

}  // namespace pgdeploy::common
