"""The watcher through a database outage (a failover seen from one watcher), on a cluster of our own
(tests/reliability/conftest.py: Cluster; `pg_ctl stop -m fast`, then start again).

- Freeze: the database stops while the app's health endpoint stays healthy and a critical `postgres` check fails
  with it. The watcher reports "frozen" (the state file of --status, the metrics), holds the check's failures out of
  the evidence and rolls nothing back. When the server is back: frozen false, a `watcher_db_freeze` event with the
  duration and reason, leadership (the lease) is back.
- Resume: a marker claimed (its hook running) when the database stops is resumed by the same watcher when it is
  back, and executed once: one revert of the migration, one rollback deployment, the marker done; executing it
  again (a stale resume) changes nothing.
"""
import re
import time
import urllib.request

from conftest import free_port, stats, table_for, wait_until
from watch_helpers import Watcher, events, hook_entries, watch_config, write_hook, health  # noqa: F401 (a fixture)

OUTAGE_S = 3.0


def _release(db, app_version, versions):
    db.sql("CREATE SCHEMA IF NOT EXISTS app")
    for v in versions:
        db.sql("SELECT deploy.register(%s, %s, %s, %s)",
               (v, "m" + v, f"CREATE TABLE app.{table_for(v)} (id int)", f"DROP TABLE app.{table_for(v)}"))
    res = db.scalar("SELECT deploy.up(app_version => %s)", (app_version,))
    assert res["ok"], res
    return res["deployment_id"]


def _metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        m = re.match(r"^(pgdeploy_watch_[a-z_]+) ([0-9.e+-]+)$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


def _restart(cluster, db):
    cluster.start()
    db.reset()
    wait_until(lambda: db.scalar("SELECT 1") == 1, timeout=30, what="the server to accept connections")


def test_outage_freezes_decisions_and_rolls_nothing_back(cluster, health, tmp_path):
    db = cluster.new_database("freeze")
    try:
        _release(db, "v1", ["0001"])
        d2 = _release(db, "v2", ["0002"])
        hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
        port = free_port()
        cfg = watch_config(db, health, hook, tmp_path / "state.json", watcher_id="rel-freeze",
                           metrics=f"127.0.0.1:{port}")
        cfg["checks"].append({"name": "db", "type": "postgres", "dsn": db.dsn, "interval": "200ms",
                              "timeout": "1s", "critical": True, "failure_threshold": 3})
        w = Watcher(tmp_path, cfg)
        try:
            w.wait_ready(leader=True)
            assert _metrics(port)["pgdeploy_watch_frozen"] == 0
            cluster.stop("fast")
            stats.add("failover.outages")
            st = w.wait_state(lambda s: s.get("frozen") is True, timeout=10, what="the freeze")
            assert st["leader"] is False and st["connected"] is False
            assert st["freeze"]["reason"] in ("connection_lost", "database_unreachable"), st["freeze"]
            assert st["freeze"]["since"]
            time.sleep(OUTAGE_S)
            st = w.state()
            assert st["frozen"] is True and st["freeze"]["duration_ms"] >= OUTAGE_S * 1000 - 500, st["freeze"]
            checks = {c["name"]: c for c in st["checks"]}
            assert checks["db"]["last"]["status"] == "critical"      # reported ...
            assert checks["db"]["freeze_ignored"] >= 5                 # ... but held out of the evidence
            assert checks["db"]["state"] != "failing"
            assert checks["api"]["state"] == "ok"
            assert st["last_decision"]["reason"] == "database_frozen", st["last_decision"]
            m = _metrics(port)
            assert m["pgdeploy_watch_frozen"] == 1 and m["pgdeploy_watch_freezes_total"] == 1, m
            assert m["pgdeploy_watch_database_up"] == 0 and m["pgdeploy_watch_leader"] == 0, m

            _restart(cluster, db)
            st = w.wait_state(lambda s: s.get("frozen") is False and s.get("leader") is True, timeout=30,
                              what="the watcher to thaw and lead again")
            assert st["freeze"]["freezes"] == 1 and st["freeze"]["frozen_ms_total"] >= OUTAGE_S * 1000
            frozen = wait_until(lambda: events(db, "watcher_db_freeze"), timeout=10, what="the freeze event")
            assert len(frozen) == 1, frozen
            details = frozen[0][3]
            assert details["duration_ms"] >= OUTAGE_S * 1000, details
            assert details["reason"] in ("connection_lost", "database_unreachable"), details
            assert details["was_leader"] is True and details["watcher_id"] == "rel-freeze"
            assert db.sql("SELECT holder FROM deploy.leases WHERE name = 'watcher_leader' AND expires_at > now()") \
                == [("rel-freeze",)]
            m = _metrics(port)
            assert m["pgdeploy_watch_frozen"] == 0 and m["pgdeploy_watch_leader"] == 1, m
            assert m["pgdeploy_watch_frozen_seconds_total"] >= OUTAGE_S, m

            # Several check intervals with the primary back: still no rollback of the healthy release.
            time.sleep(1.5)
            assert db.sql("SELECT id FROM deploy.rollback_markers") == []
            assert db.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "succeeded"
            assert hook_entries(hook_log) == []
            assert events(db, "watcher_decision") == []
            assert w.stop() == 0
            assert db.sql("SELECT holder FROM deploy.leases WHERE name = 'watcher_leader' AND expires_at > now()") \
                == []
        finally:
            w.close()
    finally:
        if not cluster.running():
            cluster.start()
        db.close()


def test_marker_claimed_before_an_outage_is_resumed_and_executed_once(cluster, health, tmp_path):
    db = cluster.new_database("resume")
    try:
        _release(db, "v1", ["0001"])
        d2 = _release(db, "v2", ["0002"])
        hook, hook_log, _ = write_hook(tmp_path, health.bad_file, sleep_first=4)
        cfg = watch_config(db, health, hook, tmp_path / "state.json", watcher_id="rel-resume")
        w = Watcher(tmp_path, cfg)
        try:
            w.wait_ready(leader=True)
            marker = db.scalar("SELECT deploy.request_rollback('requested before the outage', %s, '{}'::jsonb)",
                               (d2,))
            wait_until(lambda: hook_entries(hook_log), timeout=10, what="the watcher to claim it and start the hook")
            assert db.sql("SELECT state, holder FROM deploy.rollback_markers WHERE id = %s", (marker,)) \
                == [("in_progress", "rel-resume")]
            cluster.stop("fast")                     # while the hook runs (4 s)
            stats.add("failover.outages")
            w.wait_state(lambda s: s.get("frozen") is True, timeout=15, what="the freeze after the hook")
            time.sleep(1.0)
            _restart(cluster, db)
            wait_until(lambda: db.scalar("SELECT state FROM deploy.rollback_markers WHERE id = %s", (marker,))
                       == "done", timeout=30, what="the resumed marker to be done")
            time.sleep(1.0)

            # Executed once: one revert, one rollback deployment, by the watcher that claimed it.
            assert db.sql("SELECT version, count(*) FROM deploy.events WHERE kind = 'migration_reverted' "
                          "GROUP BY version") == [("0002", 1)]
            assert db.scalar("SELECT count(*) FROM deploy.deployments WHERE kind = 'rollback'") == 1
            assert db.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "rolled_back"
            assert [r[0] for r in db.sql("SELECT version FROM deploy.applied ORDER BY 1")] == ["0001"]
            assert db.sql("SELECT holder, state FROM deploy.rollback_markers") == [("rel-resume", "done")]
            # The hook: cut short by the outage before its end was recorded, so it ran again, told so.
            starts = [e["attempt"] for e in hook_entries(hook_log) if e["phase"] == "start"]
            assert starts == ["1", "2"], hook_entries(hook_log)
            assert len(events(db, "watcher_db_freeze")) == 1

            # A stale resume cannot execute it twice: the marker's state machine refuses or reports it done.
            again = db.scalar("SELECT deploy.execute_rollback(%s, 'rel-resume')", (marker,))
            assert again["ok"] is True and again.get("already_done") is True, again
            assert db.scalar("SELECT count(*) FROM deploy.events WHERE kind = 'migration_reverted'") == 1
            assert db.scalar("SELECT count(*) FROM deploy.deployments WHERE kind = 'rollback'") == 1
            assert w.stop() == 0
        finally:
            w.close()
    finally:
        if not cluster.running():
            cluster.start()
        db.close()
