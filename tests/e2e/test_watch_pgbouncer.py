"""The watcher through PgBouncer in transaction mode (pool_mode = transaction): every transaction may run on another
server connection, so nothing the watcher relies on may live in a session. Two watchers share a small pool: one
leads (the lease row), a marker requested by SQL is executed once by polling (no LISTEN), and kill -9 of the leader
hands leadership to the other once the lease expires. Skipped when pgbouncer is not installed.
"""
import os
import shutil
import subprocess
import tempfile
import time

import psycopg2
import pytest

from conftest import free_port
from watch_helpers import (Watcher, deploy, events, hook_entries, wait_for, watch_config, write_hook,  # noqa: F401
                           health, watchers)  # health, watchers: fixtures

PGBOUNCER = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)

V1 = [("0001", "CREATE TABLE public.app_users (id int PRIMARY KEY)", "DROP TABLE public.app_users")]
V2 = [("0002", "ALTER TABLE public.app_users ADD COLUMN email text", "ALTER TABLE public.app_users DROP COLUMN email")]


@pytest.fixture
def bouncer(pg):
    """PgBouncer on 127.0.0.1 in front of the test database, transaction pooling, two server connections."""
    if PGBOUNCER is None:
        pytest.skip("pgbouncer is not installed")
    as_postgres = os.geteuid() == 0   # pgbouncer refuses to run as root
    d = tempfile.mkdtemp(prefix="pgdeploy-bouncer-")
    port = free_port()
    server = " ".join(f"{k}={v}" for k, v in (("host", os.environ.get("PGHOST")), ("port", os.environ.get("PGPORT")),
                                              ("user", os.environ.get("PGUSER")),
                                              ("password", os.environ.get("PGPASSWORD"))) if v)
    user = os.environ.get("PGUSER", "postgres")
    with open(os.path.join(d, "userlist.txt"), "w") as f:
        f.write(f'"{user}" ""\n')
    ini = os.path.join(d, "pgbouncer.ini")
    with open(ini, "w") as f:
        f.write(f"[databases]\n{pg.name} = {server} dbname={pg.name}\n\n[pgbouncer]\n"
                f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\n"
                f"auth_file = {d}/userlist.txt\npool_mode = transaction\ndefault_pool_size = 2\n"
                f"max_client_conn = 50\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n"
                "server_reset_query =\nignore_startup_parameters = extra_float_digits,options\n")
    cmd = [PGBOUNCER, ini]
    if as_postgres:
        shutil.chown(d, "postgres", "postgres")
        for name in os.listdir(d):
            shutil.chown(os.path.join(d, name), "postgres", "postgres")
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dsn = f"host=127.0.0.1 port={port} dbname={pg.name} user={user}"
    try:
        def up():
            try:
                psycopg2.connect(dsn, connect_timeout=1).close()
                return True
            except psycopg2.Error:
                return proc.poll() is not None   # exited: reported below
        wait_for(up, timeout=10, what="pgbouncer to accept connections")
        if proc.poll() is not None:
            pytest.fail("pgbouncer did not start: " + proc.stderr.read().decode(errors="replace"))
        yield dsn
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def live_holder(pg):
    rows = pg.sql("SELECT holder FROM deploy.leases WHERE name = 'watcher_leader' AND expires_at > now()")
    return rows[0][0] if rows else None


def test_watchers_through_transaction_pooling(pg, health, tmp_path, watchers, bouncer):
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", V2)
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file)

    def cfg(wid):
        c = watch_config(pg, health, hook, tmp_path / f"{wid}.json", watcher_id=wid)
        c["database"]["dsn"] = bouncer
        c["database"]["poll_interval"] = "300ms"
        c["leader"] = {"ttl": "2s"}
        return c

    a = Watcher(tmp_path, cfg("pool-a"), name="a")
    watchers.append(a)
    a.wait_ready(leader=True)
    b = Watcher(tmp_path, cfg("pool-b"), name="b")
    watchers.append(b)
    b.wait_ready(leader=False)
    time.sleep(1.0)   # several polls of both, on whatever server connection the pool hands out
    assert a.state()["leader"] is True and b.state()["leader"] is False
    assert live_holder(pg) == "pool-a"

    marker = pg.scalar("SELECT deploy.request_rollback('requested through the pool', %s, '{}'::jsonb)", (d2,))
    wait_for(lambda: pg.scalar("SELECT state FROM deploy.rollback_markers WHERE id = %s", (marker,)) == "done",
             timeout=15, what="the marker to be executed through the pool")
    assert pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "rolled_back"
    assert pg.sql("SELECT holder FROM deploy.rollback_markers") == [("pool-a",)]
    assert len(events(pg, "migration_reverted")) == 1
    assert [e["phase"] for e in hook_entries(hook_log)] == ["start", "done"]
    port = dict(kv.split("=", 1) for kv in bouncer.split())["port"]
    assert f"connected to {os.environ.get('PGUSER', 'postgres')}@127.0.0.1:{port}/" in a.log_text()   # the pool

    a.kill()
    b.wait_state(lambda s: s["leader"] is True, timeout=10, what="pool-b to take over after the lease")
    assert live_holder(pg) == "pool-b"
    assert b.stop() == 0
    assert live_holder(pg) is None

