"""`pgdeploy watch` end to end: a real cluster, a real HTTP endpoint on 127.0.0.1 that the test turns unhealthy, the
real binary and a real hook script.

- the watcher rolls back within failure_threshold x interval plus a small margin, runs the hook exactly once with the
  documented environment, the ledger and the events show it, and health recovers;
- SIGKILL in the middle of a rollback (a slow hook), then a restart: the rollback completes exactly once, the hook
  runs again and is told so through PGDEPLOY_ATTEMPT;
- two watchers at once perform one rollback; the follower takes over when the leader goes;
- a release with irreversible migrations is frozen and alerted, not reverted.
"""
import json
import signal
import time
import urllib.request

import pytest

from conftest import free_port
from watch_helpers import (Watcher, deploy, events, hook_entries, wait_for, watch_config,  # noqa: F401
                           write_alert, write_hook, health, watchers)  # health, watchers: fixtures

INTERVAL_S = 0.2
FAILURE_THRESHOLD = 3
MARGIN_S = 2.0   # a cycle's scheduling, the decision's ledger round trips; generous for a shared 2-core machine

V1 = [("0001", "CREATE TABLE public.app_users (id int PRIMARY KEY)", "DROP TABLE public.app_users")]
V2 = [("0002", "ALTER TABLE public.app_users ADD COLUMN email text", "ALTER TABLE public.app_users DROP COLUMN email")]


def marker_rows(pg):
    return pg.sql("SELECT id, deployment_id, state, attempts FROM deploy.rollback_markers ORDER BY id")


def test_unhealthy_release_is_rolled_back_once_and_health_recovers(pg, health, tmp_path, watchers):
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", V2)
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
    metrics_port = free_port()
    cfg = watch_config(pg, health, hook, tmp_path / "state.json", metrics=f"127.0.0.1:{metrics_port}")
    w = Watcher(tmp_path, cfg)
    watchers.append(w)
    w.wait_ready(leader=True)
    assert pg.scalar("SELECT count(*) FROM deploy.rollback_markers") == 0   # healthy: nothing happens

    t0 = time.monotonic()
    health.make_unhealthy()
    wait_for(lambda: events(pg, "watcher_decision", d2), timeout=10, what="the rollback decision")
    decided_after = time.monotonic() - t0
    assert decided_after <= FAILURE_THRESHOLD * INTERVAL_S + MARGIN_S, decided_after

    wait_for(lambda: pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "rolled_back",
             timeout=15, what="deployment 2 rolled back")
    # The database is back on v1's schema: 0002 reverted, 0001 kept.
    assert pg.sql("SELECT version FROM deploy.applied ORDER BY version") == [("0001",)]
    assert pg.scalar("SELECT count(*) FROM information_schema.columns "
                     "WHERE table_name = 'app_users' AND column_name = 'email'") == 0

    # The hook ran exactly once, app first, with both releases in its environment.
    entries = hook_entries(hook_log)
    assert [e["phase"] for e in entries] == ["start", "done"], entries
    e = entries[0]
    assert e["attempt"] == "1"
    assert e["deployment"] == str(d2)
    assert (e["from_app"], e["to_app"]) == ("v2", "v1")
    assert (e["from_schema"], e["to_schema"]) == ("0002", "0001")

    # One marker, done; the events tell the story in order.
    markers = marker_rows(pg)
    assert len(markers) == 1 and markers[0][1] == d2 and markers[0][2] == "done", markers
    kinds = [k for (k, _, _, _) in events(pg)]
    story = ["watcher_unhealthy", "watcher_decision", "marker_requested", "marker_claimed", "watcher_rollback_started",
             "watcher_hook_started", "watcher_hook_done", "deployment_rolled_back", "marker_done"]
    positions = [kinds.index(k) for k in story]
    assert positions == sorted(positions), kinds
    decision = events(pg, "watcher_decision", d2)[0][3]
    assert decision["kind"] == "rollback" and decision["triggering_checks"] == ["api"]
    assert decision["watcher_id"] == "w1"

    # The hook removed the bad file: health recovers and the watcher records it.
    wait_for(lambda: events(pg, "watcher_rollback_done"), timeout=15, what="recovery recorded")
    done = events(pg, "watcher_rollback_done")[0][3]
    assert done["recovered"] is True

    # --status --json shows every check and the decision state; metrics are served on loopback.
    from conftest import run_pgdeploy
    code, out, err = run_pgdeploy("watch", "--status", "--json", "--config", w.config_path)
    assert code == 0, err
    st = json.loads(out)
    assert st["schema_version"] == 1 and st["leader"] is True and st["stale"] is False
    assert st["checks"][0]["name"] == "api"
    assert st["deployment"]["id"] == d2 and st["deployment"]["state"] == "rolled_back"
    assert st["rollbacks"]["done"] == 1
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert "pgdeploy_watch_leader 1" in body
    assert 'pgdeploy_watch_rollbacks_total{result="done"} 1' in body
    assert 'pgdeploy_watch_check_state{check="api"' in body

    # Still unhealthy evidence later never rolls back anything else (never twice; nothing left to revert).
    health.make_unhealthy()
    time.sleep(FAILURE_THRESHOLD * INTERVAL_S * 3)
    assert len(marker_rows(pg)) == 1
    assert len(hook_entries(hook_log)) == 2
    if pg.password:
        assert pg.password not in w.log_text()   # the dsn carries it; logs never do
    assert w.stop() == 0


def test_sigkill_mid_rollback_then_restart_completes_exactly_once(pg, health, tmp_path, watchers):
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", V2)
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file, sleep_first=30)
    cfg = watch_config(pg, health, hook, tmp_path / "state.json", watcher_id="host-a")
    w = Watcher(tmp_path, cfg, name="first")
    watchers.append(w)
    w.wait_ready(leader=True)
    health.make_unhealthy()

    # The hook started its (slow) first attempt: kill the watcher hard in the middle of the rollback.
    wait_for(lambda: hook_entries(hook_log), timeout=10, what="the hook to start")
    w.kill()
    assert pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "succeeded"
    m = marker_rows(pg)
    assert len(m) == 1 and m[0][2] == "in_progress", m

    # Restart with the same watcher_id: it finds its own marker at once (no lease wait) and completes it.
    w2 = Watcher(tmp_path, cfg, name="second")
    watchers.append(w2)
    wait_for(lambda: pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "rolled_back",
             timeout=20, what="the restarted watcher to complete the rollback")
    entries = hook_entries(hook_log)
    starts = [e["attempt"] for e in entries if e["phase"] == "start"]
    dones = [e for e in entries if e["phase"] == "done"]
    assert starts == ["1", "2"], entries        # ran again after the kill, and was told so
    assert len(dones) == 1 and dones[0]["attempt"] == "2"
    # Exactly once on the database side: one revert of 0002, one rollback deployment, one done marker.
    assert len(events(pg, "migration_reverted")) == 1
    assert len(events(pg, "deployment_rolled_back")) == 1
    assert pg.scalar("SELECT count(*) FROM deploy.deployments WHERE kind = 'rollback'") == 1
    m = marker_rows(pg)
    assert len(m) == 1 and m[0][2] == "done", m
    assert pg.sql("SELECT version FROM deploy.applied ORDER BY version") == [("0001",)]
    time.sleep(1)
    assert len(hook_entries(hook_log)) == 3   # nothing more after completion
    assert w2.stop() == 0


def test_two_watchers_perform_one_rollback_and_the_follower_takes_over(pg, health, tmp_path, watchers):
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", V2)
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
    a = Watcher(tmp_path, watch_config(pg, health, hook, tmp_path / "a.json", watcher_id="host-a"), name="a")
    watchers.append(a)
    a.wait_ready(leader=True)
    b = Watcher(tmp_path, watch_config(pg, health, hook, tmp_path / "b.json", watcher_id="host-b"), name="b")
    watchers.append(b)
    b.wait_ready(leader=False)

    health.make_unhealthy()
    wait_for(lambda: pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "rolled_back",
             timeout=15, what="the rollback")
    time.sleep(FAILURE_THRESHOLD * INTERVAL_S * 3)   # give the follower every chance to act twice
    assert len(marker_rows(pg)) == 1
    assert len([e for e in hook_entries(hook_log) if e["phase"] == "start"]) == 1
    assert len(events(pg, "watcher_decision")) == 1
    assert events(pg, "watcher_decision")[0][3]["watcher_id"] == "host-a"

    # The leader stops: it releases its leadership lease; the follower takes over at its next poll.
    assert a.stop() == 0
    b.wait_state(lambda st: st.get("leader") is True, timeout=10, what="host-b to take over")
    assert "took over leadership" in b.log_text()


def test_release_with_irreversible_migration_is_frozen_not_reverted(pg, health, tmp_path, watchers):
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", [("0002", "CREATE TABLE public.app_audit (id int)", None)])   # no down: irreversible
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
    alert, alert_log = write_alert(tmp_path)
    w = Watcher(tmp_path, watch_config(pg, health, hook, tmp_path / "state.json",
                                       extra={"alert": {"command": [alert], "timeout": "5s"}}))
    watchers.append(w)
    w.wait_ready(leader=True)
    health.make_unhealthy()
    wait_for(lambda: events(pg, "watcher_frozen", d2), timeout=10, what="the freeze")
    alerts = wait_for(lambda: hook_entries(alert_log), timeout=5, what="the alert command")
    assert alerts == [{"kind": "frozen", "deployment": str(d2), "marker": "", "watcher": "w1"}]
    assert "irreversible migrations (0002)" in open(alert_log + ".messages").read()
    time.sleep(FAILURE_THRESHOLD * INTERVAL_S * 2)
    assert pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "succeeded"
    assert marker_rows(pg) == []
    assert hook_entries(hook_log) == []
    assert len(events(pg, "watcher_frozen")) == 1   # alerted once, not every cycle
    frozen = events(pg, "watcher_frozen", d2)[0][3]
    assert frozen["reason"] == "irreversible" and "0002" in frozen["message"]
    assert "irreversible" in w.log_text()
    decisions = pg.sql("SELECT kind, details->>'kind' FROM deploy.events WHERE kind LIKE 'watcher_%%' "
                       "AND kind <> 'watcher_unhealthy' ORDER BY id")
    assert decisions == [("watcher_decision", "freeze"), ("watcher_frozen", "freeze")], decisions

    # A restarted watcher reads the decision from the ledger: it does not alert (or act) a second time.
    assert w.stop() == 0
    w2 = Watcher(tmp_path, w.cfg, name="restarted")
    watchers.append(w2)
    w2.wait_ready(leader=True)
    time.sleep(FAILURE_THRESHOLD * INTERVAL_S * 3)
    assert len(events(pg, "watcher_frozen")) == 1
    assert len(events(pg, "watcher_decision")) == 1
    assert "already rolled back or handled" in w2.log_text()
    assert len(hook_entries(alert_log)) == 1   # one alert, not one per restart


def test_leader_killed_mid_rollback_follower_finishes_after_the_lease(pg, health, tmp_path, watchers):
    """Several hosts: the leader dies in the middle of the hook; the follower (another watcher_id) becomes leader,
    waits for the dead holder's lease to expire, claims the marker and finishes it exactly once."""
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", V2)
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file, sleep_first=30)

    def cfg(wid, state):
        c = watch_config(pg, health, hook, tmp_path / state, watcher_id=wid)
        c["rollback"]["lease"] = "2s"
        return c

    a = Watcher(tmp_path, cfg("host-a", "a.json"), name="a")
    watchers.append(a)
    a.wait_ready(leader=True)
    b = Watcher(tmp_path, cfg("host-b", "b.json"), name="b")
    watchers.append(b)
    b.wait_ready(leader=False)
    health.make_unhealthy()
    wait_for(lambda: hook_entries(hook_log), timeout=10, what="the leader's hook to start")
    a.kill()
    wait_for(lambda: state_of_deployment(pg, d2) == "rolled_back", timeout=20, what="the follower to finish")
    starts = [e["attempt"] for e in hook_entries(hook_log) if e["phase"] == "start"]
    assert starts == ["1", "2"]
    assert len([e for e in hook_entries(hook_log) if e["phase"] == "done"]) == 1
    assert len(events(pg, "migration_reverted")) == 1
    rows = pg.sql("SELECT state, attempts, holder FROM deploy.rollback_markers")
    assert rows == [("done", 2, "host-b")], rows
    assert len(events(pg, "watcher_decision")) == 1   # the follower did not decide a second rollback


def state_of_deployment(pg, d):
    return pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d,))


def test_grace_period_and_dry_run_do_not_roll_back(pg, health, tmp_path, watchers):
    """A release that is unhealthy only during its grace period is left alone; a dry-run watcher records what it
    would do and touches nothing."""
    deploy(pg, "v1", V1)
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
    cfg = watch_config(pg, health, hook, tmp_path / "state.json")
    cfg["checks"][0]["grace_period"] = "3s"
    cfg["decision"]["dry_run"] = True
    w = Watcher(tmp_path, cfg)
    watchers.append(w)
    w.wait_ready(leader=True)
    health.make_unhealthy()
    d2 = deploy(pg, "v2", V2)              # deployed while unhealthy: the grace period covers the first 3 s
    time.sleep(2)
    st = w.state()
    assert st["deployment"]["id"] == d2
    api = st["checks"][0]
    assert api["in_grace"] is True and api["grace_ignored"] >= 3 and api["state"] == "ok"
    assert events(pg, "watcher_decision") == []
    # After the grace period the failures count; dry run records would_rollback and does nothing else.
    wait_for(lambda: events(pg, "watcher_decision", d2), timeout=10, what="the dry-run decision")
    decision = events(pg, "watcher_decision", d2)[0][3]
    assert decision["kind"] == "would_rollback"
    time.sleep(1)
    assert marker_rows(pg) == []
    assert hook_entries(hook_log) == []
    assert pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "succeeded"
    assert len(events(pg, "watcher_decision")) == 1


def test_listen_learns_of_deployments_and_markers_at_once(pg, health, tmp_path, watchers):
    """With database.listen on (opt-in) and the poll set to an hour, only LISTEN pg_deploy can tell the watcher about a
    new deployment and a marker requested by a person in psql: both are acted on within a second or two. (Without
    it, polling does: test_watch_leadership.py.)"""
    deploy(pg, "v1", V1)
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
    cfg = watch_config(pg, health, hook, tmp_path / "state.json")
    cfg["database"]["poll_interval"] = "1h"
    cfg["database"]["listen"] = True
    cfg["leader"] = {"ttl": "3h"}   # renewed once per poll: at least twice the poll interval
    w = Watcher(tmp_path, cfg)
    watchers.append(w)
    w.wait_ready(leader=True)
    d2 = deploy(pg, "v2", V2)
    w.wait_state(lambda st: (st.get("deployment") or {}).get("id") == d2, timeout=3, what="the new deployment")
    t0 = time.monotonic()
    pg.sql("SELECT deploy.request_rollback('a DBA asked', %s)", (d2,))
    wait_for(lambda: state_of_deployment(pg, d2) == "rolled_back", timeout=5, what="the requested rollback")
    assert time.monotonic() - t0 < 3
    assert [e["phase"] for e in hook_entries(hook_log)] == ["start", "done"]
    assert w.stop() == 0
