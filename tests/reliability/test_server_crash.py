"""Server crash: `pg_ctl stop -m immediate` (no shutdown checkpoint: crash recovery at the next start) in the middle
of a deploy, on a cluster of our own (tests/reliability/conftest.py: Cluster, removed at the end even on failure).

Trials alternate between the atomic deploy.up() and the per-migration-committing CALL deploy.run(), and one trial
crashes a rollback. After the restart: deploy.validate() is clean, the catalog matches the ledger, deploy.up() is
all-or-nothing, deploy.run() left a prefix, nothing is half-written, and the resume completes.
"""
import time

import psycopg2

from conftest import (Background, applied_versions, assert_consistent, fetch_one, slow_migrations, stats,
                      trials, wait_until)

STEP = 0.15


def _crash_and_restart(cluster, db, bg, delay):
    time.sleep(delay)
    cluster.stop("immediate")
    bg.join(30)
    stats.add("crash.injected")
    cluster.start()
    db.reset()
    wait_until(lambda: _can_connect(db), timeout=30, what="the server to accept connections again")
    return bg.error is not None


def _can_connect(db):
    try:
        db.reset()
        db.scalar("SELECT 1")
        return True
    except psycopg2.Error:
        return False


def test_immediate_shutdown_mid_deploy(cluster, rng):
    db = cluster.new_database("crash")
    n = 4
    try:
        for trial in range(1, trials(2, 10) + 1):
            versions = [f"{trial:03d}.{i}" for i in range(1, n + 1)]
            slow_migrations(db, versions, up_sleep=STEP, down_sleep=STEP)
            use_run = trial % 2 == 0
            call = "CALL deploy.run(app_version => 'rel')" if use_run else "SELECT deploy.up(app_version => 'rel')"
            before = applied_versions(db)
            bg = Background(db.dsn, fetch_one(call))
            landed = _crash_and_restart(cluster, db, bg, rng.uniform(STEP * 0.5, STEP * (n - 0.5)))
            stats.add("crash.run" if use_run else "crash.up")
            applied = [v for v in applied_versions(db) if v in versions]
            if use_run:
                assert applied == versions[:len(applied)], applied
            elif landed:
                assert applied_versions(db) == before, "a crashed atomic deploy.up() left part of its batch"
            assert_consistent(db, versions)
            if use_run:
                db.sql("CALL deploy.run()")
            else:
                assert db.scalar("SELECT deploy.up()")["ok"]
            assert [v for v in applied_versions(db) if v in versions] == versions
            assert_consistent(db, versions)

        # A crash in the middle of a rollback: all or nothing, then the rollback completes.
        versions = ["900.1", "900.2", "900.3"]
        slow_migrations(db, versions, down_sleep=STEP)
        dep = db.scalar("SELECT deploy.up(app_version => 'bad')")["deployment_id"]
        bg = Background(db.dsn, fetch_one("SELECT deploy.rollback(%s)" % dep))
        landed = _crash_and_restart(cluster, db, bg, rng.uniform(STEP * 0.5, STEP * 2.5))
        stats.add("crash.rollback")
        if landed:
            assert set(versions) <= set(applied_versions(db))
        assert_consistent(db, versions)
        if landed:
            assert db.scalar("SELECT deploy.rollback(%s)" % dep)["ok"]
        assert not set(versions) & set(applied_versions(db))
        assert db.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (dep,)) == "rolled_back"
        assert_consistent(db, versions)
    finally:
        db.close()
