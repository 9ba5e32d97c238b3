// libpq wrapper (see connection.hpp).
#include "common/connection.hpp"

#include <spdlog/spdlog.h>

#include <poll.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <random>
#include <thread>

#include "common/conninfo.hpp"
#include "common/lock_safety.hpp"
#include "common/wait_primary.hpp"

namespace pgdeploy::common {

namespace {

std::string field(const PGresult* res, int code) {
    const char* v = PQresultErrorField(res, code);
    return v ? std::string(v) : std::string();
}

std::string trim_trailing_newlines(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
        s.pop_back();
    return s;
}

// one_line: libpq's connection errors span lines ("...\n\tIs the server running..."); messages are one line.
std::string one_line(const std::string& s) {
    std::string out;
    bool space = false;
    for (char c : trim_trailing_newlines(s)) {
        if (c == '\n' || c == '\t' || c == '\r' || c == ' ') {
            space = true;
            continue;
        }
        if (space && !out.empty())
            out += ' ';
        space = false;
        out += c;
    }
    return out;
}

/*
 * receive_notice
 *		Server NOTICEs and WARNINGs (deploy.up raises a WARNING naming a failed migration) go to the
 *connection's handler, else to the log on stderr instead of libpq's default print, so they obey --log-format and never
 *		mix into stdout. A lock retry is news at info level: the deploy is waiting for the application.
 */
void receive_notice(void* arg, const PGresult* res) {
    Notice n{field(res, PG_DIAG_SEVERITY_NONLOCALIZED), field(res, PG_DIAG_SQLSTATE),
             trim_trailing_newlines(field(res, PG_DIAG_MESSAGE_PRIMARY))};
    const auto* handler = static_cast<const NoticeHandler*>(arg);
    try {
        if (handler && *handler && (*handler)(n))
            return;
    } catch (...) {
        // A handler that fails must not unwind through libpq; the log still gets the notice.
    }
    if (n.severity == "WARNING")
        spdlog::warn("server: {}{}", n.message,
                     n.sqlstate.empty() || n.sqlstate == "01000" ? "" : " (SQLSTATE " + n.sqlstate + ")");
    else if (n.message.rfind(kLockRetryPrefix, 0) == 0)
        spdlog::info("server: {}", n.message);
    else
        spdlog::debug("server {}: {}", n.severity, n.message);
}

// version_less: "0.9" < "0.10"; enough for extension version strings.
bool version_less(const std::string& a, const std::string& b) {
    size_t i = 0, j = 0;
    while (i < a.size() && j < b.size()) {
        if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
            size_t ie = i, je = j;
            while (ie < a.size() && std::isdigit(static_cast<unsigned char>(a[ie])))
                ++ie;
            while (je < b.size() && std::isdigit(static_cast<unsigned char>(b[je])))
                ++je;
            long long x = std::atoll(a.substr(i, ie - i).c_str()), y = std::atoll(b.substr(j, je - j).c_str());
            if (x != y)
                return x < y;
            i = ie;
            j = je;
        } else {
            if (a[i] != b[j])
                return a[i] < b[j];
            ++i;
            ++j;
        }
    }
    return (a.size() - i) < (b.size() - j);
}

}  // namespace

DbError::DbError(const std::string& sqlstate, const std::string& message, std::string detail, std::string hint,
                 std::string context)
    : Failure(exit_code_for_sqlstate(sqlstate), message, sqlstate),
      detail_(std::move(detail)),
      hint_(std::move(hint)),
      context_(std::move(context)) {}

nlohmann::json DbError::to_json() const {
    auto or_null = [](const std::string& s) { return s.empty() ? nlohmann::json(nullptr) : nlohmann::json(s); };
    return {{"sqlstate", or_null(sqlstate())},
            {"message", what()},
            {"detail", or_null(detail_)},
            {"hint", or_null(hint_)},
            {"context", or_null(context_)}};
}

/*
 * Connection::connect
 *		The DSN goes to libpq as the expandable dbname so every libpq source works (URI, conninfo, service=,
 *		PG* variables, .pgpass, multi-host with target_session_attrs). connect_timeout comes before the DSN in
 *		the keyword list so the DSN can override it; fallback_application_name only applies when nothing else
 *		names the application.
 */
Connection Connection::connect(const ConnectOptions& options) {
    // A password given in the DSN must never be logged, even verbatim inside a libpq message.
    if (!register_dsn_secrets(options.dsn)) {
        char* err = nullptr;
        PQconninfoOption* parsed = PQconninfoParse(options.dsn.c_str(), &err);
        PQconninfoFree(parsed);
        std::string msg = err ? one_line(err) : "invalid connection string";
        PQfreemem(err);
        throw Failure(kExitConnect, "invalid connection string: " + scrub_unparsable_dsn_error(msg, options.dsn));
    }
    std::vector<const char*> keys, values;
    std::string timeout = std::to_string(options.connect_timeout_s);
    if (options.connect_timeout_s > 0 && std::getenv("PGCONNECT_TIMEOUT") == nullptr) {
        keys.push_back("connect_timeout");
        values.push_back(timeout.c_str());
    }
    keys.push_back("dbname");
    values.push_back(options.dsn.c_str());
    keys.push_back("fallback_application_name");
    values.push_back(options.application_name.c_str());
    keys.push_back(nullptr);
    values.push_back(nullptr);
    return open(keys, values, true);
}

Connection Connection::open(const std::vector<const char*>& keys, const std::vector<const char*>& values,
                            bool expand_dbname) {
    PGconn* raw = PQconnectdbParams(keys.data(), values.data(), expand_dbname ? 1 : 0);
    if (raw == nullptr)
        throw Failure(kExitConnect, "cannot connect: out of memory");
    Connection conn(raw);
    if (PQstatus(raw) != CONNECTION_OK) {
        if (const char* pw = PQpass(raw))
            register_secret(pw);
        throw Failure(kExitConnect, "cannot connect to the database: " + scrub(one_line(PQerrorMessage(raw))));
    }
    if (const char* pw = PQpass(raw))
        register_secret(pw);  // from .pgpass or PGPASSWORD: never logged either
    PQsetNoticeReceiver(raw, &receive_notice, conn.notices_.get());
    spdlog::debug("connected to {}", conn.describe());
    return conn;
}

/*
 * Connection::sibling_settings
 *		From PQconninfo, the settings libpq used for this connection, with the host it reached: a multi-host DSN
 *		may name a standby first, and a second connection must see the same server's pg_stat_activity. The
 *		expanded dbname is a plain name by now, so connect_with does not expand it again.
 */
ConnectSettings Connection::sibling_settings(const std::string& application_name, int connect_timeout_s) const {
    std::unique_ptr<PQconninfoOption, decltype(&PQconninfoFree)> info(PQconninfo(conn_.get()), &PQconninfoFree);
    if (!info)
        throw Failure(kExitConnect, "cannot read the connection's settings: out of memory");
    const char* host = PQhost(conn_.get());
    const char* port = PQport(conn_.get());
    const char* hostaddr = PQhostaddr(conn_.get());
    ConnectSettings out;
    for (PQconninfoOption* o = info.get(); o->keyword; ++o) {
        std::string k = o->keyword;
        const char* v = o->val;
        if (k == "host" && host && *host)
            v = host;
        else if (k == "port" && port && *port)
            v = port;
        else if (k == "hostaddr" && v && hostaddr && *hostaddr)
            v = hostaddr;
        else if (k == "application_name" || k == "fallback_application_name")
            v = application_name.c_str();
        else if (k == "connect_timeout")
            v = nullptr;
        if (v != nullptr)
            out.emplace_back(k, v);
    }
    out.emplace_back("connect_timeout", std::to_string(connect_timeout_s));
    return out;
}

Connection Connection::connect_with(const ConnectSettings& settings) {
    std::vector<const char*> keys, values;
    for (const auto& [k, v] : settings) {
        keys.push_back(k.c_str());
        values.push_back(v.c_str());
    }
    keys.push_back(nullptr);
    values.push_back(nullptr);
    return open(keys, values, false);
}

void Connection::throw_error(PGresult* res) {
    Result owned(res);
    std::string sqlstate = res ? field(res, PG_DIAG_SQLSTATE) : "";
    // 57P01/57P02: the server is shutting down (or crashing) and ends this session with it.
    if (!ok() || sqlstate == "57P01" || sqlstate == "57P02") {
        std::string msg = one_line(PQerrorMessage(conn_.get()));
        throw ConnectionLost("lost the database connection: " + scrub(msg));
    }
    std::string message = res ? trim_trailing_newlines(field(res, PG_DIAG_MESSAGE_PRIMARY)) : "";
    if (message.empty())
        message = trim_trailing_newlines(PQerrorMessage(conn_.get()));
    // Detail and context may quote SQL that carries a conninfo (dblink, a migration's CREATE SUBSCRIPTION).
    throw DbError(sqlstate, scrub(message), scrub(res ? field(res, PG_DIAG_MESSAGE_DETAIL) : ""),
                  scrub(res ? field(res, PG_DIAG_MESSAGE_HINT) : ""), scrub(res ? field(res, PG_DIAG_CONTEXT) : ""));
}

Result Connection::exec(const std::string& sql, const std::vector<Param>& params) {
    if (!params.empty() && !transaction_settings_.empty() && PQtransactionStatus(conn_.get()) == PQTRANS_IDLE)
        return exec_under_settings(sql, params);
    return exec_params(sql, params);
}

Result Connection::exec_params(const std::string& sql, const std::vector<Param>& params) {
    PGresult* res;
    if (params.empty()) {
        res = PQexec(conn_.get(), sql.c_str());
    } else {
        std::vector<const char*> values;
        values.reserve(params.size());
        for (const auto& p : params)
            values.push_back(p ? p->c_str() : nullptr);
        res = PQexecParams(conn_.get(), sql.c_str(), static_cast<int>(params.size()), nullptr, values.data(), nullptr,
                           nullptr, 0);
    }
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY)
        throw_error(res);
    return Result(res);
}

/*
 * Connection::exec_under_settings
 *		One transaction: BEGIN and the settings (set_config(..., true)), the statement, COMMIT. The settings end
 *		with the transaction, on the server connection that ran it. A failed statement is rolled back before its
 *		error is thrown, so the connection is idle again (behind a pooler, a transaction left open keeps its
 *		server connection).
 */
Result Connection::exec_under_settings(const std::string& sql, const std::vector<Param>& params) {
    std::string settings;
    std::vector<Param> values;
    for (const auto& [name, value] : transaction_settings_) {
        settings += (values.empty() ? "SELECT " : ", ") + std::string("pg_catalog.set_config($") +
                    std::to_string(values.size() + 1) + ", $" + std::to_string(values.size() + 2) + ", true)";
        values.emplace_back(name);
        values.emplace_back(value);
    }
    exec_params("BEGIN", {});
    try {
        exec_params(settings, values);
        Result result = exec_params(sql, params);
        exec_params("COMMIT", {});
        return result;
    } catch (...) {
        if (ok() && PQtransactionStatus(conn_.get()) != PQTRANS_IDLE)
            PQclear(PQexec(conn_.get(), "ROLLBACK"));
        throw;
    }
}

/*
 * Connection::exec_ticking
 *		The statement is sent with PQsendQuery and its result awaited with poll() in slices of tick_ms, so that
 *		the caller's tick runs while the server works (a DROP INDEX CONCURRENTLY waiting for old transactions
 *may take minutes). A stop request cancels the statement (PQcancel) and waits for the server to end it: the connection
 *stays usable, and the statement's own error (57014) is not reported as a failure of it.
 */
Result Connection::exec_ticking(const std::string& sql, const std::function<bool()>& tick, int tick_ms) {
    PGconn* c = conn_.get();
    if (!PQsendQuery(c, sql.c_str()))
        throw_error(nullptr);
    bool cancelled = false;
    PGresult* kept = nullptr;  // the first error, else the last result
    while (true) {
        while (PQisBusy(c)) {
            pollfd p{PQsocket(c), POLLIN, 0};
            ::poll(&p, 1, tick_ms);
            if (!PQconsumeInput(c)) {
                PQclear(kept);
                throw_error(nullptr);
            }
            if (!cancelled && tick && !tick()) {
                cancelled = true;
                char err[256];
                PGcancel* cancel = PQgetCancel(c);
                if (cancel != nullptr) {
                    PQcancel(cancel, err, sizeof err);
                    PQfreeCancel(cancel);
                }
            }
        }
        PGresult* res = PQgetResult(c);
        if (res == nullptr)
            break;
        if (kept != nullptr && PQresultStatus(kept) == PGRES_FATAL_ERROR) {
            PQclear(res);
            continue;
        }
        PQclear(kept);
        kept = res;
    }
    if (cancelled) {
        PQclear(kept);
        throw Cancelled("statement cancelled: stop requested");
    }
    ExecStatusType st = kept ? PQresultStatus(kept) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY)
        throw_error(kept);
    return Result(kept);
}

std::optional<std::string> Connection::query_value(const std::string& sql, const std::vector<Param>& params) {
    Result r = exec(sql, params);
    if (r.rows() == 0 || r.columns() == 0 || r.is_null(0, 0))
        return std::nullopt;
    return r.value(0, 0);
}

nlohmann::json Connection::query_json(const std::string& sql, const std::vector<Param>& params) {
    auto v = query_value(sql, params);
    if (!v)
        return nullptr;
    return nlohmann::json::parse(*v);
}

std::string Connection::require_extension() {
    auto version =
        query_value("SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_deploy'");
    if (!version)
        throw Failure(kExitExtension, "the pg_deploy extension is not installed in database \"" +
                                          std::string(PQdb(conn_.get())) +
                                          "\": run CREATE EXTENSION pg_deploy; as a superuser");
    if (version_less(*version, kMinimumExtensionVersion))
        throw Failure(kExitExtension, "pg_deploy " + *version + " is too old for this pgdeploy (needs " +
                                          kMinimumExtensionVersion +
                                          " or later): run ALTER EXTENSION pg_deploy UPDATE;");
    return *version;
}

ServerRole Connection::server_role() {
    Result r = exec(
        "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('transaction_read_only') "
        "OPERATOR(pg_catalog.=) 'on'");
    ServerRole role;
    role.in_recovery = r.rows() > 0 && r.value(0, 0) == "t";
    role.read_only = r.rows() > 0 && r.value(0, 1) == "t";
    const char* host = PQhost(conn_.get());
    const char* port = PQport(conn_.get());
    role.host = host ? host : "";
    role.port = port ? port : "";
    return role;
}

std::string ServerRole::describe() const {
    if (in_recovery)
        return "read-only standby (in recovery)";
    if (read_only)
        return "read-only server (default_transaction_read_only)";
    return "primary (read-write)";
}

nlohmann::json ServerRole::to_json() const {
    nlohmann::json port_value = port;
    if (!port.empty() && std::all_of(port.begin(), port.end(), [](unsigned char c) { return std::isdigit(c); }))
        port_value = std::stoi(port);
    return {{"in_recovery", in_recovery}, {"read_only", read_only}, {"host", host}, {"port", port_value}};
}

std::string read_only_message(const std::string& command, const ServerRole& role, const std::string& waited) {
    return "the server " + role.host + ":" + role.port + " is a " + role.describe() +
           " and no writable primary answered" + waited + "; " + command +
           " writes, so it needs the primary: list every host of the cluster in the DSN with "
           "target_session_attrs=read-write (e.g. \"host=db1,db2 target_session_attrs=read-write\") so that libpq "
           "finds the primary";
}

namespace {

using Clock = std::chrono::steady_clock;

long long ms_since(Clock::time_point start) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

// strip_prefix: libpq's reason without connect()'s "cannot connect to the database: ".
std::string reason_of(const Failure& f) {
    static const std::string prefix = "cannot connect to the database: ";
    std::string m = f.what();
    return m.rfind(prefix, 0) == 0 ? m.substr(prefix.size()) : m;
}

}  // namespace

/*
 * connect_waiting
 *		A failover leaves no writable server for a while; a deploy started then (by CI, by a timer) should wait
 *		for the promotion instead of failing, but only within a deadline, and never for troubles that waiting
 *		cannot cure. Each attempt's connect_timeout is cut to the time left, so a host that does not answer at
 *		all cannot carry the wait past the deadline by more than libpq's 2 s minimum.
 */
Connection connect_waiting(const ConnectOptions& options, const WaitOptions& wait) {
    const Clock::time_point start = Clock::now();
    const long long deadline = std::max<long long>(0, wait.deadline_ms);
    const std::string deadline_text = " within --wait-primary " + format_duration_ms(deadline);
    std::mt19937 rng(std::random_device{}());
    std::uniform_real_distribution<double> jitter(0.0, 1.0);
    auto report = [&wait](const std::string& line) {
        if (wait.report)
            wait.report(line);
        else
            spdlog::warn("{}", line);
    };
    const std::string waiting_for = wait.need_writable ? "a writable primary" : "the database server";
    const std::string none_answered =
        wait.need_writable ? "no writable primary answered" : "no database server answered";
    long long last_report = -kWaitReportEveryMs;
    bool waited = false;
    for (int attempt = 0;; ++attempt) {
        ConnectOptions attempt_options = options;
        long long left = deadline - ms_since(start);
        if (deadline > 0)
            attempt_options.connect_timeout_s =
                static_cast<int>(std::clamp<long long>((left + 999) / 1000, 2, std::max(2, options.connect_timeout_s)));
        std::string reason;
        try {
            Connection conn = Connection::connect(attempt_options);
            if (!wait.need_writable)
                return conn;
            ServerRole role = conn.server_role();
            if (role.writable()) {
                if (waited)
                    report("connected to a writable primary (" + role.host + ":" + role.port + ") after " +
                           std::to_string(ms_since(start) / 1000) + " s");
                return conn;
            }
            reason = "server " + role.host + ":" + role.port + " is a " + role.describe();
            if (deadline == 0)
                throw Failure(kExitReadOnly, read_only_message(wait.command, role, " (--wait-primary 0)"));
            if (ms_since(start) >= deadline)
                throw Failure(kExitReadOnly, read_only_message(wait.command, role, deadline_text));
        } catch (const ConnectionLost& e) {
            reason = e.what();  // the server went while we asked it what it is
            if (deadline == 0 || ms_since(start) >= deadline)
                throw Failure(kExitConnect, none_answered + deadline_text + ": " + reason);
        } catch (const Failure& e) {
            if (e.exit_code() != kExitConnect || !e.sqlstate().empty())
                throw;
            ConnectTrouble trouble = classify_connect_error(e.what());
            if (trouble == ConnectTrouble::kFatal || deadline == 0)
                throw;
            reason = reason_of(e);
            if (ms_since(start) >= deadline) {
                if (trouble == ConnectTrouble::kReadOnly && wait.need_writable)
                    throw Failure(kExitReadOnly, "no writable primary answered" + deadline_text + ": " + reason + "; " +
                                                     wait.command +
                                                     " writes, so it needs the primary (list every host of the "
                                                     "cluster in the DSN with target_session_attrs=read-write)");
                throw Failure(kExitConnect, none_answered + deadline_text + ": " + reason);
            }
        }
        long long now = ms_since(start);
        if (now - last_report >= kWaitReportEveryMs) {
            report("waiting for " + waiting_for + " " + wait_progress(now, deadline) + ": " + reason);
            last_report = now;
        }
        waited = true;
        long long delay = backoff_delay_ms(attempt, deadline - now, jitter(rng));
        std::this_thread::sleep_for(std::chrono::milliseconds(delay));
    }
}

std::string Connection::describe() const {
    if (!conn_)
        return "(not connected)";
    std::string host = PQhost(conn_.get()) ? PQhost(conn_.get()) : "";
    return std::string(PQuser(conn_.get())) + "@" + host + ":" + PQport(conn_.get()) + "/" + PQdb(conn_.get());
}

}  // namespace pgdeploy::common
