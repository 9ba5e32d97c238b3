"""`pgdeploy once`: one rollback cycle for a systemd timer. Pending markers are claimed and executed with the app
hook; the exit code says 0 (nothing to do / done and healthy), 1 (an attempt failed, retried next cycle) or 10 (needs
attention: attempts used up, or health did not recover).
"""
import json

import pytest

from conftest import conninfo, free_port, run_pgdeploy
from watch_helpers import deploy, events, hook_entries, watch_config, write_alert, write_hook, health  # noqa: F401 (health: a fixture)

V1 = [("0001", "CREATE TABLE public.once_t (id int PRIMARY KEY)", "DROP TABLE public.once_t")]
V2 = [("0002", "ALTER TABLE public.once_t ADD COLUMN note text", "ALTER TABLE public.once_t DROP COLUMN note")]


def write_config(tmp_path, cfg):
    path = tmp_path / "once.json"
    path.write_text(json.dumps(cfg))
    return path


def state_of(pg, d):
    return pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d,))


def test_once_executes_a_pending_marker_with_the_hook(pg, health, tmp_path):
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", V2)
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
    cfg = watch_config(pg, health, hook, tmp_path / "state.json")
    path = write_config(tmp_path, cfg)

    code, out, err = run_pgdeploy("once", "--config", path, "--json")
    assert code == 0, err
    assert json.loads(out)["markers"] == []           # nothing to do

    health.make_unhealthy()                            # the hook switches the app back (removes the bad file)
    marker = pg.scalar("SELECT deploy.request_rollback('release v2 is bad', %s)", (d2,))
    code, out, err = run_pgdeploy("once", "--config", path, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == 1 and doc["ok"] is True and doc["recovered"] is True
    assert [(m["marker_id"], m["result"]) for m in doc["markers"]] == [(marker, "done")]
    assert state_of(pg, d2) == "rolled_back"
    entries = hook_entries(hook_log)
    assert [e["phase"] for e in entries] == ["start", "done"]
    assert (entries[0]["from_app"], entries[0]["to_app"], entries[0]["marker"]) == ("v2", "v1", str(marker))
    assert events(pg, "watcher_rollback_done")[0][3]["recovered"] is True

    code, out, err = run_pgdeploy("once", "--config", path)
    assert code == 0 and "nothing to do" in out
    assert len(hook_entries(hook_log)) == 2


def test_once_failing_hook_keeps_the_marker_then_needs_attention(pg, health, tmp_path):
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", V2)
    hook, hook_log, fail_file = write_hook(tmp_path, health.bad_file)
    open(fail_file, "w").close()
    alert, alert_log = write_alert(tmp_path)
    path = write_config(tmp_path, watch_config(pg, health, hook, tmp_path / "state.json",
                                               extra={"alert": {"command": [alert]}}))
    marker = pg.scalar("SELECT deploy.request_rollback('bad', %s)", (d2,))

    results = []
    for _ in range(3):   # pg_deploy.max_rollback_attempts = 3
        code, out, err = run_pgdeploy("once", "--config", path, "--json")
        results.append((code, json.loads(out)["markers"][0]["result"]))
    assert results == [(1, "failed"), (1, "failed"), (10, "needs_attention")], results
    # app_first: the database was never touched while the app could not be switched back.
    assert state_of(pg, d2) == "succeeded"
    assert pg.scalar("SELECT state FROM deploy.rollback_markers WHERE id = %s", (marker,)) == "needs_attention"
    assert [e["attempt"] for e in hook_entries(hook_log)] == ["1", "2", "3"]
    assert len(events(pg, "watcher_hook_failed")) == 3
    # Only the last cycle needed a person.
    assert hook_entries(alert_log) == [{"kind": "needs_attention", "deployment": str(d2), "marker": str(marker),
                                        "watcher": "w1"}]
    code, out, _ = run_pgdeploy("once", "--config", path, "--json")
    assert code == 0 and json.loads(out)["markers"] == []   # needs_attention is for a person now


def test_once_database_first_order(pg, health, tmp_path):
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", V2)
    hook, hook_log, fail_file = write_hook(tmp_path, health.bad_file)
    open(fail_file, "w").close()
    cfg = watch_config(pg, health, hook, tmp_path / "state.json")
    cfg["rollback"]["order"] = "database_first"
    path = write_config(tmp_path, cfg)
    pg.sql("SELECT deploy.request_rollback('bad', %s)", (d2,))
    code, out, err = run_pgdeploy("once", "--config", path, "--json")
    # The database went back first; the hook then failed: a person must finish the app side.
    assert code == 10, err
    assert state_of(pg, d2) == "rolled_back"
    kinds = [k for (k, _, _, _) in events(pg)]
    assert kinds.index("deployment_rolled_back") < kinds.index("watcher_hook_started")
    assert "watcher_needs_attention" in kinds


def test_once_reports_unrecovered_health(pg, health, tmp_path):
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", V2)
    hook, _, _ = write_hook(tmp_path, health.bad_file)
    cfg = watch_config(pg, health, hook, tmp_path / "state.json")
    cfg["checks"][0]["url"] = f"http://127.0.0.1:{free_port()}/health"   # never healthy again
    cfg["decision"]["health_recovery"] = "1s"
    path = write_config(tmp_path, cfg)
    pg.sql("SELECT deploy.request_rollback('bad', %s)", (d2,))
    code, out, err = run_pgdeploy("once", "--config", path, "--json")
    assert code == 10, err
    doc = json.loads(out)
    assert doc["recovered"] is False and doc["markers"][0]["result"] == "done"
    assert events(pg, "watcher_rollback_unrecovered")


def test_once_usage_and_connection_errors(pg, health, tmp_path):
    code, _, err = run_pgdeploy("once")
    assert code == 2 and "--config" in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"rollback": {"order": "later"}}')
    code, _, err = run_pgdeploy("once", "--config", bad)
    assert code == 2 and "rollback.order" in err
    hook, _, _ = write_hook(tmp_path, health.bad_file)
    cfg = watch_config(pg, health, hook, tmp_path / "state.json")
    cfg["database"]["dsn"] = conninfo(pg.name, host="127.0.0.1", port=str(free_port()), connect_timeout="2")
    path = write_config(tmp_path, cfg)
    code, out, err = run_pgdeploy("once", "--config", path, "--json")
    assert code == 3, err
    assert json.loads(out)["ok"] is False
    if pg.password:
        assert pg.password not in err + out


def test_once_kills_a_hook_that_outlives_its_timeout(pg, health, tmp_path):
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", V2)
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file, sleep_first=30)
    cfg = watch_config(pg, health, hook, tmp_path / "state.json")
    cfg["rollback"]["timeout"] = "1s"
    path = write_config(tmp_path, cfg)
    pg.sql("SELECT deploy.request_rollback('bad', %s)", (d2,))
    code, out, err = run_pgdeploy("once", "--config", path, "--json", timeout=20)
    assert code == 1, err
    m = json.loads(out)["markers"][0]
    assert m["result"] == "failed" and "timeout" in m["error"]
    assert state_of(pg, d2) == "succeeded"          # app_first: no database revert without the app
    failed = events(pg, "watcher_hook_failed")
    assert len(failed) == 1 and "timeout" in failed[0][3]["error"]
    # The next cycle (attempt 2, no sleep in this hook) completes it.
    code, out, err = run_pgdeploy("once", "--config", path, "--json", timeout=20)
    assert code == 0, err
    assert state_of(pg, d2) == "rolled_back"
    assert [e["attempt"] for e in hook_entries(hook_log) if e["phase"] == "start"] == ["1", "2"]


def test_once_with_the_deploy_lock_held_fails_the_attempt_and_retries(pg, health, tmp_path):
    """A deploy in progress holds the deploy lock: execute_rollback is refused (55P03) before it records anything;
    the attempt is recorded as failed (lease released, retry budget counted) and the next cycle completes it."""
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", V2)
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
    cfg = watch_config(pg, health, hook, tmp_path / "state.json")
    cfg["database"]["dsn"] = pg.dsn + " options='-c pg_deploy.lock_wait=200ms'"
    path = write_config(tmp_path, cfg)
    marker = pg.scalar("SELECT deploy.request_rollback('bad', %s)", (d2,))
    holder = pg.connect()
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(1346651472, 1)")
    code, out, err = run_pgdeploy("once", "--config", path, "--json", timeout=30)
    assert code == 1, err
    m = json.loads(out)["markers"][0]
    assert m["result"] == "failed" and "deploy lock" in m["error"], m
    assert pg.sql("SELECT state, attempts, holder IS NOT NULL, lease_until FROM deploy.rollback_markers "
                  "WHERE id = %s", (marker,)) == [("failed", 1, True, None)]
    assert state_of(pg, d2) == "succeeded"
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock(1346651472, 1)")
    code, out, err = run_pgdeploy("once", "--config", path, "--json", timeout=30)
    assert code == 0, err
    assert state_of(pg, d2) == "rolled_back"
    # The hook's run of the first cycle is remembered: it is not run again for the retry.
    assert [e["phase"] for e in hook_entries(hook_log)] == ["start", "done"]
