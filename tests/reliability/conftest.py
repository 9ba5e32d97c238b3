"""Fixtures and helpers of the reliability suites (tests/reliability/test_*.py).

Modes: quick by default (what CI runs, a few minutes in all); long with PGDEPLOY_LONG=1 (docs/reliability.md has
the figures). Randomness is seeded: PGDEPLOY_SEED (default 20261122) plus the test's name, so a failing trial is
replayed by running the same test with the same seed; every test prints its seed.

Reused from tests/e2e/conftest.py (loaded under the name ``e2e_conftest``): the ``pg`` fixture (a fresh database
with pg_deploy on the server from PG*), ``run_pgdeploy``, ``write_migrations``, ``free_port``, ``conninfo``.

Added here:
- ``LONG``, ``trials(quick, long)``: the mode and a trial count for it.
- ``rng`` (fixture): a ``random.Random`` seeded from PGDEPLOY_SEED and the test's node id.
- ``ledger_state(db)``: counts and md5 checksums of every ledger table, for "nothing changed" assertions.
- ``assert_consistent(db, versions)``: deploy.validate() is clean and, for the test migrations (each creates
  table ``app.t_<version>``), the catalog matches the ledger: a table exists for every applied version and for no
  other; no duplicate ``migration_applied`` without a revert in between; no lock left behind.
- ``slow_migrations(db, versions, up_sleep, down_sleep)``: registers such migrations.
- ``Cluster``: a throwaway PostgreSQL 15 cluster of our own (initdb + pg_ctl, as the postgres user when we are
  root) for the tests that stop or crash the server; removed at the end even on failure.
- ``stats``: a per-session tally (trials, faults injected, bad inputs) written to $PGDEPLOY_RELIABILITY_STATS
  (a JSON file, when set) so docs/reliability.md quotes figures that a run produced.
"""
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psycopg2
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
E2E_DIR = os.path.abspath(os.path.join(HERE, "..", "e2e"))

_spec = importlib.util.spec_from_file_location("e2e_conftest", os.path.join(E2E_DIR, "conftest.py"))
e2e_conftest = importlib.util.module_from_spec(_spec)
sys.modules["e2e_conftest"] = e2e_conftest
_spec.loader.exec_module(e2e_conftest)

# Fixtures and helpers shared with the e2e suites (a fixture imported into a conftest is registered by pytest).
pg = e2e_conftest.pg
write_migrations = e2e_conftest.write_migrations
run_pgdeploy = e2e_conftest.run_pgdeploy
free_port = e2e_conftest.free_port
conninfo = e2e_conftest.conninfo
admin_connect = e2e_conftest.admin_connect
PgDatabase = e2e_conftest.PgDatabase
PGDEPLOY_BIN = e2e_conftest.PGDEPLOY_BIN   # tests/e2e/watch_helpers.py does `from conftest import PGDEPLOY_BIN`
SOURCE_DIR = e2e_conftest.SOURCE_DIR
FreshDatabase = e2e_conftest.FreshDatabase
wait_for = e2e_conftest.wait_for   # watch_helpers does `from conftest import wait_for`
wait_until = wait_for

LONG = os.environ.get("PGDEPLOY_LONG") == "1"
SEED = int(os.environ.get("PGDEPLOY_SEED", "20261122"))
PG_BIN = os.environ.get("PGDEPLOY_PG_BIN", "/usr/lib/postgresql/15/bin")


def trials(quick, long):
    return long if LONG else quick


# ---- figures for docs/reliability.md ----------------------------------------------------------------------------

class Stats:
    def __init__(self):
        self.counts = {}
        self.lock = threading.Lock()

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n


stats = Stats()


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("PGDEPLOY_RELIABILITY_STATS")
    if not path or not stats.counts:
        return
    old = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except ValueError:
            old = {}
    for k, v in stats.counts.items():
        old[k] = old.get(k, 0) + v
    with open(path, "w") as f:
        json.dump(old, f, indent=1, sort_keys=True)


@pytest.fixture
def rng(request):
    seed = SEED ^ (hash_text(request.node.nodeid) & 0xFFFFFFFF)
    print(f"\n[seed] PGDEPLOY_SEED={SEED} -> {request.node.nodeid}: {seed} (long mode: {LONG})")
    return random.Random(seed)


def hash_text(text):
    """A stable hash (Python's hash() of str is salted per process)."""
    h = 2166136261
    for ch in text.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


# ---- ledger helpers ---------------------------------------------------------------------------------------------

LEDGER_TABLES = {
    "migrations": "version",
    "applied": "version",
    "deployments": "id",
    "events": "id",
    "rollback_markers": "id",
    "checkpoints": "id",
    "archived": "id",
}


def ledger_state(db):
    """Row counts and md5 of every ledger table's rows (all columns, in key order)."""
    out = {}
    for table, key in LEDGER_TABLES.items():
        row = db.sql(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t.{key}), '')) "
                     f"FROM deploy.{table} t")[0]
        out[table] = (row[0], row[1])
    return out


def app_tables(db):
    return {r[0] for r in db.sql("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                 "WHERE n.nspname = 'app' AND c.relkind = 'r'")}


def applied_versions(db):
    return [r[0] for r in db.sql("SELECT version FROM deploy.applied ORDER BY sort_key")]


def assert_consistent(db, versions):
    """The invariants that must hold after any fault (see the module docstring)."""
    v = db.scalar("SELECT deploy.validate()")
    assert v["ok"], f"deploy.validate() found problems: {v}"
    applied = set(applied_versions(db))
    tables = app_tables(db)
    for ver in versions:
        has_table = table_for(ver) in tables
        assert has_table == (ver in applied), \
            f"catalog and ledger disagree on {ver}: table exists={has_table}, applied={ver in applied}"
    # Exactly once: per version, applied events minus reverted events is 1 when applied, 0 otherwise.
    rows = db.sql("SELECT version, count(*) FILTER (WHERE kind = 'migration_applied'), "
                  "count(*) FILTER (WHERE kind = 'migration_reverted') FROM deploy.events "
                  "WHERE version IS NOT NULL GROUP BY version")
    net = {r[0]: r[1] - r[2] for r in rows}
    for ver in versions:
        assert net.get(ver, 0) == (1 if ver in applied else 0), \
            f"events for {ver}: applied-reverted = {net.get(ver, 0)}, applied now = {ver in applied}"
    # Nothing left running, no deploy lock left behind by a killed session.
    assert db.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1346651472 "
                     "AND objid = 1 AND granted "
                     "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())") == 0
    # ... and no live deploy lease of a client that is gone (the resume above released its own).
    assert db.scalar("SELECT count(*) FROM deploy.leases WHERE name = 'deploy' "
                     "AND expires_at >= clock_timestamp()") == 0


def table_for(version):
    """The table a test migration creates: app.t_<version with non-alphanumerics as _>."""
    return "t_" + re.sub(r"[^A-Za-z0-9]", "_", version).lower()


def slow_migrations(db, versions, up_sleep=0.0, down_sleep=0.0, name_prefix="m"):
    db.sql("CREATE SCHEMA IF NOT EXISTS app")
    for ver in versions:
        up = f"CREATE TABLE app.{table_for(ver)} (id int primary key, v text)"
        down = f"DROP TABLE app.{table_for(ver)}"
        if up_sleep:
            up += f"; SELECT pg_sleep({up_sleep})"
        if down_sleep:
            down += f"; SELECT pg_sleep({down_sleep})"
        assert db.scalar("SELECT deploy.register(%s, %s, %s, %s)", (ver, name_prefix + ver, up, down)) \
            in ("registered", "unchanged")


def pid_of(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


class Background:
    """Runs fn(conn) on its own connection in a thread; remembers the result or the exception."""

    def __init__(self, dsn, fn, setup_sql=()):
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("SET client_min_messages = error")
            for s in setup_sql:
                cur.execute(s)
        self.pid = pid_of(self.conn)
        self.result = None
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn):
        try:
            self.result = fn(self.conn)
        except Exception as e:  # noqa: BLE001 (recorded and inspected by the test)
            self.error = e

    def join(self, timeout=60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background operation did not end"
        try:
            self.conn.close()
        except Exception:
            pass


def fetch_one(sql, params=None):
    def fn(conn):
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0] if cur.description else None
    return fn


# ---- a cluster of our own ---------------------------------------------------------------------------------------

class Cluster:
    """A throwaway PostgreSQL 15 cluster in a temp dir: unix socket only, local trust (the socket directory is
    private to the cluster's owner), stopped and removed by close()."""

    def __init__(self):
        self.as_postgres = os.geteuid() == 0
        self.dir = tempfile.mkdtemp(prefix="pgdeploy-rel-")
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "sock")
        os.makedirs(self.sock)
        self.log = os.path.join(self.dir, "server.log")
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.sock, "postgres", "postgres")
            os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.user = "postgres" if self.as_postgres else os.environ.get("USER", "postgres")
        self._pg(["initdb", "-D", self.data, "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync",
                  "--locale=C.UTF-8"], timeout=120)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"\nport = {self.port}\nlisten_addresses = ''\nunix_socket_directories = '{self.sock}'\n"
                    "fsync = on\nmax_connections = 60\nshared_buffers = 32MB\n")
        self.start()

    def _pg(self, args, timeout=60, check=True):
        cmd = [os.path.join(PG_BIN, args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)

    def start(self):
        self._pg(["pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start"], timeout=90)

    def stop(self, mode="fast"):
        return self._pg(["pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"], timeout=90, check=False)

    def running(self):
        return self._pg(["pg_ctl", "-D", self.data, "status"], check=False).returncode == 0

    def dsn(self, dbname="postgres"):
        return f"host={self.sock} port={self.port} user={self.user} dbname={dbname}"

    def connect(self, dbname="postgres"):
        conn = psycopg2.connect(self.dsn(dbname))
        conn.autocommit = True
        return conn

    def new_database(self, name):
        """A fresh database with pg_deploy; returns a PgDatabase-like handle bound to this cluster."""
        admin = self.connect()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{name}"')
        admin.close()
        db = ClusterDatabase(self, name)
        db.sql("SET client_min_messages = warning")
        db.sql("CREATE EXTENSION pg_deploy")
        return db

    def close(self):
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class ClusterDatabase(PgDatabase):
    def __init__(self, cluster, name):
        super().__init__(name)
        self.dsn = cluster.dsn(name)
        self.uri = None

    def reset(self):
        """Drop the cached connection (after a server restart)."""
        try:
            if self._conn is not None:
                self._conn.close()
        except Exception:
            pass
        self._conn = None


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def module_db():
    """One database with pg_deploy for a whole module (for suites whose cases must each change nothing)."""
    with FreshDatabase("pgdeploy_r_") as db:
        yield db


def sqlstate_of(db, query, params=None, setup=()):
    """Runs query on a fresh connection; returns the SQLSTATE it raised (None when it succeeded)."""
    conn = psycopg2.connect(db.dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SET client_min_messages = error")
            for s in setup:
                cur.execute(s)
            try:
                cur.execute(query, params)
                return None
            except psycopg2.Error as e:
                return e.pgcode
    finally:
        conn.close()


if E2E_DIR not in sys.path:
    sys.path.append(E2E_DIR)   # tests/e2e/watch_helpers.py (HealthServer, Watcher, write_hook, ...)
