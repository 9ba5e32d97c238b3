"""Non-transactional migrations driven by `pgdeploy up`: CREATE INDEX CONCURRENTLY runs at top level, one
checkpoint per statement, and a failed concurrent build (an INVALID index left behind) resumes cleanly after the
data is fixed."""
import json
import signal
import subprocess
import time

from conftest import PGDEPLOY_BIN, run_pgdeploy

BASE = {
    "0001_items.up.sql": "CREATE TABLE items (id int PRIMARY KEY, sku text);\n"
                         "INSERT INTO items SELECT g, 'sku-' || g FROM generate_series(1, 1000) g;\n",
    "0001_items.down.sql": "DROP TABLE items;\n",
}


def index_state(pg, name):
    return pg.scalar("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                     "WHERE c.relname = %s", (name,))


CONCURRENT_INDEX = dict(BASE, **{
    "0002_idx.up.sql": "-- pg_deploy: transaction=off\nCREATE INDEX CONCURRENTLY items_sku_idx ON items (sku);\n",
    "0002_idx.down.sql": "DROP INDEX items_sku_idx;\n",
})


def start_blocked_concurrent_build(pg, write_migrations, *args):
    """Applies 0001, locks `items` so that 0002's CREATE INDEX CONCURRENTLY must wait, and starts `pgdeploy up ARGS`.
    Returns (process, the blocking connection, the pid of pgdeploy's waiting backend) once the build waits."""
    d = write_migrations(CONCURRENT_INDEX)
    assert run_pgdeploy("up", "--dir", d, "--target", "0001", "--dsn", pg.dsn)[0] == 0
    blocker = pg.connect(autocommit=False)
    blocker.cursor().execute("LOCK TABLE items IN SHARE UPDATE EXCLUSIVE MODE")   # CIC waits for this
    proc = subprocess.Popen([PGDEPLOY_BIN, "up", *args, "--dsn", pg.dsn], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    waiting = None
    for _ in range(200):
        waiting = pg.scalar("SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'pgdeploy' "
                            "AND query ILIKE '%%CREATE INDEX CONCURRENTLY%%' AND wait_event_type = 'Lock'",
                            (pg.name,))
        if waiting:
            break
        time.sleep(0.05)
    if not waiting:
        activity = pg.sql("SELECT application_name, state, wait_event_type, left(query, 80) FROM pg_stat_activity "
                          "WHERE datname = %s", (pg.name,))
        proc.kill()
        proc.wait()
        blocker.rollback()
        blocker.close()
        raise AssertionError(("pgdeploy never reached the CREATE INDEX CONCURRENTLY step", activity))
    return proc, blocker, waiting


def test_concurrent_index_is_applied_at_top_level(pg, write_migrations):
    files = dict(BASE, **{
        "0002_sku_index.up.sql": "-- pg_deploy: transaction=off\n"
                                 "CREATE INDEX CONCURRENTLY items_sku_idx ON items (sku);\n"
                                 "CREATE INDEX CONCURRENTLY items_sku_lower_idx ON items (lower(sku));\n",
        "0002_sku_index.down.sql": "DROP INDEX items_sku_idx;\nDROP INDEX items_sku_lower_idx;\n",
        "0003_after.up.sql": "ALTER TABLE items ADD COLUMN price int;\n",
        "0003_after.down.sql": "ALTER TABLE items DROP COLUMN price;\n",
    })
    d = write_migrations(files)
    rc, out, err = run_pgdeploy("up", "--dir", d, "--app-version", "r1", "--json", "--dsn", pg.dsn)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True
    assert [a["version"] for a in doc["applied"]] == ["0001", "0002", "0003"]
    assert [s["step"] for s in doc["steps"]] == [1, 2] and all(s["ok"] for s in doc["steps"])
    assert "[2/3] 0002_sku_index step 1 ... ok" in err and "[2/3] 0002_sku_index step 2 ... ok" in err
    assert index_state(pg, "items_sku_idx") is True and index_state(pg, "items_sku_lower_idx") is True
    assert pg.scalar("SELECT transactional FROM deploy.applied WHERE version = '0002'") is False
    assert pg.sql("SELECT step, state FROM deploy.checkpoints WHERE version = '0002' ORDER BY step") == \
        [(1, "done"), (2, "done")]
    assert [r[0] for r in pg.sql("SELECT version FROM deploy.applied ORDER BY sort_key")] == ["0001", "0002", "0003"]
    rc, out, _ = run_pgdeploy("validate", "--dsn", pg.dsn)
    assert rc == 0


def test_failed_concurrent_build_resumes_after_the_data_is_fixed(pg, write_migrations):
    files = dict(BASE, **{
        "0002_unique_sku.up.sql": "-- pg_deploy: transaction=off\n"
                                  "CREATE UNIQUE INDEX CONCURRENTLY items_sku_key ON items (sku);\n",
        "0002_unique_sku.down.sql": "DROP INDEX items_sku_key;\n",
    })
    d = write_migrations(files)
    assert run_pgdeploy("up", "--dir", d, "--target", "0001", "--dsn", pg.dsn)[0] == 0
    pg.sql("INSERT INTO items VALUES (1001, 'sku-1')")   # a duplicate: the unique build will fail

    rc, out, err = run_pgdeploy("up", "--dir", d, "--json", "--dsn", pg.dsn)
    assert rc == 1, (out, err)
    doc = json.loads(out)
    assert doc["ok"] is False and doc["exit_code"] == 1
    assert doc["failed"]["version"] == "0002" and doc["failed"]["sqlstate"] == "23505"
    assert "FAILED" in err
    assert index_state(pg, "items_sku_key") is False   # the INVALID index a failed concurrent build leaves
    assert pg.scalar("SELECT count(*) FROM deploy.applied WHERE version = '0002'") == 0
    assert pg.scalar("SELECT state FROM deploy.checkpoints WHERE version = '0002'") == "failed"

    # Still failing: the retry drops the invalid index first and fails again the same way (no "already exists").
    # The human output says where the schema is (0001, applied by the first run), not "nothing applied".
    rc, out, err = run_pgdeploy("up", "--dsn", pg.dsn)
    assert rc == 1
    assert "23505" in out and "nothing applied" not in out, out
    assert "schema at 0001" in out and "run `pgdeploy up` again to resume" in out, out
    rc, out, err = run_pgdeploy("up", "--json", "--dsn", pg.dsn)
    assert rc == 1
    assert json.loads(out)["failed"]["sqlstate"] == "23505"
    assert json.loads(out)["version_after"] == "0001"

    pg.sql("DELETE FROM items WHERE id = 1001")
    rc, out, err = run_pgdeploy("up", "--json", "--dsn", pg.dsn)
    assert rc == 0, (out, err)
    assert "cleanup: DROP INDEX CONCURRENTLY IF EXISTS" in err
    assert index_state(pg, "items_sku_key") is True
    assert pg.scalar("SELECT count(*) FROM deploy.applied WHERE version = '0002'") == 1
    assert pg.scalar("SELECT attempts FROM deploy.checkpoints WHERE version = '0002'") == 4
    rc, out, _ = run_pgdeploy("status", "--json", "--dsn", pg.dsn)
    assert json.loads(out)["running_checkpoints"] == []


def test_dry_run_does_not_run_top_level_statements(pg, write_migrations):
    files = dict(BASE, **{
        "0002_idx.up.sql": "-- pg_deploy: transaction=off\nCREATE INDEX CONCURRENTLY items_sku_idx ON items (sku);\n",
        "0002_idx.down.sql": "DROP INDEX items_sku_idx;\n",
    })
    d = write_migrations(files)
    before = pg.snapshot()
    rc, out, err = run_pgdeploy("up", "--dir", d, "--dry-run", "--json", "--dsn", pg.dsn)
    assert rc == 0, (out, err)
    assert json.loads(out)["dry_run"] is True
    assert pg.snapshot() == before
    assert index_state(pg, "items_sku_idx") is None


def test_killed_pgdeploy_mid_step_resumes_with_the_next_up(pg, write_migrations):
    """SIGKILL pgdeploy while its CREATE INDEX CONCURRENTLY waits, end its backend, and run `pgdeploy up` again:
    the unfinished step is handed out again and the migration completes exactly once."""
    proc, blocker, waiting = start_blocked_concurrent_build(pg, write_migrations)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert pg.scalar("SELECT pg_terminate_backend(%s)", (waiting,)) is True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        blocker.rollback()
        blocker.close()
    assert pg.scalar("SELECT state FROM deploy.checkpoints WHERE version = '0002'") == "running"
    # The dead client's deploy lease lives on for its ttl: status names it, and the deployment is not interrupted yet.
    rc, out, _ = run_pgdeploy("status", "--json", "--dsn", pg.dsn)
    doc = json.loads(out)
    [lease] = doc["leases"]
    assert lease["lease"] == "deploy" and lease["holder"].startswith("pgdeploy@") and lease["expired"] is False
    assert doc["last_deployment"]["state"] == "running" and doc["last_deployment"]["interrupted"] is False
    # Once it has expired, nobody works on the deployment: status says interrupted, and the next up resumes it.
    pg.sql("UPDATE deploy.leases SET expires_at = clock_timestamp() - interval '1 s'")
    rc, out, _ = run_pgdeploy("status", "--dsn", pg.dsn)
    assert rc == 0 and "running (interrupted: run it again)" in out, out
    rc, out, err = run_pgdeploy("up", "--json", "--dsn", pg.dsn)
    assert rc == 0, (out, err)
    assert [a["version"] for a in json.loads(out)["applied"]] == ["0002"]
    assert index_state(pg, "items_sku_idx") is True
    assert pg.sql("SELECT state, attempts FROM deploy.checkpoints WHERE version = '0002'") == [("done", 2)]
    assert pg.scalar("SELECT count(*) FROM deploy.applied WHERE version = '0002'") == 1


def test_second_pgdeploy_does_not_run_the_same_step_concurrently(pg, write_migrations):
    """While one pgdeploy runs a top-level statement, a second `pgdeploy up` gets the lock error (exit 4) instead
    of being handed the same running step and starting a duplicate concurrent build."""
    first, blocker, _ = start_blocked_concurrent_build(pg, write_migrations, "--json")
    try:
        rc, out, err = run_pgdeploy("up", "--lock-wait", "1s", "--json", "--dsn", pg.dsn)
        assert rc == 4, (out, err)
        assert json.loads(out)["error"]["sqlstate"] == "55P03"
        assert pg.scalar("SELECT attempts FROM deploy.checkpoints WHERE version = '0002'") == 1
    finally:
        blocker.rollback()
        blocker.close()
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, (out, err)
    assert index_state(pg, "items_sku_idx") is True
    assert pg.sql("SELECT state, attempts FROM deploy.checkpoints WHERE version = '0002'") == [("done", 1)]


def test_the_deploy_lease_is_renewed_while_a_step_runs(pg, write_migrations):
    """A step that runs longer than the lease's ttl (8 s): pgdeploy renews the lease from a second connection, so it
    never expires under a live client and another `pgdeploy up` is refused with 55P03 naming the holder."""
    proc, blocker, _ = start_blocked_concurrent_build(pg, write_migrations)
    try:
        acquired = pg.scalar("SELECT acquired_at FROM deploy.leases WHERE name = 'deploy'")
        time.sleep(10)
        assert pg.sql("SELECT expires_at > clock_timestamp(), renewed_at > acquired_at FROM deploy.leases "
                      "WHERE name = 'deploy'") == [(True, True)]
        assert pg.scalar("SELECT acquired_at FROM deploy.leases WHERE name = 'deploy'") == acquired
        rc, out, err = run_pgdeploy("up", "--lock-wait", "200ms", "--dsn", pg.dsn)
        assert rc == 4 and "deploy lease is held by \"pgdeploy@" in err, (rc, out, err)
    finally:
        blocker.rollback()
        blocker.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    assert index_state(pg, "items_sku_idx") is True
    assert pg.scalar("SELECT count(*) FROM deploy.leases") == 0


def test_a_lost_lease_stops_the_step(pg, write_migrations):
    """The lease taken over while a step runs (its holder looked dead): pgdeploy's next renewal finds it lost,
    cancels the statement and stops, and the step stays to be resumed by the new holder's run."""
    proc, blocker, _ = start_blocked_concurrent_build(pg, write_migrations)
    try:
        pg.sql("UPDATE deploy.leases SET holder = 'thief' WHERE name = 'deploy'")
        out, err = proc.communicate(timeout=30)
    finally:
        blocker.rollback()
        blocker.close()
    assert proc.returncode != 0, (out, err)
    assert "expired and was taken over" in err, err
    assert pg.scalar("SELECT count(*) FROM deploy.applied WHERE version = '0002'") == 0
    pg.sql("DELETE FROM deploy.leases")
    rc, out, err = run_pgdeploy("up", "--dsn", pg.dsn)
    assert rc == 0, (out, err)
    assert index_state(pg, "items_sku_idx") is True
