"""Every failure of pgdeploy's commands against a real cluster: the documented exit code, a clear message, the
JSON error document under --json, and "nothing changed" (the ledger and the schema compared before and after)."""
import json
import threading
import time

import psycopg2
import pytest

from conftest import conninfo, free_port, run_pgdeploy

GOOD = {
    "0001_a.up.sql": "CREATE TABLE a (id int PRIMARY KEY);\n",
    "0001_a.down.sql": "DROP TABLE a;\n",
    "0002_b.up.sql": "CREATE TABLE b (id int PRIMARY KEY);\n",
    "0002_b.down.sql": "DROP TABLE b;\n",
}


def assert_json_error(out, exit_code, sqlstate=None):
    doc = json.loads(out)
    assert doc["schema_version"] == 1 and doc["ok"] is False and doc["exit_code"] == exit_code
    if sqlstate is not None:
        assert doc["error"]["sqlstate"] == sqlstate
    return doc


# ---- bad migration files: exit 2, nothing registered -------------------------------------------------------------

BAD_DIRS = {
    "down_without_up": ({"0001_a.up.sql": "SELECT 1;", "0002_b.down.sql": "SELECT 1;"},
                        "0002_b.down.sql: has no matching up script (0002_b.up.sql)"),
    "same_version_twice": ({"0001_a.up.sql": "SELECT 1;", "0001_b.up.sql": "SELECT 2;"},
                           "version 0001 is used by two different names"),
    "same_version_two_spellings": ({"1_a.up.sql": "SELECT 1;", "01_b.up.sql": "SELECT 2;"},
                                   "two migrations with the same version"),
    "unparsable_version": ({"0001_a.up.sql": "SELECT 1;", "first.sql": "SELECT 1;"},
                           "first.sql: cannot parse a version from the file name"),
    "invalid_version": ({"0001_a.up.sql": "SELECT 1;", "-2_b.up.sql": "SELECT 1;"}, "invalid version \"-2\""),
    "unknown_directive": ({"0001_a.up.sql": "SELECT 1;", "0002_b.up.sql": "-- x\n-- pg_deploy: transacton=off\nSELECT 1;"},
                          "0002_b.up.sql:2: unknown pg_deploy directive \"transacton\""),
    "bad_directive_value": ({"0001_a.up.sql": "-- pg_deploy: reversible=maybe\nSELECT 1;"},
                            "0001_a.up.sql:1: reversible must be reversible, lossy or irreversible"),
    "not_utf8": ({"0001_a.up.sql": "SELECT 1;", "0002_b.up.sql": b"SELECT '\xe9t\xe9';\n"},
                 "0002_b.up.sql:1: not valid UTF-8"),
    "nul_byte": ({"0001_a.up.sql": b"SELECT 1;\x00"}, "contains a NUL byte"),
    "no_files": ({"README.md": "nothing here"}, "no migration files found"),
    "mixed_layouts": ({"0001_a.up.sql": "SELECT 1;", "V2__b.sql": "SELECT 1;"}, "mixes native"),
    "flyway_repeatable": ({"V1__a.sql": "SELECT 1;", "R__views.sql": "SELECT 1;"}, "repeatable Flyway migrations"),
    "sqitch_bad_plan": ({"sqitch.plan": "%project=x\nchange 2020-01-01 Dev <d@x>\n", "deploy/change.sql": "SELECT 1;"},
                        "sqitch.plan:2: expected a timestamp"),
}


@pytest.mark.parametrize("case", sorted(BAD_DIRS))
@pytest.mark.parametrize("command", ["load", "up"])
def test_bad_migration_files_exit_2_and_register_nothing(pg, write_migrations, case, command):
    files, message = BAD_DIRS[case]
    d = write_migrations(files)
    before = pg.snapshot()
    args = ["load", d] if command == "load" else ["up", "--dir", d]
    rc, out, err = run_pgdeploy(*args, "--dsn", pg.dsn)
    assert rc == 2, (out, err)
    assert message in err
    assert len([l for l in err.splitlines() if "error:" in l]) == 1
    assert pg.snapshot() == before
    rc, out, err = run_pgdeploy(*args, "--dsn", pg.dsn, "--json")
    assert rc == 2
    doc = assert_json_error(out, 2)
    assert message in doc["error"]["message"]


def test_missing_and_non_directory(pg, tmp_path):
    rc, _, err = run_pgdeploy("load", str(tmp_path / "nope"), "--dsn", pg.dsn)
    assert rc == 2 and "nope: no such directory" in err
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = run_pgdeploy("up", "--dir", str(f), "--dsn", pg.dsn)
    assert rc == 2 and "file: not a directory" in err
    assert pg.scalar("SELECT count(*) FROM deploy.migrations") == 0


def test_extension_refuses_a_file_exit_2_all_or_nothing(pg, write_migrations):
    # The extension refuses REINDEX ... CONCURRENTLY in a verify script (PD004): the whole load is refused.
    d = write_migrations(dict(GOOD, **{"0003_c.up.sql": "CREATE TABLE c (id int);",
                                       "0003_c.down.sql": "DROP TABLE c;",
                                       "0003_c.verify.sql": "REINDEX TABLE CONCURRENTLY c;"}))
    rc, out, err = run_pgdeploy("load", d, "--json", "--dsn", pg.dsn)
    assert rc == 2, err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["refused"] == 1 and doc["exit_code"] == 2
    assert [m["status"] for m in doc["migrations"]] == ["new", "new", "refused"]
    assert doc["migrations"][2]["sqlstate"] == "PD004"
    assert pg.scalar("SELECT count(*) FROM deploy.migrations") == 0


# ---- drift: exit 6 ----------------------------------------------------------------------------------------------

def test_drift_is_refused_with_exit_6_and_nothing_registered(pg, write_migrations):
    d = write_migrations(GOOD)
    assert run_pgdeploy("up", "--dir", d, "--dsn", pg.dsn)[0] == 0
    edited = dict(GOOD, **{"0001_a.up.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n",
                           "0003_c.up.sql": "CREATE TABLE c (id int);\n"})
    d2 = write_migrations(edited)
    before = pg.snapshot()
    rc, out, err = run_pgdeploy("load", d2, "--dsn", pg.dsn)
    assert rc == 6, err
    assert "refused" in out and "PD001" in out and "nothing registered" in out
    assert pg.snapshot() == before
    rc, out, err = run_pgdeploy("up", "--dir", d2, "--json", "--dsn", pg.dsn)
    assert rc == 6
    doc = json.loads(out)
    assert doc["ok"] is False and doc["exit_code"] == 6 and doc["load"]["refused"] == 1
    assert pg.snapshot() == before


# ---- a failing migration: exit 1, the JSON names it, atomic means nothing applied --------------------------------

def test_failed_migration_exit_1_nothing_applied(pg, write_migrations):
    d = write_migrations(dict(GOOD, **{"0003_bad.up.sql": "CREATE TABLE c (id int);\nSELECT * FROM no_such_table;\n"}))
    rc, out, err = run_pgdeploy("up", "--dir", d, "--json", "--dsn", pg.dsn)
    assert rc == 1, err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["exit_code"] == 1 and doc["command"] == "up"
    assert doc["failed"]["version"] == "0003" and doc["failed"]["sqlstate"] == "42P01"
    assert pg.scalar("SELECT count(*) FROM deploy.applied") == 0
    assert pg.scalar("SELECT to_regclass('public.a') IS NULL") is True
    assert pg.scalar("SELECT state FROM deploy.deployments ORDER BY id DESC LIMIT 1") == "failed"
    rc, out, err = run_pgdeploy("up", "--dsn", pg.dsn)
    assert rc == 1 and "FAILED at 0003" in out and "42P01" in out


def test_failed_migration_non_atomic_keeps_the_good_ones(pg, write_migrations):
    d = write_migrations(dict(GOOD, **{"0003_bad.up.sql": "SELECT * FROM no_such_table;\n"}))
    rc, out, err = run_pgdeploy("up", "--dir", d, "--no-atomic", "--json", "--dsn", pg.dsn)
    assert rc == 1, err
    doc = json.loads(out)
    assert doc["atomic"] is False and doc["failed"]["version"] == "0003"
    assert [r[0] for r in pg.sql("SELECT version FROM deploy.applied ORDER BY 1")] == ["0001", "0002"]


def test_unknown_target_is_an_error(pg, write_migrations):
    d = write_migrations(GOOD)
    assert run_pgdeploy("load", d, "--dsn", pg.dsn)[0] == 0
    before = pg.snapshot()
    rc, out, err = run_pgdeploy("up", "--target", "9999", "--json", "--dsn", pg.dsn)
    assert rc == 1
    assert_json_error(out, 1, "P0002")
    assert pg.snapshot() == before


# ---- revert refusals: 5 irreversible, 7 window / not eligible -----------------------------------------------------

def test_irreversible_down_exit_5_then_force(pg, write_migrations):
    d = write_migrations(dict(GOOD, **{"0003_c.up.sql": "CREATE TABLE c (id int);"}))   # no down: irreversible
    assert run_pgdeploy("up", "--dir", d, "--dsn", pg.dsn)[0] == 0
    before = pg.snapshot()
    rc, out, err = run_pgdeploy("down", "--dsn", pg.dsn)
    assert rc == 5, (out, err)
    assert "PD002" in out + err
    assert pg.snapshot() == before
    rc, out, err = run_pgdeploy("rollback", "--json", "--dsn", pg.dsn)
    assert rc == 5, (out, err)
    assert json.loads(out)["exit_code"] == 5
    assert pg.snapshot() == before
    rc, out, err = run_pgdeploy("down", "--force", "--dsn", pg.dsn)
    assert rc == 0, err
    assert pg.scalar("SELECT count(*) FROM deploy.applied") == 2


def test_rollback_outside_window_exit_7(pg, write_migrations):
    d = write_migrations(GOOD)
    assert run_pgdeploy("up", "--dir", d, "--dsn", pg.dsn)[0] == 0
    pg.sql("UPDATE deploy.deployments SET started_at = now() - interval '30 days', "
           "finished_at = now() - interval '30 days'")
    before = pg.snapshot()
    rc, out, err = run_pgdeploy("rollback", "--json", "--dsn", pg.dsn)
    assert rc == 7, (out, err)
    doc = json.loads(out)
    assert doc["exit_code"] == 7
    assert pg.snapshot() == before
    rc, out, err = run_pgdeploy("rollback", "--force", "--dsn", pg.dsn)
    assert rc == 0, err
    assert pg.scalar("SELECT count(*) FROM deploy.applied") == 0


def test_rollback_of_a_deployment_a_later_one_builds_on_exit_7(pg, write_migrations):
    d1 = write_migrations({k: v for k, v in GOOD.items() if k.startswith("0001")})
    assert run_pgdeploy("up", "--dir", d1, "--dsn", pg.dsn)[0] == 0
    d2 = write_migrations(GOOD)
    assert run_pgdeploy("up", "--dir", d2, "--dsn", pg.dsn)[0] == 0
    first = pg.scalar("SELECT min(id) FROM deploy.deployments")
    before = pg.snapshot()
    rc, out, err = run_pgdeploy("rollback", "--deployment", str(first), "--dsn", pg.dsn)
    assert rc == 7, (out, err)
    assert pg.snapshot() == before


def test_unknown_marker_and_bad_resolution(pg):
    rc, out, err = run_pgdeploy("markers", "execute", "424242", "--json", "--dsn", pg.dsn)
    assert rc == 1
    assert_json_error(out, 1, "P0002")
    rc, _, err = run_pgdeploy("markers", "resolve", "1", "--resolution", "whatever", "--dsn", pg.dsn)
    assert rc == 2 and "--resolution must be done or abandoned" in err
    rc, _, err = run_pgdeploy("markers", "explode", "--dsn", pg.dsn)
    assert rc == 2 and "unknown markers action" in err
    rc, _, err = run_pgdeploy("markers", "execute", "--dsn", pg.dsn)
    assert rc == 2 and "needs a marker ID" in err


# ---- usage errors: exit 2 before connecting ---------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["up", "--bogus"], "unknown option --bogus"),
    (["up", "--targ", "1"], "unknown option --targ"),
    (["up", "--target"], "option --target needs a value"),
    (["up", "--dry-run=yes"], "option --dry-run does not take a value"),
    (["up", "--lock-wait", "soon"], "--lock-wait needs a duration"),
    (["down", "--steps", "2", "--to", "0001"], "--steps and --to cannot be used together"),
    (["down", "--steps", "0"], "--steps must be between 1 and"),
    (["down", "--steps", "x"], "--steps needs a positive integer"),
    (["rollback", "--deployment", "abc"], "--deployment needs a positive integer"),
    (["baseline"], "--through V is required"),
    (["baseline", "--through", "1 2"], "--through \"1 2\" is not a valid version"),
    (["up", "--target", "bad;version"], "--target \"bad;version\" is not a valid version"),
    (["down", "--to", "x" * 65], "is not a valid version"),
    (["verify", "-1"], "unknown option -1"),
    (["verify", "--", "-1"], "VERSION \"-1\" is not a valid version"),
    (["load"], "missing argument DIR"),
    (["load", "a", "b"], "unexpected argument \"b\""),
    (["status", "--log-format", "xml"], "--log-format must be plain or json"),
    (["status", "-v", "-q"], "--verbose and --quiet cannot be used together"),
    (["markers", "list", "--force"], "--force does not apply to markers list"),
    (["frobnicate"], "unknown command"),
    ([], "usage: pgdeploy COMMAND"),
])
def test_usage_errors_exit_2(args, message):
    # A port where nothing listens: a usage error must be reported before any connection attempt.
    rc, out, err = run_pgdeploy(*args, env={"PGPORT": str(free_port()), "PGHOST": "127.0.0.1"})
    assert rc == 2, (out, err)
    assert message in err
    assert out == ""


def test_usage_error_as_json():
    rc, out, err = run_pgdeploy("down", "--steps", "1", "--to", "2", "--json")
    assert rc == 2
    doc = assert_json_error(out, 2)
    assert doc["command"] == "down" and "cannot be used together" in doc["error"]["message"]
    assert "usage: pgdeploy down" in err


# ---- connection failures: exit 3; extension missing: exit 8 -----------------------------------------------------

def test_server_down_exit_3():
    port = free_port()
    rc, out, err = run_pgdeploy("status", "--dsn", f"host=127.0.0.1 port={port} dbname=x connect_timeout=3")
    assert rc == 3, err
    assert "cannot connect to the database" in err and str(port) in err
    assert len(err.strip().splitlines()) == 1
    rc, out, err = run_pgdeploy("up", "--json", "--dsn", f"host=127.0.0.1 port={port}")
    assert rc == 3
    assert_json_error(out, 3)


def test_wrong_dsn_exit_3(pg):
    rc, _, err = run_pgdeploy("status", "--dsn", conninfo("no_such_database_xyz"))
    assert rc == 3 and "no_such_database_xyz" in err
    rc, _, err = run_pgdeploy("status", "--dsn", "host=127.0.0.1 port=notaport")
    assert rc == 3
    rc, _, err = run_pgdeploy("status", "--dsn", "this is = not a conninfo '")
    assert rc == 3 and "invalid connection string" in err


def test_extension_missing_exit_8(pg):
    pg.sql("DROP EXTENSION pg_deploy CASCADE")
    rc, out, err = run_pgdeploy("status", "--dsn", pg.dsn)
    assert rc == 8
    assert "CREATE EXTENSION pg_deploy" in err
    rc, out, err = run_pgdeploy("up", "--json", "--dsn", pg.dsn)
    assert rc == 8
    assert_json_error(out, 8)


# ---- passwords never appear ---------------------------------------------------------------------------------------

def test_password_never_in_output_or_logs(pg, write_migrations):
    secret = "S3cr3t-pgdeploy-pw"
    outputs = []
    # A wrong password in a conninfo and in a URI: the failure message must not contain it.
    for dsn in (conninfo(pg.name, password=secret, host="127.0.0.1"),
                f"postgresql://nobody_here:{secret}@127.0.0.1:{free_port()}/{pg.name}",
                f"host=127.0.0.1 port={free_port()} password={secret} dbname={pg.name}"):
        for extra in ([], ["--json"], ["-v", "--log-format", "json"]):
            rc, out, err = run_pgdeploy("status", "--dsn", dsn, *extra, env={"PGPASSWORD": None})
            outputs.append((rc, out, err))
    # The real password, in the DSN, with debug logging, through a failing deploy and a success.
    d = write_migrations(dict(GOOD, **{"0003_bad.up.sql": "SELECT 1/0;"}))
    if pg.password:
        for args in (["up", "--dir", d, "-v"], ["up", "--dir", d, "--json", "-v"], ["status", "-v"]):
            outputs.append(run_pgdeploy(*args, "--dsn", pg.dsn))
            outputs.append(run_pgdeploy(*args, "--dsn", pg.uri))
    for rc, out, err in outputs:
        assert secret not in out and secret not in err
        if pg.password:
            assert pg.password not in out and pg.password not in err
    assert any(rc == 3 for rc, _, _ in outputs)


# ---- the deploy lock: exit 4 -------------------------------------------------------------------------------------

def test_lock_held_exit_4_and_nothing_changed(pg, write_migrations):
    d = write_migrations(GOOD)
    assert run_pgdeploy("load", d, "--dsn", pg.dsn)[0] == 0
    holder = pg.connect(autocommit=False)
    with holder.cursor() as cur:
        cur.execute("SET application_name = 'other-deployer'")
        cur.execute("SELECT pg_advisory_xact_lock(1346651472, 1)")
    try:
        before = pg.snapshot()
        started = time.monotonic()
        rc, out, err = run_pgdeploy("up", "--lock-wait", "1s", "--json", "--dsn", pg.dsn)
        elapsed = time.monotonic() - started
        assert rc == 4, (out, err)
        doc = assert_json_error(out, 4, "55P03")
        assert "other-deployer" in (doc["error"].get("detail") or "") + doc["error"]["message"]
        assert elapsed < 8
        rc, out, err = run_pgdeploy("down", "--lock-wait", "1s", "--dsn", pg.dsn)
        assert rc == 4 and "55P03" in err
        rc, out, err = run_pgdeploy("load", d, "--lock-wait", "500ms", "--dsn", pg.dsn)
        assert rc == 4
        rc, out, err = run_pgdeploy("status", "--dsn", pg.dsn)   # reading is never blocked by the lock
        assert rc == 0 and "deploy lock      held by pid" in out and "(other-deployer)" in out
        assert pg.snapshot() == before
    finally:
        holder.rollback()
        holder.close()
    assert run_pgdeploy("up", "--lock-wait", "1s", "--dsn", pg.dsn)[0] == 0


def test_unreadable_migration_file_exit_2(pg, write_migrations):
    """As root every file is readable; a broken symlink named like a migration is the unreadable file here."""
    import os
    d = write_migrations(GOOD)
    os.symlink("/nonexistent/0003.sql", os.path.join(d, "0003_c.up.sql"))
    before = pg.snapshot()
    rc, out, err = run_pgdeploy("up", "--dir", d, "--json", "--dsn", pg.dsn)
    assert rc == 2, err
    assert "0003_c.up.sql: not a readable regular file" in json.loads(out)["error"]["message"]
    assert pg.snapshot() == before


def test_marker_that_keeps_failing_needs_attention_exit_10(pg, write_migrations):
    d = write_migrations({"0001_a.up.sql": "CREATE TABLE a (id int);", "0001_a.down.sql": "SELECT 1/0;"})
    assert run_pgdeploy("up", "--dir", d, "--dsn", pg.dsn)[0] == 0
    rc, out, _ = run_pgdeploy("markers", "request", "--reason", "bad", "--json", "--dsn", pg.dsn)
    marker = json.loads(out)["marker_id"]
    one_attempt = {"PGOPTIONS": "-c pg_deploy.max_rollback_attempts=1"}
    rc, out, err = run_pgdeploy("markers", "execute", str(marker), "--json", "--dsn", pg.dsn, env=one_attempt)
    assert rc == 10, (out, err)
    doc = json.loads(out)
    assert doc["state"] == "needs_attention" and doc["exit_code"] == 10
    assert doc["error"]["sqlstate"] == "22012"
    # Executing it again is refused (PD007) and still says: a person must look.
    rc, out, err = run_pgdeploy("markers", "execute", str(marker), "--json", "--dsn", pg.dsn, env=one_attempt)
    assert rc == 10, (out, err)
    assert json.loads(out)["error"]["sqlstate"] == "PD007"
    assert pg.scalar("SELECT count(*) FROM deploy.applied") == 1
    rc, out, err = run_pgdeploy("markers", "resolve", str(marker), "--resolution", "abandoned", "--dsn", pg.dsn)
    assert rc == 0, err
