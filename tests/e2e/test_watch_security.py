"""The watcher against the attacks of the security issue, each performed for real:

- a hook (rollback, alert) and a command check dump their environment while the watcher runs with PGPASSWORD set
  and a password in its DSN: nothing but the documented minimal set, the allow-list and PGDEPLOY_* reaches them;
- programs print the password (verbatim, in a URL, as password=...): it never appears in the watcher's log, its
  stdout, the state file, /status.json or the deploy.events rows it writes; a hook's output stays out of the events
  deploy_reader reads;
- a symlink planted at the state file's path is replaced, not written through, and the file's mode is 0640 whatever
  the umask.

The password is the environment's PGPASSWORD (pg_virtualenv and the sandboxes set one); without one, a generated
value is put into the watcher's environment and DSN (the server must then accept it or ignore it, as trust does).
"""
import json
import os
import signal
import stat
import subprocess
import urllib.request
import uuid

import pytest

from conftest import PGDEPLOY_BIN, conninfo, free_port, run_pgdeploy, wait_for
from watch_helpers import deploy, health, watch_config  # noqa: F401 (health: a fixture)

SECRET = os.environ.get("PGPASSWORD") or "pgdeploy-e2e-" + uuid.uuid4().hex
HOOK_URL_PASSWORD = "hookurl-" + uuid.uuid4().hex[:10]  # printed by programs inside a URL
CANARY = "HOOK-OUTPUT-CANARY-" + uuid.uuid4().hex[:8]  # a hook's output: admins only
V1 = [("0001", "CREATE TABLE public.sec_t (id int PRIMARY KEY)", "DROP TABLE public.sec_t")]
V2 = [("0002", "ALTER TABLE public.sec_t ADD COLUMN note text", "ALTER TABLE public.sec_t DROP COLUMN note")]

ENV_DUMP = """#!/bin/sh
# Dumps the environment as JSON lines (one object per run), then prints what a careless program prints: the
# password in a URL and verbatim (read from a file, as a program that knows it some other way would).
python3 -c 'import json, os; print(json.dumps(dict(os.environ)))' >> '{log}'
echo "{canary} connecting to postgresql://deploy:{url_pw}@db.internal/app with $(cat '{secret_file}')"
{tail}
"""


def script(path, log, secret_file, tail="exit 0", canary=CANARY):
    path.write_text(ENV_DUMP.format(log=log, canary=canary, url_pw=HOOK_URL_PASSWORD, secret_file=secret_file,
                                    tail=tail))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def dumps(log):
    with open(log) as f:
        return [json.loads(line) for line in f if line.strip()]


def watcher_env(**extra):
    env = dict(os.environ)
    env["PGPASSWORD"] = SECRET
    env.update(extra)
    return env


def all_event_text(pg):
    return pg.scalar("SELECT coalesce(string_agg(kind || ' ' || coalesce(details::text, ''), E'\\n' ORDER BY id), '') "
                     "FROM deploy.events")


def marker_text(pg):
    return pg.scalar("SELECT coalesce(string_agg(reason || ' ' || coalesce(last_error::text, '') || ' ' || "
                     "coalesce(details::text, ''), E'\\n'), '') FROM deploy.rollback_markers")


def assert_minimal(env, allowed):
    """env: a program's whole environment; allowed: names besides the minimal set and PGDEPLOY_*."""
    assert "PGPASSWORD" not in env
    assert "UNRELATED_TOKEN" not in env and "NOTIFY_SOCKET" not in env
    assert env["PATH"] == "/usr/bin:/bin" or "PATH" in allowed
    extra = {k for k in env if not k.startswith("PGDEPLOY_")} - {"PATH", "HOME", "LANG", "LC_ALL", "TZ"} - allowed
    # python3 -c adds nothing; the shell may add PWD/SHLVL/_ (dash adds PWD only).
    assert extra <= {"PWD", "SHLVL", "_", "OLDPWD"}, extra
    for k, v in env.items():
        assert SECRET not in v, k


def test_watcher_programs_get_a_minimal_environment_and_secrets_never_leak(pg, health, tmp_path):
    deploy(pg, "v1", V1)
    deploy(pg, "v2", V2)
    secret_file = tmp_path / "secret-from-elsewhere"
    secret_file.write_text(SECRET)
    hook_log, check_log = tmp_path / "hook-env.jsonl", tmp_path / "check-env.jsonl"
    hook = script(tmp_path / "rollback-hook", hook_log, secret_file, tail=f"rm -f '{health.bad_file}'")
    # A critical command check that fails while the release is bad, printing the password three ways.
    check = script(tmp_path / "check", check_log, secret_file, canary="CHECK-OUTPUT",
                   tail=f"if [ -e '{health.bad_file}' ]; then exit 2; fi; exit 0")
    cfg = watch_config(pg, health, hook, tmp_path / "state.json")
    cfg["database"]["dsn"] = conninfo(pg.name, password=SECRET)
    cfg["checks"].append({"name": "cmd", "type": "command", "argv": [check], "interval": "200ms", "timeout": "5s",
                          "failure_threshold": 3, "success_threshold": 2, "error_rate": False})
    cfg["hook_environment"] = {"pass": ["ALLOWED_VAR"], "set": {"DEPLOY_ENV": "prod"}}
    cfg["metrics"] = {"listen": f"127.0.0.1:{free_port()}"}
    (tmp_path / "watch.json").write_text(json.dumps(cfg))
    out, err = open(tmp_path / "stdout", "w"), open(tmp_path / "stderr", "w")
    proc = subprocess.Popen([PGDEPLOY_BIN, "watch", "--config", str(tmp_path / "watch.json")], stdout=out, stderr=err,
                            env=watcher_env(ALLOWED_VAR="yes", UNRELATED_TOKEN="tok-" + uuid.uuid4().hex,
                                            NOTIFY_SOCKET=str(tmp_path / "no-such-socket")))
    try:
        wait_for(lambda: os.path.exists(tmp_path / "state.json"), what="the state file")
        health.make_unhealthy()
        wait_for(lambda: pg.scalar("SELECT count(*) FROM deploy.events WHERE kind = 'watcher_rollback_done'"),
                 timeout=40, what="the rollback and the recovery")
        state_text = (tmp_path / "state.json").read_text()
        status_json = urllib.request.urlopen(f"http://{cfg['metrics']['listen']}/status.json", timeout=5).read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        out.close()
        err.close()
    log = (tmp_path / "stderr").read_text() + (tmp_path / "stdout").read_text()

    hook_envs, check_envs = dumps(hook_log), dumps(check_log)
    assert len(hook_envs) == 1 and len(check_envs) >= 3
    for env in hook_envs + check_envs:
        assert_minimal(env, {"ALLOWED_VAR", "DEPLOY_ENV"})
        assert env["ALLOWED_VAR"] == "yes" and env["DEPLOY_ENV"] == "prod"
    assert hook_envs[0]["PGDEPLOY_FROM_APP_VERSION"] == "v2" and hook_envs[0]["PGDEPLOY_TO_APP_VERSION"] == "v1"
    assert hook_envs[0]["PGDEPLOY_WATCHER_ID"] == "w1"

    # The password, verbatim or in a URL, appears nowhere the watcher writes; the scrubbed forms show the path ran.
    events_text, markers = all_event_text(pg), marker_text(pg)
    for where, text in (("log", log), ("state file", state_text), ("/status.json", status_json.decode()),
                        ("events", events_text), ("markers", markers)):
        assert SECRET not in text, where
        assert HOOK_URL_PASSWORD not in text, where
    assert "postgresql://deploy:***@db.internal/app with ***" in events_text  # the check's detail, scrubbed
    assert "postgresql://deploy:***@db.internal/app with ***" in log          # the hook's output, logged scrubbed
    # The hook's output is for administrators: in the log, never in the events deploy_reader reads.
    assert CANARY in log
    assert CANARY not in events_text and CANARY not in markers
    done = pg.sql("SELECT details, private_details::text FROM deploy.events WHERE kind = 'watcher_hook_done'")
    assert len(done) == 1 and "output" not in done[0][0] and done[0][0]["output_bytes"] > 0
    # ... and kept for them in events.private_details, the column deploy_reader cannot select, scrubbed too.
    assert CANARY in done[0][1] and SECRET not in done[0][1]


def test_alert_and_failing_hook_get_the_minimal_environment_and_no_output_in_events(pg, health, tmp_path):
    """pgdeploy once: the hook fails (its output must not become the marker's error), the alert fires."""
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", V2)
    pg.sql("ALTER DATABASE " + pg.name + " SET pg_deploy.max_rollback_attempts = 1")
    secret_file = tmp_path / "secret-from-elsewhere"
    secret_file.write_text(SECRET)
    hook = script(tmp_path / "hook", tmp_path / "hook-env.jsonl", secret_file, tail="exit 3")
    alert = script(tmp_path / "alert", tmp_path / "alert-env.jsonl", secret_file, canary="ALERT-OUTPUT")
    cfg = watch_config(pg, health, hook, tmp_path / "state.json")
    cfg["database"]["dsn"] = conninfo(pg.name, password=SECRET)
    cfg["alert"] = {"command": [alert]}
    (tmp_path / "once.json").write_text(json.dumps(cfg))
    marker = pg.scalar("SELECT deploy.request_rollback('bad release', %s)", (d2,))
    proc = subprocess.run([PGDEPLOY_BIN, "once", "--config", str(tmp_path / "once.json"), "--json"],
                          capture_output=True, text=True, timeout=120, env=watcher_env(UNRELATED_TOKEN="t"))
    assert proc.returncode == 10, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["markers"][0]["result"] == "needs_attention"
    assert doc["markers"][0]["error"] == "app rollback hook failed: exit 3"
    alert_envs = dumps(tmp_path / "alert-env.jsonl")
    assert [e["PGDEPLOY_ALERT_KIND"] for e in alert_envs] == ["needs_attention"]
    assert_minimal(alert_envs[0], set())
    assert alert_envs[0]["PGDEPLOY_MARKER_ID"] == str(marker)
    assert_minimal(dumps(tmp_path / "hook-env.jsonl")[0], set())
    text = all_event_text(pg) + marker_text(pg) + proc.stdout + proc.stderr
    assert SECRET not in text and HOOK_URL_PASSWORD not in text
    assert CANARY not in all_event_text(pg) + marker_text(pg) + proc.stdout
    assert CANARY in proc.stderr  # the watcher's log keeps it for the operator
    failed = pg.sql("SELECT details FROM deploy.events WHERE kind = 'watcher_hook_failed'")[0][0]
    assert failed["error"] == "app rollback hook failed: exit 3" and "output" not in failed


def start_watcher(pg, health, tmp_path, umask, state_file):
    cfg = watch_config(pg, health, "/bin/true", state_file)
    path = tmp_path / f"watch-{umask:o}.json"
    path.write_text(json.dumps(cfg))
    return subprocess.Popen([PGDEPLOY_BIN, "watch", "--config", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=lambda: os.umask(umask))


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_state_file_replaces_a_planted_symlink_and_has_mode_0640(pg, health, tmp_path, umask):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    state = tmp_path / "run" / "state.json"
    state.parent.mkdir()
    os.symlink(victim, state)  # planted where the watcher writes
    proc = start_watcher(pg, health, tmp_path, umask, state)
    try:
        wait_for(lambda: not os.path.islink(state) and os.path.exists(state), what="the state file")
        wait_for(lambda: len(os.listdir(state.parent)) == 1, what="no temporary file left")
        st = os.lstat(state)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
        assert victim.read_text() == "precious\n"
        doc = json.loads(state.read_text())
        assert doc["schema_version"] == 1
        code, out, _ = run_pgdeploy("watch", "--status", "--config", tmp_path / f"watch-{umask:o}.json", "--json")
        assert code == 0 and json.loads(out)["watcher_id"] == "w1"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert victim.read_text() == "precious\n"
    assert not os.path.exists(state)  # removed on a clean stop


def test_state_file_that_cannot_be_written_is_reported_once_and_the_watcher_goes_on(pg, health, tmp_path):
    (tmp_path / "not-a-directory").write_text("x")
    state = tmp_path / "not-a-directory" / "state.json"  # ENOTDIR, for root too
    cfg = watch_config(pg, health, "/bin/true", state)
    (tmp_path / "w.json").write_text(json.dumps(cfg))
    log = tmp_path / "w.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([PGDEPLOY_BIN, "watch", "--config", str(tmp_path / "w.json")],
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for(lambda: "is the leader" in log.read_text(), what="the watcher to start")
            wait_for(lambda: log.read_text().count("check api") >= 10, what="a few cycles")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=15)
    text = log.read_text()
    assert text.count("cannot write the state file") == 1, text
    assert "Not a directory" in text
    assert code == 0


def test_check_config_refuses_the_database_password_in_hook_environment(tmp_path):
    for hook_env, path in (({"pass": ["PGPASSWORD"]}, "hook_environment.pass[0]"),
                           ({"set": {"PGPASSWORD": "x"}}, "hook_environment.set.PGPASSWORD"),
                           ({"pass": ["HOME"], "extra": []}, "hook_environment.extra: unknown key")):
        cfg = tmp_path / "c.json"
        cfg.write_text(json.dumps({"hook_environment": hook_env}))
        code, out, err = run_pgdeploy("watch", "--check-config", "--config", cfg, "--json")
        assert code == 2, (hook_env, out, err)
        assert path in json.loads(out)["error"]["message"]
