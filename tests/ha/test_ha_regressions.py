"""Regression tests for the two failures reported from a Patroni + PgBouncer production setup (the PgBouncer one,
a non-transactional migration under load through transaction mode, is in test_ha_pgbouncer.py), and for a
deploy pointed at a replica.

- While a failover is in progress there is no writable server: every pgdeploy command used to fail at once with
  exit 3. Commands wait for a writable primary up to --wait-primary (default 60 s), saying so, and then succeed.
- Pointed at a replica, `pgdeploy up --dir` used to report each file as refused (SQLSTATE 25006) and exit 2. It must
  fail with exit 9 and say the server is a read-only standby (with --wait-primary 0, at once); `pgdeploy status`
  works on a replica and says it is a standby.
"""
import re
import time

from conftest import (TRIALS, check_ledger, finish, run_pgdeploy, start_pgdeploy, tx_migrations,
                      write_dir)

WAITING = re.compile(r"waiting for a writable primary", re.I)
# status needs no primary: it waits for a server (here one that target_session_attrs=read-write accepts)
WAITING_READ = re.compile(r"waiting for (a writable primary|the database server)", re.I)


def test_commands_wait_for_a_writable_primary_during_a_failover(ha, hadb, tmp_path, timings):
    versions = ["0001", "0002"]
    for trial in range(TRIALS):
        d = write_dir(tmp_path, tx_migrations(versions), name=f"m{trial}")
        if trial:
            # next trial: revert to an empty schema so `up` has work to do again
            assert run_pgdeploy("down", "--steps", "2", "--dsn", hadb.dsn)[0] == 0
        ha.wait_ready(1)
        old, t0 = ha.hard_failover()
        status = start_pgdeploy("status", "--dsn", hadb.dsn)
        up = start_pgdeploy("up", "--dir", d, "--app-version", f"r{trial}", "--dsn", hadb.dsn)
        src, sout, serr = finish(status, timeout=90)
        s_elapsed = time.monotonic() - t0
        urc, uout, uerr = finish(up, timeout=90)
        u_elapsed = time.monotonic() - t0
        new = ha.leader()
        timings("failover in progress: status waits for the new primary", seconds=s_elapsed, exit=src, trial=trial)
        timings("failover in progress: up waits for the new primary", seconds=u_elapsed, exit=urc, trial=trial)
        assert src == 0, f"status during a failover: exit {src} after {s_elapsed:.1f} s\n{sout[-1500:]}\n{serr[-2000:]}"
        assert WAITING_READ.search(sout + serr), f"status did not say it waits for a server:\n{sout}\n{serr}"
        assert urc == 0, f"up during a failover: exit {urc} after {u_elapsed:.1f} s\n{uout[-1500:]}\n{uerr[-2000:]}"
        assert WAITING.search(uout + uerr), f"up did not say it waits for a writable primary:\n{uout}\n{uerr}"
        assert new is not None and new is not old
        ups = trial + 1
        check_ledger(hadb, {v: (ups, trial) for v in versions}, versions, context=f"trial {trial}")


def test_up_on_a_replica_is_refused_as_a_standby(ha, hadb, tmp_path):
    ha.wait_ready(1)
    d = write_dir(tmp_path, tx_migrations(["0001", "0002"]))
    ha.wait_replicated()
    replica = next(n for n in ha.replicas() if n.postmaster_pid() is not None)
    t0 = time.monotonic()
    rc, out, err = run_pgdeploy("up", "--dir", d, "--wait-primary", "0", "--dsn", hadb.on_node(replica))
    elapsed = time.monotonic() - t0
    text = out + err
    assert rc == 9, f"exit {rc} (expected 9: a read-only standby)\n{out[-1500:]}\n{err[-2000:]}"
    assert "25006" not in text and "refused" not in text.lower(), text
    assert "standby" in text.lower() and "read-only" in text.lower(), text
    assert elapsed < 10, elapsed
    # nothing happened anywhere
    assert hadb.scalar("SELECT count(*) FROM deploy.migrations") == 0


def test_status_on_a_replica_says_it_is_a_standby(ha, hadb, tmp_path):
    d = write_dir(tmp_path, tx_migrations(["0001"]))
    assert run_pgdeploy("up", "--dir", d, "--dsn", hadb.dsn)[0] == 0
    ha.wait_replicated()
    replica = next(n for n in ha.replicas() if n.postmaster_pid() is not None)
    rc, out, err = run_pgdeploy("status", "--dsn", hadb.on_node(replica))
    assert rc == 0, f"exit {rc}\n{out}\n{err}"
    assert "standby" in (out + err).lower(), out + err
    assert "0001" in out
