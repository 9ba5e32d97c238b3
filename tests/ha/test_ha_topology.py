"""What already works on a Patroni cluster and must stay so: a multi-host DSN with target_session_attrs=read-write
finds the new primary after a switchover and after a hard failover, and a deploy's ledger is complete on every
replica."""
import time

from conftest import TRIALS, check_ledger, run_pgdeploy, tx_migrations, until_ok, write_dir

LEDGER = {
    "applied": "SELECT version, checksum, deployment_id FROM deploy.applied ORDER BY version",
    "deployments": "SELECT id, kind, state, version_before, version_after FROM deploy.deployments ORDER BY id",
    "migrations": "SELECT version, checksum FROM deploy.migrations ORDER BY version",
    "events": "SELECT id, kind, version FROM deploy.events ORDER BY id",
    "side": "SELECT version, n FROM public.ha_side ORDER BY version, n",
}


def server_port(db):
    return db.scalar("SELECT inet_server_port()")


def test_multi_host_dsn_finds_the_new_primary(ha, hadb, timings):
    for trial in range(TRIALS):
        for kind in ("switchover", "hard_failover"):
            ha.wait_ready(1)
            old, t0 = ha.switchover() if kind == "switchover" else ha.hard_failover()
            codes, (rc, out, err) = until_ok("status", "--dsn", hadb.dsn, timeout=90)
            elapsed = time.monotonic() - t0
            assert rc == 0, (codes, out, err, ha.describe())
            new = ha.leader()
            assert new is not None and new is not old
            assert server_port(hadb) == new.pg_port
            timings(f"multi-host DSN: status reaches the new primary after {kind}", seconds=elapsed,
                    attempts=len(codes), codes=codes, trial=trial)


def test_ledger_is_complete_on_every_replica(ha, hadb, tmp_path):
    ha.wait_ready(2)
    d = write_dir(tmp_path, tx_migrations(["0001", "0002", "0003"]))
    rc, out, err = run_pgdeploy("up", "--dir", d, "--app-version", "r1", "--dsn", hadb.dsn)
    assert rc == 0, (out, err)
    check_ledger(hadb, {"0001": (1, 0), "0002": (1, 0), "0003": (1, 0)}, ["0001", "0002", "0003"])
    ha.wait_replicated()
    primary = ha.leader()
    want = {k: hadb.sql(q, dsn=hadb.on_node(primary)) for k, q in LEDGER.items()}
    assert len(want["applied"]) == 3 and want["deployments"][-1][2] == "succeeded"
    for n in ha.nodes:
        if n is primary:
            continue
        got = {k: hadb.sql(q, dsn=hadb.on_node(n)) for k, q in LEDGER.items()}
        assert got == want, f"{n.name} differs from the primary {primary.name}"
        # and pgdeploy can read it there
        rc, out, err = run_pgdeploy("status", "--json", "--dsn", hadb.on_node(n))
        assert rc == 0, (out, err)
