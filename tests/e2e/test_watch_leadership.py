"""The watcher through connection poolers: leadership is a lease (deploy.leases), not a session lock, and polling,
not LISTEN, is how it learns of new markers (docs/pgdeploy.md, "Failovers and connection poolers").

- Two watchers with different ids: one leads (the deploy.leases row names it); kill -9 of the leader leaves its
  lease behind, and the other takes over once it expires (leader.ttl), not before; a clean SIGTERM releases the
  lease at once, so the other takes over at its next poll.
- Without database.listen (the default), a marker requested by SQL is picked up within one poll interval.
"""
import signal
import time

from watch_helpers import (Watcher, deploy, events, wait_for, watch_config, write_hook,  # noqa: F401
                           health, watchers)  # health, watchers: fixtures

V1 = [("0001", "CREATE TABLE public.app_users (id int PRIMARY KEY)", "DROP TABLE public.app_users")]
V2 = [("0002", "ALTER TABLE public.app_users ADD COLUMN email text", "ALTER TABLE public.app_users DROP COLUMN email")]


def lease(pg):
    """(holder, live) of the watcher leadership lease, or None."""
    rows = pg.sql("SELECT holder, expires_at > now() FROM deploy.leases WHERE name = 'watcher_leader'")
    return rows[0] if rows else None


def live_holder(pg):
    row = lease(pg)
    return row[0] if row and row[1] else None


def cfg_for(pg, health, hook, tmp_path, wid, ttl, poll="500ms"):
    c = watch_config(pg, health, hook, tmp_path / f"{wid}.state.json", watcher_id=wid)
    c["database"]["poll_interval"] = poll
    c["leader"] = {"ttl": ttl}
    return c


def test_killed_leader_is_replaced_after_the_ttl_and_a_clean_stop_releases_at_once(pg, health, tmp_path, watchers):
    hook, _, _ = write_hook(tmp_path, health.bad_file)
    a = Watcher(tmp_path, cfg_for(pg, health, hook, tmp_path, "host-a", "3s"), name="a")
    watchers.append(a)
    a.wait_ready(leader=True)
    b = Watcher(tmp_path, cfg_for(pg, health, hook, tmp_path, "host-b", "3s"), name="b")
    watchers.append(b)
    b.wait_ready(leader=False)
    assert live_holder(pg) == "host-a"
    st = a.state()
    assert st["leader_ttl_ms"] == 3000 and st["frozen"] is False

    # kill -9: nothing releases the lease; the follower waits for it to expire.
    renewed = pg.scalar("SELECT expires_at FROM deploy.leases WHERE name = 'watcher_leader'")
    a.kill()
    killed_at = time.monotonic()
    time.sleep(1.0)
    assert b.state()["leader"] is False, "took over a live lease"
    assert live_holder(pg) == "host-a"
    b.wait_state(lambda s: s["leader"] is True, timeout=10, what="host-b to take over after the TTL")
    took = time.monotonic() - killed_at
    assert took <= 3.0 + 0.5 + 2.0, took   # the TTL, one poll, slack
    assert live_holder(pg) == "host-b"
    assert pg.scalar("SELECT %s::timestamptz <= now()", (renewed,))   # the dead leader's lease had expired
    assert "took over leadership" in b.log_text()

    # A watcher that leads again renews every poll: its expires_at keeps moving.
    first = pg.scalar("SELECT expires_at FROM deploy.leases WHERE name = 'watcher_leader'")
    wait_for(lambda: pg.scalar("SELECT expires_at FROM deploy.leases WHERE name = 'watcher_leader'") > first,
             timeout=5, what="a renewal")

    # SIGTERM: released at once; the other takes over at its next poll, well before the TTL would run out.
    a2 = Watcher(tmp_path, cfg_for(pg, health, hook, tmp_path, "host-a", "30s"), name="a2")
    watchers.append(a2)
    a2.wait_ready(leader=False)
    b.signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    assert b.proc.wait(timeout=10) == 0
    assert "leadership released" in b.log_text()
    a2.wait_state(lambda s: s["leader"] is True, timeout=10, what="host-a to lead after the release")
    assert time.monotonic() - stopped_at < 3.0   # b's TTL was 3 s: the release, not the expiry, let a2 in
    assert live_holder(pg) == "host-a"
    assert a2.stop() == 0
    assert live_holder(pg) is None


def test_polling_picks_up_a_marker_requested_by_sql_without_listen(pg, health, tmp_path, watchers):
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", V2)
    hook, _, _ = write_hook(tmp_path, health.bad_file)
    cfg = cfg_for(pg, health, hook, tmp_path, "w1", "4s", poll="1s")
    w = Watcher(tmp_path, cfg)
    watchers.append(w)
    w.wait_ready(leader=True)
    marker = pg.scalar("SELECT deploy.request_rollback('requested by SQL', %s, '{}'::jsonb)", (d2,))
    requested = time.monotonic()
    wait_for(lambda: events(pg, "watcher_rollback_started"), timeout=10, what="the watcher to start the marker")
    picked = time.monotonic() - requested
    assert picked <= 1.0 + 1.0, picked   # one poll interval, plus slack
    wait_for(lambda: pg.scalar("SELECT state FROM deploy.rollback_markers WHERE id = %s", (marker,)) == "done",
             timeout=15, what="the marker to be done")
    assert pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "rolled_back"
    assert w.stop() == 0
