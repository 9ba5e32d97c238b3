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

import pytest

from conftest import PGDEPLOY_BIN, SOURCE_DIR, run_pgdeploy

BUILD_DIR = os.environ.get("PGDEPLOY_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
APP = os.path.join(BUILD_DIR, "examples", "app", "pgdeploy-example-app")
HOOK = os.path.join(SOURCE_DIR, "examples", "hooks", "rollback-app")
MIGRATIONS = os.path.join(SOURCE_DIR, "examples", "migrations")
LAST_VERSION = {"v1": "0002", "v2": "0004", "v3": "0006"}

INTERVAL_S = 0.5          # the watcher's check interval in these tests
FAILURE_THRESHOLD = 3


# ---- helpers ------------------------------------------------------------------------------------------------------

def pgdeploy(pg, *args, check=True, timeout=60):
    """Runs the real binary against the test's database; returns (code, stdout, stderr)."""
    # watch and once take the database from their config file; the other commands from --dsn.
    dsn = [] if args[0] in ("watch", "once") else ["--dsn", pg.dsn]
    code, out, err = run_pgdeploy(args[0], *dsn, *args[1:], timeout=timeout)
    if check and code != 0:
        raise AssertionError(f"pgdeploy {' '.join(args)} exited {code}\nstdout:\n{out}\nstderr:\n{err}")
    return code, out, err


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


def start_app(procs, tmp_path, pg, release):
    state = tmp_path / "state"
    state.mkdir()
    switch_app(state, release)
    app = Process([APP, "--port", "0", "--state-dir", str(state), "--dsn", pg.dsn], tmp_path / "app.log")
    procs.append(app)
    line = wait_until(lambda: "listening on" in app.output() and app.output(), 10)
    assert line, f"example app did not start:\n{app.output()}"
    url = line.split("listening on ", 1)[1].split()[0]
    return url, state


def write_watch_config(pg, tmp_path, url, state_dir, hook_url=True):
    command = [HOOK, "--state-dir", str(state_dir)] + (["--url", url] if hook_url else [])
    cfg = {
        "watcher_id": "e2e-demo",
        "database": {"dsn": pg.dsn, "poll_interval": "500ms"},
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


def v3_deployment(pg):
    return pg.sql("SELECT id, state FROM deploy.deployments WHERE app_version = 'v3' AND kind = 'up' "
                  "ORDER BY id DESC LIMIT 1")[0]


# ---- the story ----------------------------------------------------------------------------------------------------

def test_bad_release_is_rolled_back_by_the_watcher(pg, tmp_path, procs):
    # Release v1 and v2, as the demo deploys them.
    pgdeploy(pg, "up", "--dir", checkout(tmp_path, "v1"), "--app-version", "v1")
    url, state = start_app(procs, tmp_path, pg, "v1")
    pg.sql("INSERT INTO shop.customers (email, name) VALUES ('ada@example.com', 'Ada'), ('alan@example.com', 'Alan')")
    pg.sql("INSERT INTO shop.orders (customer_id, total_cents) SELECT id, 4200 FROM shop.customers")
    assert http_get(url + "/health")[0] == 200
    pgdeploy(pg, "up", "--dir", checkout(tmp_path, "v2"), "--app-version", "v2")
    switch_app(state, "v2")
    status, body = http_get(url + "/health")
    assert (status, body["release"], body["schema_version"]) == (200, "v2", "0004")

    # The watcher, started while v2 is healthy.
    config = write_watch_config(pg, tmp_path, url, state)
    pgdeploy(pg, "watch", "--config", config, "--check-config")
    watcher = Process([PGDEPLOY_BIN, "watch", "--config", config], tmp_path / "watch.log")
    procs.append(watcher)
    time.sleep(3 * INTERVAL_S)
    assert watcher.proc.poll() is None, f"watcher exited:\n{watcher.output()}"
    assert http_get(url + "/health")[0] == 200

    # Release v3: its migrations apply, its code is broken.
    result = json.loads(pgdeploy(pg, "up", "--dir", checkout(tmp_path, "v3"), "--app-version", "v3", "--json")[1])
    assert result["ok"] is True and result["version_after"] == "0006"
    switch_app(state, "v3")
    deployed = time.monotonic()
    status, body = http_get(url + "/health")
    assert status == 503 and body["error"].startswith("42703"), body

    # Detected after FAILURE_THRESHOLD failed checks; rolled back (app, then database); health recovers.
    def recovered():
        return (v3_deployment(pg)[1] == "rolled_back"
                and (state / "current_release").read_text().strip() == "v2"
                and http_get(url + "/health")[0] == 200)
    assert wait_until(recovered, 30), (
        f"no recovery: deployment {v3_deployment(pg)}, release {(state / 'current_release').read_text()!r}, "
        f"health {http_get(url + '/health')}\nwatcher log:\n{watcher.output()}")
    took = time.monotonic() - deployed
    # failure_threshold x interval to decide, plus the hook and the revert; generous for a loaded CI machine.
    assert took < FAILURE_THRESHOLD * INTERVAL_S + 15, f"rollback took {took:.1f}s"

    # The database is back at v2's schema, with its data.
    assert pg.scalar("SELECT deploy.current_version()") == "0004"
    assert pg.scalar("SELECT count(*) FROM shop.customers") == 2
    assert pg.scalar("SELECT count(*) FROM information_schema.columns "
                     "WHERE table_schema = 'shop' AND table_name = 'customers' AND column_name = 'name'") == 1
    assert pg.scalar("SELECT to_regclass('shop.customer_order_totals')") is None
    status, body = http_get(url + "/health")
    assert (status, body["release"], body["schema_version"]) == (200, "v2", "0004")

    # The hook ran exactly once, with the target release; and keeps doing nothing afterwards.
    time.sleep(4 * INTERVAL_S)
    hook_runs = (state / "rollback-hook.log").read_text().splitlines()
    assert len(hook_runs) == 1 and hook_runs[0].endswith("-> v2"), hook_runs

    # The ledger and the events tell the story.
    dep_id = v3_deployment(pg)[0]
    markers = pg.sql("SELECT state FROM deploy.rollback_markers WHERE deployment_id = %s", (dep_id,))
    assert markers == [("done",)], markers
    # The watcher itself checks that health came back (success_threshold fresh successes) and records it.
    assert wait_until(lambda: pg.scalar("SELECT details ->> 'recovered' FROM deploy.events "
                                        "WHERE kind = 'watcher_rollback_done' AND deployment_id = %s",
                                        (dep_id,)) == "true", 20), watcher.output()
    kinds = [k for (k,) in pg.sql("SELECT kind FROM deploy.events WHERE deployment_id = %s ORDER BY id", (dep_id,))]
    for expected in ("deployment_started", "deployment_succeeded", "watcher_decision", "marker_requested",
                     "marker_claimed", "watcher_hook_done", "deployment_rolled_back", "marker_done",
                     "watcher_rollback_done"):
        assert expected in kinds, (expected, kinds)
    # App first (the hook), then the database; one decision, one hook run.
    assert (kinds.index("watcher_decision") < kinds.index("marker_requested") < kinds.index("watcher_hook_done")
            < kinds.index("deployment_rolled_back") < kinds.index("marker_done"))
    assert kinds.count("watcher_hook_started") == 1 and kinds.count("marker_requested") == 1, kinds
    # The v2 deployment was not touched.
    assert pg.scalar("SELECT state FROM deploy.deployments WHERE app_version = 'v2' AND kind = 'up'") == "succeeded"


# ---- a non-transactional migration in the middle of a release -----------------------------------------------------

def test_non_transactional_migration_in_the_middle_of_a_release(pg, tmp_path, write_migrations):
    d = write_migrations({
        "0001_items.up.sql": "CREATE TABLE items (id bigint PRIMARY KEY, sku text NOT NULL);\n"
                             "INSERT INTO items SELECT g, 'sku-' || g FROM generate_series(1, 1000) g;\n",
        "0001_items.down.sql": "DROP TABLE items;\n",
        "0002_items_sku_idx.up.sql": "-- pg_deploy: transaction=off\n"
                                     "CREATE INDEX CONCURRENTLY items_sku_idx ON items (sku);\n",
        "0002_items_sku_idx.down.sql": "DROP INDEX items_sku_idx;\n",
        "0003_items_price.up.sql": "ALTER TABLE items ADD COLUMN price_cents bigint NOT NULL DEFAULT 0;\n",
        "0003_items_price.down.sql": "ALTER TABLE items DROP COLUMN price_cents;\n",
    })
    result = json.loads(pgdeploy(pg, "up", "--dir", d, "--app-version", "r1", "--json")[1])
    assert result["ok"] is True, result
    assert result["version_after"] == "0003"

    # One deployment applied all three, in order; the middle one at top level, through its checkpoint.
    rows = pg.sql("SELECT version, deployment_id, transactional FROM deploy.applied ORDER BY sort_key")
    assert [r[0] for r in rows] == ["0001", "0002", "0003"]
    assert len({r[1] for r in rows}) == 1
    assert [r[2] for r in rows] == [True, False, True]
    dep = rows[0][1]
    assert pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (dep,)) == "succeeded"
    checkpoints = pg.sql("SELECT version, state FROM deploy.checkpoints WHERE deployment_id = %s "
                                "ORDER BY id", (dep,))
    assert ("0002", "done") in checkpoints, checkpoints
    assert all(state == "done" for _, state in checkpoints), checkpoints
    # The index exists and is valid (a failed concurrent build would leave it INVALID).
    assert pg.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_sku_idx'::regclass") is True
    assert pg.scalar("SELECT count(*) FROM information_schema.columns "
                     "WHERE table_name = 'items' AND column_name = 'price_cents'") == 1

    # Applying again does nothing.
    again = json.loads(pgdeploy(pg, "up", "--dir", d, "--json")[1])
    assert again["ok"] is True and again["applied"] == []


# ---- a failed migration in non-atomic mode, and `pgdeploy once` -----------------------------------------------------

def test_failed_non_atomic_migration_leaves_a_marker_that_once_executes(pg, tmp_path, write_migrations):
    base = write_migrations({
        "0001_accounts.up.sql": "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL);\n",
        "0001_accounts.down.sql": "DROP TABLE accounts;\n",
    })
    pgdeploy(pg, "up", "--dir", base, "--app-version", "r1")
    pg.sql("INSERT INTO accounts VALUES (1, 'a@example.com'), (2, 'a@example.com')")

    # Release r2: 0002 applies, 0003 fails (duplicate emails), and in non-atomic mode 0002 stays applied.
    r2 = write_migrations({
        "0001_accounts.up.sql": "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL);\n",
        "0001_accounts.down.sql": "DROP TABLE accounts;\n",
        "0002_accounts_name.up.sql": "ALTER TABLE accounts ADD COLUMN name text;\n",
        "0002_accounts_name.down.sql": "ALTER TABLE accounts DROP COLUMN name;\n",
        "0003_accounts_email_unique.up.sql": "ALTER TABLE accounts ADD CONSTRAINT accounts_email_key UNIQUE (email);\n",
        "0003_accounts_email_unique.down.sql": "ALTER TABLE accounts DROP CONSTRAINT accounts_email_key;\n",
    })
    code, out, err = pgdeploy(pg, "up", "--dir", r2, "--app-version", "r2", "--no-atomic", "--json", check=False)
    assert code == 1, err
    result = json.loads(out)
    assert result["ok"] is False and result["atomic"] is False
    assert result["failed"]["version"] == "0003" and result["failed"]["sqlstate"] == "23505", result
    assert [m["version"] for m in result["applied"]] == ["0002"]
    assert result["marker_id"] is not None, result
    marker = result["marker_id"]
    dep = result["deployment_id"]
    assert pg.scalar("SELECT deploy.current_version()") == "0002"
    assert pg.scalar("SELECT state FROM deploy.rollback_markers WHERE id = %s", (marker,)) == "pending"

    # One cycle of the timer-driven rollback: executes the pending marker, reverting what r2 applied. The config
    # has no checks and no app command: this release's rollback is the database's only.
    config = tmp_path / "once.json"
    config.write_text(json.dumps({"watcher_id": "e2e-once", "database": {"dsn": pg.dsn},
                                  "logging": {"level": "debug"}}))
    code, out, err = pgdeploy(pg, "once", "--config", str(config), "--json", check=False)
    assert code == 0, f"{out}\n{err}"
    assert pg.scalar("SELECT state FROM deploy.rollback_markers WHERE id = %s", (marker,)) == "done"
    assert pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (dep,)) == "rolled_back"
    assert pg.scalar("SELECT deploy.current_version()") == "0001"
    assert pg.scalar("SELECT count(*) FROM information_schema.columns "
                     "WHERE table_name = 'accounts' AND column_name = 'name'") == 0
    assert pg.scalar("SELECT count(*) FROM accounts") == 2
    assert "marker_done" in [k for (k,) in pg.sql("SELECT kind FROM deploy.events WHERE marker_id = %s", (marker,))]

    # Idempotent: a second cycle finds nothing to do and changes nothing.
    events_before = pg.scalar("SELECT count(*) FROM deploy.events WHERE kind LIKE 'marker%%'")
    code, out, err = pgdeploy(pg, "once", "--config", str(config), "--json", check=False)
    assert code == 0, f"{out}\n{err}"
    assert pg.scalar("SELECT count(*) FROM deploy.events WHERE kind LIKE 'marker%%'") == events_before
    assert pg.scalar("SELECT deploy.current_version()") == "0001"
