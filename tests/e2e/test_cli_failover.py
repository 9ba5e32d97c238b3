"""pgdeploy during a failover, against a real primary and a real hot standby (made here, removed at the end).

Each test builds its own pair: a throwaway primary (initdb, with the PostgreSQL the test server runs, so pg_deploy is
installed in it already) with password authentication over TCP, `CREATE EXTENSION pg_deploy` and one applied
migration, then a standby from `pg_basebackup -R`. Tests promote the standby (`pg_ctl promote`) or stop the primary
to play a failover, and check what pgdeploy does meanwhile: read-only commands work on the standby and say so, a
write command waits for a writable primary within --wait-primary (and fails with exit 9 on a standby, exit 3 when
nothing comes back), a bad password is not waited on, and a write whose connection breaks is not redone.
"""
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

import psycopg2
import pytest

from conftest import admin_connect, free_port, run_pgdeploy, wait_for

PASSWORD = "fail0ver-pw"

FIRST = {
    "0001_a.up.sql": "CREATE TABLE a (id int PRIMARY KEY);\n",
    "0001_a.down.sql": "DROP TABLE a;\n",
    # Slow only for the session that test_a_read_only_command_whose_connection_breaks_runs_again cuts.
    "0001_a.verify.sql": "SELECT pg_sleep(CASE WHEN current_setting('application_name') = 'failover-verify' "
                         "THEN 2 ELSE 0 END);\nSELECT id FROM a WHERE false;\n",
}
BOTH = dict(FIRST, **{
    "0002_b.up.sql": "CREATE TABLE b (id int PRIMARY KEY);\n",
    "0002_b.down.sql": "DROP TABLE b;\n",
})


def server_bindir():
    """The bindir of the PostgreSQL that pg_deploy is installed in: $PG_CONFIG's, else the test server's own."""
    if os.environ.get("PG_CONFIG"):
        return subprocess.run([os.environ["PG_CONFIG"], "--bindir"], capture_output=True, text=True,
                              check=True).stdout.strip()
    conn = admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT setting FROM pg_catalog.pg_config WHERE name = 'BINDIR'")
            return cur.fetchone()[0]
    finally:
        conn.close()


def as_postgres(argv, **kw):
    """PostgreSQL's server programs refuse to run as root: under root they run as the postgres OS user."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--"] + argv
    return subprocess.run(argv, capture_output=True, text=True, **kw)


class Cluster:
    """One PostgreSQL data directory of the pair, on 127.0.0.1:port (socket in the pair's base directory)."""

    def __init__(self, pair, name, port):
        self.pair, self.name, self.port = pair, name, port
        self.data = os.path.join(pair.base, name)

    def ctl(self, *args, check=True):
        r = as_postgres([os.path.join(self.pair.bindir, "pg_ctl"), "-D", self.data, *args], timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"pg_ctl {' '.join(args)} ({self.name}): {r.stdout}{r.stderr}"
                                 f"{self.log_tail()}")
        return r

    def start(self):
        self.ctl("-l", os.path.join(self.pair.base, self.name + ".log"), "-w", "-t", "60", "start")

    def stop(self):
        self.ctl("-m", "fast", "-w", "stop", check=False)

    def promote(self):
        self.ctl("-w", "promote")

    def log_tail(self):
        try:
            with open(os.path.join(self.pair.base, self.name + ".log")) as f:
                return "\n" + f.read()[-2000:]
        except OSError:
            return ""

    def dsn(self, password=PASSWORD):
        return f"host=127.0.0.1 port={self.port} user=postgres password={password} dbname=postgres"

    def connect(self):
        conn = psycopg2.connect(self.dsn())
        conn.autocommit = True
        return conn

    def scalar(self, sql):
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchone()[0] if cur.description is not None else None
        finally:
            conn.close()


class Pair:
    """A primary and its hot standby, both on this machine."""

    def __init__(self):
        self.bindir = server_bindir()
        self.base = tempfile.mkdtemp(prefix="pgdeploy-failover-")
        os.chmod(self.base, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        self.primary = Cluster(self, "primary", free_port())
        self.standby = Cluster(self, "standby", free_port())

    def create(self, migrations_dir):
        pwfile = os.path.join(self.base, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        r = as_postgres([os.path.join(self.bindir, "initdb"), "-D", self.primary.data, "-U", "postgres",
                         "--auth-local=trust", "--auth-host=scram-sha-256", "--pwfile", pwfile, "-E", "UTF8",
                         "--no-sync"], timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        with open(os.path.join(self.primary.data, "postgresql.conf"), "a") as f:
            f.write(f"\nport = {self.primary.port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.base}'\nfsync = off\n")
        self.primary.start()
        self.primary.scalar("CREATE EXTENSION pg_deploy")
        rc, out, err = pgdeploy("up", "--dir", migrations_dir, "--dsn", self.primary.dsn())
        assert rc == 0, out + err
        r = as_postgres([os.path.join(self.bindir, "pg_basebackup"), "-D", self.standby.data, "-R", "-X", "stream",
                         "--no-sync", "-h", self.base, "-p", str(self.primary.port), "-U", "postgres"], timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        with open(os.path.join(self.standby.data, "postgresql.auto.conf"), "a") as f:
            f.write(f"\nport = {self.standby.port}\n")
        self.standby.start()
        assert self.standby.scalar("SELECT pg_is_in_recovery()") is True

    def remove(self):
        for c in (self.standby, self.primary):
            if os.path.isdir(c.data):
                c.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def pgdeploy(*args, env=None):
    """run_pgdeploy without the test server's PG* settings: every DSN here is complete."""
    base = {"PGDEPLOY_WAIT_PRIMARY": None, "PGCONNECT_TIMEOUT": None, "PGSERVICE": None,
            "PGTARGETSESSIONATTRS": None}
    base.update(env or {})
    return run_pgdeploy(*args, env=base, timeout=180)


def timed(*args, **kw):
    start = time.monotonic()
    rc, out, err = pgdeploy(*args, **kw)
    return rc, out, err, time.monotonic() - start


def later(seconds, fn):
    """Runs fn after `seconds` in a thread; join() it to see its exception."""
    box = {}

    def run():
        time.sleep(seconds)
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported by join()
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join():
        t.join(120)
        if "error" in box:
            raise box["error"]

    return join


@pytest.fixture
def pair(write_migrations):
    p = Pair()
    try:
        p.create(write_migrations(FIRST))
        yield p
    finally:
        p.remove()


def applied(cluster):
    conn = cluster.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM deploy.applied ORDER BY version")
            return [r[0] for r in cur.fetchall()]
    finally:
        conn.close()


# ---- read-only commands work on a standby -------------------------------------------------------------------------

def test_status_on_a_standby_says_standby(pair):
    rc, out, err = pgdeploy("status", "--dsn", pair.standby.dsn(), "--wait-primary", "0")
    assert rc == 0, err
    assert "server           read-only standby (in recovery)" in out
    assert "current version  0001" in out

    rc, out, err = pgdeploy("status", "--json", "--dsn", pair.standby.dsn())
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["server"]["in_recovery"] is True and doc["server"]["read_only"] is True
    assert doc["server"]["port"] == pair.standby.port and doc["current_version"] == "0001"

    rc, out, err = pgdeploy("status", "--json", "--dsn", pair.primary.dsn())
    assert rc == 0, err
    assert json.loads(out)["server"] == {"in_recovery": False, "read_only": False, "host": "127.0.0.1",
                                         "port": pair.primary.port}

    # The other inspection commands read only, too.
    for args in (["validate"], ["verify"], ["markers"], ["markers", "list", "--open"]):
        rc, out, err = pgdeploy(*args, "--dsn", pair.standby.dsn(), "--wait-primary", "0")
        assert rc == 0, (args, out, err)


# ---- a write command on a standby -----------------------------------------------------------------------------------

def test_up_on_a_standby_without_waiting_is_exit_9(pair, write_migrations):
    d = write_migrations(BOTH)
    rc, out, err, took = timed("up", "--dir", d, "--dsn", pair.standby.dsn(), "--wait-primary", "0")
    assert rc == 9, out + err
    assert "is a read-only standby" in err and "target_session_attrs=read-write" in err
    assert "25006" not in out + err and "refused" not in out + err
    assert took < 10

    rc, out, err = pgdeploy("up", "--json", "--dir", d, "--dsn", pair.standby.dsn(),
                            env={"PGDEPLOY_WAIT_PRIMARY": "0"})
    assert rc == 9, out + err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["exit_code"] == 9 and "read-only standby" in doc["error"]["message"]
    assert "25006" not in out + err

    # Other write commands stop the same way, before they send anything.
    for args in (["load", d], ["down", "--steps", "1"], ["rollback"], ["baseline", "--through", "0001"],
                 ["markers", "request", "--reason", "x"]):
        rc, out, err = pgdeploy(*args, "--dsn", pair.standby.dsn(), "--wait-primary", "0")
        assert rc == 9, (args, out, err)
    assert applied(pair.primary) == ["0001"]


def test_up_on_a_standby_waits_until_it_is_promoted(pair, write_migrations):
    d = write_migrations(BOTH)
    join = later(3, pair.standby.promote)
    rc, out, err, took = timed("up", "--dir", d, "--dsn", pair.standby.dsn(), "--wait-primary", "30s")
    join()
    assert rc == 0, out + err
    assert "waiting for a writable primary" in err and "is a read-only standby" in err
    assert "connected to a writable primary" in err
    assert 2 < took < 30
    assert applied(pair.standby) == ["0001", "0002"]


def test_multi_host_dsn_waits_for_the_promotion(pair, write_migrations):
    d = write_migrations(BOTH)
    pair.primary.stop()
    dsn = (f"host=127.0.0.1,127.0.0.1 port={pair.primary.port},{pair.standby.port} user=postgres "
           f"password={PASSWORD} dbname=postgres target_session_attrs=read-write")
    join = later(3, pair.standby.promote)
    rc, out, err, took = timed("up", "--dir", d, "--dsn", dsn, "--wait-primary", "30s")
    join()
    assert rc == 0, out + err
    assert "waiting for a writable primary" in err
    assert PASSWORD not in out + err
    assert 2 < took < 30
    assert applied(pair.standby) == ["0001", "0002"]


# ---- the deadline, and what is not waited on ------------------------------------------------------------------------

def test_nothing_comes_back_within_the_deadline(pair, write_migrations):
    d = write_migrations(BOTH)
    pair.primary.stop()
    rc, out, err, took = timed("up", "--dir", d, "--dsn", pair.primary.dsn(), "--wait-primary", "2s")
    assert rc == 3, out + err
    assert "within --wait-primary 2s" in err and "waiting for a writable primary" in err
    assert 1.5 < took < 10

    # Only a standby answers: exit 9 once the deadline passes.
    rc, out, err, took = timed("up", "--dir", d, "--dsn", pair.standby.dsn(), "--wait-primary", "2s")
    assert rc == 9, out + err
    assert "within --wait-primary 2s" in err and "read-only standby" in err and "25006" not in err
    assert 1.5 < took < 10

    # A read-only command waits for any server, and names the deadline too.
    rc, out, err, took = timed("status", "--dsn", pair.primary.dsn(), "--wait-primary", "2s")
    assert rc == 3 and "within --wait-primary 2s" in err and "waiting for the database server" in err, err
    assert took < 10


def test_a_bad_password_is_not_waited_on(pair):
    rc, out, err, took = timed("up", "--dsn", pair.primary.dsn(password="wrong-pw"), "--wait-primary", "60s")
    assert rc == 3, out + err
    assert "password authentication failed" in err and "waiting" not in err
    assert took < 5
    rc, out, err, took = timed("status", "--dsn", pair.primary.dsn().replace("dbname=postgres", "dbname=nope"),
                               "--wait-primary", "60s")
    assert rc == 3 and "does not exist" in err and "waiting" not in err, err
    assert took < 5


def test_bad_wait_primary_values_are_usage_errors(pair):
    rc, out, err = pgdeploy("status", "--dsn", pair.primary.dsn(), "--wait-primary", "soon")
    assert rc == 2 and "--wait-primary needs a duration" in err, err
    rc, out, err = pgdeploy("status", "--dsn", pair.primary.dsn(), env={"PGDEPLOY_WAIT_PRIMARY": "a minute"})
    assert rc == 2 and "PGDEPLOY_WAIT_PRIMARY" in err, err


# ---- a connection lost in the middle of a command -------------------------------------------------------------------

def terminate(cluster, application_name):
    def find_and_kill():
        return cluster.scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE application_name = '{application_name}' AND wait_event = 'PgSleep'")
    wait_for(find_and_kill, timeout=30, interval=0.1, what="the pgdeploy session")


def test_a_write_whose_connection_breaks_is_not_redone(pair, write_migrations):
    d = write_migrations(dict(FIRST, **{
        "0002_slow.up.sql": "SELECT pg_sleep(CASE WHEN current_setting('application_name') = 'failover-up' "
                            "THEN 30 ELSE 0 END);\nCREATE TABLE slow (id int);\n"}))
    join = later(0.5, lambda: terminate(pair.primary, "failover-up"))
    rc, out, err, took = timed("up", "--dir", d, "--dsn", pair.primary.dsn() + " application_name=failover-up")
    join()
    assert rc == 3, out + err
    assert "lost the database connection" in err and "Running the same command again" in err
    assert took < 25
    assert applied(pair.primary) == ["0001"]
    # As the message says: running it again resumes (here: applies what did not commit).
    rc, out, err = pgdeploy("up", "--dir", d, "--dsn", pair.primary.dsn())
    assert rc == 0, out + err
    assert applied(pair.primary) == ["0001", "0002"]


def test_a_read_only_command_whose_connection_breaks_runs_again(pair):
    join = later(0.5, lambda: terminate(pair.primary, "failover-verify"))
    rc, out, err = pgdeploy("verify", "--dsn", pair.primary.dsn() + " application_name=failover-verify")
    join()
    assert rc == 0, out + err
    assert "reconnecting to run pgdeploy verify again" in err
