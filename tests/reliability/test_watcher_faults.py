"""Watcher faults.

- SIGKILL of `pgdeploy watch` at a random moment of a rollback (before the decision, in the middle of the slowed
  hook, in the middle of the slowed database revert, after it finished), then a restart with the same watcher_id:
  the rollback completes, each migration is reverted exactly once (events), one rollback deployment, the marker is
  done, and the hook ran at most once more than needed, the rerun told so through PGDEPLOY_ATTEMPT.
- The database goes away under a running watcher (our own cluster, stopped and started again): the watcher does not
  crash, freezes its decisions while it cannot reach the primary, and reconnects when the server is back. A
  `postgres` check fails with the database, critical or not, but its failures during the freeze are held out of the
  evidence: no rollback either way (test_watcher_failover.py looks at the freeze itself).
"""
import time

import pytest

from conftest import FreshDatabase, LONG, assert_consistent, stats, table_for, trials, wait_until
from watch_helpers import Watcher, events, hook_entries, watch_config, write_hook, health  # noqa: F401 (health: a fixture)

HOOK_SLEEP = 1.0
DOWN_SLEEP = 0.4


def _release(db, app_version, versions, down_sleep=0.0):
    db.sql("CREATE SCHEMA IF NOT EXISTS app")
    for v in versions:
        down = f"DROP TABLE app.{table_for(v)}" + (f"; SELECT pg_sleep({down_sleep})" if down_sleep else "")
        db.sql("SELECT deploy.register(%s, %s, %s, %s)",
               (v, "m" + v, f"CREATE TABLE app.{table_for(v)} (id int)", down))
    res = db.scalar("SELECT deploy.up(app_version => %s)", (app_version,))
    assert res["ok"], res
    return res["deployment_id"]


def test_sigkill_at_random_points_of_a_rollback(rng, health, tmp_path):
    n_trials = trials(3, 20)
    # From the flip to unhealthy: ~0.6 s to decide (3 x 200 ms), HOOK_SLEEP in the hook, 2 x DOWN_SLEEP reverting.
    span = 0.6 + HOOK_SLEEP + 2 * DOWN_SLEEP + 0.5
    for trial in range(n_trials):
        tdir = tmp_path / f"trial{trial}"
        tdir.mkdir()
        health.make_healthy()
        with FreshDatabase() as db:
            _release(db, "v1", ["0001"])
            bad = ["0002", "0003"]
            d2 = _release(db, "v2", bad, down_sleep=DOWN_SLEEP)
            hook, hook_log, _ = write_hook(tdir, health.bad_file, sleep_first=HOOK_SLEEP)
            cfg = watch_config(db, health, hook, tdir / "state.json", watcher_id="rel-host")
            first = Watcher(tdir, cfg, name="first")
            second = None
            try:
                first.wait_ready(leader=True)
                health.make_unhealthy()
                delay = rng.uniform(0.2, span)
                time.sleep(delay)
                first.kill()
                stats.add("watcher_kill.injected")
                phase = "before hook" if not hook_entries(hook_log) else "after hook start"
                print(f"trial {trial}: SIGKILL after {delay:.2f}s ({phase})")
                second = Watcher(tdir, cfg, name="second")
                wait_until(lambda: db.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,))
                           == "rolled_back", timeout=30, what="the restarted watcher to finish the rollback")
                wait_until(lambda: db.scalar("SELECT count(*) FROM deploy.rollback_markers WHERE state <> 'done'")
                           == 0, timeout=15, what="the marker to be closed")
                time.sleep(0.5)
                # Exactly once on the database side.
                reverted = db.sql("SELECT version, count(*) FROM deploy.events WHERE kind = 'migration_reverted' "
                                  "GROUP BY version ORDER BY 1")
                assert reverted == [(v, 1) for v in bad], reverted
                assert db.scalar("SELECT count(*) FROM deploy.deployments WHERE kind = 'rollback'") == 1
                assert db.sql("SELECT state FROM deploy.rollback_markers") == [("done",)]
                assert [r[0] for r in db.sql("SELECT version FROM deploy.applied ORDER BY 1")] == ["0001"]
                assert_consistent(db, ["0001"] + bad)
                # The hook: at most once more than needed; a rerun knows it is one.
                entries = hook_entries(hook_log)
                starts = [int(e["attempt"]) for e in entries if e["phase"] == "start"]
                dones = [e for e in entries if e["phase"] == "done"]
                assert 1 <= len(starts) <= 2, entries
                assert starts == sorted(set(starts)) and starts[0] == 1, entries
                assert len(dones) >= 1, entries
                assert all(e["deployment"] == str(d2) for e in entries)
                if len(starts) == 2:
                    stats.add("watcher_kill.hook_rerun_told")
                stats.add("watcher_kill.trials")
                assert second.stop() == 0
            finally:
                first.close()
                if second is not None:
                    second.close()


@pytest.mark.parametrize("critical", [False, True], ids=["postgres-check-not-critical", "postgres-check-critical"])
def test_database_away_under_a_running_watcher(cluster, health, tmp_path, critical):
    away = 60 if LONG else 10
    db = cluster.new_database("away_" + ("c" if critical else "n"))
    try:
        _release(db, "v1", ["0001"])
        d2 = _release(db, "v2", ["0002"])
        hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
        cfg = watch_config(db, health, hook, tmp_path / "state.json", watcher_id="rel-away")
        cfg["checks"].append({"name": "db", "type": "postgres", "dsn": db.dsn, "interval": "200ms",
                              "timeout": "1s", "critical": critical, "failure_threshold": 3})
        w = Watcher(tmp_path, cfg)
        try:
            w.wait_ready(leader=True)
            cluster.stop("immediate" if critical else "fast")
            stats.add("db_away.outages")
            time.sleep(away)
            assert w.proc.poll() is None, "the watcher died while the database was away:\n" + w.log_text()
            st = w.state()
            assert st is not None and st.get("connected") is False and st.get("frozen") is True, st
            cluster.start()
            db.reset()
            w.wait_state(lambda s: s.get("connected") is True, timeout=30, what="the watcher to reconnect")
            time.sleep(1.5)
            assert w.proc.poll() is None
            markers = db.sql("SELECT id, state FROM deploy.rollback_markers")
            assert markers == [], markers
            assert db.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "succeeded"
            assert hook_entries(hook_log) == []
            assert events(db, "watcher_decision") == []
            assert len(events(db, "watcher_db_freeze")) == 1
            assert db.scalar("SELECT deploy.validate()")["ok"]
            assert w.stop() == 0
        finally:
            w.close()
    finally:
        db.close()
        if not cluster.running():
            cluster.start()
