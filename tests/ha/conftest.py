"""Fixtures of the production-topology suite (tests/ha; README.md there): one etcd, three Patroni nodes and
PgBouncer, brought up once per session by ``rig.HaCluster``.

- ``ha`` (session): the running cluster. ``hadb`` (function): a fresh database on it with pg_deploy and the side
  table ``ha_side(version text, n int)`` (every test migration inserts ``(version, 1)``, every down script
  ``(version, -1)``, so "applied exactly once" is counted, not assumed).
- ``TRIALS``: trials per scenario: ``$PGDEPLOY_HA_TRIALS``, else 20 with ``PGDEPLOY_LONG=1``, else 1.
- ``timings``: per-trial figures, written at the end to ``$PGDEPLOY_HA_TIMINGS`` or
  ``$PGDEPLOY_BUILD_DIR/ha-timings.json`` (a summary is printed too).
- ``until_ok``: runs a pgdeploy command again and again, as an operator or CI retry would, until it exits 0.
- ``check_ledger``: the invariants after a fault (exact counts, nothing running, no lease or lock left behind).
"""
import importlib.util
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid

import psycopg2
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
E2E_DIR = os.path.abspath(os.path.join(HERE, "..", "e2e"))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

_spec = importlib.util.spec_from_file_location("e2e_conftest", os.path.join(E2E_DIR, "conftest.py"))
e2e_conftest = importlib.util.module_from_spec(_spec)
sys.modules["e2e_conftest"] = e2e_conftest
_spec.loader.exec_module(e2e_conftest)

run_pgdeploy = e2e_conftest.run_pgdeploy
PGDEPLOY_BIN = e2e_conftest.PGDEPLOY_BIN   # tests/e2e/watch_helpers.py does `from conftest import PGDEPLOY_BIN`
wait_for = e2e_conftest.wait_for           # ... and `from conftest import wait_for`
write_migrations = e2e_conftest.write_migrations
if E2E_DIR not in sys.path:
    sys.path.append(E2E_DIR)

from rig import HaCluster  # noqa: E402

LONG = os.environ.get("PGDEPLOY_LONG") == "1"
TRIALS = int(os.environ.get("PGDEPLOY_HA_TRIALS") or (20 if LONG else 1))
# Cases without a failover are cheap: a few trials even in the default run.
CHEAP_TRIALS = int(os.environ.get("PGDEPLOY_HA_TRIALS") or (20 if LONG else 2))
SEED = int(os.environ.get("PGDEPLOY_SEED", "20261202"))
DEPLOY_LOCK_CLASSID = 1346651472

# ---- per-trial figures ------------------------------------------------------------------------------------------

_timings = []


def record(scenario, **fields):
    row = {"scenario": scenario, **fields}
    _timings.append(row)
    print(f"[ha] {json.dumps(row, sort_keys=True)}")


@pytest.fixture
def timings():
    return record


def _timings_path():
    if os.environ.get("PGDEPLOY_HA_TIMINGS"):
        return os.environ["PGDEPLOY_HA_TIMINGS"]
    build = os.environ.get("PGDEPLOY_BUILD_DIR")
    return os.path.join(build, "ha-timings.json") if build else None


def _summary():
    by = {}
    for row in _timings:
        if "seconds" in row:
            by.setdefault(row["scenario"], []).append(row["seconds"])
    out = {}
    for k, v in sorted(by.items()):
        out[k] = {"trials": len(v), "min": round(min(v), 2), "median": round(statistics.median(v), 2),
                  "max": round(max(v), 2)}
    return out


def pytest_sessionfinish(session, exitstatus):
    path = _timings_path()
    if not path or not _timings:
        return
    doc = {"trials_per_scenario": TRIALS, "long": LONG, "seed": SEED, "summary": _summary(), "trials": _timings}
    try:
        with open(path, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
    except OSError:
        pass


def pytest_terminal_summary(terminalreporter):
    if not _timings:
        return
    terminalreporter.write_sep("-", "pg_deploy HA timings (seconds; failovers: from the primary's loss to done)")
    for k, s in _summary().items():
        terminalreporter.write_line(f"{k:55s} n={s['trials']:3d} min={s['min']:6.2f} median={s['median']:6.2f} "
                                    f"max={s['max']:6.2f}")
    path = _timings_path()
    if path:
        terminalreporter.write_line(f"per-trial figures: {path}")


_cluster = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _cluster:
        c = _cluster[0]
        try:
            text = c.describe() + "\n" + "\n".join(c.events[-20:]) + "\n" + c.logs_tail(25)
        except Exception as e:   # the report must not fail
            text = f"(cluster state unavailable: {e})"
        rep.sections.append(("production-topology rig", text))


# ---- the cluster ------------------------------------------------------------------------------------------------

def _missing_tools():
    return [t for t in ("etcd", "patroni", "patronictl", "pgbouncer") if shutil.which(t) is None]


@pytest.fixture(scope="session")
def ha():
    missing = _missing_tools()
    if missing:
        pytest.skip(f"the production-topology rig needs {', '.join(missing)} (scripts/setup installs them)")
    def on_term(signum, frame):   # ctest/CI stopping us: tear the cluster down (pytest's default would not)
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, on_term)
    cluster = HaCluster()
    cluster.start()
    _cluster.append(cluster)
    print(f"\n[ha] cluster up in {cluster.startup_seconds:.1f} s: {cluster.describe()}")
    try:
        yield cluster
    finally:
        _cluster.clear()
        cluster.close()


@pytest.fixture
def rng(request):
    seed = SEED ^ (sum(request.node.nodeid.encode()) * 2654435761 & 0xFFFFFFFF)
    return random.Random(seed)


class HaDatabase:
    def __init__(self, ha, name):
        self.ha = ha
        self.name = name
        self.dsn = ha.multi_dsn(name)          # what a deploy pipeline uses: finds the primary itself
        self.bouncer_dsn = ha.bouncer_dsn(name)

    def sql(self, query, params=None, dsn=None):
        """One statement on the current primary (waits for one, up to 60 s)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return self.ha.sql(dsn or self.dsn, query, params)
            except psycopg2.OperationalError:
                if dsn is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def scalar(self, query, params=None, dsn=None):
        rows = self.sql(query, params, dsn)
        return rows[0][0] if rows else None

    def on_node(self, node):
        return self.ha.node_dsn(node.name, self.name)


def fresh_db(request, ha):
    """A new database on the cluster with pg_deploy and ha_side, dropped at the end of the test."""
    ha.wait_ready()
    name = "ha_" + uuid.uuid4().hex[:10]
    ha.create_database(name)
    request.addfinalizer(lambda: ha.drop_database(name))
    db = HaDatabase(ha, name)
    db.sql("CREATE EXTENSION pg_deploy")
    db.sql("CREATE TABLE public.ha_side (version text NOT NULL, n int NOT NULL, at timestamptz DEFAULT now())")
    ha.wait_ready(2)
    ha.wait_caught_up()
    return db


@pytest.fixture
def hadb(request, ha):
    return fresh_db(request, ha)


# ---- commands ---------------------------------------------------------------------------------------------------

def start_pgdeploy(*args, env=None):
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.Popen([PGDEPLOY_BIN, *[str(a) for a in args]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full)


def until_ok(*args, timeout=120, pause=0.3):
    """Runs `pgdeploy ARGS` until it exits 0 (usage errors, exit 2, stop at once). Returns (attempts, the last
    (rc, out, err)); attempts is the list of exit codes."""
    deadline = time.monotonic() + timeout
    codes = []
    while True:
        rc, out, err = run_pgdeploy(*args, timeout=max(10, deadline - time.monotonic() + 30))
        codes.append(rc)
        if rc == 0 or rc == 2 or time.monotonic() > deadline:
            return codes, (rc, out, err)
        time.sleep(pause)


def finish(proc, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"pgdeploy did not end within {timeout} s after the failover:\n{err[-3000:]}")
    return proc.returncode, out, err


# ---- migrations -------------------------------------------------------------------------------------------------

def tx_migrations(versions, sleep=0.0, down_sleep=0.0):
    """Transactional migrations: each creates table t_<v> and writes (v, 1) into ha_side; the down script drops
    the table and writes (v, -1)."""
    files = {}
    for v in versions:
        up = f"CREATE TABLE public.t_{v} (id int PRIMARY KEY);\nINSERT INTO public.ha_side(version, n) VALUES ('{v}', 1);\n"
        if sleep:
            up += f"SELECT pg_sleep({sleep});\n"
        down = f"DROP TABLE public.t_{v};\nINSERT INTO public.ha_side(version, n) VALUES ('{v}', -1);\n"
        if down_sleep:
            down += f"SELECT pg_sleep({down_sleep});\n"
        files[f"{v}_m{v}.up.sql"] = up
        files[f"{v}_m{v}.down.sql"] = down
    return files


def cic_migration(version, table, column, index):
    """A non-transactional migration: CREATE INDEX CONCURRENTLY (down: DROP INDEX CONCURRENTLY, at top level)."""
    return {
        f"{version}_idx.up.sql": f"-- pg_deploy: transaction=off\nCREATE INDEX CONCURRENTLY {index} ON {table} ({column});\n",
        f"{version}_idx.down.sql": f"-- pg_deploy: transaction=off\nDROP INDEX CONCURRENTLY {index};\n",
    }


def write_dir(tmp_path, files, name="migrations"):
    base = tmp_path / name
    base.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        (base / rel).write_text(content)
    return str(base)


# ---- checks -----------------------------------------------------------------------------------------------------

def side_counts(db):
    """{version: (ups, downs)} from ha_side."""
    rows = db.sql("SELECT version, count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n = -1) "
                  "FROM public.ha_side GROUP BY version")
    return {r[0]: (r[1], r[2]) for r in rows}


def leftover_locks(db):
    """Deploy advisory locks held anywhere on the primary, and live deploy leases (when the extension has them)."""
    locks = db.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND granted",
                      (DEPLOY_LOCK_CLASSID,))
    leases = []
    if db.scalar("SELECT to_regclass('deploy.leases') IS NOT NULL"):
        leases = db.sql("SELECT name, holder, operation FROM deploy.leases "
                        "WHERE name = 'deploy' AND expires_at > now()")
    return locks, leases


def assert_nothing_half_applied(db, versions, context=""):
    """Right after a fault, before anything is run again: per version, ha_side's net count is 1 exactly when the
    ledger says the version is applied (a transactional migration is all or nothing, with its ledger row)."""
    got = side_counts(db)
    applied = {r[0] for r in db.sql("SELECT version FROM deploy.applied")}
    for v in versions:
        ups, downs = got.get(v, (0, 0))
        assert ups - downs == (1 if v in applied else 0), \
            f"{context}: {v}: ha_side net {ups - downs}, applied {v in applied} (half-applied); all: {got}"
    return sorted(applied)


def check_ledger(db, side, applied, index_names=(), context=""):
    """side: {version: (ups, downs)} expected in ha_side for the test versions that write it; applied: the versions
    deploy.applied must hold (exactly). Also: nothing running or pending, validate() clean, every index in
    index_names present once and valid, no INVALID index, no deploy lock or live deploy lease left behind."""
    got = side_counts(db)
    for v, (ups, downs) in side.items():
        assert got.get(v, (0, 0)) == (ups, downs), \
            f"{context}: ha_side for {v}: (ups, downs) = {got.get(v, (0, 0))}, expected {(ups, downs)}; all: {got}"
    have = sorted(r[0] for r in db.sql("SELECT version FROM deploy.applied"))
    assert have == sorted(applied), f"{context}: deploy.applied has {have}, expected {sorted(applied)}"
    running = db.sql("SELECT id, kind, state FROM deploy.deployments WHERE state = 'running'")
    assert running == [], f"{context}: deployments still running: {running}"
    cps = db.sql("SELECT version, step, state FROM deploy.checkpoints WHERE state <> 'done'")
    assert cps == [], f"{context}: unfinished checkpoints: {cps}"
    markers = db.sql("SELECT id, state FROM deploy.rollback_markers WHERE state IN ('pending', 'in_progress')")
    assert markers == [], f"{context}: open markers: {markers}"
    v = db.scalar("SELECT deploy.validate()")
    assert v["ok"], f"{context}: deploy.validate(): {v}"
    for name in index_names:
        rows = db.sql("SELECT i.indisvalid, i.indisready FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                      "WHERE c.relname = %s", (name,))
        assert rows == [(True, True)], f"{context}: index {name}: {rows}"
    invalid = db.sql("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                     "WHERE NOT i.indisvalid")
    assert invalid == [], f"{context}: INVALID indexes left: {invalid}"
    locks, leases = leftover_locks(db)
    assert locks == 0 and leases == [], f"{context}: left behind: {locks} advisory deploy lock(s), leases {leases}"
