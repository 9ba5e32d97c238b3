"""The example service and its rollback hook (examples/), on their own: what the demo and the story test rely on.

Real cluster (PG* from scripts/test), real pgdeploy to deploy the example migrations, real HTTP on 127.0.0.1.
"""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import SOURCE_DIR, conninfo, free_port, run_pgdeploy

BUILD_DIR = os.environ.get("PGDEPLOY_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
APP = os.path.join(BUILD_DIR, "examples", "app", "pgdeploy-example-app")
HOOK = os.path.join(SOURCE_DIR, "examples", "hooks", "rollback-app")
MIGRATIONS = os.path.join(SOURCE_DIR, "examples", "migrations")


def pgdeploy(pg, command, *args):
    code, out, err = run_pgdeploy(command, "--dsn", pg.dsn, *args)
    assert code == 0, f"pgdeploy {command} {args}: {code}\n{out}\n{err}"
    return out


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


class App:
    def __init__(self, tmp_path, dsn, *extra):
        self.state = tmp_path / "state"
        self.state.mkdir(exist_ok=True)
        self.log = tmp_path / "app.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([APP, "--port", "0", "--state-dir", str(self.state), "--dsn", dsn, *extra],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while "listening on" not in self.log.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)
        self.url = self.log.read_text().split("listening on ", 1)[1].split()[0]

    def release(self, name):
        (self.state / "current_release").write_text(name + "\n")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture
def app_factory(tmp_path):
    apps = []

    def make(dsn, *extra):
        app = App(tmp_path, dsn, *extra)
        apps.append(app)
        return app
    yield make
    for app in apps:
        app.stop()


def deploy_through(pg, tmp_path, last):
    d = tmp_path / f"m-{last}"
    d.mkdir()
    for f in os.listdir(MIGRATIONS):
        if f.split("_", 1)[0] <= last:
            (d / f).write_text(open(os.path.join(MIGRATIONS, f)).read())
    pgdeploy(pg, "up", "--dir", str(d), "--app-version", "test-" + last)


def test_example_migrations_apply_and_revert_cleanly(pg):
    """All six apply (0004 at top level), and reverting them all leaves no trace of the shop schema."""
    pgdeploy(pg, "up", "--dir", MIGRATIONS, "--app-version", "all")
    assert pg.scalar("SELECT deploy.current_version()") == "0006"
    rows = pg.sql("SELECT version, transactional, reversibility FROM deploy.applied ORDER BY sort_key")
    assert [r[0] for r in rows] == ["0001", "0002", "0003", "0004", "0005", "0006"]
    assert dict((r[0], r[1]) for r in rows)["0004"] is False
    assert dict((r[0], r[2]) for r in rows)["0003"] == "lossy"
    assert pg.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = 'shop.orders_status_idx'::regclass") is True
    result = pg.scalar("SELECT deploy.down(steps => 6)")
    assert result["ok"] is True, result
    assert pg.sql("SELECT deploy.current_version(), to_regnamespace('shop')") == [(None, None)]


def test_health_follows_release_and_schema(pg, tmp_path, app_factory):
    app = app_factory(pg.dsn)
    # Nothing applied yet: require_version fails with PD005.
    status, body = http_get(app.url + "/health")
    assert status == 503 and body["error"].startswith("PD005"), body

    deploy_through(pg, tmp_path, "0002")
    assert http_get(app.url + "/health")[0] == 200           # default release v1
    app.release("v2")
    status, body = http_get(app.url + "/health")
    assert status == 503 and body["error"].startswith("PD005"), body   # v2 needs 0004

    deploy_through(pg, tmp_path, "0004")
    status, body = http_get(app.url + "/health")
    assert (status, body["release"], body["schema_version"]) == (200, "v2", "0004")
    assert http_get(app.url + "/version") == (200, {"release": "v2", "schema_version": "0004"})

    # v3 after its migrations: the bug (it selects a column the view does not have).
    deploy_through(pg, tmp_path, "0006")
    app.release("v3")
    status, body = http_get(app.url + "/health")
    assert status == 503 and body["error"].startswith("42703") and "name" in body["error"], body
    # v2's code against v3's schema is broken too: customers.name was renamed. Only app + database together recover.
    app.release("v2")
    status, body = http_get(app.url + "/health")
    assert status == 503 and body["error"].startswith("42703"), body

    app.release("v9")
    status, body = http_get(app.url + "/health")
    assert status == 503 and "unknown release" in body["error"], body
    assert app.stop() == 0


def test_health_is_503_when_the_database_is_unreachable(tmp_path, app_factory):
    app = app_factory(f"host=127.0.0.1 port={free_port()} dbname=postgres")   # nothing listens there
    status, body = http_get(app.url + "/health")
    assert status == 503 and body["error"].startswith("database unreachable"), body
    assert http_get(app.url + "/version") == (200, {"release": "v1", "schema_version": None})


@pytest.mark.parametrize("args", [["--port", "70000"], ["--port", "x"], ["--release", "v7"], ["--bogus"], ["--port"]])
def test_app_rejects_bad_arguments(args):
    proc = subprocess.run([APP, *args], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2 and "pgdeploy-example-app:" in proc.stderr, proc.stderr


def run_hook(args, env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGDEPLOY_")}
    env.update(env_extra)
    return subprocess.run([HOOK, *args], env=env, capture_output=True, text=True, timeout=30)


def test_rollback_hook_switches_release_atomically(tmp_path, app_factory):
    app = app_factory(conninfo("postgres"))
    app.release("v3")
    proc = run_hook(["--state-dir", str(app.state), "--url", app.url],
                    {"PGDEPLOY_TO_APP_VERSION": "v2", "PGDEPLOY_FROM_APP_VERSION": "v3"})
    assert proc.returncode == 0, proc.stderr
    assert (app.state / "current_release").read_text() == "v2\n"
    assert http_get(app.url + "/version")[1]["release"] == "v2"
    log = (app.state / "rollback-hook.log").read_text().splitlines()
    assert len(log) == 1 and log[0].endswith("rollback v3 -> v2")
    assert not [p for p in os.listdir(app.state) if p.startswith(".current_release")]   # no temporary file left


@pytest.mark.parametrize("args,env,message", [
    (["--state-dir", "STATE"], {}, "PGDEPLOY_TO_APP_VERSION is not set"),
    (["--state-dir", "STATE"], {"PGDEPLOY_TO_APP_VERSION": "v2; rm -rf /"}, "refusing app version"),
    (["--state-dir", "STATE"], {"PGDEPLOY_TO_APP_VERSION": "../etc"}, "refusing app version"),
    (["--state-dir", "MISSING"], {"PGDEPLOY_TO_APP_VERSION": "v2"}, "does not exist"),
    ([], {"PGDEPLOY_TO_APP_VERSION": "v2"}, "--state-dir is required"),
    (["--state-dir", "STATE", "--what"], {"PGDEPLOY_TO_APP_VERSION": "v2"}, "unknown argument"),
])
def test_rollback_hook_refuses_bad_input(tmp_path, args, env, message):
    state = tmp_path / "state"
    state.mkdir()
    (state / "current_release").write_text("v3\n")
    args = [str(state) if a == "STATE" else str(tmp_path / "missing") if a == "MISSING" else a for a in args]
    proc = run_hook(args, env)
    assert proc.returncode == 2 and message in proc.stderr, (proc.returncode, proc.stderr)
    assert (state / "current_release").read_text() == "v3\n"     # unchanged


def test_rollback_hook_fails_when_the_app_does_not_switch(tmp_path):
    """--url pointing at a service that never reports the target: exit 1 after its bounded wait."""
    state = tmp_path / "state"
    state.mkdir()
    proc = run_hook(["--state-dir", str(state), "--url", f"http://127.0.0.1:{free_port()}"],
                    {"PGDEPLOY_TO_APP_VERSION": "v2"})
    assert proc.returncode == 1 and "does not report release v2" in proc.stderr, proc.stderr
