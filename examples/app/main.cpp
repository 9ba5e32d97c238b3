// pgdeploy-example-app: the sample service of pg_deploy's demo.
//
// A small HTTP service whose health depends on the database schema, the way real services do: each release of the
// app needs a minimum schema version (deploy.require_version) and runs the queries its code depends on. Three releases
// are compiled in; which one is "deployed" is named by a state file that the deploy script writes and that the
// rollback hook (examples/hooks/rollback-app) switches back. The file is read on every request, so a switch takes
// effect at once, without a restart.
//
//   pgdeploy-example-app --state-dir DIR [--port N] [--release NAME] [--dsn CONNINFO]
//
//   GET /health   200 {"status":"ok",...} or 503 {"status":"unhealthy","error":"..."}
//   GET /version  200 {"release":"v2","schema_version":"0004"}
//
// --port 0 picks a free port; the first line on stdout always says where it listens. The database comes from --dsn
// or the standard PG* environment variables. SIGTERM or SIGINT stop it cleanly.

#include <httplib.h>
#include <libpq-fe.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

// What one release of the app needs from the database.
struct Release {
    std::string required_schema;       // passed to deploy.require_version()
    std::vector<std::string> queries;  // the queries its code runs, reduced to one row each
};

// The three releases. v3 carries the bug of the demo: migration 0005 renamed customers.name to full_name, and the
// view 0006 exposes full_name, but v3's code still selects "name" from that view. Its migrations apply cleanly; its
// health fails as soon as it is deployed.
const std::map<std::string, Release>& releases() {
    static const std::map<std::string, Release> all = {
        {"v1",
         {"0002",
          {"SELECT id, email, name FROM shop.customers LIMIT 1",
           "SELECT id, customer_id, total_cents FROM shop.orders LIMIT 1"}}},
        {"v2",
         {"0004",
          {"SELECT id, email, name FROM shop.customers LIMIT 1",
           "SELECT id, customer_id, total_cents, status FROM shop.orders WHERE status = 'new' LIMIT 1"}}},
        {"v3",
         {"0006",
          {"SELECT id, email, full_name FROM shop.customers LIMIT 1",
           "SELECT id, customer_id, total_cents, status FROM shop.orders WHERE status = 'new' LIMIT 1",
           "SELECT customer_id, name, order_count FROM shop.customer_order_totals LIMIT 1"}}},
    };
    return all;
}

struct Options {
    std::string host = "127.0.0.1";
    int port = 8080;
    std::string state_dir;
    std::string default_release = "v1";
    std::string dsn;
};

// current_release: the release named by STATE_DIR/current_release, else the --release default. Read at every request
// so that the deploy script and the rollback hook switch releases by rewriting one file (atomically, with rename).
std::string current_release(const Options& opt) {
    if (!opt.state_dir.empty()) {
        std::ifstream in(opt.state_dir + "/current_release");
        std::string name;
        if (in && std::getline(in, name)) {
            while (!name.empty() && (name.back() == '\r' || name.back() == ' ' || name.back() == '\t'))
                name.pop_back();
            if (!name.empty())
                return name;
        }
    }
    return opt.default_release;
}

using PgConn = std::unique_ptr<PGconn, decltype(&PQfinish)>;
using PgResult = std::unique_ptr<PGresult, decltype(&PQclear)>;

// connect: one short-lived connection per request keeps the app simple and makes a database restart invisible to it.
// connect_timeout bounds how long a health check can hang when the server is gone.
PgConn connect(const Options& opt, std::string& error) {
    const char* keys[] = {"dbname", "connect_timeout", "application_name", nullptr};
    const char* values[] = {opt.dsn.empty() ? nullptr : opt.dsn.c_str(), "3", "pgdeploy-example-app", nullptr};
    PgConn conn(PQconnectdbParams(keys, values, /*expand_dbname=*/1), &PQfinish);
    if (!conn || PQstatus(conn.get()) != CONNECTION_OK) {
        error = conn ? PQerrorMessage(conn.get()) : "out of memory";
        while (!error.empty() && error.back() == '\n')
            error.pop_back();
        return PgConn(nullptr, &PQfinish);
    }
    return conn;
}

// run_query: the query's first value, or std::nullopt with "SQLSTATE: message" in error.
std::optional<std::string> run_query(PGconn* conn, const std::string& sql, const std::vector<std::string>& params,
                                     std::string& error) {
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const auto& p : params)
        values.push_back(p.c_str());
    PgResult res(
        PQexecParams(conn, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(), nullptr, nullptr, 0),
        &PQclear);
    ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        const char* state = res ? PQresultErrorField(res.get(), PG_DIAG_SQLSTATE) : nullptr;
        const char* msg = res ? PQresultErrorField(res.get(), PG_DIAG_MESSAGE_PRIMARY) : nullptr;
        error = std::string(state ? state : "?????") + ": " + (msg ? msg : PQerrorMessage(conn));
        return std::nullopt;
    }
    if (PQntuples(res.get()) > 0 && PQnfields(res.get()) > 0 && !PQgetisnull(res.get(), 0, 0))
        return std::string(PQgetvalue(res.get(), 0, 0));
    return std::string();
}

// check_health: what a real service checks before saying it can serve: the schema is at least the version its code
// was written for, and the queries its code runs work (the columns exist). Returns the HTTP status and the body.
std::pair<int, nlohmann::json> check_health(const Options& opt) {
    nlohmann::json body;
    const std::string name = current_release(opt);
    body["release"] = name;
    auto it = releases().find(name);
    if (it == releases().end()) {
        body["status"] = "unhealthy";
        body["error"] = "unknown release '" + name + "'";
        return {503, body};
    }
    const Release& release = it->second;
    body["required_schema"] = release.required_schema;

    std::string error;
    PgConn conn = connect(opt, error);
    if (!conn) {
        body["status"] = "unhealthy";
        body["error"] = "database unreachable: " + error;
        return {503, body};
    }
    run_query(conn.get(), "SET statement_timeout = '2s'", {}, error);
    auto schema = run_query(conn.get(), "SELECT deploy.require_version($1)", {release.required_schema}, error);
    if (!schema) {
        body["status"] = "unhealthy";
        body["error"] = error;
        return {503, body};
    }
    body["schema_version"] = *schema;
    for (const auto& sql : release.queries) {
        if (!run_query(conn.get(), sql, {}, error)) {
            body["status"] = "unhealthy";
            body["error"] = error;
            body["query"] = sql;
            return {503, body};
        }
    }
    body["status"] = "ok";
    return {200, body};
}

// version_info: the release the app serves and the schema version the database reports (null when unreachable).
nlohmann::json version_info(const Options& opt) {
    nlohmann::json body;
    body["release"] = current_release(opt);
    std::string error;
    PgConn conn = connect(opt, error);
    std::optional<std::string> schema;
    if (conn)
        schema = run_query(conn.get(), "SELECT deploy.current_version()", {}, error);
    body["schema_version"] = schema && !schema->empty() ? nlohmann::json(*schema) : nlohmann::json(nullptr);
    return body;
}

void usage(std::ostream& out) {
    out << "usage: pgdeploy-example-app --state-dir DIR [--port N] [--host ADDR] [--release NAME] [--dsn CONNINFO]\n"
           "  --state-dir DIR   directory whose file 'current_release' names the deployed release (v1, v2, v3)\n"
           "  --release NAME    release to serve while that file does not exist (default v1)\n"
           "  --port N          port on 127.0.0.1 (0 = any free port; default 8080)\n"
           "  --dsn CONNINFO    libpq connection string (default: PG* environment variables)\n";
}

// parse_args: returns false (after printing why) on a usage error.
bool parse_args(int argc, char** argv, Options& opt) {
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        auto value = [&](const char* flag) -> const char* {
            if (i + 1 >= argc) {
                std::cerr << "pgdeploy-example-app: " << flag << " needs a value\n";
                return nullptr;
            }
            return argv[++i];
        };
        const char* v = nullptr;
        if (arg == "--help" || arg == "-h") {
            usage(std::cout);
            std::exit(0);
        } else if (arg == "--port") {
            if (!(v = value("--port")))
                return false;
            char* end = nullptr;
            long port = std::strtol(v, &end, 10);
            if (*v == '\0' || *end != '\0' || port < 0 || port > 65535) {
                std::cerr << "pgdeploy-example-app: --port must be 0..65535, got '" << v << "'\n";
                return false;
            }
            opt.port = static_cast<int>(port);
        } else if (arg == "--host") {
            if (!(v = value("--host")))
                return false;
            opt.host = v;
        } else if (arg == "--state-dir") {
            if (!(v = value("--state-dir")))
                return false;
            opt.state_dir = v;
        } else if (arg == "--release") {
            if (!(v = value("--release")))
                return false;
            opt.default_release = v;
        } else if (arg == "--dsn") {
            if (!(v = value("--dsn")))
                return false;
            opt.dsn = v;
        } else {
            std::cerr << "pgdeploy-example-app: unknown argument '" << arg << "'\n";
            usage(std::cerr);
            return false;
        }
    }
    if (releases().count(opt.default_release) == 0) {
        std::cerr << "pgdeploy-example-app: unknown release '" << opt.default_release << "' (v1, v2, v3)\n";
        return false;
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    Options opt;
    if (!parse_args(argc, argv, opt))
        return 2;

    // Signals are taken by one thread with sigwait, which then stops the server from outside any signal handler.
    // SIGUSR1 only wakes that thread when the server stopped on its own.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    httplib::Server server;
    server.set_read_timeout(5, 0);
    server.Get("/health", [&opt](const httplib::Request&, httplib::Response& res) {
        auto [status, body] = check_health(opt);
        res.status = status;
        res.set_content(body.dump() + "\n", "application/json");
    });
    server.Get("/version", [&opt](const httplib::Request&, httplib::Response& res) {
        res.set_content(version_info(opt).dump() + "\n", "application/json");
    });

    int port = opt.port;
    if (port == 0) {
        port = server.bind_to_any_port(opt.host);
        if (port < 0) {
            std::cerr << "pgdeploy-example-app: cannot bind " << opt.host << "\n";
            return 1;
        }
    } else if (!server.bind_to_port(opt.host, port)) {
        std::cerr << "pgdeploy-example-app: cannot bind " << opt.host << ":" << port << "\n";
        return 1;
    }
    std::cout << "pgdeploy-example-app: listening on http://" << opt.host << ":" << port << " (release "
              << current_release(opt) << ")" << std::endl;

    std::thread signal_thread([&server, stop_signals]() {
        int sig = 0;
        sigwait(&stop_signals, &sig);
        server.stop();
    });
    bool ok = server.listen_after_bind();
    // If the server stopped on its own, wake the signal thread so it can be joined.
    pthread_kill(signal_thread.native_handle(), SIGUSR1);
    signal_thread.join();
    std::cout << "pgdeploy-example-app: stopped" << std::endl;
    return ok ? 0 : 1;
}
