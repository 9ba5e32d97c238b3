// pg_deploy: deploy.version_key() and deploy.register(): the catalog of known migrations.
#include <string>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/engine.hpp"
#include "pg_deploy/pg/limits.hpp"
#include "pg_deploy/pg/settings.hpp"
#include "pg_deploy/pg/sqltext.hpp"
#include "pg_deploy/version.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
#include "common/sha2.h"
}

namespace pgdeploy {

namespace {

/*
 * version_key_impl: deploy.version_key(text). Immutable and strict: a NULL never reaches it; an invalid version
 * raises 22023 so that a bad version can never get a key.
 */
Datum version_key_impl(FunctionCallInfo fcinfo) {
    std::string v = text_arg(fcinfo, 0);
    check_version(v);
    return PointerGetDatum(make_text(version_key(v)));
}

bool blank(const std::string& s) {
    return s.find_first_not_of(" \t\r\n\f") == std::string::npos;
}

// What check_script found in a script.
struct ScriptFacts {
    std::string non_transactional;  // what makes the first statement impossible inside a transaction block, if any
    std::size_t statements = 0;     // 0: only comments and blanks, a deliberate no-op
};

// check_script parses one script and refuses what can never run as a migration. Up and down scripts may hold
// statements that cannot run inside a transaction block (they then run statement by statement at top level); a verify
// script may not (it always runs inside a transaction that is rolled back).
ScriptFacts check_script(const std::string& sql, const std::string& what, const std::string& version,
                         bool allow_non_transactional) {
    check_script_size(sql, what + " of migration " + version);
    ScriptFacts facts;
    for_each_statement(sql, what + " of migration " + version, [&](const SqlStatement& st) {
        ++facts.statements;
        if (st.transaction_control) {
            throw DeployError(sqlstate::transaction_control,
                              what + " of migration " + version + " controls transactions at line " +
                                  std::to_string(st.line) + ": " + st.text,
                              {},
                              "pg_deploy runs every migration in its own subtransaction and commits the batch "
                              "itself; remove BEGIN/COMMIT/ROLLBACK/SAVEPOINT from the migration.");
        }
        if (!allow_non_transactional && !st.non_transactional.empty()) {
            throw DeployError(sqlstate::non_transactional,
                              what + " of migration " + version + " uses " + st.non_transactional + " (line " +
                                  std::to_string(st.line) + "), which cannot run inside a transaction",
                              {},
                              "Verifications run inside a transaction that is rolled back. Keep " +
                                  st.non_transactional + " in the up or down SQL, which run it at top level.");
        }
        if (facts.non_transactional.empty())
            facts.non_transactional = st.non_transactional;
    });
    if (facts.statements == 0)
        pg_notice(what + " of migration " + version + " holds no SQL statement: it is registered as a no-op");
    return facts;
}

// parse_lock_timeout reads the lock_timeout argument as PostgreSQL reads the setting ('2s', '500ms', '500').
std::optional<int> parse_lock_timeout(const std::optional<std::string>& text, const std::string& version) {
    if (!text)
        return std::nullopt;
    int ms = 0;
    bool ok = false;
    const char* value = text->c_str();
    pg_guard([&] { ok = parse_int(value, &ms, GUC_UNIT_MS, nullptr); });
    if (!ok || ms < 0) {
        throw DeployError(sqlstate::invalid_parameter,
                          "lock_timeout \"" + *text + "\" of migration " + version + " is not a valid duration", {},
                          "Use a duration such as 2s or 500ms (0 waits as long as the session allows).");
    }
    return ms;
}

// Registration is one deploy.register() call's arguments, checked, with their checksums.
struct Registration {
    std::string version, name, up_sql, reversibility, key, checksum;
    std::optional<std::string> down_sql, verify_sql;
    Cell down_checksum, verify_checksum;
    bool transactional = true;
    bool down_transactional = true;
    bool replace = false;
    std::optional<int> lock_timeout_ms;
};

/*
 * transactional_flag decides how a script runs: `declared` wins, NULL means detected (`detected` names the first
 * statement that cannot run inside a transaction, or is empty). Declaring a script transactional that holds such a
 * statement is refused (PD004): it could never run.
 */
bool transactional_flag(const std::optional<bool>& declared, const std::string& detected, const std::string& what,
                        const std::string& version) {
    if (declared.value_or(false) && !detected.empty()) {
        std::string argument = what == "up_sql" ? "transactional" : "down_transactional";
        std::string runner = what == "up_sql" ? "deploy.up() then plans its statements as steps that `pgdeploy up`"
                                              : "a revert then plans its statements as steps that `pgdeploy rollback`";
        throw DeployError(sqlstate::non_transactional,
                          what + " of migration " + version + " is declared transactional but uses " + detected +
                              ", which cannot run inside a transaction",
                          {},
                          "Register it with " + argument + " => false (or leave it NULL to detect): " + runner +
                              " (or deploy.next_step() and deploy.step_done() from psql) runs at top level.");
    }
    return declared.value_or(detected.empty());
}

/*
 * read_registration checks everything that can be checked without running the SQL, before anything is stored:
 * required arguments, lengths, reversibility against the down SQL, syntax, transaction control and statements that
 * cannot run in a transaction; then takes the checksums.
 */
Registration read_registration(FunctionCallInfo fcinfo) {
    std::string version = required_text_arg(fcinfo, 0, "version");
    std::string name = required_text_arg(fcinfo, 1, "name");
    std::string up_sql = required_text_arg(fcinfo, 2, "up_sql");
    std::optional<std::string> down_sql = opt_text_arg(fcinfo, 3);
    std::optional<std::string> verify_sql = opt_text_arg(fcinfo, 4);
    std::optional<bool> transactional_arg = opt_bool_arg(fcinfo, 5);
    std::optional<std::string> reversibility_arg = opt_text_arg(fcinfo, 6);
    bool replace = bool_arg(fcinfo, 7, "replace");
    std::optional<int> lock_timeout_ms = parse_lock_timeout(opt_text_arg(fcinfo, 8), version);
    std::optional<bool> down_transactional_arg = opt_bool_arg(fcinfo, 9);

    check_version(version);
    if (blank(name))
        throw DeployError(sqlstate::invalid_parameter, "name of migration " + version + " is empty");
    check_input_length("name", name);
    if (verify_sql && blank(*verify_sql)) {
        throw DeployError(sqlstate::invalid_parameter, "verify_sql of migration " + version + " is empty", {},
                          "Pass NULL when there is nothing to verify.");
    }
    std::string reversibility = reversibility_arg.value_or(down_sql ? "reversible" : "irreversible");
    if (reversibility != "reversible" && reversibility != "lossy" && reversibility != "irreversible") {
        throw DeployError(sqlstate::invalid_parameter, "reversibility \"" + reversibility + "\" is not valid", {},
                          "Use reversible, lossy or irreversible.");
    }
    if (reversibility != "irreversible" && !down_sql) {
        throw DeployError(sqlstate::invalid_parameter,
                          "migration " + version + " is declared " + reversibility + " but has no down_sql");
    }
    if (reversibility == "irreversible" && down_sql) {
        throw DeployError(sqlstate::invalid_parameter,
                          "migration " + version + " is declared irreversible but has a down_sql", {},
                          "Drop the down_sql, or declare it reversible or lossy.");
    }

    bool transactional = transactional_flag(
        transactional_arg, check_script(up_sql, "up_sql", version, true).non_transactional, "up_sql", version);
    if (down_transactional_arg && !down_sql) {
        throw DeployError(sqlstate::invalid_parameter,
                          "down_transactional is given for migration " + version + ", which has no down_sql");
    }
    bool down_transactional = true;
    if (down_sql) {
        down_transactional = transactional_flag(down_transactional_arg,
                                                check_script(*down_sql, "down_sql", version, true).non_transactional,
                                                "down_sql", version);
    }
    if (!down_transactional && reversibility == "lossy") {
        throw DeployError(sqlstate::invalid_parameter,
                          "migration " + version + " is declared lossy but its down_sql runs at top level", {},
                          "A lossy revert archives what its down SQL drops in the same transaction as the drop. Move "
                          "the statements that cannot run in a transaction into a migration of their own.");
    }
    if (verify_sql)
        check_script(*verify_sql, "verify_sql", version, false);

    check_for_interrupts();  // the checks above and the checksum below each read the whole script once
    std::string key = version_key(version);
    std::string checksum = sha256_hex(up_sql);
    check_for_interrupts();
    Cell down_checksum = down_sql ? Cell(sha256_hex(*down_sql)) : Cell();
    Cell verify_checksum = verify_sql ? Cell(sha256_hex(*verify_sql)) : Cell();
    Registration reg;
    reg.version = version;
    reg.name = name;
    reg.up_sql = up_sql;
    reg.down_sql = down_sql;
    reg.verify_sql = verify_sql;
    reg.reversibility = reversibility;
    reg.transactional = transactional;
    reg.down_transactional = down_transactional;
    reg.replace = replace;
    reg.lock_timeout_ms = lock_timeout_ms;
    reg.key = key;
    reg.checksum = checksum;
    reg.down_checksum = down_checksum;
    reg.verify_checksum = verify_checksum;
    return reg;
}

// changed_fields names what a registration changes in the stored migration (r: name, checksum, down_sql, verify_sql,
// transactional, reversibility, down_transactional, lock_timeout_ms), or is empty when nothing does.
std::string changed_fields(const Row& r, const Registration& reg, const Cell& lock_timeout_text) {
    std::string out;
    auto note = [&](bool differs, const char* field) {
        if (differs)
            out += (out.empty() ? "" : ", ") + std::string(field);
    };
    note(r[0] != Cell(reg.name), "name");
    note(r[1] != Cell(reg.checksum), "up_sql");
    note(r[2] != reg.down_sql, "down_sql");
    note(r[3] != reg.verify_sql, "verify_sql");
    note(cell_bool(r[4]) != reg.transactional, "transactional");
    note(r[5] != Cell(reg.reversibility), "reversibility");
    note(cell_bool(r[6]) != reg.down_transactional, "down_transactional");
    note(r[7] != lock_timeout_text, "lock_timeout");
    return out;
}

/*
 * store_registration writes the checked registration to the catalog under the deploy lock, so that it never races an
 * up() reading the catalog: registered, unchanged, or updated (replace => true; an applied migration's up_sql never).
 */
std::string store_registration(const Registration& reg) {
    std::string outcome;
    {
        SpiSession spi;
        acquire_deploy_lock("deploy.register()");

        Rows clash = run_query(
            "SELECT version FROM deploy.migrations WHERE sort_key = $1 AND version <> $2 "
            "UNION ALL SELECT version FROM deploy.applied WHERE sort_key = $1 AND version <> $2 LIMIT 1",
            {TEXTOID, TEXTOID}, {p_text(reg.key), p_text(reg.version)});
        if (!clash.empty()) {
            throw DeployError(sqlstate::ambiguous_version,
                              "version \"" + reg.version + "\" is ambiguous: \"" + clash.front()[0].value_or("") +
                                  "\" is already known and orders the same",
                              "Digit runs compare as numbers, so leading zeros do not make a different version.",
                              "Use the existing spelling.");
        }
        Rows existing = run_query(
            "SELECT m.name, m.checksum, m.down_sql, m.verify_sql, m.transactional, m.reversibility, "
            "m.down_transactional, m.lock_timeout_ms FROM deploy.migrations m WHERE m.version = $1",
            {TEXTOID}, {p_text(reg.version)});
        Rows applied =
            run_query("SELECT checksum FROM deploy.applied WHERE version = $1", {TEXTOID}, {p_text(reg.version)});
        bool is_applied = !applied.empty();
        if (is_applied && applied.front()[0].value_or("") != reg.checksum) {
            throw DeployError(sqlstate::checksum_drift,
                              "migration " + reg.version + " is applied and its up_sql has changed (checksum drift)",
                              "applied checksum " + applied.front()[0].value_or("") + ", new checksum " + reg.checksum,
                              "Never edit an applied migration: add a new migration that makes the change.");
        }
        Json details{{"name", reg.name},
                     {"checksum", reg.checksum},
                     {"transactional", reg.transactional},
                     {"down_transactional", reg.down_transactional},
                     {"reversibility", reg.reversibility},
                     {"lock_timeout_ms", reg.lock_timeout_ms ? Json(*reg.lock_timeout_ms) : Json(nullptr)}};
        Param lock_timeout = reg.lock_timeout_ms ? p_int4(*reg.lock_timeout_ms) : p_null();
        Cell lock_timeout_text = reg.lock_timeout_ms ? Cell(std::to_string(*reg.lock_timeout_ms)) : Cell();
        EventLog events;
        if (existing.empty()) {
            run_query(
                "INSERT INTO deploy.migrations (version, sort_key, name, up_sql, down_sql, verify_sql, "
                "checksum, transactional, reversibility, down_checksum, verify_checksum, down_transactional, "
                "lock_timeout_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, BOOLOID, TEXTOID, TEXTOID, TEXTOID,
                 BOOLOID, INT4OID},
                {p_text(reg.version), p_text(reg.key), p_text(reg.name), p_text(reg.up_sql), p_text(reg.down_sql),
                 p_text(reg.verify_sql), p_text(reg.checksum), p_bool(reg.transactional), p_text(reg.reversibility),
                 p_text(reg.down_checksum), p_text(reg.verify_checksum), p_bool(reg.down_transactional), lock_timeout});
            events.log("migration_registered", std::nullopt, reg.version, std::nullopt, details);
            outcome = "registered";
        } else {
            const Row& r = existing.front();
            std::string changed = changed_fields(r, reg, lock_timeout_text);
            bool same = changed.empty();
            if (same) {
                outcome = "unchanged";
            } else if (!reg.replace) {
                throw DeployError(sqlstate::ambiguous_version,
                                  "migration " + reg.version + " is already registered with different content",
                                  "changed: " + changed + (is_applied ? " (applied)" : " (pending)"),
                                  is_applied ? "It is applied: its up_sql cannot change; name, down_sql and "
                                               "verify_sql can be replaced with replace => true."
                                             : "Pass replace => true to update a pending migration.");
            } else {
                run_query(
                    "UPDATE deploy.migrations SET name = $2, up_sql = $3, down_sql = $4, verify_sql = $5, "
                    "checksum = $6, transactional = $7, reversibility = $8, down_checksum = $9, "
                    "verify_checksum = $10, down_transactional = $11, lock_timeout_ms = $12, "
                    "registered_at = pg_catalog.clock_timestamp(), registered_by = deploy.acting_role() "
                    "WHERE version = $1",
                    {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, BOOLOID, TEXTOID, TEXTOID, TEXTOID, BOOLOID,
                     INT4OID},
                    {p_text(reg.version), p_text(reg.name), p_text(reg.up_sql), p_text(reg.down_sql),
                     p_text(reg.verify_sql), p_text(reg.checksum), p_bool(reg.transactional), p_text(reg.reversibility),
                     p_text(reg.down_checksum), p_text(reg.verify_checksum), p_bool(reg.down_transactional),
                     lock_timeout});
                details["previous_checksum"] = r[1].value_or("");
                events.log("migration_updated", std::nullopt, reg.version, std::nullopt, details);
                outcome = "updated";
            }
        }
        spi.finish();
    }
    return outcome;
}

// register_impl: deploy.register(version, name, up_sql, down_sql, verify_sql, transactional, reversibility, replace,
// lock_timeout, down_transactional).
Datum register_impl(FunctionCallInfo fcinfo) {
    Registration reg = read_registration(fcinfo);
    return PointerGetDatum(make_text(store_registration(reg)));
}

/*
 * unregister_impl: deploy.unregister(version) removes a pending migration from the catalog. An applied one is
 * refused (55000): revert it first, the ledger must keep what is applied.
 */
Datum unregister_impl(FunctionCallInfo fcinfo) {
    std::string version = required_text_arg(fcinfo, 0, "version");
    check_version(version);
    bool removed = false;
    {
        SpiSession spi;
        acquire_deploy_lock("deploy.unregister()");
        Rows applied = run_query("SELECT 1 FROM deploy.applied WHERE version = $1", {TEXTOID}, {p_text(version)});
        if (!applied.empty()) {
            throw DeployError(sqlstate::object_not_in_prerequisite_state,
                              "migration " + version + " is applied and cannot be unregistered", {},
                              "Revert it first with deploy.down() or deploy.rollback().");
        }
        Rows gone = run_query("DELETE FROM deploy.migrations WHERE version = $1 RETURNING checksum", {TEXTOID},
                              {p_text(version)});
        if (gone.empty()) {
            throw DeployError(sqlstate::no_data_found, "migration " + version + " is not registered");
        }
        EventLog events;
        events.log("migration_updated", std::nullopt, version, std::nullopt,
                   Json{{"unregistered", true}, {"checksum", gone.front()[0].value_or("")}});
        removed = true;
        spi.finish();
    }
    return BoolGetDatum(removed);
}

}  // namespace

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_version_key, pgdeploy::version_key_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_register, pgdeploy::register_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_unregister, pgdeploy::unregister_impl)
