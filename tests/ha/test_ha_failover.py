"""A switchover (`patronictl switchover`) or a hard failover (SIGKILL of the primary's postmaster, its backends and
its Patroni) in the middle of: a transactional deploy (`pgdeploy up --dir`), a non-transactional step (CREATE INDEX
CONCURRENTLY waiting for a lock), and a watcher's rollback (`pgdeploy once` executing a rollback marker whose down
script is running). Then the command is run again, as a user would (until it exits 0), through the multi-host DSN,
and the side table and the ledger are checked: each migration applied exactly once, nothing running, an interrupted
concurrent build cleaned up and finished, the rollback executed once. The interrupted command itself may fail
(it lost its server) or, once it waits for a writable primary, finish by itself; both are recorded."""
import json
import time

import psycopg2
import pytest

from conftest import (TRIALS, assert_nothing_half_applied, check_ledger, cic_migration, finish, fresh_db, run_pgdeploy, start_pgdeploy, tx_migrations,
                      until_ok, write_dir)
from watch_helpers import HealthServer, Watcher, hook_entries, watch_config, write_hook

KINDS = ("switchover", "hard_failover")


def lose_primary(ha, kind):
    return ha.switchover() if kind == "switchover" else ha.hard_failover()


def wait_activity(db, where, proc, timeout=30, what="pgdeploy to be busy"):
    """Waits until a pgdeploy backend on the primary matches `where` (SQL on pg_stat_activity)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"pgdeploy ended ({proc.returncode}) before {what}:\n{out}\n{err}")
        n = db.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                      f"AND application_name LIKE 'pgdeploy%%' AND ({where})", (db.name,))
        if n:
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("kind", KINDS)
def test_transactional_deploy_interrupted(ha, tmp_path, request, kind, rng, timings):
    versions = ["0001", "0002", "0003", "0004"]
    for trial in range(TRIALS):
        db = fresh_db(request, ha)
        d = write_dir(tmp_path, tx_migrations(versions, sleep=1.0), name=f"m{trial}")
        proc = start_pgdeploy("up", "--dir", d, "--app-version", "r1", "--dsn", db.dsn)
        wait_activity(db, "wait_event = 'PgSleep'", proc, what="a migration to run")
        time.sleep(rng.uniform(0.0, 1.5))
        old, t0 = lose_primary(ha, kind)
        rc1, out1, err1 = finish(proc)
        # `up` states its target: it waits for the new primary and resumes by itself.
        assert rc1 == 0 and "reconnecting to resume pgdeploy up" in err1, (rc1, out1, err1[-3000:])
        applied_after_loss = assert_nothing_half_applied(db, versions, context=f"{kind} trial {trial}, after the loss")
        codes, (rc, out, err) = until_ok("up", "--dir", d, "--app-version", "r1", "--dsn", db.dsn, timeout=120)
        elapsed = time.monotonic() - t0
        assert rc == 0, (codes, out, err, ha.describe())
        check_ledger(db, {v: (1, 0) for v in versions}, versions, context=f"{kind} trial {trial}")
        timings(f"transactional deploy, {kind}: deploy finished", seconds=elapsed, first_exit=rc1,
                retries=codes, applied_after_loss=applied_after_loss, trial=trial)


@pytest.mark.parametrize("kind", KINDS)
def test_nontransactional_step_interrupted(ha, tmp_path, request, kind, timings):
    files = {
        "0001_items.up.sql": "CREATE TABLE public.items (id int PRIMARY KEY, sku text);\n"
                             "INSERT INTO public.items SELECT g, 'sku-' || g FROM generate_series(1, 20000) g;\n"
                             "INSERT INTO public.ha_side(version, n) VALUES ('0001', 1);\n",
        "0001_items.down.sql": "DROP TABLE public.items;\nINSERT INTO public.ha_side(version, n) VALUES ('0001', -1);\n",
        **cic_migration("0002", "public.items", "sku", "items_sku_idx"),
        **tx_migrations(["0003"]),
    }
    for trial in range(TRIALS):
        db = fresh_db(request, ha)
        d = write_dir(tmp_path, files, name=f"m{trial}")
        rc, out, err = run_pgdeploy("up", "--dir", d, "--target", "0001", "--dsn", db.dsn)
        assert rc == 0, (out, err)
        blocker = psycopg2.connect(db.dsn)
        # An open writer: CREATE INDEX CONCURRENTLY commits its (INVALID) index, then waits for this transaction.
        blocker.cursor().execute("UPDATE public.items SET sku = sku WHERE id = 1")
        try:
            proc = start_pgdeploy("up", "--dir", d, "--app-version", "r1", "--dsn", db.dsn)
            wait_activity(db, "query ILIKE '%%CREATE INDEX CONCURRENTLY%%' AND wait_event_type = 'Lock'", proc,
                          what="the concurrent build to wait")
            invalid_before = db.scalar("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
            assert invalid_before == 1   # the interrupted build leaves an INVALID index behind
            old, t0 = lose_primary(ha, kind)
            rc1, out1, err1 = finish(proc)
        finally:
            try:
                blocker.close()
            except psycopg2.Error:
                pass
        assert_nothing_half_applied(db, ["0001", "0003"], context=f"{kind} trial {trial}, after the loss")
        codes, (rc, out, err) = until_ok("up", "--dir", d, "--app-version", "r1", "--dsn", db.dsn, timeout=120)
        elapsed = time.monotonic() - t0
        assert rc == 0, (codes, out, err, ha.describe())
        check_ledger(db, {"0001": (1, 0), "0003": (1, 0)}, ["0001", "0002", "0003"], index_names=["items_sku_idx"],
                     context=f"{kind} trial {trial}")
        assert db.scalar("SELECT count(*) FROM deploy.events WHERE kind = 'migration_applied' AND version = '0002'") \
            == 1
        timings(f"non-transactional step (CIC), {kind}: deploy finished", seconds=elapsed, first_exit=rc1,
                retries=codes, invalid_index_before_loss=invalid_before,
                cleanup_ran="DROP INDEX CONCURRENTLY IF EXISTS" in err + err1, trial=trial)


class _Dsn:
    def __init__(self, dsn):
        self.dsn = dsn


def two_releases(request, ha, tmp_path, trial):
    """A fresh database with release r1 (0001) and r2 (0002, whose down script sleeps 3 s) deployed; the trial's
    own directory."""
    db = fresh_db(request, ha)
    t = tmp_path / f"t{trial}"
    t.mkdir()
    d1 = write_dir(t, tx_migrations(["0001"]), name="r1")
    assert run_pgdeploy("up", "--dir", d1, "--app-version", "r1", "--dsn", db.dsn)[0] == 0
    d2 = write_dir(t, {**tx_migrations(["0001"]), **tx_migrations(["0002"], down_sleep=3.0)}, name="r2")
    rc, out, err = run_pgdeploy("up", "--dir", d2, "--app-version", "r2", "--dsn", db.dsn)
    assert rc == 0, (out, err)
    return db, t


@pytest.mark.parametrize("kind", KINDS)
def test_watcher_rollback_interrupted(ha, tmp_path, request, kind, timings):
    for trial in range(TRIALS):
        db, t = two_releases(request, ha, tmp_path, trial)
        dep = db.scalar("SELECT max(id) FROM deploy.deployments WHERE kind = 'up'")
        health = HealthServer(t / "bad")
        try:
            health.make_unhealthy()
            hook, hook_log, _ = write_hook(t, health.bad_file)
            cfg = watch_config(_Dsn(db.dsn), health, hook, t / "state.json", watcher_id="ha-w1")
            cfg_path = t / "once.json"
            cfg_path.write_text(json.dumps(cfg))
            db.scalar("SELECT deploy.request_rollback('ha: release r2 is unhealthy', %s)", (dep,))
            proc = start_pgdeploy("once", "--config", cfg_path, "--json")
            wait_activity(db, "wait_event = 'PgSleep'", proc, what="the down script to run")
            old, t0 = lose_primary(ha, kind)
            rc1, out1, err1 = finish(proc)
            # once resumes the marker it holds on the new primary by itself.
            assert rc1 == 0, (rc1, out1, err1[-3000:])
            assert_nothing_half_applied(db, ["0001", "0002"], context=f"{kind} trial {trial}, after the loss")
            codes, (rc, out, err) = until_ok("once", "--config", cfg_path, "--json", timeout=120)
            elapsed = time.monotonic() - t0
            assert rc == 0, (codes, out, err, ha.describe())
        finally:
            health.close()
        check_ledger(db, {"0001": (1, 0), "0002": (1, 1)}, ["0001"], context=f"{kind} trial {trial}")
        assert db.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (dep,)) == "rolled_back"
        assert db.sql("SELECT state FROM deploy.rollback_markers") == [("done",)]
        assert db.scalar("SELECT count(*) FROM deploy.events WHERE kind = 'migration_reverted' AND version = '0002'") \
            == 1
        assert db.scalar("SELECT count(*) FROM deploy.deployments WHERE kind = 'rollback'") == 1
        entries = hook_entries(hook_log)
        assert entries and entries[-1]["phase"] == "done", entries
        timings(f"watcher rollback (pgdeploy once), {kind}: rollback finished", seconds=elapsed, first_exit=rc1,
                retries=codes, hook_runs=len([e for e in entries if e["phase"] == "start"]), trial=trial)


@pytest.mark.parametrize("kind", KINDS)
def test_watcher_daemon_rollback_interrupted(ha, tmp_path, request, kind, timings):
    """The `pgdeploy watch` daemon (multi-host DSN) decides to roll back; the primary is lost while the down script
    runs. The daemon reconnects to the new primary and finishes the rollback exactly once."""
    for trial in range(TRIALS):
        db, t = two_releases(request, ha, tmp_path, trial)
        dep = db.scalar("SELECT max(id) FROM deploy.deployments WHERE kind = 'up'")
        health = HealthServer(t / "bad")
        w = None
        try:
            hook, hook_log, _ = write_hook(t, health.bad_file)
            cfg = watch_config(_Dsn(db.dsn), health, hook, t / "state.json", watcher_id="ha-daemon")
            w = Watcher(t, cfg)
            w.wait_ready(leader=True, timeout=30)
            health.make_unhealthy()
            wait_activity(db, "wait_event = 'PgSleep'", w.proc, what="the watcher's down script to run")
            old, t0 = lose_primary(ha, kind)
            disconnected_seen = None
            reconnected_at = None
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                st = w.state() or {}
                if st.get("connected") is False and disconnected_seen is None:
                    disconnected_seen = time.monotonic()
                if disconnected_seen is not None and st.get("connected") and reconnected_at is None:
                    reconnected_at = time.monotonic()
                try:
                    if db.ha.sql(db.dsn, "SELECT state FROM deploy.deployments WHERE id = %s",
                                 (dep,))[0][0] == "rolled_back":
                        break
                except psycopg2.Error:
                    pass
                assert w.proc.poll() is None, "the watcher exited:\n" + w.log_text()[-4000:]
                time.sleep(0.1)
            elapsed = time.monotonic() - t0
            state = db.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (dep,))
            assert state == "rolled_back", f"not rolled back {elapsed:.0f} s after the {kind}:\n" + \
                w.log_text()[-4000:]
            assert w.stop() == 0, w.log_text()[-3000:]
        finally:
            if w is not None:
                w.close()
            health.close()
        check_ledger(db, {"0001": (1, 0), "0002": (1, 1)}, ["0001"], context=f"{kind} trial {trial}")
        assert db.scalar("SELECT count(*) FROM deploy.events WHERE kind = 'migration_reverted' AND version = '0002'") \
            == 1
        assert db.scalar("SELECT count(*) FROM deploy.deployments WHERE kind = 'rollback'") == 1
        timings(f"watcher daemon rollback, {kind}: rolled back on the new primary", seconds=elapsed,
                disconnected_for=(round(reconnected_at - disconnected_seen, 2)
                                  if disconnected_seen and reconnected_at else None), trial=trial)
