"""The watcher through a database outage (a failover seen from one watcher), on a cluster of our own
(tests/reliability/conftest.py: Cluster; `pg_ctl stop -m fast`, then start again).

- Freeze: the database stops while the app's health endpoint stays healthy and a critical `postgres` check fails
  with it. The watcher reports "frozen" (the state file of --status, the metrics), holds the check's failures out of
  the evidence and rolls nothing back. When the server is back: frozen false, a `watcher_db_freeze` event with the
  duration and reason, leadership (the lease) is back.
- Standby, then promotion: pointed at a standby the watcher stays frozen ("standby": the ledger cannot be written
  there), and when that standby is promoted it thaws, leads and records the freeze.
- Resume: a marker claimed (its hook running) when the database stops is resumed by the same watcher when it is
  back, and executed once: one revert of the migration, one rollback deployment, the marker done; executing it
  again (a stale resume) changes nothing.
"""
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

import psycopg2

from conftest import PG_BIN, free_port, stats, table_for, wait_until
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


class Standby:
    """A streaming standby of `cluster` (pg_basebackup -R) on a socket and port of its own; removed by close()."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.dir = tempfile.mkdtemp(prefix="pgdeploy-standby-")
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "sock")
        os.makedirs(self.sock)
        self.log = os.path.join(self.dir, "server.log")
        if cluster.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.sock, "postgres", "postgres")
            os.chmod(self.dir, 0o755)
        self.port = free_port()
        self._pg(["pg_basebackup", "-D", self.data, "-h", cluster.sock, "-p", str(cluster.port), "-U", cluster.user,
                  "-R", "-X", "stream", "--no-sync"], timeout=120)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"\nport = {self.port}\nunix_socket_directories = '{self.sock}'\n")
        self._pg(["pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start"], timeout=90)

    def _pg(self, args, timeout=60, check=True):
        cmd = [os.path.join(PG_BIN, args[0]), *args[1:]]
        if self.cluster.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)

    def dsn(self, dbname):
        return f"host={self.sock} port={self.port} user={self.cluster.user} dbname={dbname}"

    def promote(self):
        self._pg(["pg_ctl", "-D", self.data, "-w", "promote"], timeout=90)

    def close(self):
        try:
            self._pg(["pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"], timeout=90, check=False)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def test_standby_keeps_the_watcher_frozen_until_it_is_promoted(cluster, health, tmp_path):
    db = cluster.new_database("standby")
    standby = None
    try:
        _release(db, "v1", ["0001"])
        d2 = _release(db, "v2", ["0002"])
        standby = Standby(cluster)
        hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
        cfg = watch_config(db, health, hook, tmp_path / "state.json", watcher_id="rel-standby")
        cfg["database"]["dsn"] = standby.dsn("standby")
        w = Watcher(tmp_path, cfg)
        try:
            st = w.wait_state(lambda s: s.get("frozen") is True and s["freeze"]["reason"] == "standby", timeout=20,
                              what="the watcher to freeze on a standby")
            assert st["connected"] is False and st["leader"] is False
            assert "standby" in st["freeze"]["detail"]
            time.sleep(1.0)
            assert w.state()["frozen"] is True
            cluster.stop("fast")     # the old primary goes away for good
            standby.promote()
            st = w.wait_state(lambda s: s.get("frozen") is False and s.get("leader") is True, timeout=30,
                              what="the watcher to thaw on the promoted standby")
            promoted = psycopg2.connect(standby.dsn("standby"))
            promoted.autocommit = True
            try:
                with promoted.cursor() as cur:
                    cur.execute("SELECT kind, details FROM deploy.events WHERE kind = 'watcher_db_freeze'")
                    rows = cur.fetchall()
                    assert len(rows) == 1 and rows[0][1]["reason"] == "standby", rows
                    cur.execute("SELECT holder FROM deploy.leases WHERE name = 'watcher_leader'")
                    assert cur.fetchall() == [("rel-standby",)]
                    cur.execute("SELECT state FROM deploy.deployments WHERE id = %s", (d2,))
                    assert cur.fetchall() == [("succeeded",)]
            finally:
                promoted.close()
            assert hook_entries(hook_log) == []
            assert w.stop() == 0
        finally:
            w.close()
    finally:
        if standby is not None:
            standby.close()
        if not cluster.running():
            cluster.start()
        db.reset()
        db.close()
