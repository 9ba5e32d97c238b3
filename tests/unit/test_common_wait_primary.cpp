// Waiting out a failover (common/wait_primary, cli/context): which libpq failures are waited on, the backoff within
// the deadline, where the deadline comes from, and what a write says when its connection broke. No server needed.
#include <catch2/catch.hpp>

#include "cli/context.hpp"
#include "common/connection.hpp"
#include "common/exit_codes.hpp"
#include "common/wait_primary.hpp"

using pgdeploy::common::backoff_delay_ms;
using pgdeploy::common::classify_connect_error;
using pgdeploy::common::ConnectTrouble;

TEST_CASE("a failover's connection troubles are waited on", "[common][wait_primary]") {
    CHECK(classify_connect_error("connection to server at \"127.0.0.1\", port 5433 failed: Connection refused Is the "
                                 "server running on that host and accepting TCP/IP connections?") ==
          ConnectTrouble::kServerDown);
    CHECK(classify_connect_error("connection to server on socket \"/tmp/.s.PGSQL.5432\" failed: No such file or "
                                 "directory Is the server running locally and accepting connections on that socket?") ==
          ConnectTrouble::kServerDown);
    CHECK(classify_connect_error("connection to server at \"db\" (10.0.0.1), port 5432 failed: FATAL: the database "
                                 "system is starting up") == ConnectTrouble::kServerDown);
    CHECK(classify_connect_error("FATAL: the database system is shutting down") == ConnectTrouble::kServerDown);
    CHECK(classify_connect_error("FATAL: the database system is not yet accepting connections DETAIL: Consistent "
                                 "recovery state has not been yet reached.") == ConnectTrouble::kServerDown);
    CHECK(classify_connect_error("FATAL: the database system is in recovery mode") == ConnectTrouble::kServerDown);
    CHECK(classify_connect_error("server closed the connection unexpectedly") == ConnectTrouble::kServerDown);
    CHECK(classify_connect_error("connection to server at \"10.0.0.9\", port 5432 failed: timeout expired") ==
          ConnectTrouble::kServerDown);
}

TEST_CASE("libpq's target_session_attrs refusals mean a read-only standby", "[common][wait_primary]") {
    CHECK(classify_connect_error("connection to server at \"127.0.0.1\", port 5434 failed: session is read-only") ==
          ConnectTrouble::kReadOnly);
    CHECK(classify_connect_error("connection to server at \"h\", port 5432 failed: server is in hot standby mode") ==
          ConnectTrouble::kReadOnly);
    CHECK(classify_connect_error("could not make a writable connection to server \"h:5432\"") ==
          ConnectTrouble::kReadOnly);
    // A multi-host DSN: the primary is down, the standby answered read-only.
    CHECK(classify_connect_error("connection to server at \"127.0.0.1\", port 5433 failed: Connection refused Is "
                                 "the server running on that host and accepting TCP/IP connections? connection to "
                                 "server at \"127.0.0.1\", port 5434 failed: session is read-only") ==
          ConnectTrouble::kReadOnly);
}

TEST_CASE("troubles that waiting cannot cure fail at once", "[common][wait_primary]") {
    CHECK(classify_connect_error("connection to server at \"127.0.0.1\", port 5433 failed: FATAL: password "
                                 "authentication failed for user \"postgres\"") == ConnectTrouble::kFatal);
    CHECK(classify_connect_error("fe_sendauth: no password supplied") == ConnectTrouble::kFatal);
    CHECK(classify_connect_error("FATAL: database \"nope\" does not exist") == ConnectTrouble::kFatal);
    CHECK(classify_connect_error("FATAL: role \"nobody\" does not exist") == ConnectTrouble::kFatal);
    CHECK(classify_connect_error("FATAL: no pg_hba.conf entry for host \"10.0.0.2\"") == ConnectTrouble::kFatal);
    CHECK(classify_connect_error("could not translate host name \"dbb\" to address: Name or service not known") ==
          ConnectTrouble::kFatal);
    CHECK(classify_connect_error("invalid connection option \"hots\"") == ConnectTrouble::kFatal);
    CHECK(classify_connect_error("something nobody has seen before") == ConnectTrouble::kFatal);
    // One host refusing the password decides, even when another one is down.
    CHECK(classify_connect_error("port 5433 failed: Connection refused ... port 5434 failed: FATAL: password "
                                 "authentication failed for user \"app\"") == ConnectTrouble::kFatal);
}

TEST_CASE("the backoff doubles from 250 ms to 5 s, jittered, and never passes the deadline", "[common][wait_primary]") {
    CHECK(backoff_delay_ms(0, 60000, 0.0) == 125);
    CHECK(backoff_delay_ms(0, 60000, 0.999) == 249);
    CHECK(backoff_delay_ms(1, 60000, 0.0) == 250);
    CHECK(backoff_delay_ms(2, 60000, 0.0) == 500);
    CHECK(backoff_delay_ms(4, 60000, 0.0) == 2000);
    CHECK(backoff_delay_ms(5, 60000, 0.0) == 2500);  // 5 s is the cap: 4000 would double to 8000
    CHECK(backoff_delay_ms(50, 60000, 1.0) == 5000);
    CHECK(backoff_delay_ms(1000, 60000, 0.5) == 3750);
    for (int attempt = 0; attempt < 20; ++attempt)
        for (double j : {0.0, 0.3, 0.99}) {
            long long d = backoff_delay_ms(attempt, 60000, j);
            CHECK(d >= 125);
            CHECK(d <= 5000);
        }
    CHECK(backoff_delay_ms(10, 700, 0.9) == 700);  // the deadline is nearer than the backoff
    CHECK(backoff_delay_ms(3, 0, 0.5) == 0);
    CHECK(backoff_delay_ms(3, -20, 0.5) == 0);
    CHECK(backoff_delay_ms(0, 60000, 7.0) == 250);  // out-of-range jitter is clamped
}

TEST_CASE("durations and waiting progress are spelled as the flags spell them", "[common][wait_primary]") {
    using pgdeploy::common::format_duration_ms;
    CHECK(format_duration_ms(60000) == "60s");
    CHECK(format_duration_ms(2000) == "2s");
    CHECK(format_duration_ms(0) == "0s");
    CHECK(format_duration_ms(1500) == "1500ms");
    CHECK(format_duration_ms(120000) == "2min");
    CHECK(format_duration_ms(3600000) == "1h");
    CHECK(pgdeploy::common::wait_progress(12400, 60000) == "(12 s of 60 s)");
}

TEST_CASE("wait for a primary: --wait-primary, then PGDEPLOY_WAIT_PRIMARY, then 60 s", "[cli][wait_primary]") {
    using pgdeploy::cli::ParsedArgs;
    using pgdeploy::cli::wait_primary_ms_from;
    ParsedArgs none;
    CHECK(wait_primary_ms_from(none, nullptr) == 60000);
    CHECK(wait_primary_ms_from(none, "") == 60000);
    CHECK(wait_primary_ms_from(none, "5s") == 5000);
    CHECK(wait_primary_ms_from(none, "0") == 0);
    ParsedArgs flag;
    flag.values["wait-primary"] = "2min";
    CHECK(wait_primary_ms_from(flag, "5s") == 120000);
    flag.values["wait-primary"] = "0";
    CHECK(wait_primary_ms_from(flag, "5s") == 0);
    flag.values["wait-primary"] = "soon";
    CHECK_THROWS_WITH(wait_primary_ms_from(flag, nullptr),
                      "--wait-primary needs a duration like 10s, 500ms, 2min or 1h, not \"soon\"");
    try {
        wait_primary_ms_from(none, "a minute");
        FAIL("no error");
    } catch (const pgdeploy::UsageError& e) {
        CHECK(std::string(e.what()).find("PGDEPLOY_WAIT_PRIMARY") != std::string::npos);
        CHECK(e.exit_code() == 2);
    }
}

TEST_CASE("a write whose connection broke says whether running it again resumes", "[cli][wait_primary]") {
    using pgdeploy::cli::CommandSpec;
    using pgdeploy::cli::Context;
    using pgdeploy::cli::lost_connection_message;
    auto message = [](const std::string& name, std::vector<std::string> positionals,
                      std::map<std::string, std::string> values) {
        static std::vector<CommandSpec> specs;
        specs.push_back(CommandSpec{name, "", "", {}, 0, 2, ""});
        Context ctx;
        ctx.spec = &specs.back();
        ctx.args.positionals = std::move(positionals);
        ctx.args.values = std::move(values);
        return lost_connection_message(ctx, "lost the database connection: server closed the connection");
    };
    std::string up = message("up", {}, {});
    CHECK(up.find("pgdeploy up ran") != std::string::npos);
    CHECK(up.find("Running the same command again") != std::string::npos);
    CHECK(message("down", {}, {{"to", "3"}}).find("Running the same command again") != std::string::npos);
    CHECK(message("down", {}, {{"steps", "1"}}).find("revert one more") != std::string::npos);
    CHECK(message("rollback", {}, {}).find("Check `pgdeploy status`") != std::string::npos);
    CHECK(message("rollback", {}, {{"deployment", "4"}}).find("Running the same command again") != std::string::npos);
    CHECK(message("markers", {"request"}, {}).find("second rollback") != std::string::npos);
    CHECK(message("markers", {"execute", "3"}, {}).find("pgdeploy markers execute ran") != std::string::npos);
}

TEST_CASE("read-only commands are the inspection ones", "[cli][wait_primary]") {
    using pgdeploy::cli::CommandSpec;
    using pgdeploy::cli::Context;
    auto read_only = [](const std::string& name, std::vector<std::string> positionals) {
        CommandSpec spec{name, "", "", {}, 0, 2, ""};
        Context ctx;
        ctx.spec = &spec;
        ctx.args.positionals = std::move(positionals);
        return ctx.read_only_command();
    };
    CHECK(read_only("status", {}));
    CHECK(read_only("validate", {}));
    CHECK(read_only("verify", {"3"}));
    CHECK(read_only("markers", {}));
    CHECK(read_only("markers", {"list"}));
    CHECK_FALSE(read_only("markers", {"request"}));
    CHECK_FALSE(read_only("markers", {"execute", "1"}));
    CHECK_FALSE(read_only("up", {}));
    CHECK_FALSE(read_only("load", {"dir"}));
    CHECK_FALSE(read_only("baseline", {}));
    CHECK_FALSE(read_only("rollback", {}));
}

TEST_CASE("a standby's refusal to write is exit 9", "[common][exit]") {
    CHECK(pgdeploy::exit_code_for_sqlstate("25006") == pgdeploy::kExitReadOnly);
    CHECK(pgdeploy::kExitReadOnly == 9);
}

TEST_CASE("the server's role as status shows it, and the read-only advice", "[common][wait_primary]") {
    pgdeploy::common::ServerRole standby{true, true, "127.0.0.1", "5433"};
    CHECK_FALSE(standby.writable());
    CHECK(standby.describe() == "read-only standby (in recovery)");
    CHECK(standby.to_json() ==
          nlohmann::json{{"in_recovery", true}, {"read_only", true}, {"host", "127.0.0.1"}, {"port", 5433}});
    pgdeploy::common::ServerRole socket{false, false, "/var/run/postgresql", "5432"};
    CHECK(socket.writable());
    CHECK(socket.describe() == "primary (read-write)");
    CHECK(socket.to_json()["port"] == 5432);
    pgdeploy::common::ServerRole frozen{false, true, "db", "x"};
    CHECK_FALSE(frozen.writable());
    CHECK(frozen.to_json()["port"] == "x");
    std::string m = pgdeploy::common::read_only_message("pgdeploy up", standby, " within --wait-primary 60s");
    CHECK(m.find("the server 127.0.0.1:5433 is a read-only standby (in recovery)") == 0);
    CHECK(m.find("within --wait-primary 60s") != std::string::npos);
    CHECK(m.find("target_session_attrs=read-write") != std::string::npos);
}
