"""Kills: pg_terminate_backend at a random moment of up, down, rollback, CALL deploy.run and marker execution.

Each migration sleeps (pg_sleep) so that the kill lands in the middle of the operation; the moment is drawn from the
seeded rng over the operation's expected duration (some kills land before it starts its work or after it finished:
both must be fine too). After each kill: deploy.validate() is clean, the catalog matches the ledger (a table for every
applied version and for no other), no deploy lock is left behind, and the resume (the same call again) completes.
The atomic operations must be all-or-nothing: after the kill the ledger is either exactly as before or exactly as
after a complete run. deploy.run commits per migration: the applied versions are a prefix of the batch.
"""
import time

import psycopg2
import pytest

from conftest import (Background, applied_versions, assert_consistent, fetch_one, ledger_state, slow_migrations,
                      stats, trials)

STEP = 0.12   # seconds each slow migration sleeps


def _kill_at(pg, bg, delay):
    time.sleep(delay)
    killed = pg.scalar("SELECT pg_terminate_backend(%s)", (bg.pid,))
    bg.join()
    landed = bg.error is not None
    if landed:
        assert isinstance(bg.error, psycopg2.OperationalError), repr(bg.error)
    stats.add("kills.injected")
    stats.add("kills.landed_mid_operation" if landed else "kills.after_completion")
    return killed, landed


def _unregister(pg, versions):
    """Reverted migrations are pending again: unregister them, or every later trial's up would apply them too."""
    for v in versions:
        assert pg.scalar("SELECT deploy.unregister(%s)", (v,)) is True


def _versions(trial, n=4):
    return [f"{trial:03d}.{i}" for i in range(1, n + 1)]


@pytest.mark.parametrize("operation", ["up", "down", "rollback"])
def test_kill_atomic_operation(pg, rng, operation):
    n = 4
    mid = 0
    for trial in range(1, trials(4, 40) + 1):
        versions = _versions(trial, n)
        slow_migrations(pg, versions, up_sleep=STEP, down_sleep=STEP)
        if operation == "up":
            call = "SELECT deploy.up(app_version => 'rel')"
        else:
            assert pg.scalar("SELECT deploy.up(app_version => 'rel')")["ok"]
            call = ("SELECT deploy.down(steps => %d)" % n) if operation == "down" else "SELECT deploy.rollback()"
        before = ledger_state(pg)
        applied_before = applied_versions(pg)
        bg = Background(pg.dsn, fetch_one(call))
        _, landed = _kill_at(pg, bg, rng.uniform(0, STEP * n * 1.2))
        mid += landed
        stats.add(f"kills.{operation}")
        if landed:
            # All or nothing: exactly as before.
            assert applied_versions(pg) == applied_before
            after = ledger_state(pg)
            for table in ("migrations", "applied", "deployments", "rollback_markers", "checkpoints"):
                assert after[table] == before[table], f"{table} changed by a killed {operation}"
        assert_consistent(pg, versions)
        # Resume: the same call completes (no stuck lock, nothing half done).
        if landed:
            res = pg.scalar(call)
            assert res["ok"], res
        if operation == "up":
            assert set(versions) <= set(applied_versions(pg))
        else:
            assert not set(versions) & set(applied_versions(pg))
        assert_consistent(pg, versions)
        if operation != "up":
            _unregister(pg, versions)
    assert mid > 0, "no kill landed in the middle of the operation: the trials proved nothing"


def test_kill_call_run(pg, rng):
    n = 5
    mid = 0
    for trial in range(1, trials(4, 40) + 1):
        versions = _versions(trial, n)
        slow_migrations(pg, versions, up_sleep=STEP)
        bg = Background(pg.dsn, fetch_one("CALL deploy.run(app_version => 'rel')"))
        _, landed = _kill_at(pg, bg, rng.uniform(0, STEP * n * 1.2))
        mid += landed
        stats.add("kills.run")
        applied = [v for v in applied_versions(pg) if v in versions]
        assert applied == versions[:len(applied)], f"deploy.run applied a non-prefix: {applied}"
        assert_consistent(pg, versions)
        # No checkpoint left 'running' for a session that is gone, or if one is, the resume takes it over.
        pg.sql("CALL deploy.run()")
        assert [v for v in applied_versions(pg) if v in versions] == versions
        assert_consistent(pg, versions)
        assert pg.scalar("SELECT count(*) FROM deploy.checkpoints WHERE state NOT IN ('done')") == 0, \
            pg.sql("SELECT * FROM deploy.checkpoints WHERE state <> 'done'")
    assert mid > 0, "no kill landed in the middle of deploy.run"


def test_kill_marker_execution(pg, rng):
    n = 4
    mid = 0
    for trial in range(1, trials(3, 30) + 1):
        versions = _versions(trial, n)
        slow_migrations(pg, versions, down_sleep=STEP)
        dep = pg.scalar("SELECT deploy.up(app_version => 'bad')")["deployment_id"]
        marker = pg.scalar("SELECT deploy.request_rollback('reliability trial', %s)", (dep,))
        claimed = pg.sql("SELECT id FROM deploy.claim_marker('rel-holder', '1 min', %s)", (marker,))
        assert [r[0] for r in claimed] == [marker]
        bg = Background(pg.dsn, fetch_one("SELECT deploy.execute_rollback(%s, 'rel-holder')", (marker,)))
        _, landed = _kill_at(pg, bg, rng.uniform(0, STEP * n * 1.2))
        mid += landed
        stats.add("kills.marker")
        state = pg.scalar("SELECT state FROM deploy.rollback_markers WHERE id = %s", (marker,))
        if landed:
            # The revert is atomic: nothing reverted, the marker still claimed by its holder (lease not expired).
            assert set(versions) <= set(applied_versions(pg))
            assert state == "in_progress", state
        assert_consistent(pg, versions)
        if landed:
            res = pg.scalar("SELECT deploy.execute_rollback(%s, 'rel-holder')", (marker,))
            assert res["ok"], res
        assert pg.scalar("SELECT state FROM deploy.rollback_markers WHERE id = %s", (marker,)) == "done"
        assert pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (dep,)) == "rolled_back"
        # Each migration reverted exactly once.
        rows = dict(pg.sql("SELECT version, count(*) FROM deploy.events WHERE kind = 'migration_reverted' "
                           "AND version = ANY(%s) GROUP BY version", (versions,)))
        assert rows == {v: 1 for v in versions}, rows
        # Executing a done marker again is a no-op.
        again = pg.scalar("SELECT deploy.execute_rollback(%s, 'rel-holder')", (marker,))
        assert again["ok"], again
        assert dict(pg.sql("SELECT version, count(*) FROM deploy.events WHERE kind = 'migration_reverted' "
                           "AND version = ANY(%s) GROUP BY version", (versions,))) == rows
        assert_consistent(pg, versions)
        _unregister(pg, versions)
    assert mid > 0, "no kill landed in the middle of a marker execution"


@pytest.mark.parametrize("operation", ["up", "rollback"])
def test_cancel_aborts_the_whole_call(pg, operation):
    """pg_cancel_backend in the middle of a migration is the operator saying stop: the call ends with 57014 and the
    ledger is exactly as before (no failed deployment recorded, unlike pg_deploy.statement_timeout, which records the
    migration as failed), and the same call afterwards completes."""
    versions = _versions(1, 3)
    slow_migrations(pg, versions, up_sleep=1.0, down_sleep=1.0)
    if operation == "up":
        call = "SELECT deploy.up(app_version => 'rel')"
    else:
        assert pg.scalar("SELECT deploy.up(app_version => 'rel')")["ok"]
        call = "SELECT deploy.rollback()"
    before = ledger_state(pg)
    bg = Background(pg.dsn, fetch_one(call))
    time.sleep(0.5)   # inside the first migration's one-second sleep
    assert pg.scalar("SELECT pg_cancel_backend(%s)", (bg.pid,)) is True
    bg.join()
    assert isinstance(bg.error, psycopg2.errors.QueryCanceled), repr(bg.error)
    after = ledger_state(pg)
    for table in ("migrations", "applied", "deployments", "rollback_markers", "checkpoints", "events"):
        assert after[table] == before[table], f"{table} changed by a cancelled {operation}"
    assert_consistent(pg, versions)
    res = pg.scalar(call)
    assert res["ok"], res
