"""Lock safety of `pgdeploy` under live traffic (docs/sql-reference.md, "Lock-safe mode"), with a REAL blocker: a psycopg2 session that keeps a
transaction open on the table a migration must lock.

- a blocker that lets go after ~1.5 s: `up` succeeds; stderr shows live "lock retry" lines naming the blocker's pid
  and application_name; --json carries them in `lock_retries`;
- a blocker that never lets go: the retry budget runs out, exit 4, `failed.sqlstate` 55P03 naming the blocker, nothing
  applied; the same for `rollback` and for `once` (the watcher's revert, with its flags);
- a non-transactional migration's plain statement is retried by `pgdeploy` itself under next_step's lock timeout;
- bad --lock-* values are usage errors (exit 2) before any connection;
- a long CREATE INDEX CONCURRENTLY (held back by an old snapshot) prints its elapsed time, phase and the session it
  waits for while it runs, on stderr only.
"""
import json
import subprocess
import threading
import time

import pytest

from conftest import PGDEPLOY_BIN, run_pgdeploy, wait_for

BASE = {
    "0001_accounts.up.sql": "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0);\n"
                            "INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 100) g;\n",
    "0001_accounts.down.sql": "DROP TABLE accounts;\n",
}
ADD_COLUMN = dict(BASE, **{
    "0002_add_note.up.sql": "ALTER TABLE accounts ADD COLUMN note text;\n",
    "0002_add_note.down.sql": "ALTER TABLE accounts DROP COLUMN note;\n",
})


class Blocker:
    """A session that holds ACCESS SHARE on a table in an open transaction (an application's long read), under its
    own application_name, until release()."""

    def __init__(self, pg, table="accounts", application_name="blocking-app"):
        self.conn = pg.connect(autocommit=False)
        cur = self.conn.cursor()
        cur.execute("SET application_name = %s", (application_name,))
        cur.execute(f"LOCK TABLE {table} IN ACCESS SHARE MODE")
        cur.execute("SELECT pg_backend_pid()")
        self.pid = cur.fetchone()[0]
        self.application_name = application_name

    def release(self):
        if not self.conn.closed:
            self.conn.rollback()

    def release_after(self, seconds):
        t = threading.Timer(seconds, self.release)
        t.start()
        return t


def has_column(pg, table, column):
    return bool(pg.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
                          (table, column)))


def lock_retry_lines(err):
    return [line for line in err.splitlines() if line.startswith("lock retry ")]


def test_a_blocker_that_lets_go_is_waited_out_with_live_retry_lines(pg, write_migrations):
    d = write_migrations(ADD_COLUMN)
    assert run_pgdeploy("up", "--dir", d, "--target", "0001", "--dsn", pg.dsn)[0] == 0
    blocker = Blocker(pg)
    timer = blocker.release_after(1.5)
    try:
        rc, out, err = run_pgdeploy("up", "--dir", d, "--lock-timeout", "200ms", "--json", "--dsn", pg.dsn)
    finally:
        timer.cancel()
        blocker.release()
    assert rc == 0, err
    doc = json.loads(out)                              # stdout is the one JSON document, nothing else
    assert doc["ok"] is True and [a["version"] for a in doc["applied"]] == ["0002"]
    assert has_column(pg, "accounts", "note")
    lines = lock_retry_lines(err)
    assert lines, err
    assert all(f"pid {blocker.pid}" in line and '"blocking-app"' in line for line in lines), lines
    assert "migration 0002" in lines[0] and "AccessExclusiveLock" in lines[0] and "accounts" in lines[0]
    retries = doc["lock_retries"]
    assert len(retries) == len(lines)
    assert [r["attempt"] for r in retries] == list(range(1, len(retries) + 1))
    first = retries[0]
    assert first["version"] == "0002" and first["name"] == "add_note"
    assert first["lock"]["mode"] == "AccessExclusiveLock" and first["lock"]["type"] == "relation"
    assert first["lock"]["object"].endswith("accounts")
    assert first["blocker"]["pid"] == blocker.pid and first["blocker"]["application_name"] == "blocking-app"
    assert first["waited_ms"] >= 150 and first["backoff_ms"] >= 0


def test_a_blocker_that_never_lets_go_ends_with_exit_4_and_nothing_applied(pg, write_migrations):
    d = write_migrations(ADD_COLUMN)
    assert run_pgdeploy("up", "--dir", d, "--target", "0001", "--dsn", pg.dsn)[0] == 0
    applied_before = pg.sql("SELECT version FROM deploy.applied ORDER BY version")
    blocker = Blocker(pg)
    try:
        started = time.monotonic()
        rc, out, err = run_pgdeploy("up", "--dir", d, "--lock-attempts", "3", "--lock-timeout", "200ms", "--json",
                                    "--dsn", pg.dsn)
        took = time.monotonic() - started
    finally:
        blocker.release()
    assert rc == 4, err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["exit_code"] == 4
    assert doc["failed"]["sqlstate"] == "55P03" and doc["failed"]["version"] == "0002"
    assert str(blocker.pid) in doc["failed"]["message"], doc["failed"]
    # Attempts 1 and 2 were retried; the third used up the budget and is the last entry.
    assert [(r["attempt"], r.get("gave_up", False)) for r in doc["lock_retries"]] == [(1, False), (2, False),
                                                                                     (3, True)]
    assert doc["lock_retries"][-1]["blocker"]["pid"] == blocker.pid
    assert len(lock_retry_lines(err)) == 2
    assert str(blocker.pid) in err
    assert took < 10
    assert not has_column(pg, "accounts", "note")
    assert pg.sql("SELECT version FROM deploy.applied ORDER BY version") == applied_before

    # Human output: the failure names the blocker too.
    blocker = Blocker(pg)
    try:
        rc, out, err = run_pgdeploy("up", "--lock-attempts", "2", "--lock-timeout", "100ms", "--dsn", pg.dsn)
    finally:
        blocker.release()
    assert rc == 4
    assert "55P03" in out and str(blocker.pid) in out


def test_rollback_and_down_retry_and_give_up_the_same_way(pg, write_migrations):
    d = write_migrations(ADD_COLUMN)
    assert run_pgdeploy("up", "--dir", d, "--dsn", pg.dsn)[0] == 0
    blocker = Blocker(pg)
    try:
        rc, out, err = run_pgdeploy("rollback", "--lock-attempts", "2", "--lock-timeout", "100ms", "--json",
                                    "--dsn", pg.dsn)
    finally:
        blocker.release()
    assert rc == 4, err
    doc = json.loads(out)
    assert doc["failed"]["sqlstate"] == "55P03" and str(blocker.pid) in doc["failed"]["message"]
    assert [r.get("gave_up", False) for r in doc["lock_retries"]] == [False, True]
    assert len(lock_retry_lines(err)) == 1 and str(blocker.pid) in err
    assert has_column(pg, "accounts", "note")            # nothing reverted

    blocker = Blocker(pg)
    timer = blocker.release_after(1.0)
    try:
        rc, out, err = run_pgdeploy("down", "--lock-timeout", "200ms", "--json", "--dsn", pg.dsn)
    finally:
        timer.cancel()
        blocker.release()
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True and doc["lock_retries"] and lock_retry_lines(err)
    assert not has_column(pg, "accounts", "note")


def test_once_reverts_with_its_lock_flags_and_the_config(pg, write_migrations, tmp_path):
    d = write_migrations(ADD_COLUMN)
    assert run_pgdeploy("up", "--dir", d, "--target", "0001", "--dsn", pg.dsn)[0] == 0
    assert run_pgdeploy("up", "--dsn", pg.dsn)[0] == 0
    deployment = pg.scalar("SELECT max(id) FROM deploy.deployments WHERE kind = 'up'")
    marker = pg.scalar("SELECT deploy.request_rollback('bad release', %s)", (deployment,))
    cfg = tmp_path / "once.json"
    cfg.write_text(json.dumps({"watcher_id": "w1", "database": {"dsn": pg.dsn},
                               "rollback": {"lock_timeout": "100ms", "lock_attempts": 2, "retry_backoff": "1s"},
                               "logging": {"level": "info"}}))
    blocker = Blocker(pg)
    try:
        rc, out, err = run_pgdeploy("once", "--config", cfg, "--json")
    finally:
        blocker.release()
    assert rc == 1, err                                  # the attempt failed; the marker is kept for the next cycle
    m = json.loads(out)["markers"][0]
    assert m["marker_id"] == marker and m["result"] == "failed"
    retries = m["rollback"]["rollback"]["lock_retries"]    # execute_rollback's result embeds deploy.rollback's
    assert [r.get("gave_up", False) for r in retries] == [False, True]   # rollback.lock_attempts 2, from the config
    assert "lock retry 1/2" in err and str(blocker.pid) in err
    assert has_column(pg, "accounts", "note")

    # The flags win over the config: three attempts now, and the blocker lets go during them.
    blocker = Blocker(pg)
    timer = blocker.release_after(0.8)
    try:
        rc, out, err = run_pgdeploy("once", "--config", cfg, "--lock-attempts", "30", "--lock-timeout", "200ms",
                                    "--json")
    finally:
        timer.cancel()
        blocker.release()
    assert rc == 0, err
    m = json.loads(out)["markers"][0]
    assert m["result"] == "done" and m["rollback"]["rollback"]["lock_retries"]
    assert not has_column(pg, "accounts", "note")


def test_a_plain_statement_of_a_nontransactional_migration_is_retried_by_pgdeploy(pg, write_migrations):
    files = dict(BASE, **{
        "0002_mixed.up.sql": "-- pg_deploy: transaction=off\n"
                             "ALTER TABLE accounts ADD COLUMN note text;\n"
                             "CREATE INDEX CONCURRENTLY accounts_note_idx ON accounts (note);\n",
        "0002_mixed.down.sql": "DROP INDEX accounts_note_idx;\nALTER TABLE accounts DROP COLUMN note;\n",
    })
    d = write_migrations(files)
    assert run_pgdeploy("up", "--dir", d, "--target", "0001", "--dsn", pg.dsn)[0] == 0
    blocker = Blocker(pg)
    timer = blocker.release_after(1.5)
    try:
        rc, out, err = run_pgdeploy("up", "--dir", d, "--lock-timeout", "200ms", "--json", "--dsn", pg.dsn)
    finally:
        timer.cancel()
        blocker.release()
    assert rc == 0, err
    doc = json.loads(out)
    step_retries = [r for r in doc["lock_retries"] if r.get("step") == 1]
    assert step_retries, doc["lock_retries"]
    assert step_retries[0]["blocker"]["pid"] == blocker.pid
    assert step_retries[0]["lock"]["mode"] == "AccessExclusiveLock"
    lines = [line for line in lock_retry_lines(err) if "step 1" in line]
    assert lines and all(f"pid {blocker.pid}" in line for line in lines), err
    # The session's lock_timeout is the user's again after the step (a CONCURRENTLY step ran without it).
    assert [s["ok"] for s in doc["steps"]] == [True, True]
    assert has_column(pg, "accounts", "note")


@pytest.mark.parametrize("command", ["up", "down", "rollback"])
@pytest.mark.parametrize("args,message", [
    (["--lock-timeout", "soon"], "--lock-timeout needs a duration"),
    (["--lock-timeout", "600h"], "--lock-timeout must be at most"),
    (["--lock-attempts", "0"], "--lock-attempts must be between 1 and 10000"),
    (["--lock-attempts", "many"], "--lock-attempts needs a positive integer"),
    (["--lock-retry-time", "1y"], "--lock-retry-time needs a duration"),
    (["--lock-timeout"], "option --lock-timeout needs a value"),
])
def test_bad_lock_flags_are_usage_errors_before_connecting(command, args, message):
    # A DSN nobody listens on: a connection attempt would be exit 3, not 2.
    rc, out, err = run_pgdeploy(command, "--json", "--dsn", "host=/nonexistent-socket-dir port=1", *args)
    assert rc == 2, err
    assert message in err
    assert json.loads(out)["exit_code"] == 2


def test_bad_lock_flags_and_keys_of_once_and_the_watcher_are_usage_errors(tmp_path):
    cfg = tmp_path / "once.json"
    cfg.write_text(json.dumps({"database": {"dsn": "host=/nonexistent-socket-dir port=1"}}))
    rc, out, err = run_pgdeploy("once", "--config", cfg, "--lock-attempts", "0")
    assert rc == 2 and "--lock-attempts must be between 1 and 10000" in err
    rc, out, err = run_pgdeploy("once", "--config", cfg, "--lock-timeout=x", "--json")
    assert rc == 2 and json.loads(out)["error"]["message"].startswith("--lock-timeout needs a duration")
    for rollback, message in [({"lock_timeout": "fast"}, "rollback.lock_timeout: must be a duration"),
                              ({"lock_attempts": 0}, "rollback.lock_attempts: must be between 1 and 10000"),
                              ({"lock_retry_time": "-1s"}, "rollback.lock_retry_time: must be a duration")]:
        cfg.write_text(json.dumps({"rollback": rollback}))
        rc, out, err = run_pgdeploy("watch", "--check-config", "--config", cfg)
        assert rc == 2 and message in err, (rollback, err)


def test_a_long_concurrent_index_build_shows_its_progress(pg, write_migrations):
    files = dict(BASE, **{
        "0002_idx.up.sql": "-- pg_deploy: transaction=off\n"
                           "CREATE INDEX CONCURRENTLY accounts_balance_idx ON accounts (balance);\n",
        "0002_idx.down.sql": "DROP INDEX accounts_balance_idx;\n",
    })
    d = write_migrations(files)
    assert run_pgdeploy("up", "--dir", d, "--target", "0001", "--dsn", pg.dsn)[0] == 0
    # An old snapshot in the same database: CREATE INDEX CONCURRENTLY waits for it ("waiting for old snapshots").
    old = pg.connect(autocommit=False)
    cur = old.cursor()
    cur.execute("SET application_name = 'old-snapshot'")
    cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    cur.execute("SELECT 1")
    cur.execute("SELECT pg_backend_pid()")
    old_pid = cur.fetchone()[0]
    proc = subprocess.Popen([PGDEPLOY_BIN, "up", "--json", "--dsn", pg.dsn], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: pg.scalar("SELECT phase FROM pg_stat_progress_create_index") == "waiting for old snapshots",
                 timeout=20, what="the concurrent build to wait for the old snapshot")
        time.sleep(3)                                  # past the 2 s before the monitor speaks
    finally:
        old.rollback()
        old.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True
    progress = [line for line in err.splitlines() if "0002_idx step 1" in line and "running for" in line]
    assert progress, err
    assert "CREATE INDEX CONCURRENTLY" in progress[0] and "waiting for old snapshots" in progress[0]
    assert f"held by pid {old_pid}" in progress[0] and '"old-snapshot"' in progress[0]
    assert "\r" not in err                              # not a terminal: plain lines, no status line rewrites
