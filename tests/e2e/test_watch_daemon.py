"""`pgdeploy watch` as a daemon: configuration checking, the systemd protocol (READY, WATCHDOG, RELOADING, STOPPING
on a real NOTIFY_SOCKET), SIGHUP reloads that keep the old configuration when the new one is bad, SIGTERM, a
database that is not there, and the unit files (systemd-analyze verify).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import PGDEPLOY_BIN, SOURCE_DIR, conninfo, free_port, run_pgdeploy
from watch_helpers import (Watcher, events, wait_for, watch_config, write_hook,  # noqa: F401
                           health, watchers)  # health, watchers: fixtures

UNITS = ["pgdeploy-watch.service", "pgdeploy-once.service", "pgdeploy-once.timer"]


# ---- --check-config ---------------------------------------------------------------------------------------------

def test_check_config_accepts_good_files_and_names_the_bad_key(tmp_path):
    for example in ("watch-minimal.json", "watch-full.json"):
        code, out, err = run_pgdeploy("watch", "--check-config", "--config",
                                      os.path.join(SOURCE_DIR, "examples", "config", example))
        assert code == 0, err
        assert "OK" in out

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"checks": [{"name": "api", "type": "tcp", "host": "127.0.0.1", "port": 1}]}))
    code, out, err = run_pgdeploy("watch", "--check-config", "--json", "--config", good)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == 1 and doc["ok"] is True and doc["checks"][0]["name"] == "api"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"checks": [{"type": "tcp", "host": "h", "port": 1},
                                          {"type": "tcp", "host": "h", "port": 1},
                                          {"type": "http", "url": "http://x/", "interval": "often"}]}))
    code, out, err = run_pgdeploy("watch", "--check-config", "--config", bad)
    assert code == 2
    assert "checks[2].interval: must be a positive duration" in err

    code, out, err = run_pgdeploy("watch", "--check-config", "--json", "--config", bad)
    assert code == 2
    doc = json.loads(out)
    assert doc["ok"] is False and "checks[2].interval" in doc["error"]["message"]

    exposed = tmp_path / "exposed.json"
    exposed.write_text(json.dumps({"metrics": {"listen": "0.0.0.0:9187"}}))
    code, _, err = run_pgdeploy("watch", "--check-config", "--config", exposed)
    assert code == 2 and "metrics.listen: must be a loopback address" in err

    code, _, err = run_pgdeploy("watch", "--check-config", "--config", tmp_path / "missing.json")
    assert code == 2 and "cannot read config file" in err
    code, _, err = run_pgdeploy("watch", "--check-config")
    assert code == 2 and "--config" in err
    code, _, err = run_pgdeploy("watch", "--bogus", "--config", good)
    assert code == 2 and "unknown argument" in err


def test_a_bad_config_at_start_up_exits_2_without_running(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"checks": [{"type": "http"}]}')
    code, _, err = run_pgdeploy("watch", "--config", bad, timeout=20)
    assert code == 2
    assert "checks[0].url: is required" in err


# ---- systemd protocol, SIGHUP, SIGTERM -----------------------------------------------------------------------------

class NotifySocket:
    """A NOTIFY_SOCKET like systemd's: a datagram socket that collects the messages sd_notify sends."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages = []

    def collect(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass
        return self.messages

    def wait_for(self, text, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in m for m in self.messages):
                return True
            self.collect(0.1)
        raise AssertionError(f"no {text!r} in {self.messages}")

    def close(self):
        self.sock.close()


def test_systemd_notify_watchdog_reload_and_stop(pg, health, tmp_path):
    hook, _, _ = write_hook(tmp_path, health.bad_file)
    cfg = watch_config(pg, health, hook, tmp_path / "state.json")
    config_path = tmp_path / "watch.json"
    config_path.write_text(json.dumps(cfg))
    notify = NotifySocket(tmp_path / "notify.sock")
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="400000")
    log = open(tmp_path / "watch.log", "w")
    proc = subprocess.Popen([PGDEPLOY_BIN, "watch", "--config", str(config_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        notify.wait_for("READY=1")
        notify.messages.clear()
        notify.collect(1.2)
        # WATCHDOG=1 at half of WATCHDOG_USEC (200 ms): about 6 in 1.2 s; at least 4 allows for a busy machine.
        assert sum(m == "WATCHDOG=1" for m in notify.messages) >= 4, notify.messages

        # A bad file on SIGHUP: RELOADING=1, a warning, READY=1, and the old configuration keeps running.
        config_path.write_text('{"checks": [{"type": "http", "url": "http://x/", "timeout": "forever"}]}')
        notify.messages.clear()
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
        time.sleep(0.5)
        assert proc.poll() is None
        log.flush()
        text = open(tmp_path / "watch.log").read()
        assert "reload refused, keeping the old configuration" in text
        assert "checks[0].timeout" in text
        st = json.load(open(tmp_path / "state.json"))
        assert [c["name"] for c in st["checks"]] == ["api"]

        # A good file on SIGHUP is swapped in.
        cfg["checks"][0]["name"] = "api-renamed"
        config_path.write_text(json.dumps(cfg))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: [c["name"] for c in json.load(open(tmp_path / "state.json"))["checks"]] == ["api-renamed"],
                 timeout=10, what="the reloaded check")

        # SIGTERM: STOPPING=1, exit 0, the state file removed, leadership released.
        notify.messages.clear()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        notify.collect(0.2)
        assert "STOPPING=1" in notify.messages
        assert not os.path.exists(tmp_path / "state.json")
        assert pg.scalar("SELECT count(*) FROM deploy.leases WHERE name = 'watcher_leader' "
                         "AND expires_at > now()") == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        notify.close()


def test_json_logs_are_one_object_per_line(pg, health, tmp_path, watchers):
    hook, _, _ = write_hook(tmp_path, health.bad_file)
    cfg = watch_config(pg, health, hook, tmp_path / "state.json")
    cfg["logging"] = {"level": "debug", "format": "json"}
    w = Watcher(tmp_path, cfg)
    watchers.append(w)
    w.wait_ready(leader=True)
    assert w.stop() == 0
    lines = [json.loads(line) for line in w.log_text().splitlines() if line.strip()]
    assert any("check api: ok" in l["msg"] and l["level"] == "debug" for l in lines)
    assert any("is the leader" in l["msg"] for l in lines)


def test_sigint_stops_cleanly(pg, health, tmp_path, watchers):
    hook, _, _ = write_hook(tmp_path, health.bad_file)
    w = Watcher(tmp_path, watch_config(pg, health, hook, tmp_path / "state.json"))
    watchers.append(w)
    w.wait_ready(leader=True)
    code, out, err = run_pgdeploy("watch", "--status", "--config", w.config_path)
    assert code == 0, err
    assert "leader" in out and "api" in out and "HTTP 200" in out
    w.signal(signal.SIGINT)
    assert w.proc.wait(timeout=10) == 0


def test_database_away_is_not_a_crash(pg, health, tmp_path, watchers):
    """No database at start-up (nothing listens on the port): the watcher runs, keeps checking, reports the loss
    (frozen, in --status), and its postgres check is a critical result, not an exception, held out of the evidence
    while frozen (it never turns failing for a database the watcher cannot reach)."""
    hook, _, _ = write_hook(tmp_path, health.bad_file)
    dead = conninfo(pg.name, host="127.0.0.1", port=str(free_port()), connect_timeout="1")
    cfg = watch_config(pg, health, hook, tmp_path / "state.json")
    cfg["database"]["dsn"] = dead
    cfg["checks"].append({"name": "db", "type": "postgres", "interval": "200ms", "timeout": "500ms",
                          "critical": True})
    w = Watcher(tmp_path, cfg)
    watchers.append(w)
    st = w.wait_state(lambda s: {c["name"]: c for c in s["checks"]}["db"]["freeze_ignored"] >= 5, timeout=15,
                      what="the postgres check to fail while frozen")
    assert st["connected"] is False and st["leader"] is False
    assert st["frozen"] is True and st["freeze"]["reason"] == "database_unreachable", st["freeze"]
    checks = {c["name"]: c for c in st["checks"]}
    assert checks["api"]["state"] == "ok"
    assert checks["db"]["last"]["status"] == "critical"
    assert checks["db"]["state"] != "failing"
    assert st["last_decision"]["reason"] == "database_frozen", st["last_decision"]
    time.sleep(1.5)
    assert w.proc.poll() is None
    assert "cannot connect to the database" in w.log_text()
    if pg.password:
        assert pg.password not in w.log_text()
    assert w.stop() == 0


def test_status_without_a_running_watcher(pg, tmp_path):
    cfg_path = tmp_path / "w.json"
    cfg_path.write_text(json.dumps({"state_file": str(tmp_path / "none.json")}))
    code, _, err = run_pgdeploy("watch", "--status", "--config", cfg_path)
    assert code == 1 and "is `pgdeploy watch` running?" in err
    cfg_path.write_text("{}")
    code, _, err = run_pgdeploy("watch", "--status", "--config", cfg_path)
    assert code == 2 and "state_file" in err


# ---- unit files --------------------------------------------------------------------------------------------------

def test_systemd_units_verify(tmp_path):
    """systemd-analyze verify on the shipped units (ExecStart pointed at the built binary, since verify checks that
    the program exists). verify exits 0 even on parse warnings, so any output at all fails the test; a broken copy
    shows that the check can fail."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd"
    src = os.path.join(SOURCE_DIR, "watcher", "systemd")
    paths = []
    for unit in UNITS:
        text = open(os.path.join(src, unit)).read().replace("/usr/local/bin/pgdeploy", PGDEPLOY_BIN)
        (tmp_path / unit).write_text(text)
        paths.append(str(tmp_path / unit))
    proc = subprocess.run([analyze, "verify", "--man=no", *paths], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stderr

    watch_unit = open(os.path.join(src, "pgdeploy-watch.service")).read()
    for line in ("Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "RestartPreventExitStatus=2"):
        assert line in watch_unit
    assert "OnUnitActiveSec=" in open(os.path.join(src, "pgdeploy-once.timer")).read()

    broken = tmp_path / "broken.service"
    broken.write_text(open(paths[0]).read().replace("Type=notify", "Type=notifyy"))
    proc = subprocess.run([analyze, "verify", "--man=no", str(broken)], capture_output=True, text=True, timeout=60)
    assert "notifyy" in proc.stderr


def test_lost_connection_reconnects_and_leads_again(pg, health, tmp_path, watchers):
    """The watcher's session is terminated under it (a failover, a DBA, a network cut): no crash, it stops acting as
    leader at once, freezes its decisions, reconnects with backoff and renews its leadership lease (its own, still
    live: no take-over needed)."""
    hook, _, _ = write_hook(tmp_path, health.bad_file)
    w = Watcher(tmp_path, watch_config(pg, health, hook, tmp_path / "state.json"))
    watchers.append(w)
    w.wait_ready(leader=True)
    assert pg.sql("SELECT holder FROM deploy.leases WHERE name = 'watcher_leader'") == [("w1",)]
    pids = [r[0] for r in pg.sql("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND application_name = 'pgdeploy-watch'")]
    assert len(pids) == 1
    pg.sql("SELECT pg_terminate_backend(%s)", (pids[0],))
    wait_for(lambda: "database connection lost" in w.log_text(), timeout=10, what="the loss to be noticed")

    def new_pid():
        rows = pg.sql("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                      "AND application_name = 'pgdeploy-watch'")
        return rows[0][0] if rows and rows[0][0] != pids[0] else None

    assert wait_for(new_pid, timeout=10, what="a new session") != pids[0]
    # The loss and the reconnection may both fall between two writes of the state file: wait for the log.
    wait_for(lambda: "this watcher (\"w1\") is the leader" in w.log_text().split("database connection lost")[1],
             timeout=10, what="the reconnected watcher to lead")
    w.wait_state(lambda st: st["connected"] and st["leader"] and not st["frozen"], timeout=10,
                 what="reconnected leader")
    assert pg.sql("SELECT holder FROM deploy.leases WHERE name = 'watcher_leader' AND expires_at > now()") == [("w1",)]
    freezes = wait_for(lambda: events(pg, "watcher_db_freeze"), timeout=10, what="the freeze event")
    assert freezes[0][3]["reason"] == "connection_lost" and freezes[0][3]["watcher_id"] == "w1", freezes
    assert w.proc.poll() is None
    assert w.stop() == 0


def test_metrics_address_in_use_is_a_start_up_error(pg, health, tmp_path):
    hook, _, _ = write_hook(tmp_path, health.bad_file)
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        cfg = watch_config(pg, health, hook, tmp_path / "state.json",
                           metrics=f"127.0.0.1:{busy.getsockname()[1]}")
        path = tmp_path / "w.json"
        path.write_text(json.dumps(cfg))
        code, _, err = run_pgdeploy("watch", "--config", path, timeout=20)
        assert code == 2
        assert "cannot listen on 127.0.0.1" in err
    finally:
        busy.close()
