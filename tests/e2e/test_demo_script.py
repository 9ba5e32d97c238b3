"""scripts/demo, the README's first command, run for real inside the test cluster (`scripts/demo --in-cluster`: the
part after setup, build and pg_virtualenv, which scripts/test has already done).

It must tell the whole story and exit 0, print the history and the timeline, and leave nothing behind: no temporary
directory, no service or watcher process, no demo database.
"""
import os
import re
import subprocess

from conftest import PGDEPLOY_BIN, SOURCE_DIR, admin_connect

BUILD_DIR = os.environ.get("PGDEPLOY_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
DEMO = os.path.join(SOURCE_DIR, "scripts", "demo")
APP = os.path.join(BUILD_DIR, "examples", "app", "pgdeploy-example-app")


def run_demo(**env_extra):
    env = dict(os.environ, PGDEPLOY_BIN=PGDEPLOY_BIN, PGDEPLOY_EXAMPLE_APP=APP)
    env.update(env_extra)
    return subprocess.run([DEMO, "--in-cluster"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)


def processes_mentioning(text):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append((pid, cmdline))
    return found


def demo_database_exists():
    conn = admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_database WHERE datname = 'pgdeploy_demo'")
            return cur.fetchone()[0] == 1
    finally:
        conn.close()


def test_demo_tells_the_story_and_leaves_nothing_behind():
    proc = run_demo()
    out = proc.stdout
    assert proc.returncode == 0, f"scripts/demo exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{proc.stderr}"

    # The story, in order.
    steps = [m.group(1) for m in re.finditer(r"^==> (\d)/7 ", out, re.M)]
    assert steps == ["1", "2", "3", "4", "5", "6", "7"], steps
    assert re.search(r"GET \S+/health -> 503 .*42703", out), "v3's health failure is not shown"
    assert "the watcher verified that health recovered" in out
    assert "critical decision: deployment 3 (app v3) is unhealthy" in out      # the watcher's own log line
    for line in ("schema version:      0004", "v3 deployment:       rolled_back",
                 "service release:     v2 (expected v2), rollback hook ran 1 time(s)", "GET /health:         200"):
        assert line in out, line
    # The history from the database, and the timelines.
    assert re.search(r"^\s+3 \| up\s+\| rolled_back \| v3 ", out, re.M), "deployment 3 is not shown rolled back"
    # psql pads the time column to its widest value: a time whose milliseconds end in 0 prints shorter ("05.54  |").
    assert re.search(r"^\s+\d+ \| [0-9:.]+\s+\| watcher_rollback_done ", out, re.M), "events are not printed"
    assert "Timeline of the demo" in out
    for label in ("the watcher decided to roll back", "app rolled back (hook: v3 -> v2)",
                  "database reverted (0006 -> 0004)", "health recovered (verified)"):
        assert re.search(re.escape(label) + r"\s+[0-9.]+ s", out), label
    assert out.rstrip().endswith("health recovered.")

    # Nothing left behind.
    work = re.search(r"(/tmp/pgdeploy-demo\.[A-Za-z0-9]+)/", out).group(1)
    assert not os.path.exists(work), f"{work} was not removed"
    assert processes_mentioning(work) == [], processes_mentioning(work)
    assert not demo_database_exists()


def test_demo_refuses_to_start_without_its_programs_and_leaves_nothing_behind(tmp_path):
    missing = str(tmp_path / "no-such-app")
    proc = run_demo(PGDEPLOY_EXAMPLE_APP=missing)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert f"demo: {missing} is missing; run ./scripts/build first" in proc.stderr
    assert not demo_database_exists()
