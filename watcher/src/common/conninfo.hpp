// Secret scrubbing: the one place that decides what a password looks like in text pgdeploy logs, prints or stores.
//
// pgdeploy passes connection strings to libpq untouched (key=value conninfo or postgresql:// URIs, service=,
// PG* variables and .pgpass all work natively); this file makes sure a password never reaches a log line, an error
// message, a JSON document, an event written to the database, the state file or a hook's environment.
//
// Two kinds of scrubbing, both applied by scrub():
//   - by shape: the value of any key whose name ends in "password" (conninfo `password=`, `sslpassword=`, an env
//     dump's `PGPASSWORD=`, JSON's `"password": "..."`, a URI query's `?password=`) and the password in any URL's
//     user info (`scheme://user:secret@host`);
//   - by value: every secret registered with register_secret() (PGPASSWORD, the passwords of the DSNs pgdeploy
//     connects with or read from its configuration), wherever it appears verbatim.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace pgdeploy::common {

// scrub_conninfo: the conninfo or URI with every password replaced by ***:
//   "host=db password=s3cret"           -> "host=db password=***"
//   "host=db password='a b\' c'"        -> "host=db password=***"
//   "postgresql://u:s3cret@h/db"        -> "postgresql://u:***@h/db"
//   "postgresql://h/db?password=s3cret" -> "postgresql://h/db?password=***"
std::string scrub_conninfo(const std::string& conninfo);

// scrub_secrets: the shape rules for free text (log messages, libpq error messages, program output) that may embed
// a conninfo, a URL or a `NAME_PASSWORD=value` anywhere. Also removes the literal `secret` when it is 3+ characters
// long. Does not consult the registry (scrub() does).
std::string scrub_secrets(const std::string& text, const std::string& secret = {});

// register_secret: one more value to remove verbatim from everything scrub() sees from now on (thread-safe).
// Values shorter than 3 characters are ignored: they would blank out ordinary words.
void register_secret(const std::string& secret);

// register_dsn_secrets: registers the password(s) a conninfo or URI carries (libpq's own parser decides). A DSN
// that libpq cannot parse registers nothing; returns false then.
bool register_dsn_secrets(const std::string& dsn);

// register_environment_secrets: registers PGPASSWORD from the environment (called by setup_logging).
void register_environment_secrets();

// scrub: scrub_secrets() plus every registered secret. Use it on anything that leaves the process.
std::string scrub(const std::string& text);

// scrub_json: scrub() applied to every string value (not the keys: they are pgdeploy's own) of a JSON document.
void scrub_json(nlohmann::json& doc);

// scrub_unparsable_dsn_error: libpq's message about a DSN it could not parse quotes pieces of that DSN (`missing "="
// after "s3cret"`, `unexpected spaces found in "postgresql://u:pa ss@h"`), and without a parse nobody knows which
// piece is the password. Every quoted piece is elided unless it is a key of the DSN (a misspelt keyword is worth
// showing: `invalid connection option "hots"`).
std::string scrub_unparsable_dsn_error(const std::string& message, const std::string& dsn);

}  // namespace pgdeploy::common
