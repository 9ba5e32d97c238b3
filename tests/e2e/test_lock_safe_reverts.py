"""Lock-safe reverts on the paths an incident uses: `pgdeploy once` (the systemd timer's cycle, the same executor as
`pgdeploy watch`) executing a health rollback while a long transaction holds the table, and `CALL deploy.run()`.
The revert waits at most pg_deploy.lock_timeout per attempt, releases its locks between attempts, and an
application updating the table meanwhile is never stalled for longer than that timeout.
"""
import json
import threading
import time

from conftest import run_pgdeploy
from watch_helpers import deploy, events, hook_entries, watch_config, write_hook, health  # noqa: F401 (health: a fixture)

V1 = [("0001", "CREATE TABLE public.ls_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0); "
               "INSERT INTO public.ls_t SELECT g FROM generate_series(1, 100) g", "DROP TABLE public.ls_t")]
V2 = [("0002", "ALTER TABLE public.ls_t ADD COLUMN note text", "ALTER TABLE public.ls_t DROP COLUMN note")]
LOCK_TIMEOUT_MS = 200


class App:
    """An application session updating ls_t in a loop; records the longest statement."""

    def __init__(self, pg):
        self.conn = pg.connect(autocommit=True)
        self.stop = threading.Event()
        self.worst = 0.0
        self.count = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        cur = self.conn.cursor()
        cur.execute("SET lock_timeout = '20s'")
        while not self.stop.is_set():
            t0 = time.monotonic()
            cur.execute("UPDATE public.ls_t SET n = n + 1 WHERE id = 1")
            self.worst = max(self.worst, time.monotonic() - t0)
            self.count += 1
            time.sleep(0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def hold_table_for(pg, seconds, name="long_report"):
    """A transaction that read ls_t and stays open for `seconds` (an analyst's report, a stuck worker)."""
    conn = pg.connect(autocommit=False)
    cur = conn.cursor()
    cur.execute("SET application_name = %s", (name,))
    cur.execute("SELECT count(*) FROM public.ls_t")
    timer = threading.Timer(seconds, conn.rollback)
    timer.start()
    return timer, conn


def test_once_executes_a_health_rollback_without_stalling_the_application(pg, health, tmp_path):
    pg.sql(f"ALTER DATABASE {pg.name} SET pg_deploy.lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
    deploy(pg, "v1", V1)
    d2 = deploy(pg, "v2", V2)
    hook, hook_log, _ = write_hook(tmp_path, health.bad_file)
    cfg = watch_config(pg, health, hook, tmp_path / "state.json")
    path = tmp_path / "once.json"
    path.write_text(json.dumps(cfg))
    health.make_unhealthy()
    marker = pg.scalar("SELECT deploy.request_rollback('release v2 is bad', %s)", (d2,))

    timer, blocker = hold_table_for(pg, 2.0)
    try:
        with App(pg) as app:
            time.sleep(0.2)
            started = time.monotonic()
            code, out, err = run_pgdeploy("once", "--config", path, "--json")
            took = time.monotonic() - started
            time.sleep(0.2)
    finally:
        timer.cancel()
        blocker.rollback()
    assert code == 0, err
    doc = json.loads(out)
    assert [(m["marker_id"], m["result"]) for m in doc["markers"]] == [(marker, "done")]
    assert pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (d2,)) == "rolled_back"
    assert took >= 1.5, "the revert cannot have finished before the blocker let go"
    retries = events(pg, "lock_retry")
    assert retries, "the revert retried while the blocker held the table"
    details = retries[0][3]
    assert details["blocker"]["application_name"] == "long_report"
    assert details["lock"]["object"] == "public.ls_t" and details["lock"]["mode"] == "AccessExclusiveLock"
    assert app.count > 20
    assert app.worst < LOCK_TIMEOUT_MS / 1000 + 0.3, f"the application waited {app.worst:.3f} s"
    assert [e["phase"] for e in hook_entries(hook_log)] == ["start", "done"]
    assert pg.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'ls_t' "
                     "AND column_name = 'note'") == 0


def test_call_deploy_run_retries_and_finishes_after_the_blocker(pg):
    pg.sql("CREATE TABLE public.ls_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0)")
    pg.sql("INSERT INTO public.ls_t SELECT g FROM generate_series(1, 100) g")
    pg.sql("SELECT deploy.register('0001', 'add_note', 'ALTER TABLE public.ls_t ADD COLUMN note text', "
           "'ALTER TABLE public.ls_t DROP COLUMN note')")
    timer, blocker = hold_table_for(pg, 1.5, name="run_blocker")
    try:
        conn = pg.connect(autocommit=True)
        cur = conn.cursor()
        cur.execute(f"SET pg_deploy.lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
        with App(pg) as app:
            cur.execute("CALL deploy.run(NULL)")
            result = cur.fetchone()[0]
    finally:
        timer.cancel()
        blocker.rollback()
    assert result["ok"] is True and [a["version"] for a in result["applied"]] == ["0001"]
    assert conn.notices and any("lock retry" in n and "run_blocker" in n for n in conn.notices)
    assert events(pg, "lock_retry")
    assert app.worst < LOCK_TIMEOUT_MS / 1000 + 0.3, f"the application waited {app.worst:.3f} s"


def test_a_cancel_during_the_retries_ends_the_call_and_keeps_nothing(pg):
    """Ctrl-C (a cancel request) while deploy.up() waits between two attempts ends the call at once: the backoff waits
    on the latch, and nothing of the deployment (row, events, column) is left."""
    import psycopg2
    pg.sql("CREATE TABLE public.ls_t (id int PRIMARY KEY)")
    pg.sql("SELECT deploy.register('0001', 'add_note', 'ALTER TABLE public.ls_t ADD COLUMN note text', "
           "'ALTER TABLE public.ls_t DROP COLUMN note')")
    timer, blocker = hold_table_for(pg, 30, name="cancel_blocker")
    conn = pg.connect(autocommit=True)
    cur = conn.cursor()
    cur.execute("SET pg_deploy.lock_timeout = '100ms'")
    pid = conn.get_backend_pid()
    canceller = threading.Timer(1.0, lambda: pg.sql("SELECT pg_cancel_backend(%s)", (pid,)))
    canceller.start()
    started = time.monotonic()
    try:
        try:
            cur.execute("SELECT deploy.up()")
            raise AssertionError("deploy.up() returned although it was cancelled")
        except psycopg2.errors.QueryCanceled:
            pass
        took = time.monotonic() - started
    finally:
        canceller.cancel()
        timer.cancel()
        blocker.rollback()
    assert took < 5, f"the cancel took {took:.1f} s to end the call"
    assert any("lock retry" in n for n in conn.notices), "it was retrying when the cancel came"
    assert pg.scalar("SELECT count(*) FROM deploy.deployments") == 0
    assert pg.scalar("SELECT count(*) FROM deploy.events WHERE kind = 'lock_retry'") == 0
    assert pg.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'ls_t' "
                     "AND column_name = 'note'") == 0
