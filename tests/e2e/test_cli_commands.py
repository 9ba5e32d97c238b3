"""pgdeploy's commands against a real cluster: the happy paths of load, up, down, rollback, baseline, status,
validate, verify and markers, in both output modes, and the three migration layouts."""
import json
import subprocess
import time

from conftest import PGDEPLOY_BIN, run_pgdeploy

BASIC = {
    "0001_users.up.sql": "CREATE TABLE users (id int PRIMARY KEY, email text);\n",
    "0001_users.down.sql": "DROP TABLE users;\n",
    "0001_users.verify.sql": "SELECT id, email FROM users WHERE false;\n",
    "0002_orders.up.sql": "CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users);\n",
    "0002_orders.down.sql": "DROP TABLE orders;\n",
    "0010_note.up.sql": "-- pg_deploy: reversible=lossy\nALTER TABLE users ADD COLUMN note text;\n",
    "0010_note.down.sql": "ALTER TABLE users DROP COLUMN note;\n",
}


def applied_versions(pg):
    return [r[0] for r in pg.sql("SELECT version FROM deploy.applied ORDER BY sort_key")]


def test_load_registers_all_files_and_is_idempotent(pg, write_migrations):
    d = write_migrations(BASIC)
    rc, out, err = run_pgdeploy("load", d, "--dsn", pg.dsn, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == 1 and doc["command"] == "load" and doc["ok"] is True
    assert (doc["new"], doc["unchanged"], doc["updated"], doc["refused"]) == (3, 0, 0, 0)
    assert [m["status"] for m in doc["migrations"]] == ["new", "new", "new"]
    rows = pg.sql("SELECT version, name, reversibility, down_sql IS NOT NULL, verify_sql IS NOT NULL "
                  "FROM deploy.migrations ORDER BY sort_key")
    assert rows == [("0001", "users", "reversible", True, True), ("0002", "orders", "reversible", True, False),
                    ("0010", "note", "lossy", True, False)]

    rc, out, _ = run_pgdeploy("load", d, "--dsn", pg.dsn, "--json")
    assert rc == 0 and json.loads(out)["unchanged"] == 3

    # Editing a pending migration's file updates it.
    d2 = write_migrations(dict(BASIC, **{"0010_note.up.sql": "ALTER TABLE users ADD COLUMN note varchar(200);\n"}))
    rc, out, _ = run_pgdeploy("load", d2, "--dsn", pg.dsn, "--json")
    assert rc == 0 and json.loads(out)["updated"] == 1
    assert "varchar(200)" in pg.scalar("SELECT up_sql FROM deploy.migrations WHERE version = '0010'")


def test_load_dry_run_registers_nothing(pg, write_migrations):
    d = write_migrations(BASIC)
    before = pg.snapshot()
    rc, out, err = run_pgdeploy("load", d, "--dry-run", "--dsn", pg.dsn)
    assert rc == 0, err
    assert "3 new" in out and "dry run" in out
    assert pg.snapshot() == before


def test_up_human_output_progress_and_status(pg, write_migrations):
    d = write_migrations(BASIC)
    rc, out, err = run_pgdeploy("up", "--dir", d, "--app-version", "rel-1", "--dsn", pg.dsn)
    assert rc == 0, err
    assert "applied 3 migrations" in out
    assert "[1/3] 0001_users ... ok" in err and "[3/3] 0010_note ... ok" in err
    assert applied_versions(pg) == ["0001", "0002", "0010"]
    assert pg.scalar("SELECT app_version FROM deploy.deployments ORDER BY id DESC LIMIT 1") == "rel-1"

    rc, out, err = run_pgdeploy("status", "--dsn", pg.dsn)
    assert rc == 0, err
    assert "current version  0010  (3 applied, 0 pending)" in out
    assert "app rel-1" in out
    rc, out, _ = run_pgdeploy("status", "--dsn", pg.dsn, "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["schema_version"] == 1 and doc["current_version"] == "0010"
    assert doc["command"] == "status" and doc["exit_code"] == 0

    # Nothing pending: a no-op, exit 0.
    rc, out, _ = run_pgdeploy("up", "--dsn", pg.dsn)
    assert rc == 0 and "nothing to apply" in out


def test_up_target_and_dry_run(pg, write_migrations):
    d = write_migrations(BASIC)
    rc, out, err = run_pgdeploy("up", "--dir", d, "--dry-run", "--json", "--dsn", pg.dsn)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["dry_run"] is True and doc["ok"] is True and len(doc["applied"]) == 3
    # dry run with --dir: neither the registration nor the rehearsal is kept
    assert pg.scalar("SELECT count(*) FROM deploy.migrations") == 0
    assert pg.scalar("SELECT count(*) FROM deploy.deployments") == 0

    rc, out, err = run_pgdeploy("up", "--dir", d, "--target", "0002", "--json", "--dsn", pg.dsn)
    assert rc == 0, err
    assert [a["version"] for a in json.loads(out)["applied"]] == ["0001", "0002"]
    assert applied_versions(pg) == ["0001", "0002"]


def test_down_steps_and_to(pg, write_migrations):
    d = write_migrations(BASIC)
    assert run_pgdeploy("up", "--dir", d, "--dsn", pg.dsn)[0] == 0
    rc, out, err = run_pgdeploy("down", "--dsn", pg.dsn)
    assert rc == 0, err
    assert "reverted 1 migration: 0010 -> 0002" in out
    assert applied_versions(pg) == ["0001", "0002"]
    assert run_pgdeploy("up", "--dsn", pg.dsn)[0] == 0
    rc, out, err = run_pgdeploy("down", "--to", "0001", "--json", "--dsn", pg.dsn)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True and doc["version_after"] == "0001"
    assert applied_versions(pg) == ["0001"]
    rc, out, _ = run_pgdeploy("down", "--steps", "1", "--dry-run", "--dsn", pg.dsn)
    assert rc == 0 and "dry run: would revert 1 migration" in out
    assert applied_versions(pg) == ["0001"]


def test_rollback_reverts_the_last_deployment(pg, write_migrations):
    d1 = write_migrations({k: v for k, v in BASIC.items() if k.startswith("0001")})
    assert run_pgdeploy("up", "--dir", d1, "--app-version", "r1", "--dsn", pg.dsn)[0] == 0
    d2 = write_migrations(BASIC)
    assert run_pgdeploy("up", "--dir", d2, "--app-version", "r2", "--dsn", pg.dsn)[0] == 0
    assert applied_versions(pg) == ["0001", "0002", "0010"]
    rc, out, err = run_pgdeploy("rollback", "--reason", "bad release", "--json", "--dsn", pg.dsn)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True and [r["version"] for r in doc["reverted"]] == ["0010", "0002"]
    assert applied_versions(pg) == ["0001"]
    assert pg.scalar("SELECT state FROM deploy.deployments WHERE app_version = 'r2' AND kind = 'up'") == "rolled_back"


def test_baseline_then_up(pg, write_migrations):
    d = write_migrations(BASIC)
    assert run_pgdeploy("load", d, "--dsn", pg.dsn)[0] == 0
    pg.sql("CREATE TABLE users (id int PRIMARY KEY, email text)")   # the existing database already has 0001
    rc, out, err = run_pgdeploy("baseline", "--through", "0001", "--dsn", pg.dsn)
    assert rc == 0, err
    assert "1 migration(s) marked applied" in out
    assert pg.scalar("SELECT baseline FROM deploy.applied WHERE version = '0001'") is True
    rc, out, err = run_pgdeploy("up", "--dsn", pg.dsn, "--json")
    assert rc == 0, err
    assert [a["version"] for a in json.loads(out)["applied"]] == ["0002", "0010"]


def test_validate_and_verify(pg, write_migrations):
    d = write_migrations(BASIC)
    assert run_pgdeploy("up", "--dir", d, "--dsn", pg.dsn)[0] == 0
    rc, out, _ = run_pgdeploy("validate", "--dsn", pg.dsn)
    assert rc == 0 and "ok: no problems" in out
    rc, out, err = run_pgdeploy("verify", "--dsn", pg.dsn)
    assert rc == 0, err
    assert "1 checked, 0 failed" in out

    # verify fails when the schema no longer matches: exit 1, nothing kept from the verify run.
    pg.sql("ALTER TABLE users DROP COLUMN email")
    rc, out, _ = run_pgdeploy("verify", "--json", "--dsn", pg.dsn)
    doc = json.loads(out)
    assert rc == 1 and doc["ok"] is False and doc["failed"] == 1 and doc["exit_code"] == 1
    assert doc["results"][0]["sqlstate"] == "42703"
    rc, out, _ = run_pgdeploy("verify", "0002", "--dsn", pg.dsn)
    assert rc == 0

    # validate finds an applied migration that is no longer registered: exit 1.
    pg.sql("DELETE FROM deploy.migrations WHERE version = '0002'")
    rc, out, _ = run_pgdeploy("validate", "--dsn", pg.dsn)
    assert rc == 1 and "applied_unregistered" in out
    rc, out, _ = run_pgdeploy("validate", "--json", "--dsn", pg.dsn)
    doc = json.loads(out)
    assert rc == 1 and doc["ok"] is False and doc["problems"][0]["kind"] == "applied_unregistered"


def test_markers_request_list_execute_resolve(pg, write_migrations):
    d = write_migrations(BASIC)
    assert run_pgdeploy("up", "--dir", d, "--app-version", "r1", "--dsn", pg.dsn)[0] == 0
    rc, out, err = run_pgdeploy("markers", "request", "--reason", "health failed", "--json", "--dsn", pg.dsn)
    assert rc == 0, err
    marker = json.loads(out)["marker_id"]
    assert isinstance(marker, int)
    rc, out, _ = run_pgdeploy("markers", "--dsn", pg.dsn)
    assert rc == 0 and "health failed" in out and "pending" in out
    rc, out, _ = run_pgdeploy("markers", "list", "--open", "--json", "--dsn", pg.dsn)
    assert rc == 0 and [m["id"] for m in json.loads(out)["markers"]] == [marker]
    rc, out, err = run_pgdeploy("status", "--dsn", pg.dsn)
    assert "open rollback markers" in out

    rc, out, err = run_pgdeploy("markers", "execute", str(marker), "--json", "--dsn", pg.dsn)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True and doc["state"] == "done"
    assert applied_versions(pg) == []
    # Executing a done marker again is a no-op.
    rc, out, _ = run_pgdeploy("markers", "execute", str(marker), "--json", "--dsn", pg.dsn)
    assert rc == 0 and json.loads(out)["already_done"] is True

    assert run_pgdeploy("up", "--app-version", "r2", "--dsn", pg.dsn)[0] == 0
    rc, out, _ = run_pgdeploy("markers", "request", "--reason", "second", "--json", "--dsn", pg.dsn)
    second = json.loads(out)["marker_id"]
    rc, out, err = run_pgdeploy("markers", "resolve", str(second), "--resolution", "abandoned", "--note", "false alarm",
                                "--dsn", pg.dsn)
    assert rc == 0, err
    assert pg.scalar("SELECT state FROM deploy.rollback_markers WHERE id = %s", (second,)) == "done"
    assert pg.scalar("SELECT resolution FROM deploy.rollback_markers WHERE id = %s", (second,)) == "abandoned"
    assert applied_versions(pg) == ["0001", "0002", "0010"]


def test_flyway_layout(pg, write_migrations):
    d = write_migrations({
        "V1__init.sql": "CREATE TABLE fw (id int);",
        "U1__init.sql": "DROP TABLE fw;",
        "V1.2__add_col.sql": "ALTER TABLE fw ADD c int;",
        "V1_10__later.sql": "ALTER TABLE fw ADD d int;",
    })
    rc, out, err = run_pgdeploy("up", "--dir", d, "--json", "--dsn", pg.dsn)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["load"]["layout"] == "flyway"
    assert applied_versions(pg) == ["1", "1.2", "1.10"]
    assert pg.scalar("SELECT reversibility FROM deploy.migrations WHERE version = '1.2'") == "irreversible"


def test_sqitch_layout(pg, write_migrations):
    d = write_migrations({
        "sqitch.plan": "%syntax-version=1.0.0\n%project=app\n\n"
                       "schema 2020-01-01T00:00:00Z Dev <dev@example.com> # app schema\n"
                       "widgets [schema] 2020-01-02T00:00:00Z Dev <dev@example.com> # widgets\n"
                       "@v1 2020-01-03T00:00:00Z Dev <dev@example.com>\n",
        "deploy/schema.sql": "-- Deploy app:schema to pg\n\nBEGIN;\n\nCREATE SCHEMA app;\n\nCOMMIT;\n",
        "revert/schema.sql": "BEGIN;\nDROP SCHEMA app;\nCOMMIT;\n",
        "verify/schema.sql": "BEGIN;\nSELECT 1/count(*) FROM pg_namespace WHERE nspname = 'app';\nROLLBACK;\n",
        "deploy/widgets.sql": "BEGIN;\nCREATE TABLE app.widgets (id int);\nCOMMIT;\n",
        "revert/widgets.sql": "BEGIN;\nDROP TABLE app.widgets;\nCOMMIT;\n",
    })
    rc, out, err = run_pgdeploy("up", "--dir", d, "--dsn", pg.dsn)
    assert rc == 0, err
    assert pg.sql("SELECT version, name FROM deploy.applied ORDER BY sort_key") == [("0001", "schema"),
                                                                                  ("0002", "widgets")]
    assert pg.scalar("SELECT to_regclass('app.widgets') IS NOT NULL") is True
    rc, out, err = run_pgdeploy("verify", "--dsn", pg.dsn)
    assert rc == 0, err
    assert run_pgdeploy("rollback", "--dsn", pg.dsn)[0] == 0
    assert pg.scalar("SELECT to_regnamespace('app') IS NULL") is True


def test_uri_dsn_and_environment(pg, write_migrations):
    d = write_migrations(BASIC)
    rc, out, err = run_pgdeploy("up", "--dir", d, "--dsn", pg.uri)
    assert rc == 0, err
    # Without --dsn, libpq's PG* variables are used.
    rc, out, err = run_pgdeploy("status", "--json", env={"PGDATABASE": pg.name})
    assert rc == 0, err
    assert json.loads(out)["current_version"] == "0010"


def test_application_name_is_pgdeploy_unless_given(pg, write_migrations):
    """While pgdeploy waits for the deploy lock, pg_stat_activity shows who it is."""
    d = write_migrations(BASIC)
    assert run_pgdeploy("load", d, "--dsn", pg.dsn)[0] == 0
    holder = pg.connect(autocommit=False)
    holder.cursor().execute("SELECT pg_advisory_xact_lock(1346651472, 1)")
    try:
        for dsn, expected in ((pg.dsn, "pgdeploy"), (pg.dsn + " application_name=ci-job-7", "ci-job-7")):
            proc = subprocess.Popen([PGDEPLOY_BIN, "up", "--lock-wait", "20s", "--dsn", dsn],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                seen = None
                for _ in range(100):
                    seen = pg.scalar("SELECT application_name FROM pg_stat_activity WHERE datname = %s "
                                     "AND application_name = %s", (pg.name, expected))
                    if seen:
                        break
                    time.sleep(0.05)
                assert seen == expected
            finally:
                proc.kill()
                proc.wait()
    finally:
        holder.rollback()
        holder.close()


def test_help_and_version():
    rc, out, _ = run_pgdeploy("--version")
    assert rc == 0 and out.startswith("pgdeploy ")
    rc, out, _ = run_pgdeploy("help")
    assert rc == 0 and "commands:" in out
    rc, out, _ = run_pgdeploy("up", "--help")
    assert rc == 0 and "--target V" in out


def test_log_format_json_gives_json_lines_on_stderr(pg, write_migrations):
    d = write_migrations(BASIC)
    rc, out, err = run_pgdeploy("up", "--dir", d, "--log-format", "json", "-v", "--dsn", pg.dsn)
    assert rc == 0, err
    lines = [json.loads(l) for l in err.splitlines() if l.strip()]
    assert lines and all({"ts", "level", "msg"} <= set(l) for l in lines)
    assert any(l["level"] == "debug" for l in lines)
    assert any("0001_users ... ok" in l["msg"] for l in lines)
    # -q: no progress, no info lines.
    rc, out, err = run_pgdeploy("down", "-q", "--dsn", pg.dsn)
    assert rc == 0 and err == ""


def test_multi_host_conninfo_with_target_session_attrs(pg):
    import os
    from conftest import conninfo, free_port
    host = os.environ.get("PGHOST", "localhost")
    port = os.environ.get("PGPORT", "5432")
    dsn = conninfo(pg.name, host=f"{host},{host}", port=f"{free_port()},{port}",
                   target_session_attrs="read-write")
    rc, out, err = run_pgdeploy("status", "--json", "--dsn", dsn)
    assert rc == 0, err
    assert json.loads(out)["schema_version"] == 1


def test_pgpass_and_service_file(pg, tmp_path):
    """libpq's own sources: the password from a .pgpass file, the rest from a service file."""
    import os
    host = os.environ.get("PGHOST", "localhost")
    port = os.environ.get("PGPORT", "5432")
    user = os.environ.get("PGUSER", "postgres")
    password = os.environ["PGPASSWORD"]   # pg_virtualenv's cluster authenticates with a password
    no_password = {"PGPASSWORD": None, "PGPASSFILE": str(tmp_path / "none")}
    # Without any password source the server refuses: exit 3, so the checks below prove the files are used.
    rc, _, err = run_pgdeploy("status", "--dsn", f"host={host} port={port} dbname={pg.name}", env=no_password)
    assert rc == 3, err

    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:{port}:{pg.name}:{user}:{password}\n")
    pgpass.chmod(0o600)
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[pgdeploy-test]\nhost={host}\nport={port}\ndbname={pg.name}\nuser={user}\n")
    env = {"PGPASSWORD": None, "PGPASSFILE": str(pgpass), "PGSERVICEFILE": str(services)}
    rc, out, err = run_pgdeploy("status", "--json", "--dsn", "service=pgdeploy-test", env=env)
    assert rc == 0, err
    assert json.loads(out)["schema_version"] == 1
    rc, out, err = run_pgdeploy("status", "--json", env=dict(env, PGSERVICE="pgdeploy-test", PGDATABASE=None))
    assert rc == 0, err
    assert password not in out + err


def test_sql_bodies_are_registered_byte_for_byte(pg, write_migrations):
    """The batch registration passes SQL through array parameters: quotes, backslashes, braces, the word NULL and
    non-ASCII text must arrive unchanged."""
    up = ("-- \"quoted\" {braces} NULL \\backslash\\ 'single' é ✓ 😀\n"
          "CREATE TABLE tricky (v text DEFAULT E'a\\\\b\"c{d}' );\n"
          "COMMENT ON TABLE tricky IS 'NULL';\n")
    down = "DROP TABLE tricky; -- \"}\n"
    d = write_migrations({"0001_tricky.up.sql": up, "0001_tricky.down.sql": down,
                          "0002_null.up.sql": "SELECT 'NULL';\n"})
    rc, out, err = run_pgdeploy("up", "--dir", d, "--dsn", pg.dsn)
    assert rc == 0, err
    assert pg.sql("SELECT up_sql, down_sql, verify_sql FROM deploy.migrations WHERE version = '0001'") == \
        [(up, down, None)]
    assert pg.scalar("SELECT down_sql FROM deploy.migrations WHERE version = '0002'") is None
    assert pg.scalar("SELECT column_default FROM information_schema.columns WHERE table_name = 'tricky'") == \
        "'a\\b\"c{d}'::text"
