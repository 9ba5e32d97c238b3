"""Security end to end (docs/security.md): the attacks, performed against the entry points that people, CI and the
watcher run, with the real binary on a real cluster, as a superuser and as the least-privilege deployer of
docs/operations.md ("Least privilege").

a. search_path: an attacker role with no grants in pg_deploy owns schema ``evil``, which is on the deployer's
   search_path (PGOPTIONS or the DSN's ``options``), in front of pg_catalog. It plants an exact-match twin of every
   pg_catalog operator and function (and domains named like the types pgdeploy casts to) that records the role that
   ran it, bumps a sequence (not undone by a rollback) and, run by a superuser, makes the attacker one. Then every
   command runs: load, up (with a non-transactional step), status, validate, verify, markers, rollback, down,
   baseline, ``once`` executing a marker whose lossy revert archives data, and a ``watch`` that rolls an unhealthy
   release back. Nothing of the attacker's runs, and the migrations still see the caller's path and rights.
b. A deploy_admin member cannot write the ledger, the audit log or the counters, nor call the internal steps: 42501,
   nothing stored changes.
c. Down SQL changed behind its checksum by the table owner is not run by ``once``: the marker needs attention with
   PD001, a stored_sql_drift event is written, ``validate`` exits 1 naming it, ``rollback`` exits 6.
d. A deploy_reader reads status and history, never error detail: a failed migration's secret literal is in nothing
   it can select.
e. A 200 kB reason is refused and no marker is created.
f. Least privilege: what fails, and how, when the deployer lacks a right.

Roles are cluster-wide, so each test creates its own with unique names and drops them at the end.
"""
import json
import os
import uuid

import psycopg2
import pytest

from conftest import conninfo, run_pgdeploy
from watch_helpers import (Watcher, events, hook_entries, wait_for, watch_config, write_hook,  # noqa: F401
                           health, watchers)  # health, watchers: fixtures

# The deployer's path in the attacks: the attacker's schema in front of pg_catalog. ATTACK_PATH comes through
# PGOPTIONS, APP_ATTACK_PATH (app first, so unqualified table names in migrations land in app) through the DSN.
ATTACK_PATH = "evil,pg_catalog"
APP_ATTACK_PATH = "app,evil,pg_catalog"
SECRET = "s3cr3t-9f2c1e"

# The trap, planted by the attacker (tests/security/trap.sql, shared with sql/security.sql).
TRAP_SQL = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "security", "trap.sql")).read()


class Sec:
    """One test's cast: the database (pg), an attacker, the least-privilege deployer, a reader, all login roles."""

    def __init__(self, pg):
        suffix = uuid.uuid4().hex[:8]
        self.pg = pg
        self.attacker = f"sec_attacker_{suffix}"
        self.deployer = f"sec_deployer_{suffix}"
        self.reader = f"sec_reader_{suffix}"
        self.password = f"pw-{uuid.uuid4().hex}"
        self.superuser = pg.scalar("SELECT current_user")

    def create_roles(self):
        pw = self.password
        self.pg.sql(f"CREATE ROLE {self.attacker} LOGIN PASSWORD %s", (pw,))
        # docs/operations.md, "Least privilege", as written there: deploy_admin, the app schema's owner, its path.
        self.pg.sql(f"CREATE ROLE {self.deployer} LOGIN PASSWORD %s", (pw,))
        self.pg.sql(f"GRANT deploy_admin TO {self.deployer}")
        self.pg.sql(f"CREATE SCHEMA app AUTHORIZATION {self.deployer}")
        self.pg.sql(f'ALTER ROLE {self.deployer} IN DATABASE "{self.pg.name}" SET search_path = app')
        # The application's role: deploy_reader, and rights on the deployer's tables without owning them.
        self.pg.sql(f"CREATE ROLE {self.reader} LOGIN PASSWORD %s IN ROLE deploy_reader", (pw,))
        self.pg.sql(f"GRANT USAGE ON SCHEMA app TO {self.reader}")
        self.pg.sql(f"ALTER DEFAULT PRIVILEGES FOR ROLE {self.deployer} IN SCHEMA app "
                    f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {self.reader}")

    def plant_trap(self, schema="evil"):
        """Plants the trap in schema (created for the attacker unless it exists: public, before PostgreSQL 15)."""
        if schema == "evil":
            self.pg.sql(f"CREATE SCHEMA evil AUTHORIZATION {self.attacker}")
        conn = psycopg2.connect(self.dsn(self.attacker))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(TRAP_SQL.replace("evil.", schema + ".")
                            .replace("SCHEMA evil", "SCHEMA " + schema))
                # The trap is armed: an unqualified operator under the attack path runs it (as the attacker here).
                cur.execute(f"SET search_path = {schema}, pg_catalog")
                cur.execute("SELECT 1 = 1")
                cur.execute("RESET search_path")
            assert self.pg.scalar(f"SELECT count(*) FROM {schema}.pwned") == 1
            self.pg.sql(f"TRUNCATE {schema}.pwned")
            self.pg.sql(f"SELECT setval('{schema}.hits', 1, false)")
        finally:
            conn.close()
        self.trap = schema

    def drop_roles(self):
        for role in (self.attacker, self.deployer, self.reader):
            self.pg.sql(f"DROP OWNED BY {role} CASCADE") if self.role_exists(role) else None
            self.pg.sql(f"DROP ROLE IF EXISTS {role}")

    def role_exists(self, role):
        return bool(self.pg.scalar("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)))

    def dsn(self, role=None, path=None):
        """A conninfo for role (None: the superuser of the PG* environment), with path as its search_path."""
        extra = {}
        if role is not None:
            extra.update(user=role, password=self.password)
        if path is not None:
            extra["options"] = f"-c search_path={path}"
        return conninfo(self.pg.name, **extra)

    def connect(self, role):
        conn = psycopg2.connect(self.dsn(role))
        conn.autocommit = True
        self.pg._extra.append(conn)
        return conn

    def trap_runs(self):
        """What the trap recorded: rows (who, what), whether its sequence moved, whether the attacker is superuser."""
        return (self.pg.sql(f"SELECT who, what FROM {self.trap}.pwned"),
                self.pg.scalar(f"SELECT is_called FROM {self.trap}.hits"),
                self.pg.scalar("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (self.attacker,)))

    def assert_no_password(self, *outputs):
        """The roles' password is in no output, log line or event (the DSNs carry it, logging is at debug)."""
        events = self.pg.scalar("SELECT coalesce(string_agg(to_jsonb(e)::text, ' '), '') FROM deploy.events e")
        for text in (*outputs, events):
            assert self.password not in text

    def assert_trap_untouched(self, *outputs):
        ran = self.pg.sql(f"SELECT what, who, count(*) FROM {self.trap}.pwned GROUP BY 1, 2 ORDER BY 1, 2")
        assert ran == [], f"the attacker's code ran: {ran}"
        assert self.trap_runs() == ([], False, False)
        for out in outputs:
            assert "PWNED" not in out, out


@pytest.fixture
def sec(pg):
    s = Sec(pg)
    s.create_roles()
    try:
        yield s
    finally:
        s.drop_roles()


@pytest.fixture
def trapped(sec):
    sec.plant_trap()
    return sec


def as_role(sec, who, path=None):
    """(DSN, environment) for running pgdeploy as `who` ('superuser' or 'deployer') with `path` (None: the server's
    default). PGOPTIONS carries the path for the superuser; the deployer's DSN carries it in its options."""
    if who == "superuser":
        env = {"PGOPTIONS": f"-c search_path={path}"} if path else {}
        return sec.dsn(), env
    return sec.dsn(sec.deployer, path), {"PGOPTIONS": None}


def pgdeploy_json(*args, expect=0):
    code, out, err = run_pgdeploy(*args, "--json")
    assert code == expect, f"pgdeploy {' '.join(map(str, args[:2]))}: exit {code}\n{out}\n{err}"
    return json.loads(out), err


# Migrations that use no operator or function of their own (so whatever the trap records came from pg_deploy) and
# write down what they saw: the search_path and the role they ran under.
MIGRATIONS = {
    "0001_users.up.sql": "CREATE TABLE app.users (id int);\n"
                         "CREATE TABLE app.seen AS SELECT pg_catalog.current_setting('search_path') AS path,\n"
                         "                                CURRENT_USER AS who;\n",
    "0001_users.down.sql": "DROP TABLE app.seen;\nDROP TABLE app.users;\n",
    "0001_users.verify.sql": "SELECT id FROM app.users;\n",
    "0002_scores.up.sql": "-- pg_deploy: reversible=lossy\nCREATE TABLE app.scores (id int);\n"
                          "INSERT INTO app.scores VALUES (7);\n",
    "0002_scores.down.sql": "DROP TABLE app.scores;\n",
    "0003_users_idx.up.sql": "-- pg_deploy: transaction=off\nCREATE INDEX CONCURRENTLY users_id_idx ON app.users (id);\n",
    "0003_users_idx.down.sql": "DROP INDEX app.users_id_idx;\n",
}


# ---- a. search_path ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("who", ["superuser", "deployer"])
def test_cli_commands_run_nothing_of_the_attackers(trapped, write_migrations, who):
    sec = trapped
    dsn, env = as_role(sec, who, ATTACK_PATH)
    mig = write_migrations(MIGRATIONS)
    outputs = []

    def cli(*args, expect=0):
        code, out, err = run_pgdeploy(*args, "--dsn", dsn, "--json", env=env)
        outputs.extend([out, err])
        assert code == expect, f"pgdeploy {args[0]}: exit {code}\n{out}\n{err}"
        return json.loads(out)

    assert cli("load", mig)["ok"]
    up = cli("up", "--dir", mig, "--app-version", "r1")
    assert up["ok"] and up["version_after"] == "0003", up
    assert cli("status")["current_version"] == "0003"
    assert cli("validate")["ok"]
    assert cli("verify")["ok"]
    assert cli("markers", "list")["markers"] == []
    # Migration SQL ran with the caller's path and rights.
    role = sec.superuser if who == "superuser" else sec.deployer
    assert sec.pg.sql("SELECT path, who FROM app.seen") == [(ATTACK_PATH, role)]

    rb = cli("rollback", "--reason", "bad release")
    assert rb["ok"] and [r["version"] for r in rb["reverted"]] == ["0003", "0002", "0001"], rb
    assert sec.pg.sql("SELECT object_name, row_count FROM deploy.archived") == [("app.scores", 1)]

    assert cli("up", "--app-version", "r2")["ok"]
    assert cli("down", "--steps", "1")["ok"]
    marker = cli("markers", "request", "--reason", "by hand")["marker_id"]
    done = cli("markers", "execute", str(marker))
    assert done["ok"] and done["state"] == "done", done
    assert sec.pg.scalar("SELECT count(*) FROM deploy.applied") == 0
    assert cli("baseline", "--through", "0001", "--app-version", "adopted")["ok"]
    assert sec.pg.sql("SELECT version, baseline, applied_by FROM deploy.applied") == [("0001", True, role)]

    sec.assert_trap_untouched(*outputs)


# Two releases whose migrations name their tables unqualified: they land in app because app is first on the
# caller's path, and the lossy down script's unqualified DROP TABLE is archived as app.scores.
RELEASE_1 = {"0001_users.up.sql": "CREATE TABLE users (id int);\n", "0001_users.down.sql": "DROP TABLE users;\n"}
RELEASE_2 = dict(RELEASE_1, **{
    "0002_scores.up.sql": "-- pg_deploy: reversible=lossy\nCREATE TABLE scores (id int);\nINSERT INTO scores VALUES (7);\n",
    "0002_scores.down.sql": "DROP TABLE scores;\n"})


def ship_two_releases(sec, write_migrations, dsn, env):
    """Deploys RELEASE_1 as v1 and RELEASE_2 as v2 with pgdeploy up; returns the id of v2's deployment."""
    for app_version, files in (("v1", RELEASE_1), ("v2", RELEASE_2)):
        code, out, err = run_pgdeploy("up", "--dir", write_migrations(files), "--app-version", app_version,
                                      "--dsn", dsn, "--json", env=env)
        assert code == 0, out + err
        assert "PWNED" not in err
    return json.loads(out)["deployment_id"]


def once_config(tmp_path, dsn, hook):
    cfg = {"watcher_id": "sec-once", "database": {"dsn": dsn},
           "rollback": {"command": [hook], "timeout": "30s", "lease": "30s"}, "logging": {"level": "debug"}}
    path = tmp_path / "once.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("who", ["superuser", "deployer"])
def test_once_executes_a_lossy_revert_without_running_the_attackers_code(trapped, write_migrations, tmp_path, who):
    sec = trapped
    dsn, env = as_role(sec, who, APP_ATTACK_PATH)
    d2 = ship_two_releases(sec, write_migrations, dsn, env)
    assert sec.pg.sql("SELECT id FROM app.scores") == [(7,)]
    marker = sec.pg.scalar("SELECT deploy.request_rollback('release v2 is bad', %s)", (d2,))
    hook, hook_log, _ = write_hook(tmp_path, tmp_path / "bad")

    code, out, err = run_pgdeploy("once", "--config", once_config(tmp_path, dsn, hook), "--json", env=env)
    assert code == 0, out + err
    assert [(m["marker_id"], m["result"]) for m in json.loads(out)["markers"]] == [(marker, "done")]
    assert [e["phase"] for e in hook_entries(hook_log)] == ["start", "done"]
    assert sec.pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "rolled_back"
    # The down script's unqualified name was resolved on the caller's path, and its data archived first.
    assert sec.pg.scalar("SELECT to_regclass('app.scores')") is None
    archived = sec.pg.sql("SELECT object_name, row_count, archive_table FROM deploy.archived")
    assert [(a[0], a[1]) for a in archived] == [("app.scores", 1)]
    assert sec.pg.sql(f"SELECT id FROM {archived[0][2]}") == [(7,)]
    owner = sec.superuser if who == "superuser" else sec.deployer
    assert sec.pg.scalar("SELECT requested_by FROM deploy.rollback_markers WHERE id = %s", (marker,)) == sec.superuser
    assert sec.pg.scalar("SELECT actor FROM deploy.events WHERE kind = 'marker_done'") == owner
    sec.assert_trap_untouched(out, err)
    sec.assert_no_password(out, err)


@pytest.mark.parametrize("who", ["superuser", "deployer"])
def test_watch_rolls_back_an_unhealthy_release_without_running_the_attackers_code(trapped, write_migrations,
                                                                                  tmp_path, health, watchers, who):
    sec = trapped
    # The attacker's schema is on the watcher's path through its DSN's options, for both roles.
    dsn = sec.dsn(None if who == "superuser" else sec.deployer, APP_ATTACK_PATH)
    d2 = ship_two_releases(sec, write_migrations, dsn, {"PGOPTIONS": None})
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
    cfg = watch_config(sec.pg, health, hook, tmp_path / "state.json")
    cfg["database"]["dsn"] = dsn
    w = Watcher(tmp_path, cfg)
    watchers.append(w)
    w.wait_ready(leader=True)

    health.make_unhealthy()
    wait_for(lambda: sec.pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "rolled_back",
             timeout=20, what="deployment v2 rolled back")
    wait_for(lambda: events(sec.pg, "watcher_rollback_done"), timeout=20, what="health recovered")
    assert [e["phase"] for e in hook_entries(hook_log)] == ["start", "done"]
    assert sec.pg.sql("SELECT object_name, row_count FROM deploy.archived") == [("app.scores", 1)]
    assert w.stop() == 0
    sec.assert_trap_untouched(w.log_text())
    sec.assert_no_password(w.log_text())


def test_a_failing_hook_is_recorded_for_the_least_privilege_deployer(trapped, write_migrations, tmp_path):
    """The watcher records a failed hook as a failed attempt (deploy.fail_marker_attempt): the deployer may."""
    sec = trapped
    dsn, env = as_role(sec, "deployer", APP_ATTACK_PATH)
    d2 = ship_two_releases(sec, write_migrations, dsn, env)
    marker = sec.pg.scalar("SELECT deploy.request_rollback('release v2 is bad', %s)", (d2,))
    hook, hook_log, fail_file = write_hook(tmp_path, tmp_path / "bad")
    open(fail_file, "w").close()
    path = once_config(tmp_path, dsn, hook)
    results = []
    for _ in range(3):   # pg_deploy.max_rollback_attempts
        code, out, err = run_pgdeploy("once", "--config", path, "--json", env=env)
        results.append((code, json.loads(out)["markers"][0]["result"]))
        assert "PWNED" not in err
    assert results == [(1, "failed"), (1, "failed"), (10, "needs_attention")], results
    assert sec.pg.sql("SELECT state, attempts, holder, lease_until FROM deploy.rollback_markers WHERE id = %s",
                      (marker,)) == [("needs_attention", 3, "sec-once", None)]
    assert sec.pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "succeeded"
    assert [r[0] for r in sec.pg.sql("SELECT actor FROM deploy.events WHERE kind = 'marker_failed'")] == \
        [sec.deployer, sec.deployer]
    sec.assert_trap_untouched()


# ---- b. deploy_admin writes only through the functions -------------------------------------------------------------

def full_snapshot(pg):
    """pg.snapshot() plus what a forger would touch: stored bodies and checksums, the counters, every event."""
    snap = pg.snapshot()
    snap["bodies"] = pg.sql("SELECT version, down_sql, down_checksum FROM deploy.applied ORDER BY version")
    snap["catalog_sums"] = pg.sql("SELECT version, down_checksum, verify_checksum FROM deploy.migrations "
                                  "ORDER BY version")
    snap["ledger_stats"] = pg.sql("SELECT * FROM deploy.ledger_stats")
    snap["event_rows"] = pg.sql("SELECT id, at, kind, actor, details FROM deploy.events ORDER BY id")
    snap["marker_rows"] = pg.sql("SELECT id, state, holder, lease_until, attempts, last_error, updated_at "
                                 "FROM deploy.rollback_markers ORDER BY id")
    return snap


FORGERIES = [
    ("update-applied-down-sql", "UPDATE deploy.applied SET down_sql = 'ALTER ROLE {me} SUPERUSER'"),
    ("update-migrations-down-sql", "UPDATE deploy.migrations SET down_sql = 'SELECT 1', "
                                   "down_checksum = deploy.checksum('SELECT 1')"),
    ("update-migrations-verify-sql", "UPDATE deploy.migrations SET verify_sql = 'ALTER ROLE {me} SUPERUSER'"),
    ("insert-forged-event", "INSERT INTO deploy.events (kind, actor, at) "
                            "VALUES ('deployment_succeeded', 'postgres', '2020-01-01')"),
    ("update-ledger-stats", "UPDATE deploy.ledger_stats SET applied_count = 0"),
    ("delete-deployments", "DELETE FROM deploy.deployments"),
    ("insert-marker", "INSERT INTO deploy.rollback_markers (deployment_id, reason) VALUES (1, 'forged')"),
    ("truncate-events", "TRUNCATE deploy.events"),
    ("log-events", "SELECT deploy.log_events('deployment_succeeded', NULL, ARRAY['0001'], "
                   "ARRAY['2020-01-01'::timestamptz], ARRAY['{{}}'::jsonb])"),
    ("execute-rollback-end", "SELECT deploy.execute_rollback_end('{{\"marker_id\": {marker}}}', '{{\"ok\": true}}', NULL)"),
    ("execute-rollback-begin", "SELECT deploy.execute_rollback_begin({marker}, 'x', false)"),
    ("finish-marker-attempt", "SELECT deploy.finish_marker_attempt(k, '{{}}', false) FROM deploy.rollback_markers k"),
    ("wait-for-deploy-lock", "SELECT deploy.wait_for_deploy_lock('forgery')"),
]


@pytest.fixture
def ledger(sec, write_migrations):
    """A ledger with a deployment, stored down and verify SQL, and a claimed marker (held by the superuser's
    watcher "w-super")."""
    dsn, env = as_role(sec, "deployer")
    ship_two_releases(sec, write_migrations, dsn, env)
    sec.pg.sql("SELECT deploy.register('0009', 'later', 'SELECT 1', 'SELECT 2', 'SELECT 3')")
    sec.marker = sec.pg.scalar("SELECT deploy.request_rollback('bad')")
    assert sec.pg.sql("SELECT id FROM deploy.claim_marker('w-super', '1 hour', %s)", (sec.marker,)) == [(sec.marker,)]
    return sec


@pytest.mark.parametrize("case,query", FORGERIES, ids=[c[0] for c in FORGERIES])
def test_deploy_admin_cannot_write_the_ledger_directly(ledger, case, query):
    sec = ledger
    before = full_snapshot(sec.pg)
    conn = sec.connect(sec.deployer)
    with pytest.raises(psycopg2.Error) as err, conn.cursor() as cur:
        cur.execute(query.format(me=sec.deployer, marker=sec.marker))
    assert err.value.pgcode == "42501", f"{case}: {err.value.pgcode} {err.value}"
    assert full_snapshot(sec.pg) == before
    assert not sec.pg.scalar("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (sec.deployer,))


def test_the_functions_choose_actor_and_time_not_the_caller(ledger):
    sec = ledger
    cur = sec.connect(sec.deployer).cursor()
    cur.execute("SELECT deploy.log_event('sec_note', details => '{\"actor\": \"postgres\"}')")
    event = cur.fetchone()[0]
    assert sec.pg.sql("SELECT actor, at > now() - interval '1 minute', details->>'actor' FROM deploy.events "
                      "WHERE id = %s", (event,)) == [(sec.deployer, True, "postgres")]
    # Only the marker's holder ends its attempt through the door the watcher uses; anyone else changes nothing.
    before = full_snapshot(sec.pg)
    cur.execute("SELECT deploy.fail_marker_attempt(%s, 'intruder', '{\"message\": \"forged\"}')", (sec.marker,))
    assert cur.fetchone()[0] is None
    assert full_snapshot(sec.pg) == before
    for args, sqlstate in (("NULL, 'w-super', '{}'", "22004"), ("%(m)s, 'w-super', '[1]'", "22023"),
                           ("%(m)s, repeat('h', 201), '{}'", "22001"),
                           ("%(m)s, 'w-super', jsonb_build_object('m', repeat('x', 70000))", "22001")):
        with pytest.raises(psycopg2.Error) as err:
            cur.execute(f"SELECT deploy.fail_marker_attempt({args})", {"m": sec.marker})
        assert err.value.pgcode == sqlstate, (args, err.value)
    assert full_snapshot(sec.pg) == before
    cur.execute("SELECT deploy.fail_marker_attempt(%s, 'w-super', '{\"message\": \"hook failed\"}')",
                (sec.marker,))
    assert cur.fetchone()[0] == "failed"
    assert sec.pg.sql("SELECT state, holder, lease_until, last_error->>'message' FROM deploy.rollback_markers "
                      "WHERE id = %s", (sec.marker,)) == [("failed", "w-super", None, "hook failed")]


# ---- c. stored SQL changed behind its checksum -------------------------------------------------------------------

def test_tampered_down_sql_is_never_run(sec, write_migrations, tmp_path):
    dsn, env = as_role(sec, "deployer")
    d2 = ship_two_releases(sec, write_migrations, dsn, env)
    # The table owner (a superuser here; a tampered restore would do the same) rewrites the stored down SQL.
    sec.pg.sql("UPDATE deploy.applied SET down_sql = 'CREATE TABLE app.tampered (id int); DROP TABLE app.users' "
               "WHERE version = '0002'")
    code, out, err = run_pgdeploy("validate", "--dsn", dsn, "--json", env=env)
    assert code == 1, out + err
    assert {"kind": "stored_sql_drift", "version": "0002", "name": "scores", "part": "down_sql",
            "stored_in": "applied"} in json.loads(out)["problems"]

    marker = sec.pg.scalar("SELECT deploy.request_rollback('release v2 is bad', %s)", (d2,))
    cfg = {"watcher_id": "sec-once", "database": {"dsn": dsn}, "logging": {"level": "info"}}
    path = tmp_path / "once.json"
    path.write_text(json.dumps(cfg))
    code, out, err = run_pgdeploy("once", "--config", path, "--json", env=env)
    assert code == 10, out + err                                  # needs attention at once: retrying cannot help
    assert [m["result"] for m in json.loads(out)["markers"]] == ["needs_attention"]
    assert sec.pg.sql("SELECT state, attempts, last_error->>'sqlstate' FROM deploy.rollback_markers WHERE id = %s",
                      (marker,)) == [("needs_attention", 1, "PD001")]
    # Nothing of the tampered body ran, nothing was reverted.
    assert sec.pg.scalar("SELECT to_regclass('app.tampered')") is None
    assert sec.pg.sql("SELECT id FROM app.scores") == [(7,)] and sec.pg.scalar("SELECT to_regclass('app.users')")
    assert sec.pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "succeeded"
    assert sec.pg.sql("SELECT version, details->>'operation' FROM deploy.events "
                      "WHERE kind = 'stored_sql_drift'") == [("0002", "rollback")]
    # A person running the rollback by hand is refused the same way: exit 6 (drift).
    code, out, err = run_pgdeploy("rollback", "--dsn", dsn, "--json", env=env)
    assert code == 6, out + err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["failed"]["sqlstate"] == "PD001", doc
    assert sec.pg.scalar("SELECT to_regclass('app.tampered')") is None


# ---- d. readers never see error detail ---------------------------------------------------------------------------

def test_reader_sees_status_and_history_but_no_secret(sec, write_migrations, tmp_path):
    dsn, env = as_role(sec, "deployer")
    vault = {"0001_vault.up.sql": f"CREATE TABLE vault (token text PRIMARY KEY);\n"
                                  f"INSERT INTO vault VALUES ('{SECRET}');\n",
             "0001_vault.down.sql": f"INSERT INTO vault VALUES ('{SECRET}');\nDROP TABLE vault;\n"}
    code, out, err = run_pgdeploy("up", "--dir", write_migrations(vault), "--app-version", "v1", "--dsn", dsn,
                                  "--json", env=env)
    assert code == 0, out + err
    # A failed migration whose INSERT quotes the secret (duplicate key: the detail names the value) ...
    leaky = dict(vault, **{"0002_leak.up.sql": f"INSERT INTO vault VALUES ('{SECRET}');\n",
                           "0002_leak.down.sql": "SELECT 1;\n"})
    code, out, err = run_pgdeploy("up", "--dir", write_migrations(leaky), "--app-version", "v2", "--dsn", dsn,
                                  "--json", env=env)
    assert code == 1, out + err
    assert SECRET in json.loads(out)["failed"]["detail"]          # the deployer sees it: the detail is real
    # ... and a failed revert whose down script does the same (the marker's last error).
    marker = sec.pg.scalar("SELECT deploy.request_rollback('v1 is bad', 1)")
    code, out, err = run_pgdeploy("markers", "execute", str(marker), "--dsn", dsn, "--json", env=env)
    assert json.loads(out)["ok"] is False, out + err
    assert SECRET in sec.pg.scalar("SELECT last_error_private::text FROM deploy.rollback_markers")
    assert SECRET in sec.pg.scalar("SELECT string_agg(error_private::text, ' ') FROM deploy.deployments")
    assert SECRET in sec.pg.scalar("SELECT string_agg(private_details::text, ' ') FROM deploy.events")

    reader = sec.connect(sec.reader).cursor()
    for query in ("SELECT error_private FROM deploy.deployments",
                  "SELECT private_details FROM deploy.events",
                  "SELECT last_error_private FROM deploy.rollback_markers",
                  "SELECT * FROM deploy.deployments",
                  "SELECT down_sql FROM deploy.applied",
                  "SELECT up_sql FROM deploy.migrations"):
        with pytest.raises(psycopg2.Error) as err:
            reader.execute(query)
        assert err.value.pgcode == "42501", query
    readable = []
    for query in ("SELECT to_jsonb(d)::text FROM (SELECT id, kind, app_version, state, error, metadata "
                  "FROM deploy.deployments) d",
                  "SELECT to_jsonb(h)::text FROM deploy.deployment_history h",
                  "SELECT to_jsonb(e)::text FROM deploy.recent_events e",
                  "SELECT to_jsonb(e)::text FROM (SELECT id, kind, version, actor, details FROM deploy.events) e",
                  "SELECT to_jsonb(m)::text FROM (SELECT id, reason, state, details, last_error "
                  "FROM deploy.rollback_markers) m",
                  "SELECT to_jsonb(s)::text FROM deploy.migration_state s",
                  "SELECT deploy.status()::text", "SELECT deploy.validate()::text"):
        reader.execute(query)
        readable.extend(r[0] for r in reader.fetchall())
    assert any("23505" in r for r in readable)                    # the reader does see that and how it failed
    assert not [r for r in readable if SECRET in r]
    for command in (("status",), ("validate",), ("markers", "list")):
        code, out, err = run_pgdeploy(*command, "--dsn", sec.dsn(sec.reader), "--json")
        assert code == 0, out + err
        assert SECRET not in out + err
    assert json.loads(run_pgdeploy("status", "--dsn", sec.dsn(sec.reader), "--json")[1])["last_deployment"][
        "state"] == "failed"


# ---- e. input limits ---------------------------------------------------------------------------------------------

def test_an_oversized_reason_is_refused_and_no_marker_is_created(sec, write_migrations):
    dsn, env = as_role(sec, "deployer")
    d2 = ship_two_releases(sec, write_migrations, dsn, env)
    before = full_snapshot(sec.pg)
    cur = sec.connect(sec.deployer).cursor()
    with pytest.raises(psycopg2.Error) as err:
        cur.execute("SELECT deploy.request_rollback(repeat('x', 200000))")
    assert err.value.pgcode == "22001" and "1000" in str(err.value)
    # One argv string may hold at most 128 KiB (Linux's MAX_ARG_STRLEN): 100 kB is what a command line can carry.
    long_reason = "r" * 100_000
    for command in (("rollback", "--reason", long_reason), ("markers", "request", "--reason", long_reason)):
        code, out, err = run_pgdeploy(*command, "--dsn", dsn, "--json", env=env)
        doc = json.loads(out)
        assert doc["ok"] is False and "1000" in doc["error"]["message"], out + err
        # Refused by the server (22001: "the operation failed", exit 1), or, by a pgdeploy that checks the length
        # itself first, as a usage error (exit 2) before anything is sent.
        assert doc["error"]["sqlstate"] in ("22001", None), doc
        assert code == (1 if doc["error"]["sqlstate"] == "22001" else 2), (code, doc)
    assert full_snapshot(sec.pg) == before
    assert sec.pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "succeeded"


# ---- f. least privilege: what fails when a right is missing ------------------------------------------------------

def test_without_deploy_admin_nothing_runs(sec, write_migrations, tmp_path):
    dsn, env = as_role(sec, "deployer")
    d2 = ship_two_releases(sec, write_migrations, dsn, env)
    sec.pg.sql("SELECT deploy.request_rollback('bad', %s)", (d2,))
    sec.pg.sql(f"REVOKE deploy_admin FROM {sec.deployer}")
    before = full_snapshot(sec.pg)
    code, out, err = run_pgdeploy("load", write_migrations(RELEASE_2), "--dsn", dsn, "--json", env=env)
    assert code == 1, out + err
    assert {m["sqlstate"] for m in json.loads(out)["migrations"]} == {"42501"}
    for command in (("up",), ("rollback",), ("status",)):
        code, out, err = run_pgdeploy(*command, "--dsn", dsn, "--json", env=env)
        assert code == 1 and json.loads(out)["error"]["sqlstate"] == "42501", out + err
    path = once_config(tmp_path, dsn, "/bin/true")
    code, out, err = run_pgdeploy("once", "--config", path, "--json", env=env)
    assert code == 1 and "permission denied" in out + err, out + err
    assert full_snapshot(sec.pg) == before


def test_without_the_rights_the_down_script_needs_the_marker_fails_then_needs_attention(sec, write_migrations,
                                                                                        tmp_path):
    dsn, env = as_role(sec, "deployer")
    d2 = ship_two_releases(sec, write_migrations, dsn, env)
    # Someone else owns the table the lossy down script drops (created by hand, or by a superuser's deploy): the
    # archiver cannot read it (the DROP would need ownership too).
    sec.pg.sql("ALTER TABLE app.scores OWNER TO CURRENT_USER")
    marker = sec.pg.scalar("SELECT deploy.request_rollback('bad', %s)", (d2,))
    path = once_config(tmp_path, dsn, "/bin/true")
    results = []
    for _ in range(3):
        sec.pg.sql("UPDATE deploy.rollback_markers SET updated_at = updated_at - interval '1 hour'")  # no backoff
        code, out, err = run_pgdeploy("once", "--config", path, "--json", env=env)
        results.append((code, json.loads(out)["markers"][0]["result"]))
    assert results == [(1, "failed"), (1, "failed"), (10, "needs_attention")], results
    assert sec.pg.sql("SELECT state, last_error->>'sqlstate', last_error->>'message' FROM deploy.rollback_markers "
                      "WHERE id = %s", (marker,)) == [("needs_attention", "42501", "permission denied for table scores")]
    assert sec.pg.sql("SELECT id FROM app.scores") == [(7,)]       # the revert was undone as a whole
    assert sec.pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "succeeded"


def test_pre_15_public_schema_does_not_reach_pgdeploy(sec, write_migrations, tmp_path):
    """Before PostgreSQL 15 every role may create in public, which is on everybody's default path (behind the
    implicit pg_catalog). The attacker plants the trap there; the deployer runs with `app, public`."""
    sec.pg.sql("GRANT CREATE ON SCHEMA public TO PUBLIC")
    sec.plant_trap("public")
    dsn, env = as_role(sec, "deployer", "app,public")
    d2 = ship_two_releases(sec, write_migrations, dsn, {"PGOPTIONS": "-c search_path=app,public"})
    outputs = []
    for command in (("status",), ("validate",), ("verify",), ("markers", "list")):
        code, out, err = run_pgdeploy(*command, "--dsn", dsn, "--json", env=env)
        assert code == 0, out + err
        outputs += [out, err]
    sec.pg.sql("SELECT deploy.request_rollback('bad', %s)", (d2,))
    code, out, err = run_pgdeploy("once", "--config", once_config(tmp_path, sec.dsn(sec.deployer, "app,public"),
                                                                 "/bin/true"), "--json", env=env)
    assert code == 0, out + err
    assert sec.pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "rolled_back"
    sec.assert_trap_untouched(*outputs, out, err)


def test_migration_sql_runs_with_the_callers_path_and_rights(sec, write_migrations):
    """What docs/security.md warns about, shown: (1) down SQL that a deploy_admin member registered runs with the
    rights of whoever reverts it, a superuser included; (2) migration SQL resolves names on the caller's path, so an
    attacker's better-matching function in a schema on that path runs, as the deployer, unless the name is
    qualified. pg_deploy's own statements are immune to both (the tests above)."""
    dsn, env = as_role(sec, "deployer")
    sec.pg.sql(f"CREATE TABLE app.revert_log (who name, superuser boolean)")
    sec.pg.sql(f"ALTER TABLE app.revert_log OWNER TO {sec.deployer}")
    record = ("INSERT INTO app.revert_log SELECT CURRENT_USER, r.rolsuper FROM pg_catalog.pg_roles r "
              "WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER;\n")
    files = {"0001_t.up.sql": "CREATE TABLE app.t (id int);\n", "0001_t.down.sql": record + "DROP TABLE app.t;\n"}
    for reverter in ("deployer", "superuser", "superuser as deployer"):
        code, out, err = run_pgdeploy("up", "--dir", write_migrations(files), "--app-version", "v1", "--dsn", dsn,
                                      "--json", env=env)
        assert code == 0, out + err
        if reverter == "superuser as deployer":      # docs/operations.md: a superuser switches role first
            sec.pg.sql(f"SET ROLE {sec.deployer}")
            try:
                assert sec.pg.scalar("SELECT deploy.rollback()")["ok"]
            finally:
                sec.pg.sql("RESET ROLE")
            continue
        rdsn, renv = as_role(sec, reverter, "app")
        code, out, err = run_pgdeploy("rollback", "--dsn", rdsn, "--json", env=renv)
        assert code == 0, out + err
    assert sec.pg.sql("SELECT who, superuser FROM app.revert_log") == [
        (sec.deployer, False), (sec.superuser, True), (sec.deployer, False)]
    assert [r[0] for r in sec.pg.sql("SELECT started_by FROM deploy.deployments WHERE kind = 'rollback' "
                                     "ORDER BY id")] == [sec.deployer, sec.superuser, sec.deployer]

    # (2) A pre-15 public schema: the attacker's lower(varchar) is a better match than pg_catalog.lower(text).
    sec.pg.sql("GRANT CREATE ON SCHEMA public TO PUBLIC")
    conn = sec.connect(sec.attacker)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.caught (who name)")
        cur.execute("GRANT INSERT ON public.caught TO PUBLIC")
        cur.execute("CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql "
                    "AS 'INSERT INTO public.caught SELECT CURRENT_USER RETURNING $1::text'")
    files = {"0002_names.up.sql": "CREATE TABLE app.names (name varchar(40));\n"
                                  "INSERT INTO app.names VALUES ('Ada');\n"
                                  "CREATE TABLE app.lowered AS SELECT pg_catalog.lower(name) AS q FROM app.names;\n"
                                  "CREATE TABLE app.lowered2 AS SELECT lower(name) AS u FROM app.names;\n",
             "0002_names.down.sql": "DROP TABLE app.lowered2, app.lowered, app.names;\n"}
    code, out, err = run_pgdeploy("up", "--dir", write_migrations(files), "--dsn", sec.dsn(sec.deployer, "app,public"),
                                  "--json", env={"PGOPTIONS": None})
    assert code == 0, out + err
    assert sec.pg.sql("SELECT q FROM app.lowered") == [("ada",)]                 # qualified: pg_catalog's
    assert sec.pg.sql("SELECT who FROM public.caught") == [(sec.deployer,)]     # unqualified: the attacker's


def test_a_role_with_no_grants_reads_nothing_but_notify_wake_ups(sec, write_migrations):
    """LISTEN needs no privilege: any role that can connect hears `pg_deploy` notifications. They carry ids, kinds
    and versions only; the rows behind them are refused."""
    conn = sec.connect(sec.attacker)
    with conn.cursor() as cur:
        cur.execute("LISTEN pg_deploy")
    dsn, env = as_role(sec, "deployer")
    ship_two_releases(sec, write_migrations, dsn, env)
    payloads = wait_for(lambda: conn.poll() or conn.notifies, what="notifications")
    keys = set()
    for note in payloads:
        keys |= set(json.loads(note.payload))
        assert "CREATE" not in note.payload and "INSERT" not in note.payload
    assert keys <= {"id", "kind", "deployment_id", "version", "marker_id", "count"}, keys
    with conn.cursor() as cur:
        for query in ("SELECT kind FROM deploy.events", "SELECT deploy.status()", "SELECT deploy.current_version()",
                      "SELECT * FROM deploy.recent_events", "SELECT count(*) FROM deploy_archive.x"):
            with pytest.raises(psycopg2.Error) as err:
                cur.execute(query)
            assert err.value.pgcode == "42501", query


def test_without_the_deployers_search_path_unqualified_names_fail(sec, write_migrations, tmp_path):
    """The migrations name their tables unqualified and were applied with the deployer's path (app): a watcher
    connected with another path cannot revert them (42P01), and the marker keeps the failure."""
    dsn, env = as_role(sec, "deployer")
    d2 = ship_two_releases(sec, write_migrations, dsn, env)
    marker = sec.pg.scalar("SELECT deploy.request_rollback('bad', %s)", (d2,))
    path = once_config(tmp_path, sec.dsn(sec.deployer, "public"), "/bin/true")
    code, out, err = run_pgdeploy("once", "--config", path, "--json", env=env)
    assert code == 1 and json.loads(out)["markers"][0]["result"] == "failed", out + err
    assert sec.pg.sql("SELECT state, last_error->>'sqlstate' FROM deploy.rollback_markers WHERE id = %s",
                      (marker,)) == [("failed", "42P01")]
    assert sec.pg.sql("SELECT id FROM app.scores") == [(7,)]


def test_least_privilege_recipe_as_documented(sec, write_migrations):
    """docs/operations.md, "Least privilege": the role the fixture creates is exactly the recipe (not a superuser,
    deploy_admin, owns app, search_path app in this database); the application's role uses the tables the
    deployer's migrations create, without owning (or being able to drop) them."""
    assert sec.pg.sql("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s",
                      (sec.deployer,)) == [(False, False, False)]
    assert sec.pg.sql("SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                      "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s", (sec.deployer,)) == \
        [("deploy_admin",)]
    assert sec.pg.scalar("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'app'") == sec.deployer
    dsn, env = as_role(sec, "deployer")
    ship_two_releases(sec, write_migrations, dsn, env)     # unqualified names: the role's path put them in app
    assert sec.pg.scalar("SELECT tableowner FROM pg_tables WHERE schemaname = 'app' AND tablename = 'users'") == \
        sec.deployer
    app = sec.connect(sec.reader).cursor()
    app.execute("INSERT INTO app.users VALUES (1)")
    app.execute("SELECT id FROM app.users")
    assert app.fetchall() == [(1,)]
    app.execute("SELECT deploy.require_version('0002')")
    assert app.fetchone() == ("0002",)
    with pytest.raises(psycopg2.Error) as err:
        app.execute("DROP TABLE app.users")
    assert err.value.pgcode == "42501"
