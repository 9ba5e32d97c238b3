"""Migration files as real histories have them: empty or comment-only scripts are deliberate no-ops (registered,
applied, reverted and recorded like any other, with a notice), and the `lock_timeout` directive reaches the ledger
and bounds how long the migration's statements wait for a lock.
"""
import json
import threading
import time

from conftest import run_pgdeploy


def test_empty_and_comment_only_files_are_applied_and_reverted_as_no_ops(pg, write_migrations):
    d = write_migrations({
        "0001_init.up.sql": "CREATE TABLE public.noop_t (id int);",
        "0001_init.down.sql": "DROP TABLE public.noop_t;",
        "0002_mysql_only.up.sql": "-- this change was needed on MySQL only\n/* nothing for PostgreSQL */\n",
        "0002_mysql_only.down.sql": "",
        "0003_emptied.up.sql": "",
        "0003_emptied.down.sql": "-- nothing to undo\n",
        "0003_emptied.verify.sql": "\n",
    })
    rc, out, err = run_pgdeploy("up", "--dir", d, "--dsn", pg.dsn, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert [m["version"] for m in doc["applied"]] == ["0001", "0002", "0003"]
    assert pg.scalar("SELECT deploy.current_version()") == "0003"
    rows = pg.sql("SELECT version, reversibility, down_sql IS NOT NULL FROM deploy.applied ORDER BY sort_key")
    assert rows == [("0001", "reversible", True), ("0002", "reversible", True), ("0003", "reversible", True)]
    assert pg.scalar("SELECT verify_sql IS NULL FROM deploy.migrations WHERE version = '0003'")
    applied_events = pg.scalar("SELECT count(*) FROM deploy.events WHERE kind = 'migration_applied'")
    assert applied_events == 3

    rc, out, err = run_pgdeploy("down", "--steps", "3", "--dsn", pg.dsn, "--json")
    assert rc == 0, err
    assert [m["version"] for m in json.loads(out)["reverted"]] == ["0003", "0002", "0001"]
    assert pg.scalar("SELECT count(*) FROM deploy.applied") == 0
    assert pg.scalar("SELECT to_regclass('public.noop_t')") is None


def test_the_lock_timeout_directive_is_stored_and_bounds_the_wait(pg, write_migrations):
    pg.sql("CREATE TABLE public.busy (id int)")
    d = write_migrations({
        "0001_add.up.sql": "-- pg_deploy: lock_timeout=150ms\nALTER TABLE public.busy ADD COLUMN note text;",
        "0001_add.down.sql": "ALTER TABLE public.busy DROP COLUMN note;",
    })
    rc, out, err = run_pgdeploy("load", d, "--dsn", pg.dsn)
    assert rc == 0, err
    assert pg.scalar("SELECT lock_timeout_ms FROM deploy.migrations WHERE version = '0001'") == 150

    blocker = pg.connect(autocommit=False)
    cur = blocker.cursor()
    cur.execute("SET application_name = 'directive_blocker'")
    cur.execute("SELECT count(*) FROM public.busy")
    release = threading.Timer(1.5, blocker.rollback)
    release.start()
    try:
        started = time.monotonic()
        rc, out, err = run_pgdeploy("up", "--dsn", pg.dsn, "--json")
        elapsed = time.monotonic() - started
    finally:
        release.cancel()
        blocker.rollback()
    assert rc == 0, err
    doc = json.loads(out)
    retries = doc.get("lock_retries") or []
    assert retries, doc
    assert all(r["waited_ms"] == 150 for r in retries)
    assert retries[0]["blocker"]["application_name"] == "directive_blocker"
    assert elapsed >= 1.4
    assert pg.scalar("SELECT count(*) FROM deploy.events WHERE kind = 'lock_retry'") == len(retries)
