"""Privileges and injection.

- A role with no grants and a member of deploy_reader cannot apply, revert, register, claim or execute markers,
  write events, or read the SQL bodies (up/down/verify SQL, checkpoint statements): 42501, and nothing changes.
  The reader can read what it is meant to (status, current version, validate, the ledger without SQL bodies).
- A member of deploy_admin reads every table but writes none directly (the functions write, as the extension's
  owner or SECURITY DEFINER), and cannot call the internal steps that trust their arguments: 42501, nothing changes.
  The SECURITY DEFINER functions are exactly the ones that write for deploy_admin and run no user SQL, each with
  search_path pinned. (tests/e2e/test_security.py performs the attacks with the real binary.)
  The roles are login roles created for the test (cluster-wide, so with unique names, dropped at the end); the
  session switches to them with SET ROLE, which checks privileges exactly as a login would.
- SQL in names, versions, app versions, reasons and holders is inert: a version such as `1; DROP TABLE x` is refused,
  a name such as `x'); DROP TABLE t; --` is stored literally, and nothing is dropped.
- The watcher's rollback hook gets no shell: argv with `$(touch F)`, `;`, backticks and `|` reach the hook as literal
  arguments and create nothing.
"""
import json
import os
import stat
import uuid

import psycopg2
import pytest

from conftest import ledger_state, run_pgdeploy, sqlstate_of, stats

SUFFIX = uuid.uuid4().hex[:8]
NOBODY = f"rel_nobody_{SUFFIX}"
READER = f"rel_reader_{SUFFIX}"
ADMIN = f"rel_admin_{SUFFIX}"


@pytest.fixture(scope="module")
def roles(module_db):
    db = module_db
    db.sql(f"CREATE ROLE {NOBODY} LOGIN")
    db.sql(f"CREATE ROLE {READER} LOGIN IN ROLE deploy_reader")
    db.sql(f"CREATE ROLE {ADMIN} LOGIN IN ROLE deploy_admin")
    db.sql("CREATE SCHEMA app")
    db.sql(f"GRANT USAGE, CREATE ON SCHEMA app TO {NOBODY}, {READER}")
    db.sql("SELECT deploy.register('0001', 'a', 'CREATE TABLE app.a (id int)', 'DROP TABLE app.a', 'SELECT 1')")
    assert db.scalar("SELECT deploy.up(app_version => 'v1')")["ok"]
    db.sql("SELECT deploy.register('0002', 'b', 'CREATE TABLE app.b (id int)', 'DROP TABLE app.b')")
    db.marker = db.scalar("SELECT deploy.request_rollback('bad', 1)")
    try:
        yield db
    finally:
        for r in (NOBODY, READER, ADMIN):
            db.sql(f"DROP OWNED BY {r}")
            db.sql(f"DROP ROLE IF EXISTS {r}")


FORBIDDEN = [
    ("up", "SELECT deploy.up()"),
    ("up-dry-run", "SELECT deploy.up(dry_run => true)"),
    ("down", "SELECT deploy.down()"),
    ("rollback", "SELECT deploy.rollback()"),
    ("register", "SELECT deploy.register('0009', 'x', 'SELECT 1')"),
    ("unregister", "SELECT deploy.unregister('0002')"),
    ("baseline", "SELECT deploy.baseline('0002')"),
    ("verify", "SELECT deploy.verify()"),
    ("run", "CALL deploy.run()"),
    ("request-rollback", "SELECT deploy.request_rollback('x')"),
    ("claim-marker", "SELECT * FROM deploy.claim_marker('intruder')"),
    ("execute-rollback", "SELECT deploy.execute_rollback(%(m)s)"),
    ("resolve-marker", "SELECT deploy.resolve_marker(%(m)s, 'abandoned')"),
    ("next-step", "SELECT deploy.next_step()"),
    ("log-event", "SELECT deploy.log_event('forged')"),
    ("read-up-sql", "SELECT up_sql FROM deploy.migrations"),
    ("read-down-sql-catalog", "SELECT down_sql FROM deploy.migrations"),
    ("read-verify-sql", "SELECT verify_sql FROM deploy.migrations"),
    ("read-down-sql-applied", "SELECT down_sql FROM deploy.applied"),
    ("read-star-migrations", "SELECT * FROM deploy.migrations"),
    ("read-checkpoint-statement", "SELECT statement FROM deploy.checkpoints"),
    ("insert-applied", "INSERT INTO deploy.applied (version, sort_key, name, checksum, reversibility, deployment_id) "
                       "VALUES ('0002', '0002', 'b', 'x', 'reversible', 1)"),
    ("update-migrations", "UPDATE deploy.migrations SET up_sql = 'SELECT 2'"),
    ("delete-applied", "DELETE FROM deploy.applied"),
    ("insert-event", "INSERT INTO deploy.events (kind) VALUES ('forged')"),
    ("update-marker", "UPDATE deploy.rollback_markers SET state = 'done'"),
]


@pytest.mark.parametrize("role", ["nobody", "reader"])
@pytest.mark.parametrize("case,query", FORBIDDEN, ids=[c[0] for c in FORBIDDEN])
def test_unprivileged_roles_are_refused(roles, role, case, query):
    rolname = NOBODY if role == "nobody" else READER
    before = ledger_state(roles)
    got = sqlstate_of(roles, query.replace("%(m)s", str(roles.marker)), setup=[f"SET ROLE {rolname}"])
    stats.add("privileges.refusals")
    assert got == "42501", f"{role} {case}: expected 42501, got {got}"
    assert ledger_state(roles) == before
    assert roles.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'app'") == 1


# What deploy_admin could do before the functions became the only writers (3636afe): each must now fail.
ADMIN_FORBIDDEN = [c for c in FORBIDDEN if c[0].split("-")[0] in ("insert", "update", "delete")] + [
    ("update-applied-down-sql", "UPDATE deploy.applied SET down_sql = 'DROP TABLE app.a'"),
    ("update-down-sql-and-checksum", "UPDATE deploy.migrations SET down_sql = 'SELECT 1', "
                                     "down_checksum = deploy.checksum('SELECT 1') WHERE version = '0002'"),
    ("update-verify-sql", "UPDATE deploy.migrations SET verify_sql = 'DROP TABLE app.a'"),
    ("insert-event-forged-actor", "INSERT INTO deploy.events (kind, actor, at) "
                                  "VALUES ('deployment_succeeded', 'postgres', '2020-01-01')"),
    ("update-ledger-stats", "UPDATE deploy.ledger_stats SET applied_count = 0"),
    ("insert-checkpoint", "INSERT INTO deploy.checkpoints (deployment_id, version, step, statement, state) "
                          "VALUES (1, '0001', 1, 'SELECT 1', 'done')"),
    ("delete-archived", "DELETE FROM deploy.archived"),
    ("log-events", "SELECT deploy.log_events('forged', NULL, ARRAY['0001'], ARRAY[now()], ARRAY['{}'::jsonb])"),
    ("finish-marker-attempt", "SELECT deploy.finish_marker_attempt(k, '{}', false) FROM deploy.rollback_markers k"),
    ("execute-rollback-begin", "SELECT deploy.execute_rollback_begin(%(m)s, 'x', false)"),
    ("execute-rollback-end", "SELECT deploy.execute_rollback_end('{\"marker_id\": %(m)s}', '{\"ok\": true}', NULL)"),
    ("wait-for-deploy-lock", "SELECT deploy.wait_for_deploy_lock('x')"),
]


@pytest.mark.parametrize("case,query", ADMIN_FORBIDDEN, ids=[c[0] for c in ADMIN_FORBIDDEN])
def test_admin_writes_only_through_the_functions(roles, case, query):
    before = ledger_state(roles)
    got = sqlstate_of(roles, query.replace("%(m)s", str(roles.marker)), setup=[f"SET ROLE {ADMIN}"])
    stats.add("privileges.refusals")
    assert got == "42501", f"admin {case}: expected 42501, got {got}"
    assert ledger_state(roles) == before
    assert roles.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'app'") == 1


READER_ALLOWED = [
    "SELECT deploy.status()",
    "SELECT deploy.current_version()",
    "SELECT deploy.validate()",
    "SELECT deploy.require_version('0001')",
    "SELECT deploy.rollback_eligibility()",
    "SELECT version, name, checksum FROM deploy.migrations",
    "SELECT version, deployment_id FROM deploy.applied",
    "SELECT count(*) FROM deploy.events",
    "SELECT * FROM deploy.migration_state",
]


@pytest.mark.parametrize("query", READER_ALLOWED)
def test_reader_reads_what_it_should(roles, query):
    assert sqlstate_of(roles, query, setup=[f"SET ROLE {READER}"]) is None
    assert sqlstate_of(roles, query, setup=[f"SET ROLE {NOBODY}"]) == "42501"


def test_nothing_granted_to_public(roles):
    rows = roles.sql("""
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
               aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
        WHERE n.nspname IN ('deploy', 'deploy_archive') AND a.grantee = 0""")
    assert rows == []
    rows = roles.sql("""
        SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,
               aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
        WHERE n.nspname = 'deploy' AND a.grantee = 0""")
    assert rows == []
    # SECURITY DEFINER only where deploy_admin must write and no user SQL runs (the marker, event and lease functions);
    # each pins search_path.
    definers = roles.sql("SELECT p.proname, coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false) "
                         "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                         "WHERE n.nspname = 'deploy' AND p.prosecdef ORDER BY 1")
    assert definers == [(name, True) for name in sorted([
        "acquire_deploy_lease", "baseline", "claim_marker", "fail_marker_attempt", "log_event",
        "release_deploy_lease", "release_watcher_leadership", "renew_deploy_lease", "renew_lease",
        "request_rollback", "resolve_marker", "try_watcher_leadership", "validate"])]


def test_sql_in_names_and_versions_is_inert(pg):
    pg.sql("CREATE SCHEMA app")
    pg.sql("CREATE TABLE app.victim (id int)")
    pg.sql("CREATE TABLE t (id int)")
    before = ledger_state(pg)
    for version in ("1; DROP TABLE app.victim", "1'; DROP TABLE app.victim; --", "1)--", "$$1"):
        assert sqlstate_of(pg, "SELECT deploy.register(%s, 'x', 'SELECT 1')", (version,)) == "22023", version
        assert sqlstate_of(pg, "SELECT deploy.require_version(%s)", (version,)) == "22023", version
        stats.add("privileges.injection")
    assert ledger_state(pg) == before
    evil = "x'); DROP TABLE t; --"
    evil2 = "$$; DROP TABLE app.victim; $$"
    assert pg.scalar("SELECT deploy.register('0001', %s, 'CREATE TABLE app.a (id int)', 'DROP TABLE app.a')",
                     (evil,)) == "registered"
    assert pg.scalar("SELECT deploy.register('0002', %s, 'CREATE TABLE app.b (id int)', 'DROP TABLE app.b')",
                     (evil2,)) == "registered"
    res = pg.scalar("SELECT deploy.up(app_version => %s, metadata => %s::jsonb)",
                    (evil, json.dumps({"note": evil2})))
    assert res["ok"] and res["app_version"] == evil, res
    assert pg.scalar("SELECT name FROM deploy.migrations WHERE version = '0001'") == evil
    assert pg.scalar("SELECT name FROM deploy.applied WHERE version = '0002'") == evil2
    assert pg.scalar("SELECT app_version FROM deploy.deployments WHERE id = %s", (res["deployment_id"],)) == evil
    marker = pg.scalar("SELECT deploy.request_rollback(%s, %s)", (evil, res["deployment_id"]))
    assert pg.scalar("SELECT reason FROM deploy.rollback_markers WHERE id = %s", (marker,)) == evil
    claimed = pg.sql("SELECT id, holder FROM deploy.claim_marker(%s, '1 min', %s)", (evil2, marker))
    assert claimed == [(marker, evil2)]
    out = pg.scalar("SELECT deploy.execute_rollback(%s, %s)", (marker, evil2))
    assert out["ok"], out
    status = pg.scalar("SELECT deploy.status()")
    assert status["schema_version"] == 1
    # Nothing was dropped by the text; the migrations' own tables came and went through their SQL only.
    assert pg.scalar("SELECT to_regclass('public.t') IS NOT NULL AND to_regclass('app.victim') IS NOT NULL")
    stats.add("privileges.injection", 6)


HOOK = """#!/usr/bin/env python3
import json, os, sys
with open(%r, "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "attempt": os.environ.get("PGDEPLOY_ATTEMPT")}) + "\\n")
"""


def test_watcher_hook_gets_no_shell(pg, tmp_path):
    pg.sql("SELECT deploy.register('0001', 'a', 'CREATE TABLE public.hook_t (id int)', 'DROP TABLE public.hook_t')")
    dep = pg.scalar("SELECT deploy.up(app_version => 'v1')")["deployment_id"]
    marker = pg.scalar("SELECT deploy.request_rollback('hook test', %s)", (dep,))
    log = tmp_path / "argv.log"
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK % str(log))
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    made = [tmp_path / f"pwned{i}" for i in range(4)]
    argv = [str(hook), f"$(touch {made[0]})", ";", "touch", str(made[1]), f"`touch {made[2]}`",
            "|", f"touch {made[3]}", "&&", "${HOME}", "'quoted'", "a\"b"]
    cfg = {"watcher_id": "rel-noshell", "database": {"dsn": pg.dsn},
           "rollback": {"command": argv, "timeout": "10s"},
           "logging": {"level": "info"}}
    cfg_path = tmp_path / "once.json"
    cfg_path.write_text(json.dumps(cfg))
    code, out, err = run_pgdeploy("once", "--config", cfg_path, "--json")
    assert code == 0, out + err
    assert [m["marker_id"] for m in json.loads(out)["markers"]] == [marker]
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(entries) == 1
    assert entries[0]["argv"] == argv[1:], entries   # every argument arrived literally, unexpanded
    for f in made:
        assert not f.exists(), f"{f} was created: the hook ran through a shell"
    assert pg.scalar("SELECT state FROM deploy.rollback_markers WHERE id = %s", (marker,)) == "done"
    stats.add("privileges.hook_no_shell")
