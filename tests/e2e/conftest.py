"""Shared fixtures for the end-to-end tests: a real PostgreSQL server (from the PG* environment that
`pg_virtualenv` / scripts/test set up), a fresh database per test with pg_deploy installed, and the real
`pgdeploy` binary at $PGDEPLOY_BIN.

Fixtures and helpers (keep them general; every e2e suite uses them):

- ``pg``: a fresh database with ``CREATE EXTENSION pg_deploy``. ``pg.dsn`` is a full key=value conninfo
  (password included when the environment has one, so tests can check it never leaks), ``pg.uri`` the same as a
  postgresql:// URI, ``pg.name`` the database name. ``pg.sql(query, params)`` runs one statement in autocommit and
  returns the rows (or [] for statements without rows); ``pg.scalar(...)`` the first column of the first row;
  ``pg.connect(autocommit=True)`` a new psycopg2 connection (closed at teardown); ``pg.snapshot()`` the ledger's
  contents, for "nothing changed" assertions.
- ``run_pgdeploy(*args, env=None, input=None, timeout=120)`` → (exit code, stdout, stderr). ``env`` adds to (or,
  with value None, removes from) the current environment. Unless ``env`` or the environment names it,
  ``PGDEPLOY_WAIT_PRIMARY=0``: a test that points at a closed port means "server down, exit 3 at once", not "wait
  for a failover" (tests/e2e/test_cli_failover.py removes it to test the waiting).
- ``write_migrations(files, subdir="migrations")`` (fixture) writes {relative name: content (str or bytes)} into a
  fresh directory under the test's tmp_path and returns its path as a string.
- ``free_port()``: a TCP port on 127.0.0.1 where nothing listens.
"""
import os
import socket
import subprocess
import time
import uuid

import psycopg2
import psycopg2.extensions
import pytest

SOURCE_DIR = os.environ.get("PGDEPLOY_SOURCE_DIR",
                            os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
PGDEPLOY_BIN = os.environ.get("PGDEPLOY_BIN", os.path.join(SOURCE_DIR, "build", "pgdeploy"))


def _base_params():
    """Connection parameters from the PG* environment (what libpq would use)."""
    params = {}
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"), ("password", "PGPASSWORD")):
        if os.environ.get(var):
            params[key] = os.environ[var]
    return params


def _quote(value):
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo(dbname, **overrides):
    """A key=value conninfo for dbname on the test server; overrides replace or add parameters."""
    params = _base_params()
    params["dbname"] = dbname
    params.update(overrides)
    return " ".join(f"{k}={_quote(v)}" for k, v in params.items() if v is not None)


def admin_connect():
    conn = psycopg2.connect(conninfo(os.environ.get("PGDEPLOY_ADMIN_DB", "postgres")))
    conn.autocommit = True
    return conn


class PgDatabase:
    """A throwaway database with pg_deploy installed; see the module docstring."""

    def __init__(self, name):
        self.name = name
        self.dsn = conninfo(name)
        p = _base_params()
        host = p.get("host", "localhost")
        userinfo = ""
        if "user" in p:
            from urllib.parse import quote
            userinfo = quote(p["user"], safe="")
            if "password" in p:
                userinfo += ":" + quote(p["password"], safe="")
            userinfo += "@"
        if host.startswith("/"):
            from urllib.parse import quote
            self.uri = f"postgresql://{userinfo}/{name}?host={quote(host, safe='')}&port={p.get('port', '5432')}"
        else:
            self.uri = f"postgresql://{userinfo}{host}:{p.get('port', '5432')}/{name}"
        self.password = p.get("password")
        self._conn = None
        self._extra = []

    def connect(self, autocommit=True):
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = autocommit
        self._extra.append(conn)
        return conn

    @property
    def conn(self):
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self.dsn)
            self._conn.autocommit = True
        return self._conn

    def sql(self, query, params=None):
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description is not None else []

    def scalar(self, query, params=None):
        rows = self.sql(query, params)
        return rows[0][0] if rows else None

    def snapshot(self):
        """Everything the ledger holds (minus timestamps that change on reads), for before/after comparisons."""
        return {
            "migrations": self.sql("SELECT version, name, checksum, up_sql, down_sql, verify_sql, transactional, "
                                   "reversibility FROM deploy.migrations ORDER BY version"),
            "applied": self.sql("SELECT version, checksum, deployment_id FROM deploy.applied ORDER BY version"),
            "deployments": self.sql("SELECT id, kind, state, version_before, version_after "
                                    "FROM deploy.deployments ORDER BY id"),
            "markers": self.sql("SELECT id, state, attempts FROM deploy.rollback_markers ORDER BY id"),
            "checkpoints": self.sql("SELECT id, state, attempts FROM deploy.checkpoints ORDER BY id"),
            "events": self.scalar("SELECT count(*) FROM deploy.events"),
            "tables": self.sql("SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
                               "JOIN pg_namespace n ON n.oid = c.relnamespace "
                               "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'deploy') "
                               "ORDER BY 1, 2"),
        }

    def close(self):
        for c in self._extra + ([self._conn] if self._conn else []):
            try:
                c.close()
            except Exception:
                pass


class FreshDatabase:
    """A context manager: a new database with pg_deploy on the PG* server, dropped (WITH FORCE) on exit. The `pg`
    fixture uses it per test; suites that need several fresh ledgers (one per trial) use it directly."""

    def __init__(self, prefix="pgdeploy_t_", create_options="", client_min_messages="warning"):
        self.name = prefix + uuid.uuid4().hex[:12]
        self.create_options = create_options        # appended to CREATE DATABASE (ENCODING ..., TEMPLATE ...)
        self.client_min_messages = client_min_messages
        self.db = None

    def __enter__(self):
        admin = admin_connect()
        try:
            with admin.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.name}" {self.create_options}')
        finally:
            admin.close()
        self.db = PgDatabase(self.name)
        self.db.sql(f"SET client_min_messages = {self.client_min_messages}")
        self.db.sql("CREATE EXTENSION pg_deploy")
        return self.db

    def __exit__(self, *exc):
        if self.db is not None:
            self.db.close()
        admin = admin_connect()
        try:
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            admin.close()
        return False


@pytest.fixture
def pg():
    with FreshDatabase() as db:
        yield db


def wait_for(fn, timeout=15, interval=0.05, what="condition"):
    """Polls fn until it returns something truthy (returned) or timeout seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def run_pgdeploy(*args, env=None, input=None, timeout=120):
    """Runs the real binary; returns (exit code, stdout, stderr)."""
    full_env = dict(os.environ)
    if "PGDEPLOY_WAIT_PRIMARY" not in (env or {}):
        full_env.setdefault("PGDEPLOY_WAIT_PRIMARY", "0")
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    proc = subprocess.run([PGDEPLOY_BIN, *[str(a) for a in args]], env=full_env, input=input,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def write_migrations(tmp_path):
    counter = {"n": 0}

    def write(files, subdir=None):
        counter["n"] += 1
        base = tmp_path / (subdir or f"migrations{counter['n']}")
        base.mkdir(parents=True, exist_ok=True)
        for rel, content in files.items():
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        return str(base)

    return write


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
