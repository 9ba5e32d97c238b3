"""Concurrent reverts through rollback markers: `pgdeploy once` and the watcher execute a marker whose revert stops at
a down script with DROP INDEX CONCURRENTLY, run its steps at top level (renewing the lease) and finish the marker; a
`pgdeploy once` killed in the middle leaves its lease to expire, and the next holder resumes the same rollback
deployment. The release and the helpers are in revert_helpers.py."""
import json
import signal

from conftest import run_pgdeploy, wait_for
from revert_helpers import assert_back_on_v1, backend_gone, deploy_two_releases, start_blocked_drop
from watch_helpers import Watcher, events, hook_entries, watch_config, write_hook, health, watchers  # noqa: F401


def once_config(pg, health, tmp_path, watcher_id="w1", lease="30s"):
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
    cfg = watch_config(pg, health, hook, tmp_path / "state.json", watcher_id=watcher_id)
    cfg["rollback"]["lease"] = lease
    path = tmp_path / f"once-{watcher_id}.json"
    path.write_text(json.dumps(cfg))
    return path, hook_log


def test_once_executes_a_marker_whose_revert_has_steps(pg, write_migrations, health, tmp_path):
    _, v2 = deploy_two_releases(pg, write_migrations)
    path, hook_log = once_config(pg, health, tmp_path)
    health.make_unhealthy()
    marker = pg.scalar("SELECT deploy.request_rollback('release v2 is bad', %s)", (v2,))
    code, out, err = run_pgdeploy("once", "--config", str(path), "--json")
    assert code == 0, (out, err)
    doc = json.loads(out)
    [m] = doc["markers"]
    assert (m["marker_id"], m["result"]) == (marker, "done"), m
    assert [(s["version"], s["ok"]) for s in m["steps"]] == [("0002", True)]
    assert m["rollback"]["state"] == "done" and m["rollback"]["rollback"]["state"] == "succeeded"
    assert_back_on_v1(pg, v2)
    assert pg.sql("SELECT state, attempts FROM deploy.rollback_markers WHERE id = %s", (marker,)) == [("done", 1)]
    kinds = [k for (k, _, _, _) in events(pg) if k.startswith("marker_")]
    assert kinds == ["marker_requested", "marker_claimed", "marker_awaiting_steps", "marker_done"], kinds
    assert [e["phase"] for e in hook_entries(hook_log)] == ["start", "done"]


def test_killed_once_leaves_its_lease_and_the_next_holder_resumes(pg, write_migrations, health, tmp_path):
    """SIGKILL `pgdeploy once` while the marker's DROP INDEX CONCURRENTLY waits: the marker stays in_progress under the
    dead holder's lease. Once it expired, another holder claims the marker (attempt 2) and resumes the same rollback
    deployment, which finishes."""
    _, v2 = deploy_two_releases(pg, write_migrations)
    first, _ = once_config(pg, health, tmp_path, watcher_id="host-a", lease="3s")
    second, _ = once_config(pg, health, tmp_path, watcher_id="host-b", lease="3s")
    marker = pg.scalar("SELECT deploy.request_rollback('release v2 is bad', %s)", (v2,))
    proc, blocker, waiting = start_blocked_drop(pg, ["once", "--config", str(first), "--json"])
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert pg.sql("SELECT state, holder, attempts FROM deploy.rollback_markers WHERE id = %s", (marker,)) == \
            [("in_progress", "host-a", 1)]
    finally:
        blocker.rollback()
        blocker.close()
    wait_for(lambda: backend_gone(pg, waiting), what="the dead client's backend to end")
    rollback_id = pg.scalar("SELECT id FROM deploy.deployments WHERE kind = 'rollback'")
    assert pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (rollback_id,)) == "running"
    # While the lease lives, the other holder leaves the marker alone.
    code, out, err = run_pgdeploy("once", "--config", str(second), "--json")
    assert code == 0 and json.loads(out)["markers"] == [], (out, err)
    wait_for(lambda: pg.scalar("SELECT lease_until < clock_timestamp() FROM deploy.rollback_markers WHERE id = %s",
                               (marker,)), timeout=10, what="the dead holder's lease to expire")
    code, out, err = run_pgdeploy("once", "--config", str(second), "--json")
    assert code == 0, (out, err)
    [m] = json.loads(out)["markers"]
    assert m["result"] == "done" and m["rollback"]["rollback"]["deployment_id"] == rollback_id, m
    assert pg.sql("SELECT state, holder, attempts FROM deploy.rollback_markers WHERE id = %s", (marker,)) == \
        [("done", "host-b", 2)]
    assert_back_on_v1(pg, v2)
    assert pg.scalar("SELECT count(*) FROM deploy.deployments WHERE kind = 'rollback'") == 1


def test_watcher_rolls_back_a_release_whose_revert_has_steps(pg, write_migrations, health, tmp_path, watchers):
    _, v2 = deploy_two_releases(pg, write_migrations)
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
    w = Watcher(tmp_path, watch_config(pg, health, hook, tmp_path / "state.json"))
    watchers.append(w)
    w.wait_ready(leader=True)
    health.make_unhealthy()
    wait_for(lambda: pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (v2,)) == "rolled_back",
             timeout=30, what="deployment v2 rolled back")
    assert_back_on_v1(pg, v2)
    assert pg.sql("SELECT state, attempts FROM deploy.rollback_markers") == [("done", 1)]
    kinds = [k for (k, _, _, _) in events(pg)]
    story = ["watcher_decision", "marker_claimed", "watcher_hook_done", "marker_awaiting_steps", "checkpoint_done",
             "deployment_rolled_back", "marker_done"]
    positions = [kinds.index(k) for k in story]
    assert positions == sorted(positions), kinds
    assert [e["phase"] for e in hook_entries(hook_log)] == ["start", "done"]
    assert "0002_sku_index step 1 ... ok" in w.log_text()
    assert w.stop() == 0


def test_watcher_stopped_during_a_step_resumes_it_at_the_next_start(pg, write_migrations, health, tmp_path, watchers):
    """SIGTERM while the watcher's DROP INDEX CONCURRENTLY waits for an old transaction: the watcher cancels the
    statement and stops at once (the watchdog was fed meanwhile); the marker stays its own, in progress. Restarted
    with the same watcher_id, it resumes the same rollback deployment at that step and finishes it."""
    _, v2 = deploy_two_releases(pg, write_migrations)
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
    cfg = watch_config(pg, health, hook, tmp_path / "state.json", watcher_id="host-a")
    blocker = pg.connect(autocommit=False)
    blocker.cursor().execute("SELECT count(*) FROM items")   # the drop waits for this transaction
    try:
        w = Watcher(tmp_path, cfg, name="first")
        watchers.append(w)
        w.wait_ready(leader=True)
        health.make_unhealthy()
        wait_for(lambda: pg.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                                   "AND application_name = 'pgdeploy-watch-steps' AND wait_event_type = 'Lock'",
                                   (pg.name,)) == 1, timeout=30, what="the watcher's drop to wait")
        assert w.stop() == 0
        assert "stopped while a step of the revert was running" in w.log_text()
    finally:
        blocker.rollback()
        blocker.close()
    assert pg.sql("SELECT state, holder, attempts FROM deploy.rollback_markers") == [("in_progress", "host-a", 1)]
    rollback_id = pg.scalar("SELECT id FROM deploy.deployments WHERE kind = 'rollback'")
    assert pg.scalar("SELECT state FROM deploy.checkpoints WHERE deployment_id = %s", (rollback_id,)) == "running"

    w2 = Watcher(tmp_path, cfg, name="second")
    watchers.append(w2)
    wait_for(lambda: pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (v2,)) == "rolled_back",
             timeout=30, what="deployment v2 rolled back after the restart")
    assert_back_on_v1(pg, v2)
    assert pg.sql("SELECT state, holder, attempts FROM deploy.rollback_markers") == [("done", "host-a", 1)]
    assert pg.scalar("SELECT count(*) FROM deploy.deployments WHERE kind = 'rollback'") == 1
    assert pg.scalar("SELECT attempts FROM deploy.checkpoints WHERE deployment_id = %s", (rollback_id,)) == 2
    assert [e["phase"] for e in hook_entries(hook_log)] == ["start", "done"]   # the app side was back already
    assert w2.stop() == 0
