"""The main job end to end (issue 6): the demo's story as a test, with short intervals.

Real parts only: the throwaway cluster from scripts/test (PG* environment), the real pgdeploy binary, the real example
service (examples/app) answering HTTP on 127.0.0.1, the real rollback hook (examples/hooks/rollback-app).

- a bad release (v3) is detected by `pgdeploy watch`, which runs the app's rollback hook once and reverts the
  database; health recovers; the ledger and the events show it; nothing is lost;
- a non-transactional migration (CREATE INDEX CONCURRENTLY) in the middle of a release is applied at top level with
  its checkpoint, between two transactional ones, in one deployment;
- a failed migration in non-atomic mode leaves a rollback marker, which `pgdeploy once` executes.
"""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import psycopg2
import pytest

SOURCE_DIR = os.environ.get("PGDEPLOY_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
BUILD_DIR = os.environ.get("PGDEPLOY_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
PGDEPLOY = os.environ.get("PGDEPLOY_BIN", os.path.join(BUILD_DIR, "pgdeploy"))
APP = os.path.join(BUILD_DIR, "examples", "app", "pgdeploy-example-app")
HOOK = os.path.join(SOURCE_DIR, "examples", "hooks", "rollback-app")
MIGRATIONS = os.path.join(SOURCE_DIR, "examples", "migrations")
LAST_VERSION = {"v1": "0002", "v2": "0004", "v3": "0006"}

INTERVAL_S = 0.5          # the watcher's check interval in these tests
FAILURE_THRESHOLD = 3


# ---- helpers ------------------------------------------------------------------------------------------------------

@pytest.fixture
def dbname():
    """A fresh database with the extension, dropped afterwards."""
    name = "e2e_demo_" + uuid.uuid4().hex[:10]
    admin = psycopg2.connect(dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        with connect(name) as conn, conn.cursor() as cur:
            cur.execute("CREATE EXTENSION pg_deploy")
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def connect(dbname):
    conn = psycopg2.connect(dbname=dbname, application_name="e2e-demo-story")
    conn.autocommit = True
    return conn


def query(dbname, sql, params=None):
    conn = connect(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def scalar(dbname, sql, params=None):
    rows = query(dbname, sql, params)
    return rows[0][0] if rows else None


def pgdeploy(dbname, *args, check=True, timeout=60):
    env = dict(os.environ, PGDATABASE=dbname)
    proc = subprocess.run([PGDEPLOY, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"pgdeploy {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def checkout(tmp_path, release):
    """The migration files of a release, as `git checkout <tag>` would leave them."""
    d = tmp_path / f"checkout-{release}"
    d.mkdir()
    for f in sorted(os.listdir(MIGRATIONS)):
        if f.split("_", 1)[0] <= LAST_VERSION[release]:
            shutil.copy(os.path.join(MIGRATIONS, f), d / f)
    return str(d)


def switch_app(state_dir, release):
    tmp = state_dir / "current_release.tmp"
    tmp.write_text(release + "\n")
    os.replace(tmp, state_dir / "current_release")


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, json.loads(resp.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def wait_until(predicate, timeout, step=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


class Process:
    """A background process whose output goes to a file; stopped with SIGTERM (then SIGKILL) at teardown."""

    def __init__(self, argv, log_path, env=None):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def output(self):
        self.log.flush()
        return open(self.log_path).read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def procs():
    started = []
    yield started
    for p in reversed(started):
        p.stop()


def start_app(procs, tmp_path, dbname, release):
    state = tmp_path / "state"
    state.mkdir()
    switch_app(state, release)
    app = Process([APP, "--port", "0", "--state-dir", str(state)], tmp_path / "app.log",
                  env=dict(os.environ, PGDATABASE=dbname))
    procs.append(app)
    line = wait_until(lambda: "listening on" in app.output() and app.output(), 10)
    assert line, f"example app did not start:\n{app.output()}"
    url = line.split("listening on ", 1)[1].split()[0]
    return url, state


def write_watch_config(tmp_path, url, state_dir, hook_url=True):
    command = [HOOK, "--state-dir", str(state_dir)] + (["--url", url] if hook_url else [])
    cfg = {
        "watcher_id": "e2e-demo",
        "database": {"poll_interval": "500ms"},
        "checks": [{
            "name": "shop-health", "type": "http", "url": url + "/health", "expect_status": 200,
            "interval": "500ms", "timeout": "1s",
            "failure_threshold": FAILURE_THRESHOLD, "success_threshold": 2,
            "error_rate": {"enabled": False},
        }],
        "decision": {"watch_window": "10m", "cooldown": "1m", "health_recovery": "20s"},
        "rollback": {"command": command, "timeout": "20s", "order": "app_first", "retry_backoff": "1s"},
        "logging": {"level": "debug"},
        "state_file": str(tmp_path / "watch-state.json"),
    }
    path = tmp_path / "watch.json"
    path.write_text(json.dumps(cfg, indent=2))
    return str(path)


def v3_deployment(dbname):
    return query(dbname, "SELECT id, state FROM deploy.deployments WHERE app_version = 'v3' AND kind = 'up' "
                         "ORDER BY id DESC LIMIT 1")[0]


# ---- the story ----------------------------------------------------------------------------------------------------

def test_bad_release_is_rolled_back_by_the_watcher(dbname, tmp_path, procs):
    # Release v1 and v2, as the demo deploys them.
    pgdeploy(dbname, "up", "--dir", checkout(tmp_path, "v1"), "--app-version", "v1")
    url, state = start_app(procs, tmp_path, dbname, "v1")
    query(dbname, "INSERT INTO shop.customers (email, name) VALUES ('ada@example.com', 'Ada'), ('alan@example.com', 'Alan')")
    query(dbname, "INSERT INTO shop.orders (customer_id, total_cents) SELECT id, 4200 FROM shop.customers")
    assert http_get(url + "/health")[0] == 200
    pgdeploy(dbname, "up", "--dir", checkout(tmp_path, "v2"), "--app-version", "v2")
    switch_app(state, "v2")
    status, body = http_get(url + "/health")
    assert (status, body["release"], body["schema_version"]) == (200, "v2", "0004")

    # The watcher, started while v2 is healthy.
    config = write_watch_config(tmp_path, url, state)
    pgdeploy(dbname, "watch", "--config", config, "--check-config")
    watcher = Process([PGDEPLOY, "watch", "--config", config], tmp_path / "watch.log",
                      env=dict(os.environ, PGDATABASE=dbname))
    procs.append(watcher)
    time.sleep(3 * INTERVAL_S)
    assert watcher.proc.poll() is None, f"watcher exited:\n{watcher.output()}"
    assert http_get(url + "/health")[0] == 200

    # Release v3: its migrations apply, its code is broken.
    result = json.loads(pgdeploy(dbname, "up", "--dir", checkout(tmp_path, "v3"), "--app-version", "v3",
                                 "--json").stdout)
    assert result["ok"] is True and result["version_after"] == "0006"
    switch_app(state, "v3")
    deployed = time.monotonic()
    status, body = http_get(url + "/health")
    assert status == 503 and body["error"].startswith("42703"), body

    # Detected after FAILURE_THRESHOLD failed checks; rolled back (app, then database); health recovers.
    def recovered():
        return (v3_deployment(dbname)[1] == "rolled_back"
                and (state / "current_release").read_text().strip() == "v2"
                and http_get(url + "/health")[0] == 200)
    assert wait_until(recovered, 30), (
        f"no recovery: deployment {v3_deployment(dbname)}, release {(state / 'current_release').read_text()!r}, "
        f"health {http_get(url + '/health')}\nwatcher log:\n{watcher.output()}")
    took = time.monotonic() - deployed
    # failure_threshold x interval to decide, plus the hook and the revert; generous for a loaded CI machine.
    assert took < FAILURE_THRESHOLD * INTERVAL_S + 15, f"rollback took {took:.1f}s"

    # The database is back at v2's schema, with its data.
    assert scalar(dbname, "SELECT deploy.current_version()") == "0004"
    assert scalar(dbname, "SELECT count(*) FROM shop.customers") == 2
    assert scalar(dbname, "SELECT count(*) FROM information_schema.columns "
                          "WHERE table_schema = 'shop' AND table_name = 'customers' AND column_name = 'name'") == 1
    assert scalar(dbname, "SELECT to_regclass('shop.customer_order_totals')") is None
    status, body = http_get(url + "/health")
    assert (status, body["release"], body["schema_version"]) == (200, "v2", "0004")

    # The hook ran exactly once, with the target release; and keeps doing nothing afterwards.
    time.sleep(4 * INTERVAL_S)
    hook_runs = (state / "rollback-hook.log").read_text().splitlines()
    assert len(hook_runs) == 1 and hook_runs[0].endswith("-> v2"), hook_runs

    # The ledger and the events tell the story.
    dep_id = v3_deployment(dbname)[0]
    markers = query(dbname, "SELECT state FROM deploy.rollback_markers WHERE deployment_id = %s", (dep_id,))
    assert markers == [("done",)], markers
    kinds = [k for (k,) in query(dbname, "SELECT kind FROM deploy.events WHERE deployment_id = %s ORDER BY id",
                                 (dep_id,))]
    for expected in ("deployment_started", "deployment_succeeded", "marker_requested", "marker_claimed",
                     "deployment_rolled_back", "marker_done"):
        assert expected in kinds, (expected, kinds)
    assert kinds.index("marker_requested") < kinds.index("deployment_rolled_back") < kinds.index("marker_done")
    assert scalar(dbname, "SELECT count(*) FROM deploy.events WHERE kind LIKE 'watcher%%'") >= 1
    # The v2 deployment was not touched.
    assert scalar(dbname, "SELECT state FROM deploy.deployments WHERE app_version = 'v2' AND kind = 'up'") == "succeeded"


# ---- a non-transactional migration in the middle of a release -----------------------------------------------------

def write_migrations(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return str(directory)


def test_non_transactional_migration_in_the_middle_of_a_release(dbname, tmp_path):
    d = write_migrations(tmp_path / "m", {
        "0001_items.up.sql": "CREATE TABLE items (id bigint PRIMARY KEY, sku text NOT NULL);\n"
                             "INSERT INTO items SELECT g, 'sku-' || g FROM generate_series(1, 1000) g;\n",
        "0001_items.down.sql": "DROP TABLE items;\n",
        "0002_items_sku_idx.up.sql": "-- pg_deploy: transaction=off\n"
                                     "CREATE INDEX CONCURRENTLY items_sku_idx ON items (sku);\n",
        "0002_items_sku_idx.down.sql": "DROP INDEX items_sku_idx;\n",
        "0003_items_price.up.sql": "ALTER TABLE items ADD COLUMN price_cents bigint NOT NULL DEFAULT 0;\n",
        "0003_items_price.down.sql": "ALTER TABLE items DROP COLUMN price_cents;\n",
    })
    result = json.loads(pgdeploy(dbname, "up", "--dir", d, "--app-version", "r1", "--json").stdout)
    assert result["ok"] is True, result
    assert result["version_after"] == "0003"

    # One deployment applied all three, in order; the middle one at top level, through its checkpoint.
    rows = query(dbname, "SELECT version, deployment_id, transactional FROM deploy.applied ORDER BY sort_key")
    assert [r[0] for r in rows] == ["0001", "0002", "0003"]
    assert len({r[1] for r in rows}) == 1
    assert [r[2] for r in rows] == [True, False, True]
    dep = rows[0][1]
    assert scalar(dbname, "SELECT state FROM deploy.deployments WHERE id = %s", (dep,)) == "succeeded"
    checkpoints = query(dbname, "SELECT version, state FROM deploy.checkpoints WHERE deployment_id = %s "
                                "ORDER BY id", (dep,))
    assert ("0002", "done") in checkpoints, checkpoints
    assert all(state == "done" for _, state in checkpoints), checkpoints
    # The index exists and is valid (a failed concurrent build would leave it INVALID).
    assert scalar(dbname, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_sku_idx'::regclass") is True
    assert scalar(dbname, "SELECT count(*) FROM information_schema.columns "
                          "WHERE table_name = 'items' AND column_name = 'price_cents'") == 1

    # Applying again does nothing.
    again = json.loads(pgdeploy(dbname, "up", "--dir", d, "--json").stdout)
    assert again["ok"] is True and again["applied"] == []


# ---- a failed migration in non-atomic mode, and `pgdeploy once` -----------------------------------------------------

def test_failed_non_atomic_migration_leaves_a_marker_that_once_executes(dbname, tmp_path, procs):
    base = write_migrations(tmp_path / "r1", {
        "0001_accounts.up.sql": "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL);\n",
        "0001_accounts.down.sql": "DROP TABLE accounts;\n",
    })
    pgdeploy(dbname, "up", "--dir", base, "--app-version", "r1")
    query(dbname, "INSERT INTO accounts VALUES (1, 'a@example.com'), (2, 'a@example.com')")

    # Release r2: 0002 applies, 0003 fails (duplicate emails), and in non-atomic mode 0002 stays applied.
    r2 = write_migrations(tmp_path / "r2", {
        "0001_accounts.up.sql": "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL);\n",
        "0001_accounts.down.sql": "DROP TABLE accounts;\n",
        "0002_accounts_name.up.sql": "ALTER TABLE accounts ADD COLUMN name text;\n",
        "0002_accounts_name.down.sql": "ALTER TABLE accounts DROP COLUMN name;\n",
        "0003_accounts_email_unique.up.sql": "ALTER TABLE accounts ADD CONSTRAINT accounts_email_key UNIQUE (email);\n",
        "0003_accounts_email_unique.down.sql": "ALTER TABLE accounts DROP CONSTRAINT accounts_email_key;\n",
    })
    proc = pgdeploy(dbname, "up", "--dir", r2, "--app-version", "r2", "--no-atomic", "--json", check=False)
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is False and result["atomic"] is False
    assert result["failed"]["version"] == "0003" and result["failed"]["sqlstate"] == "23505", result
    assert [m["version"] for m in result["applied"]] == ["0002"]
    assert result["marker_id"] is not None, result
    marker = result["marker_id"]
    dep = result["deployment_id"]
    assert scalar(dbname, "SELECT deploy.current_version()") == "0002"
    assert scalar(dbname, "SELECT state FROM deploy.rollback_markers WHERE id = %s", (marker,)) == "pending"

    # One cycle of the timer-driven rollback: executes the pending marker, reverting what r2 applied. The config
    # has no checks and no app command: this release's rollback is the database's only.
    config = tmp_path / "once.json"
    config.write_text(json.dumps({"watcher_id": "e2e-once", "logging": {"level": "debug"}}))
    once = pgdeploy(dbname, "once", "--config", str(config), "--json", check=False)
    assert once.returncode == 0, f"{once.stdout}\n{once.stderr}"
    assert scalar(dbname, "SELECT state FROM deploy.rollback_markers WHERE id = %s", (marker,)) == "done"
    assert scalar(dbname, "SELECT state FROM deploy.deployments WHERE id = %s", (dep,)) == "rolled_back"
    assert scalar(dbname, "SELECT deploy.current_version()") == "0001"
    assert scalar(dbname, "SELECT count(*) FROM information_schema.columns "
                          "WHERE table_name = 'accounts' AND column_name = 'name'") == 0
    assert scalar(dbname, "SELECT count(*) FROM accounts") == 2
    assert "marker_done" in [k for (k,) in query(dbname, "SELECT kind FROM deploy.events WHERE marker_id = %s",
                                                 (marker,))]

    # Idempotent: a second cycle finds nothing to do and changes nothing.
    events_before = scalar(dbname, "SELECT count(*) FROM deploy.events WHERE kind LIKE 'marker%%'")
    again = pgdeploy(dbname, "once", "--config", str(config), "--json", check=False)
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    assert scalar(dbname, "SELECT count(*) FROM deploy.events WHERE kind LIKE 'marker%%'") == events_before
    assert scalar(dbname, "SELECT deploy.current_version()") == "0001"
