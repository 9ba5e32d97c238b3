// A small RAII wrapper over a libpq connection, shared by the CLI commands and the watcher.
//
// - Connection::connect() hands the DSN to libpq untouched (conninfo or URI; PG* variables, service=, .pgpass and
//   multi-host target_session_attrs all work natively) and sets fallback_application_name.
// - exec() uses PQexecParams with text parameters (never string concatenation of user values) and throws DbError
//   carrying the SQLSTATE, message, detail, hint and context; a lost connection throws ConnectionLost (exit code 3).
// - connect_waiting() waits out a failover: it reconnects with backoff until a (writable) server answers or a
//   deadline passes (common/wait_primary.hpp has the rules).
// - Every message that leaves this file has its passwords scrubbed.
// - The session keeps the user's search_path, because migration SQL (and the non-transactional statements that
//   `pgdeploy up` sends) must resolve names on it. So every SQL text of pgdeploy's own names what it calls in
//   pg_catalog or deploy: functions (pg_catalog.count), operators (OPERATOR(pg_catalog.=), also inside IN and
//   NULLIF, which use "="), and types that are not SQL keywords ($1::pg_catalog.jsonb, pg_catalog.text[]).
//   Otherwise a schema on the user's path could stand in for them (docs/security.md; tests/e2e/test_security.py
//   plants such twins of everything in pg_catalog and runs every command).
#pragma once
#include <libpq-fe.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/exit_codes.hpp"

namespace pgdeploy::common {

// Cancelled: exec_ticking() cancelled its statement because its tick asked to stop.
class Cancelled : public Failure {
public:
    explicit Cancelled(const std::string& message) : Failure(kExitFailed, message) {}
};

// ConnectionLost: the connection broke while a statement ran (the server died, was shut down or failed over). What
// the statement did is unknown: it may have committed before the connection went.
class ConnectionLost : public Failure {
public:
    explicit ConnectionLost(const std::string& message) : Failure(kExitConnect, message) {}
};

// DbError: the server refused a statement. exit_code() follows exit_code_for_sqlstate().
class DbError : public Failure {
public:
    DbError(const std::string& sqlstate, const std::string& message, std::string detail = {}, std::string hint = {},
            std::string context = {});
    const std::string& detail() const { return detail_; }
    const std::string& hint() const { return hint_; }
    const std::string& context() const { return context_; }
    // to_json: {"sqlstate","message","detail","hint","context"} (empty fields are null).
    nlohmann::json to_json() const;

private:
    std::string detail_, hint_, context_;
};

// Result: owns a PGresult. Values are text; is_null() tells SQL NULL apart from ''.
class Result {
public:
    explicit Result(PGresult* res) : res_(res, &PQclear) {}
    int rows() const { return PQntuples(res_.get()); }
    int columns() const { return PQnfields(res_.get()); }
    bool is_null(int row, int col) const { return PQgetisnull(res_.get(), row, col) != 0; }
    std::string value(int row, int col) const { return PQgetvalue(res_.get(), row, col); }
    std::string column_name(int col) const { return PQfname(res_.get(), col); }
    PGresult* raw() const { return res_.get(); }

private:
    std::unique_ptr<PGresult, decltype(&PQclear)> res_;
};

using Param = std::optional<std::string>;  // std::nullopt = SQL NULL

// Notice: a NOTICE or WARNING the server sent while a statement ran.
struct Notice {
    std::string severity;  // "NOTICE", "WARNING", ... (not localized)
    std::string sqlstate;
    std::string message;  // the primary message
};

// NoticeHandler: sees every notice of its connection first (on the thread that runs the statement); returns true
// when it has reported the notice itself, false to leave it to the default (the log: WARNING as a warning,
// "lock retry" NOTICEs at info, the rest at debug).
using NoticeHandler = std::function<bool(const Notice&)>;

// ConnectSettings: libpq keyword/value pairs (Connection::sibling_settings).
using ConnectSettings = std::vector<std::pair<std::string, std::string>>;

struct ConnectOptions {
    std::string dsn;                            // "" = libpq defaults (PG* variables, service file, .pgpass)
    std::string application_name = "pgdeploy";  // used unless the DSN or PGAPPNAME names one
    int connect_timeout_s = 10;                 // unless the DSN or PGCONNECT_TIMEOUT sets one; 0 = none
};

// ServerRole: what kind of server a connection reached (Connection::server_role).
struct ServerRole {
    bool in_recovery = false;  // a hot standby (pg_is_in_recovery())
    bool read_only = false;    // transaction_read_only: a standby, or a primary with default_transaction_read_only
    std::string host, port;    // the host it reached (of a multi-host DSN)
    bool writable() const { return !in_recovery && !read_only; }
    // describe: "read-only standby (in recovery)", "read-only server (default_transaction_read_only)" or
    // "primary (read-write)".
    std::string describe() const;
    // to_json: {"in_recovery", "read_only", "host", "port"} (port a number when it is one).
    nlohmann::json to_json() const;
};

class Connection {
public:
    // connect: throws Failure(kExitConnect) with libpq's message (scrubbed) when the connection fails.
    static Connection connect(const ConnectOptions& options);

    Connection(Connection&&) noexcept = default;
    Connection& operator=(Connection&&) noexcept = default;

    // exec: one statement (or several without parameters) with text parameters. Throws DbError on a server
    // error, Failure(kExitConnect) when the connection is lost.
    Result exec(const std::string& sql, const std::vector<Param>& params = {});

    // exec_ticking: exec() of one statement without parameters that calls tick about every tick_ms while the server
    // runs it (to feed a watchdog, renew a lease). When tick returns false the statement is cancelled and, once the
    // server has ended it, Cancelled is thrown.
    Result exec_ticking(const std::string& sql, const std::function<bool()>& tick, int tick_ms = 100);

    // query_value: first column of the first row; nullopt for SQL NULL or no row.
    std::optional<std::string> query_value(const std::string& sql, const std::vector<Param>& params = {});

    // query_json: first column of the first row parsed as JSON (json/jsonb results); JSON null for SQL NULL.
    nlohmann::json query_json(const std::string& sql, const std::vector<Param>& params = {});

    // require_extension: throws Failure(kExitExtension) unless pg_deploy (>= the minimum version this pgdeploy
    // knows) is installed in the database; returns the installed version.
    std::string require_extension();

    // server_role: whether the server is a standby or read-only (one query; works on a hot standby).
    ServerRole server_role();

    // describe: "user@host:port/dbname" for logs (never the password).
    std::string describe() const;

    // sibling_settings: what connect_with needs for a second connection to the server, database and user this one
    // is connected to (the host it reached, not the list it was given), with the same settings otherwise; for
    // watching this one's backend from outside (from another thread: the settings are a copy).
    ConnectSettings sibling_settings(const std::string& application_name, int connect_timeout_s) const;

    // connect_with: a connection from libpq keyword/value pairs taken as they are. Throws like connect().
    static Connection connect_with(const ConnectSettings& settings);

    // set_notice_handler: see NoticeHandler; an empty function restores the default.
    void set_notice_handler(NoticeHandler handler) { *notices_ = std::move(handler); }

    // set_transaction_settings: settings (name, value) that every statement with parameters on this connection runs
    // under, transaction-locally: BEGIN, set_config(name, value, true), the statement, COMMIT (ROLLBACK when it
    // fails), when no transaction is open. Never a session SET: behind PgBouncer in transaction mode a session
    // setting stays on a pooled server connection and reaches other clients. Statements without parameters (a
    // step's own SQL, which may refuse a transaction block) run as they are.
    void set_transaction_settings(ConnectSettings settings) { transaction_settings_ = std::move(settings); }

    // backend_pid: the server process of this session (pg_stat_activity.pid).
    int backend_pid() const { return PQbackendPID(conn_.get()); }

    bool ok() const { return conn_ && PQstatus(conn_.get()) == CONNECTION_OK; }
    PGconn* raw() const { return conn_.get(); }

private:
    explicit Connection(PGconn* conn) : notices_(std::make_unique<NoticeHandler>()), conn_(conn, &PQfinish) {}
    static Connection open(const std::vector<const char*>& keys, const std::vector<const char*>& values,
                           bool expand_dbname);
    [[noreturn]] void throw_error(PGresult* res);
    Result exec_params(const std::string& sql, const std::vector<Param>& params);
    Result exec_under_settings(const std::string& sql, const std::vector<Param>& params);

    // On the heap, so that libpq's pointer to it survives moves of the Connection; declared first, so destroyed
    // after the PGconn.
    std::unique_ptr<NoticeHandler> notices_;
    std::unique_ptr<PGconn, decltype(&PQfinish)> conn_;
    ConnectSettings transaction_settings_;
};

// WaitOptions: how connect_waiting waits (common/wait_primary.hpp).
struct WaitOptions {
    long long deadline_ms = 60000;  // 0 = do not wait: the first failure is final
    bool need_writable = true;      // false: any server will do (read-only commands work on a standby)
    std::string command;            // "pgdeploy up", for the messages
    // report: one line saying what the command waits for (at most every kWaitReportEveryMs); empty = the log.
    std::function<void(const std::string&)> report;
};

// connect_waiting: Connection::connect, retried with jittered exponential backoff while the trouble is one a
// failover causes (classify_connect_error) and, with need_writable, while the server reached is read-only. Throws
// at once for fatal troubles (their own Failure), and when the deadline passes: Failure(kExitReadOnly) when the
// last server seen was read-only, else Failure(kExitConnect), both naming the deadline. The waited time counts
// from the call.
Connection connect_waiting(const ConnectOptions& options, const WaitOptions& wait);

// read_only_message: why a write command stops on a read-only server, with the advice to list every host with
// target_session_attrs=read-write. `waited` is "" or how the wait ended, e.g. " within --wait-primary 30s".
std::string read_only_message(const std::string& command, const ServerRole& role, const std::string& waited);

// The oldest extension version this pgdeploy can drive (require_extension()).
inline constexpr const char* kMinimumExtensionVersion = "0.1";

}  // namespace pgdeploy::common
