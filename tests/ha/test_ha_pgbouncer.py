"""PgBouncer in transaction mode, under pgbench load (-c 8 through the same PgBouncer, running throughout): `pgdeploy
up` of transactional migrations, of a non-transactional one (CREATE INDEX CONCURRENTLY), `pgdeploy rollback` of a
release with a top-level down script, and a watcher's rollback (`pgdeploy once`, and the `pgdeploy watch` daemon).
Each must exit 0, apply or revert exactly once, and leave no deploy lease or advisory lock behind: a second
`pgdeploy up` right after works.

Transaction mode hands each transaction to any server connection, so nothing pg_deploy relies on may live in a
server session (no session advisory lock, no session SET). The non-transactional cases are also the regression test
for the reported failure: through PgBouncer in transaction mode, a non-transactional migration under load failed
with exit 4 ("you don't own a lock") and left the deploy lock behind."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import (CHEAP_TRIALS, check_ledger, cic_migration, fresh_db, leftover_locks, run_pgdeploy,
                      tx_migrations, write_dir)
from watch_helpers import HealthServer, Watcher, hook_entries, watch_config, write_hook


class Load:
    """pgbench -c 8 through PgBouncer (transaction mode) for as long as the test runs."""

    def __init__(self, ha, db, log_path):
        self.ha = ha
        env = dict(os.environ, PGPASSWORD=ha.password)
        for k in ("PGHOST", "PGPORT", "PGUSER", "PGSERVICE"):
            env.pop(k, None)
        self.env = env
        pgbench = os.path.join(ha.bin_dir, "pgbench")
        p = ha.primary()
        subprocess.run([pgbench, "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", str(p.pg_port), "-U", "postgres",
                        db.name], env=env, check=True, capture_output=True, timeout=120)
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([pgbench, "-n", "-c", "8", "-j", "2", "-T", "600", "-P", "5", "-h", "127.0.0.1",
                                      "-p", str(ha.bouncer_port), "-U", "postgres", db.name], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.log_path = log_path
        # the load is on: every client has a server connection and transactions commit
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            n = db.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'pgbench'",
                          (db.name,))
            if n >= 8:
                break
            time.sleep(0.1)
        time.sleep(0.5)

    def stop(self):
        alive = self.proc.poll() is None
        if alive:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        with open(self.log_path) as f:
            text = f.read()
        return alive, text


@pytest.fixture
def loaded(request, ha, tmp_path):
    """Per trial: (fresh database, Load) through PgBouncer; call it once per trial."""
    loads = []

    def make():
        db = fresh_db(request, ha)
        load = Load(ha, db, tmp_path / f"pgbench{len(loads)}.log")
        loads.append(load)
        return db, load

    yield make
    for load in loads:
        if load.proc.poll() is None:
            load.stop()


def assert_load_survived(load):
    alive, text = load.stop()
    assert alive, "pgbench ended during the deploy:\n" + text[-2000:]
    return text


def second_up_works(db, d):
    rc, out, err = run_pgdeploy("up", "--dir", d, "--dsn", db.bouncer_dsn)
    assert rc == 0, f"a second pgdeploy up right after failed: exit {rc}\n{out[-1500:]}\n{err[-2500:]}"
    locks, leases = leftover_locks(db)
    assert locks == 0 and leases == [], (locks, leases)


def test_up_transactional_through_pgbouncer_under_load(ha, loaded, tmp_path, timings):
    versions = ["0001", "0002", "0003"]
    for trial in range(CHEAP_TRIALS):
        db, load = loaded()
        d = write_dir(tmp_path, tx_migrations(versions), name=f"m{trial}")
        t0 = time.monotonic()
        rc, out, err = run_pgdeploy("up", "--dir", d, "--app-version", "r1", "--dsn", db.bouncer_dsn)
        elapsed = time.monotonic() - t0
        assert rc == 0, f"exit {rc}\n{out[-1500:]}\n{err[-2500:]}"
        assert_load_survived(load)
        check_ledger(db, {v: (1, 0) for v in versions}, versions, context=f"trial {trial}")
        second_up_works(db, d)
        timings("pgbouncer (transaction mode) + pgbench: up, transactional", seconds=elapsed, trial=trial)


def test_up_nontransactional_through_pgbouncer_under_load(ha, loaded, tmp_path, timings):
    """Also the regression test for the reported failure (exit 4, the deploy lock left behind)."""
    files = {**tx_migrations(["0001"]), **cic_migration("0002", "public.pgbench_accounts", "abalance", "ha_abalance_idx"),
             **tx_migrations(["0003"])}
    for trial in range(CHEAP_TRIALS):
        db, load = loaded()
        d = write_dir(tmp_path, files, name=f"m{trial}")
        t0 = time.monotonic()
        rc, out, err = run_pgdeploy("up", "--dir", d, "--app-version", "r1", "--dsn", db.bouncer_dsn)
        elapsed = time.monotonic() - t0
        locks, leases = leftover_locks(db)
        assert rc == 0, f"exit {rc}; left behind: {locks} advisory deploy lock(s), leases {leases}\n{out[-1500:]}\n{err[-2500:]}"
        assert_load_survived(load)
        check_ledger(db, {"0001": (1, 0), "0003": (1, 0)}, ["0001", "0002", "0003"], index_names=["ha_abalance_idx"],
                     context=f"trial {trial}")
        second_up_works(db, d)
        timings("pgbouncer (transaction mode) + pgbench: up, CREATE INDEX CONCURRENTLY", seconds=elapsed, trial=trial)


def test_up_nontransactional_through_a_session_mode_pool(ha, loaded, tmp_path, timings):
    """The control case: PgBouncer's session-mode pool (one server connection per client for the session)."""
    files = {**tx_migrations(["0001"]), **cic_migration("0002", "public.pgbench_accounts", "abalance", "ha_abalance_idx")}
    db, load = loaded()
    d = write_dir(tmp_path, files)
    session_dsn = db.ha.bouncer_dsn(db.name, session=True)
    t0 = time.monotonic()
    rc, out, err = run_pgdeploy("up", "--dir", d, "--app-version", "r1", "--dsn", session_dsn)
    elapsed = time.monotonic() - t0
    assert rc == 0, f"exit {rc}\n{out[-1500:]}\n{err[-2500:]}"
    assert_load_survived(load)
    check_ledger(db, {"0001": (1, 0)}, ["0001", "0002"], index_names=["ha_abalance_idx"])
    rc, out, err = run_pgdeploy("up", "--dir", d, "--dsn", session_dsn)
    assert rc == 0, f"exit {rc}\n{out[-1500:]}\n{err[-2500:]}"
    timings("pgbouncer (session mode) + pgbench: up, CREATE INDEX CONCURRENTLY", seconds=elapsed)


RELEASE_FILES = {**tx_migrations(["0001"]), **tx_migrations(["0002"]),
                 **cic_migration("0003", "public.pgbench_accounts", "abalance", "ha_abalance_idx")}


def two_releases(db, tmp_path, trial):
    """r1 = 0001, r2 = 0002 + 0003 (a concurrent index, reverted at top level), applied through the multi-host DSN
    (not through PgBouncer: the rollback is what is under test)."""
    d1 = write_dir(tmp_path, tx_migrations(["0001"]), name=f"r1-{trial}")
    assert run_pgdeploy("up", "--dir", d1, "--app-version", "r1", "--dsn", db.dsn)[0] == 0
    d2 = write_dir(tmp_path, RELEASE_FILES, name=f"r2-{trial}")
    rc, out, err = run_pgdeploy("up", "--dir", d2, "--app-version", "r2", "--dsn", db.dsn)
    assert rc == 0, (out, err)
    return d1, d2, db.scalar("SELECT max(id) FROM deploy.deployments WHERE kind = 'up'")


def test_rollback_through_pgbouncer_under_load(ha, loaded, tmp_path, timings):
    for trial in range(CHEAP_TRIALS):
        db, load = loaded()
        d1, d2, dep = two_releases(db, tmp_path, trial)
        t0 = time.monotonic()
        rc, out, err = run_pgdeploy("rollback", "--reason", "ha test", "--dsn", db.bouncer_dsn)
        elapsed = time.monotonic() - t0
        locks, leases = leftover_locks(db)
        assert rc == 0, f"exit {rc}; left behind: {locks} advisory deploy lock(s), leases {leases}\n{out[-1500:]}\n{err[-2500:]}"
        assert_load_survived(load)
        check_ledger(db, {"0001": (1, 0), "0002": (1, 1)}, ["0001"], context=f"trial {trial}")
        assert db.scalar("SELECT count(*) FROM pg_class WHERE relname = 'ha_abalance_idx'") == 0
        assert db.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (dep,)) == "rolled_back"
        second_up_works(db, d2)
        timings("pgbouncer (transaction mode) + pgbench: rollback with a top-level down script", seconds=elapsed,
                trial=trial)


class _Dsn:
    def __init__(self, dsn):
        self.dsn = dsn


def test_watcher_rollback_once_through_pgbouncer_under_load(ha, loaded, tmp_path, timings):
    for trial in range(CHEAP_TRIALS):
        db, load = loaded()
        t = tmp_path / f"t{trial}"
        t.mkdir()
        d1, d2, dep = two_releases(db, t, trial)
        health = HealthServer(t / "bad")
        try:
            health.make_unhealthy()
            hook, hook_log, _ = write_hook(t, health.bad_file)
            cfg_path = t / "once.json"
            cfg_path.write_text(json.dumps(watch_config(_Dsn(db.bouncer_dsn), health, hook, t / "state.json")))
            db.scalar("SELECT deploy.request_rollback('ha: r2 unhealthy', %s)", (dep,))
            t0 = time.monotonic()
            rc, out, err = run_pgdeploy("once", "--config", cfg_path, "--json")
            elapsed = time.monotonic() - t0
        finally:
            health.close()
        locks, leases = leftover_locks(db)
        assert rc == 0, f"exit {rc}; left behind: {locks} advisory deploy lock(s), leases {leases}\n{out[-1500:]}\n{err[-2500:]}"
        assert_load_survived(load)
        check_ledger(db, {"0001": (1, 0), "0002": (1, 1)}, ["0001"], context=f"trial {trial}")
        assert db.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (dep,)) == "rolled_back"
        assert [e["phase"] for e in hook_entries(hook_log)] == ["start", "done"]
        second_up_works(db, d2)
        timings("pgbouncer (transaction mode) + pgbench: watcher rollback (pgdeploy once)", seconds=elapsed,
                trial=trial)


def test_watcher_daemon_rollback_through_pgbouncer_under_load(ha, loaded, tmp_path, timings):
    for trial in range(CHEAP_TRIALS):
        db, load = loaded()
        t = tmp_path / f"t{trial}"
        t.mkdir()
        d1, d2, dep = two_releases(db, t, trial)
        health = HealthServer(t / "bad")
        w = None
        try:
            hook, hook_log, _ = write_hook(t, health.bad_file)
            cfg = watch_config(_Dsn(db.bouncer_dsn), health, hook, t / "state.json", watcher_id="ha-daemon")
            w = Watcher(t, cfg)
            w.wait_ready(leader=True, timeout=30)
            t0 = time.monotonic()
            health.make_unhealthy()
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                if db.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (dep,)) == "rolled_back":
                    break
                assert w.proc.poll() is None, "watcher exited:\n" + w.log_text()[-3000:]
                time.sleep(0.1)
            elapsed = time.monotonic() - t0
            state = db.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (dep,))
            assert state == "rolled_back", "no rollback within 40 s; the watcher's log:\n" + w.log_text()[-4000:]
            # let it see health recover, then stop it: the leadership must not outlive it either
            time.sleep(1.0)
            assert w.stop() == 0, w.log_text()[-3000:]
        finally:
            if w is not None:
                w.close()
            health.close()
        assert_load_survived(load)
        check_ledger(db, {"0001": (1, 0), "0002": (1, 1)}, ["0001"], context=f"trial {trial}")
        assert db.scalar("SELECT count(*) FROM deploy.events WHERE kind = 'migration_reverted' AND version = '0002'") \
            == 1
        second_up_works(db, d2)
        timings("pgbouncer (transaction mode) + pgbench: watcher daemon, unhealthy to rolled back", seconds=elapsed,
                trial=trial)
