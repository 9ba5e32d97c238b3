"""Helpers for the watcher's end-to-end tests (tests/e2e/test_watch_*.py).

- ``HealthServer``: a real HTTP endpoint on 127.0.0.1 (python http.server in a thread, port 0). It answers 503 while
  its ``bad_file`` exists and 200 "ok" otherwise, so the app rollback hook can make it healthy again, as a real
  hook that switches the service back would.
- ``write_hook``: a small executable hook script that appends one JSON line of its PGDEPLOY_* environment to a log
  ("start" before it works, "done" after), can sleep (to be killed mid-rollback) and removes the bad file.
- ``Watcher``: a running ``pgdeploy watch`` process with its config, log and state file.
- ``deploy``: registers migrations and applies them through ``deploy.up`` as one deployment of an app version.
"""
import json
import os
import signal
import stat
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import PGDEPLOY_BIN, wait_for  # noqa: F401  (wait_for is re-exported to the watcher suites)


class HealthServer:
    def __init__(self, bad_file):
        self.bad_file = str(bad_file)
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                outer.requests += 1
                bad = os.path.exists(outer.bad_file)
                body = b"unhealthy" if bad else b"ok"
                self.send_response(503 if bad else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/health"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def make_unhealthy(self):
        with open(self.bad_file, "w") as f:
            f.write("bad release\n")

    def make_healthy(self):
        if os.path.exists(self.bad_file):
            os.remove(self.bad_file)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


HOOK_TEMPLATE = """#!/bin/sh
# Test hook: logs its environment, optionally sleeps on its first attempt, switches the app back (removes BAD).
LOG='{log}'
BAD='{bad}'
entry() {{
  printf '{{"phase":"%s","attempt":"%s","marker":"%s","deployment":"%s","from_app":"%s","to_app":"%s","from_schema":"%s","to_schema":"%s","pid":%s}}\\n' \\
    "$1" "$PGDEPLOY_ATTEMPT" "$PGDEPLOY_MARKER_ID" "$PGDEPLOY_DEPLOYMENT_ID" "$PGDEPLOY_FROM_APP_VERSION" \\
    "$PGDEPLOY_TO_APP_VERSION" "$PGDEPLOY_FROM_SCHEMA_VERSION" "$PGDEPLOY_TO_SCHEMA_VERSION" "$$" >> "$LOG"
}}
entry start
if [ "$PGDEPLOY_ATTEMPT" = "1" ] && [ {sleep_first} -gt 0 ]; then sleep {sleep_first}; fi
if [ -e '{fail_file}' ]; then echo "hook refuses: fail file present" >&2; exit 3; fi
rm -f "$BAD"
entry done
exit 0
"""


def write_hook(tmp_path, bad_file, sleep_first=0):
    """Returns (hook path, log path, fail-file path): the hook exits 3 while the fail file exists."""
    log = tmp_path / "hook.log"
    fail_file = tmp_path / "hook.fail"
    hook = tmp_path / "rollback-hook"
    hook.write_text(HOOK_TEMPLATE.format(log=log, bad=bad_file, sleep_first=int(sleep_first), fail_file=fail_file))
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(hook), str(log), str(fail_file)


ALERT_TEMPLATE = """#!/bin/sh
printf '{{"kind":"%s","deployment":"%s","marker":"%s","watcher":"%s"}}\\n' "$PGDEPLOY_ALERT_KIND" \\
  "$PGDEPLOY_DEPLOYMENT_ID" "$PGDEPLOY_MARKER_ID" "$PGDEPLOY_WATCHER_ID" >> '{log}'
printf '%s\\n' "$PGDEPLOY_ALERT_MESSAGE" >> '{log}.messages'
"""


def write_alert(tmp_path):
    """An alert command that appends one JSON line per alert (and the message to LOG.messages); returns (path, log)."""
    log = tmp_path / "alerts.log"
    script = tmp_path / "alert"
    script.write_text(ALERT_TEMPLATE.format(log=log))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), str(log)


def hook_entries(log):
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f if line.strip()]


def watch_config(pg, health, hook, state_file, watcher_id="w1", interval="200ms", extra=None, metrics=None):
    cfg = {
        "watcher_id": watcher_id,
        "database": {"dsn": pg.dsn, "poll_interval": "500ms", "reconnect_min": "100ms", "reconnect_max": "1s"},
        "checks": [
            {"name": "api", "type": "http", "url": health.url, "interval": interval, "timeout": "1s",
             "failure_threshold": 3, "warning_threshold": 2, "success_threshold": 2,
             "error_rate": {"threshold": 0.5, "window": "1m", "min_samples": 50}},
        ],
        "decision": {"watch_window": "10m", "cooldown": "0s", "health_recovery": "20s"},
        "rollback": {"command": [hook], "timeout": "30s", "order": "app_first", "retry_backoff": "1s",
                     "retry_backoff_max": "2s", "lease": "30s"},
        "logging": {"level": "debug", "format": "plain"},
        # A short leadership lease (renewed every poll): a killed leader is replaced within seconds.
        "leader": {"ttl": "2s"},
        "state_file": str(state_file),
    }
    if metrics:
        cfg["metrics"] = {"listen": metrics}
    for k, v in (extra or {}).items():
        cfg[k] = v
    return cfg


class Watcher:
    """`pgdeploy watch --config FILE` as a child process; stderr (the log) goes to a file."""

    def __init__(self, tmp_path, cfg, name="watcher"):
        self.cfg = cfg
        self.config_path = tmp_path / f"{name}.json"
        self.log_path = tmp_path / f"{name}.log"
        self.state_file = cfg.get("state_file")
        self.write_config(cfg)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([PGDEPLOY_BIN, "watch", "--config", str(self.config_path)],
                                     stdout=subprocess.DEVNULL, stderr=self.log)

    def write_config(self, cfg):
        self.config_path.write_text(json.dumps(cfg, indent=2))

    def state(self):
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def wait_state(self, predicate, timeout=15, what="state"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.state()
            if st is not None and predicate(st):
                return st
            if self.proc.poll() is not None:
                raise AssertionError(f"watcher exited with {self.proc.returncode} waiting for {what}:\n"
                                     + self.log_text())
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last state: {self.state()}\n" + self.log_text())

    def wait_ready(self, leader=None, timeout=15):
        def ok(st):
            if not st.get("connected"):
                return False
            if leader is not None and st.get("leader") != leader:
                return False
            return all(c.get("last") for c in st.get("checks", []))
        return self.wait_state(ok, timeout, "the watcher to be ready")

    def log_text(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("watcher did not stop on SIGTERM\n" + self.log_text())
        return self.proc.returncode

    def close(self):
        self.kill()
        self.log.close()


def deploy(pg, app_version, migrations):
    """migrations: [(version, up_sql, down_sql or None)]; registers and applies them as one deployment."""
    for version, up, down in migrations:
        pg.sql("SELECT deploy.register(%s, %s, %s, %s)", (version, "m" + version, up, down))
    result = pg.scalar("SELECT deploy.up(app_version => %s)", (app_version,))
    assert result["ok"], result
    return result["deployment_id"]


def events(pg, kind=None, deployment_id=None):
    q = "SELECT kind, deployment_id, marker_id, details FROM deploy.events WHERE true"
    params = []
    if kind:
        q += " AND kind = %s"
        params.append(kind)
    if deployment_id:
        q += " AND deployment_id = %s"
        params.append(deployment_id)
    return pg.sql(q + " ORDER BY id", params)


# Fixtures shared by the watcher suites (import them by name into a test module).
@pytest.fixture
def health(tmp_path):
    server = HealthServer(tmp_path / "bad")
    yield server
    server.close()


@pytest.fixture
def watchers():
    started = []
    yield started
    for w in started:
        w.close()
