"""Section 5 of bench/bench.py: live traffic, deploys and rollbacks under application load (docs/benchmarks.md).

A table of `rows` rows serves an application (pgbench with a custom script: primary-key reads and updates, `clients`
clients, at a fixed arrival rate) for the whole run of each contender. Twice per run a separate session opens a
transaction on that table and keeps it open for `blocker_s` seconds; `lead_s` after it took its lock, the contender
deploys a release of four migrations (the first time) or rolls it back (the second time):

  0001 add_status              ALTER TABLE accounts ADD COLUMN status text NOT NULL DEFAULT 'active'
  0002 note_index              CREATE INDEX CONCURRENTLY (non-transactional)   down: DROP INDEX CONCURRENTLY
  0003 balance_check           ADD CONSTRAINT ... CHECK NOT VALID                down: DROP CONSTRAINT
  0004 validate_balance_check  VALIDATE CONSTRAINT, in a transaction of its own  down: nothing (a no-op)

Contenders, each on a fresh copy of the database: `psql -1 -f` per file (the CONCURRENTLY files without -1), Sqitch,
`SELECT deploy.up()` / `SELECT deploy.rollback()` on a client connection (non-transactional steps driven with
deploy.next_step() / deploy.step_done()), and `pgdeploy up --dir` / `pgdeploy rollback`.

For each contender and phase: the application's p50, p99 and max latency and failed transactions, when the deploy
finished relative to the end of the open transaction, and the live-traffic goals as PASS/FAIL (docs/benchmarks.md:
the app's max latency below the lock timeout + 100 ms, the deploy done within 2 s of the open transaction's end). The
application's latency over time is drawn with matplotlib (Debian's python3-matplotlib) when it is installed.

Parameters: the mode's defaults (MODES below), each overridden by an environment variable (ENV below).
"""
import csv
import json
import random
import os
import re
import shutil
import statistics
import subprocess
import threading
import time

import psycopg2
import psycopg2.errors

import bench as b

MODES = {
    # rows, app clients, app arrival rate (tps, 0 = as fast as it goes), how long the open transaction stays open,
    # how long after it took its lock the deploy starts, load before the first phase, quiet time after each phase,
    # the longest one contender's run may take
    # the rate leaves the app room to catch up after a stall: at 500 tps a 10 s stall queues 5,000 transactions,
    # which this 2-core machine drains in about 5 s (the settle time) while new ones keep arriving
    "full": dict(rows=1_000_000, clients=8, rate=500, blocker_s=10.0, lead_s=0.3, warmup_s=3.0, settle_s=5.0,
                 duration_s=300.0),
    "quick": dict(rows=200_000, clients=8, rate=500, blocker_s=5.0, lead_s=0.3, warmup_s=2.0, settle_s=3.0,
                  duration_s=180.0),
    "smoke": dict(rows=50_000, clients=8, rate=400, blocker_s=3.0, lead_s=0.3, warmup_s=1.0, settle_s=1.0,
                  duration_s=120.0),
}
ENV = dict(rows="BENCH_LIVE_ROWS", clients="BENCH_LIVE_CLIENTS", rate="BENCH_LIVE_RATE",
           blocker_s="BENCH_LIVE_BLOCKER_S", lead_s="BENCH_LIVE_LEAD_S", warmup_s="BENCH_LIVE_WARMUP_S",
           settle_s="BENCH_LIVE_SETTLE_S", duration_s="BENCH_LIVE_DURATION_S")
# "alone" is not a contender but the scale: psql -1 -f of the same release under the same load with no transaction
# left open, i.e. what the release itself costs the app and how long it takes
CONTENDERS = ["alone", "psql", "sqitch", "sql", "pgdeploy"]
LABELS = {"alone": "reference: psql -1 -f, no open transaction", "psql": "psql -1 -f per file",
          "sqitch": "sqitch deploy / revert", "sql": "SELECT deploy.up() / deploy.rollback()",
          "pgdeploy": "pgdeploy up --dir / rollback"}
PG_DEPLOY = ("sql", "pgdeploy")
COMPLETION_GOAL_S = 2.0   # pg_deploy's deploy completes within 2 s after the open transaction ends
HEADROOM_MS = 100.0       # the app's max latency stays below the lock timeout + 100 ms

# version, name, up statements, down statements. A migration whose up (down) holds CONCURRENTLY is
# non-transactional; so is VALIDATE CONSTRAINT, declared so (TOP_LEVEL): it must run in a transaction of its own,
# after the NOT VALID constraint committed, or the scan of every row would hold ADD CONSTRAINT's exclusive lock and
# stall the application by itself. Its down script is empty: a no-op revert (the constraint goes with 0003's).
RELEASE = [
    ("0001", "add_status",
     ["ALTER TABLE accounts ADD COLUMN status text NOT NULL DEFAULT 'active'"],
     ["ALTER TABLE accounts DROP COLUMN status"]),
    ("0002", "note_index",
     ["CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_note_idx ON accounts (note)"],
     ["DROP INDEX CONCURRENTLY IF EXISTS accounts_note_idx"]),
    ("0003", "balance_check",
     ["ALTER TABLE accounts ADD CONSTRAINT accounts_balance_nonneg CHECK (balance >= 0) NOT VALID"],
     ["ALTER TABLE accounts DROP CONSTRAINT accounts_balance_nonneg"]),
    ("0004", "validate_balance_check",
     ["ALTER TABLE accounts VALIDATE CONSTRAINT accounts_balance_nonneg"],
     []),
]
TOP_LEVEL = {"0004"}

READ_SCRIPT = "\\set id random(1, :rows)\nSELECT balance FROM accounts WHERE id = :id;\n"
UPDATE_SCRIPT = "\\set id random(1, :rows)\nUPDATE accounts SET balance = balance + 1 WHERE id = :id;\n"
APP_NAME = "bench-live-app"


def params(mode_name):
    p = dict(MODES[mode_name])
    for key, var in ENV.items():
        value = os.environ.get(var)
        if value:
            p[key] = int(float(value)) if isinstance(p[key], int) else float(value)
    names = os.environ.get("BENCH_LIVE_CONTENDERS", ",".join(CONTENDERS))
    p["contenders"] = [c.strip() for c in names.split(",") if c.strip()]
    for c in p["contenders"]:
        if c not in CONTENDERS:
            raise ValueError(f"BENCH_LIVE_CONTENDERS: unknown contender {c!r} (known: {', '.join(CONTENDERS)})")
    return p


def transactional(statements):
    return not any("CONCURRENTLY" in s.upper() for s in statements)


def script(statements):
    return "".join(s + ";\n" for s in statements) or "-- nothing to do\n"


# ---------------------------------------------------------------------------------------------------------------------
# the release as files: pg_deploy's directory layout, psql runs the same files, Sqitch gets a project of its own


def write_release(path):
    os.makedirs(path, exist_ok=True)
    for version, name, up, down in RELEASE:
        header = "-- pg_deploy: transaction=off\n" if version in TOP_LEVEL else ""
        with open(os.path.join(path, f"{version}_{name}.up.sql"), "w") as f:
            f.write(header + script(up))
        with open(os.path.join(path, f"{version}_{name}.down.sql"), "w") as f:
            f.write(script(down))
    return path


def write_sqitch_project(path):
    for d in ("deploy", "revert"):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    with open(os.path.join(path, "sqitch.conf"), "w") as f:
        f.write("[core]\n\tengine = pg\n\tplan_file = sqitch.plan\n\ttop_dir = .\n"
                "[user]\n\tname = pg_deploy bench\n\temail = bench@localhost\n[deploy]\n\tverify = false\n")
    plan = ["%syntax-version=1.0.0", "%project=live", ""]
    for version, name, up, down in RELEASE:
        plan.append(f"{name} 2026-01-01T00:00:00Z pg_deploy bench <bench@localhost> # {version}")
        for d, stmts in (("deploy", up), ("revert", down)):
            body = script(stmts)
            if transactional(stmts):   # Sqitch runs each script with psql as it is: the script has the transaction
                body = "BEGIN;\n" + body + "COMMIT;\n"
            with open(os.path.join(path, d, name + ".sql"), "w") as f:
                f.write(body)
    with open(os.path.join(path, "sqitch.plan"), "w") as f:
        f.write("\n".join(plan) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# the application: pgbench with a per-transaction log, stopped by terminating its sessions (it then flushes its logs)


class App:
    def __init__(self, ctx, db, p, logdir):
        self.logdir = logdir
        os.makedirs(logdir, exist_ok=True)
        for name, body in (("read.sql", READ_SCRIPT), ("update.sql", UPDATE_SCRIPT)):
            with open(os.path.join(logdir, name), "w") as f:
                f.write(body)
        self.argv = ["pgbench", "-n", "-M", "prepared", "-c", str(p["clients"]),
                     "-j", str(min(p["clients"], os.cpu_count() or 1)), "-T", str(int(p["duration_s"]) + 5),
                     "-D", f"rows={p['rows']}", "-f", os.path.join(logdir, "read.sql") + "@1",
                     "-f", os.path.join(logdir, "update.sql") + "@1", "--log",
                     f"--log-prefix={os.path.join(logdir, 'app')}", "--failures-detailed", "--max-tries=1"]
        if p["rate"]:
            self.argv += ["-R", str(p["rate"])]
        self.argv.append(db)
        self.db = db
        self.stderr_lines = []   # (epoch, line): an aborted client is a failed application transaction
        self.proc = None
        self.started = self.stopped = None

    def start(self):
        env = dict(os.environ, PGAPPNAME=APP_NAME)
        self.started = time.time()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.reader = threading.Thread(target=self._read_stderr, daemon=True)
        self.reader.start()
        self.stdout = []
        self.out_reader = threading.Thread(target=lambda: self.stdout.extend(self.proc.stdout), daemon=True)
        self.out_reader.start()

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append((time.time(), line.rstrip()))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, cluster):
        """Terminates the app's sessions: pgbench's clients abort, it ends normally and flushes its logs."""
        self.stopped = time.time()
        if self.proc is None:
            return
        if self.alive():
            cluster.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = %s AND datname = %s", (APP_NAME, self.db))
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                b.stop_process(self.proc)
        self.reader.join(5)
        self.out_reader.join(5)

    def transactions(self):
        """[(scheduled start, end, latency ms or None, failure kind or None)] from the per-transaction logs. With
        --rate, pgbench's latency runs from the transaction's scheduled start: a stall also delays the transactions
        that could not start (no coordinated omission)."""
        txns = []
        for fn in os.listdir(self.logdir):
            if not fn.startswith("app."):
                continue
            with open(os.path.join(self.logdir, fn)) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) < 6 or not parts[4].isdigit() or not parts[5].isdigit():
                        continue
                    end = int(parts[4]) + int(parts[5]) / 1e6
                    if parts[2].isdigit():
                        lat = int(parts[2]) / 1000.0
                        txns.append((end - lat / 1000.0, end, lat, None))
                    else:   # failed, serialization, deadlock (skipped needs --latency-limit, not used)
                        txns.append((end, end, None, parts[2]))
        txns.sort()
        return txns

    def aborts(self):
        """Clients that aborted before the app was stopped (pgbench stops a client on an error other than a
        serialization or deadlock failure): each is a failed transaction the log does not hold."""
        return [(t, line) for t, line in self.stderr_lines
                if "aborted" in line and "client" in line and (self.stopped is None or t < self.stopped)]


def window_stats(txns, aborts, t0, t1):
    """The app's figures for the transactions scheduled to start in [t0, t1)."""
    lat = [x[2] for x in txns if t0 <= x[0] < t1 and x[2] is not None]
    failed = sum(1 for x in txns if t0 <= x[0] < t1 and x[3] is not None)
    aborted = sum(1 for t, _ in aborts if t0 <= t < t1)
    return dict(n=len(lat), p50=b.pct(lat, 0.5), p99=b.pct(lat, 0.99), max=max(lat) if lat else None,
                failed=failed + aborted, aborted=aborted, seconds=t1 - t0)


def bins(txns, origin, until, width=0.1):
    """Per `width` seconds of scheduled start, relative to origin: (t, n, median ms, max ms, failed). Transactions
    scheduled after until are left out: the last ones before the app is stopped wait for the CPU that terminating its
    sessions takes."""
    out = {}
    for start, _, lat, fail in txns:
        if start >= until:
            continue
        k = int((start - origin) // width)
        e = out.setdefault(k, ([], 0))
        if lat is not None:
            e[0].append(lat)
        else:
            out[k] = (e[0], e[1] + 1)
    rows = []
    for k in sorted(out):
        lats, failed = out[k]
        rows.append((round(k * width, 3), len(lats), statistics.median(lats) if lats else None,
                     max(lats) if lats else None, failed))
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# the open transaction


class Blocker:
    """BEGIN; SELECT 1 FROM accounts LIMIT 1; SELECT pg_sleep(s); COMMIT; on its own session and thread."""

    def __init__(self, db, seconds):
        self.db, self.seconds = db, seconds
        self.locked = threading.Event()
        self.start_t = self.end_t = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            conn = psycopg2.connect(dbname=self.db, application_name="bench-live-blocker")
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM accounts LIMIT 1")
                self.start_t = time.time()
                self.locked.set()
                cur.execute("SELECT pg_sleep(%s)", (self.seconds,))
            conn.commit()
            self.end_t = time.time()
            conn.close()
        except Exception as e:   # reported with the phase
            self.error = b.one_line(e)
            self.end_t = self.end_t or time.time()
            self.locked.set()

    def start(self):
        self.thread.start()
        if not self.locked.wait(30) or self.error:
            raise RuntimeError(f"the open transaction did not start: {self.error or 'timeout'}")

    def join(self, timeout):
        self.thread.join(timeout)
        return not self.thread.is_alive()


# ---------------------------------------------------------------------------------------------------------------------
# contenders: deploy(db, deadline) and rollback(db, deadline) → (ok, message)


def run_cmd(argv, deadline, cwd=None, env=None):
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env,
                           timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        return False, f"{os.path.basename(argv[0])} still running at the run's time limit (killed)"
    if r.returncode != 0:
        text = (r.stderr.strip() or r.stdout.strip()).splitlines()
        first = next((ln for ln in text if "ERROR" in ln or "error" in ln), text[0] if text else "")
        return False, f"exit {r.returncode}: {first[:200]}"
    return True, "ok"


class Psql:
    """psql -1 -f per migration file; the CONCURRENTLY files without -1 (they cannot run in a transaction)."""

    def __init__(self, ctx, release_dir):
        self.dir = release_dir

    def _files(self, kind, reverse):
        items = [(v, n, up if kind == "up" else down) for v, n, up, down in RELEASE]
        if reverse:
            items.reverse()
        return [(os.path.join(self.dir, f"{v}_{n}.{kind}.sql"), transactional(stmts)) for v, n, stmts in items]

    def _run(self, db, kind, reverse, deadline):
        for path, tx in self._files(kind, reverse):
            argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"] + (["-1"] if tx else []) + ["-d", db, "-f", path]
            ok, msg = run_cmd(argv, deadline)
            if not ok:
                return False, f"{os.path.basename(path)}: {msg}"
        return True, "ok"

    def deploy(self, db, deadline):
        return self._run(db, "up", False, deadline)

    def rollback(self, db, deadline):
        return self._run(db, "down", True, deadline)


class Sqitch:
    def __init__(self, ctx, project):
        self.project, self.env = project, ctx.sqitch_env

    def deploy(self, db, deadline):
        return run_cmd(["sqitch", "deploy", "--target", f"db:pg:{db}"], deadline, cwd=self.project, env=self.env)

    def rollback(self, db, deadline):
        return run_cmd(["sqitch", "revert", "-y", "--target", f"db:pg:{db}"], deadline, cwd=self.project,
                       env=self.env)


class DeploySql:
    """SELECT deploy.up() / deploy.rollback() on one client session in autocommit, as from psql. When the result
    holds awaiting_nontransactional steps, each is taken with deploy.next_step(), its cleanup and statement run at top
    level, deploy.step_done() reports it, and the same function is called again (docs/sql-reference.md)."""

    def __init__(self, ctx, release_dir):
        self.ctx, self.dir = ctx, release_dir

    def prepare(self, db):
        """Registration is not part of the deploy here (as `pgdeploy load` in CI before `SELECT deploy.up()`)."""
        r = b.run([self.ctx.pgdeploy, "load", self.dir, "--dsn", b.dsn_for(db), "-q"])
        if r.returncode != 0:
            raise RuntimeError(f"pgdeploy load exited {r.returncode}: {(r.stderr or r.stdout).strip()[:300]}")

    def _call(self, db, call, deadline):
        conn = b.connect(db)
        timer = threading.Timer(max(1.0, deadline - time.time()), conn.cancel)
        timer.start()
        try:
            with conn.cursor() as cur:
                res = self._one(cur, call)
                while res.get("ok") and res.get("awaiting_nontransactional"):
                    self._run_steps(cur, res.get("deployment_id"))
                    res = self._one(cur, call)
            if not res.get("ok"):
                err = (res.get("failed") or {}).get("error") or res.get("failed") or res.get("error") or res
                return False, f"{call} returned ok = false: {json.dumps(err)[:200]}"
            return True, "ok"
        except psycopg2.Error as e:
            return False, f"{call}: {b.one_line(e, 200)}"
        finally:
            timer.cancel()
            conn.close()

    @staticmethod
    def _one(cur, sql, args=None):
        cur.execute(sql, args)
        return cur.fetchone()[0]

    def _run_steps(self, cur, deployment_id):
        while True:
            step = self._one(cur, "SELECT deploy.next_step(deployment_id => %s, holder => 'bench-live')",
                             (deployment_id,))
            if step is None:
                return
            try:
                for stmt in step.get("cleanup") or []:
                    cur.execute(stmt)
                self._run_with_lock_policy(cur, step)
            except psycopg2.Error as e:
                cur.execute("SELECT deploy.step_failed(%s, %s, %s)", (step["step_id"], e.pgcode, str(e).strip()))
                raise
            self._one(cur, "SELECT deploy.step_done(%s)", (step["step_id"],))

    @staticmethod
    def _run_with_lock_policy(cur, step):
        """As docs/sql-reference.md says for psql users: a step with lock_timeout_ms runs under that lock_timeout
        and is retried after a short backoff on 55P03, within lock_retry's attempts."""
        timeout = step.get("lock_timeout_ms")
        if not timeout:
            cur.execute(step["statement"])
            return
        attempts = (step.get("lock_retry") or {}).get("attempts", 1)
        for attempt in range(1, attempts + 1):
            cur.execute(f"SET lock_timeout = {int(timeout)}")
            try:
                cur.execute(step["statement"])
                return
            except psycopg2.errors.LockNotAvailable:
                if attempt == attempts:
                    raise
                time.sleep(min(1.0, 0.2 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
            finally:
                cur.execute("RESET lock_timeout")

    def deploy(self, db, deadline):
        return self._call(db, "SELECT deploy.up()", deadline)

    def rollback(self, db, deadline):
        return self._call(db, "SELECT deploy.rollback()", deadline)


class PgdeployCli:
    def __init__(self, ctx, release_dir):
        self.bin, self.dir = ctx.pgdeploy, release_dir

    def _run(self, args, db, deadline):
        ok, msg = run_cmd([self.bin] + args + ["--dsn", b.dsn_for(db), "-q"], deadline)
        return ok, msg

    def deploy(self, db, deadline):
        return self._run(["up", "--dir", self.dir], db, deadline)

    def rollback(self, db, deadline):
        return self._run(["rollback"], db, deadline)


# ---------------------------------------------------------------------------------------------------------------------
# one contender's run


def schema_state(db):
    conn = b.connect(db)
    with conn.cursor() as cur:
        cur.execute("""SELECT
              EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'accounts'::regclass AND attname = 'status'
                      AND NOT attisdropped),
              (SELECT bool_and(i.indisvalid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE c.relname = 'accounts_note_idx'),
              (SELECT bool_and(convalidated) FROM pg_constraint WHERE conname = 'accounts_balance_nonneg')""")
        column, index, constraint = cur.fetchone()
    conn.close()
    return dict(column=column, index=index, constraint=constraint)


def check_schema(db, deployed):
    """'' when the schema is what the phase should leave, else what differs."""
    s = schema_state(db)
    want = dict(column=True, index=True, constraint=True) if deployed else dict(column=False, index=None,
                                                                               constraint=None)
    bad = [f"{k} {'missing' if want[k] else 'present'}" for k in want if bool(s[k]) != bool(want[k])]
    return "; ".join(bad)


class Phase:
    def __init__(self, name):
        self.name = name
        self.blocker_start = self.blocker_end = self.start = self.end = None
        self.ok, self.message = False, "not run"


def run_phase(name, fn, db, p, deadline, expect_deployed):
    """One phase; with blocker_s = 0 no transaction is held open (the open transaction's times are the phase's
    start)."""
    ph = Phase(name)
    blocker = Blocker(db, p["blocker_s"]) if p["blocker_s"] > 0 else None
    if blocker:
        blocker.start()
        ph.blocker_start = blocker.start_t
        time.sleep(p["lead_s"])
    ph.start = time.time()
    try:
        ph.ok, ph.message = fn(db, deadline)
    except Exception as e:   # a contender that cannot run is reported, never estimated
        ph.ok, ph.message = False, b.one_line(e, 200)
    ph.end = time.time()
    if blocker:
        blocker.join(max(1.0, deadline - time.time()))
        ph.blocker_end = blocker.end_t or time.time()
        if blocker.error:
            ph.message += f" (the open transaction failed: {blocker.error})"
    else:
        ph.blocker_start = ph.blocker_end = ph.start
    if ph.ok:
        diff = check_schema(db, expect_deployed)
        if diff:
            ph.ok, ph.message = False, f"finished, but the schema is not as expected: {diff}"
    b.log(f"live-traffic: {name}: {ph.message} ({ph.end - ph.start:.2f} s; "
          f"{ph.end - ph.blocker_end:+.2f} s after the open transaction ended)")
    time.sleep(max(0.0, max(ph.end, ph.blocker_end) + p["settle_s"] - time.time()))
    return ph


class Run:
    def __init__(self, key):
        self.key, self.label = key, LABELS[key]
        self.phases, self.error = [], None
        self.txns, self.aborts, self.origin, self.stopped = [], [], None, None
        self.stats = {}


def run_contender(ctx, key, contender, p, template):
    run = Run(key)
    db = ctx.cluster.create(template)
    app = None
    try:
        if hasattr(contender, "prepare"):
            contender.prepare(db)
        app = App(ctx, db, p, os.path.join(ctx.live_work, key))
        app.start()
        run.origin = app.started
        deadline = app.started + p["duration_s"]
        time.sleep(p["warmup_s"])
        if not app.alive():
            raise RuntimeError(f"pgbench ended at start: {' '.join(l for _, l in app.stderr_lines)[-300:]}")
        run.phases.append(run_phase("deploy", contender.deploy, db, p, deadline, True))
        run.phases.append(run_phase("rollback", contender.rollback, db, p, deadline, False))
        time.sleep(1.0)   # the last window ends a second before the app's sessions are terminated
        app_alive = app.alive()
        app.stop(ctx.cluster)
        run.stopped = app.stopped
        run.txns, run.aborts = app.transactions(), app.aborts()
        if not app_alive:
            run.error = "the load (pgbench) ended before the run did: raise BENCH_LIVE_DURATION_S"
        first = run.phases[0].blocker_start
        run.stats["baseline"] = window_stats(run.txns, run.aborts, run.origin + min(1.0, p["warmup_s"] / 2), first)
        for ph in run.phases:
            run.stats[ph.name] = window_stats(run.txns, run.aborts, ph.start,
                                              max(ph.end, ph.blocker_end) + p["settle_s"])
    except Exception as e:
        run.error = b.one_line(e)
        b.log(f"live-traffic: {key}: {run.error}")
        if app and app.stopped is None:
            app.stop(ctx.cluster)
    finally:
        ctx.cluster.drop(db)
    return run


# ---------------------------------------------------------------------------------------------------------------------
# setup: the template with the table, Sqitch's registry, the lock timeout pg_deploy runs with, the release it accepts


def make_template(ctx, p):
    name = ctx.cluster.make_template(
        f"{ctx.prefix}_tpl_live",
        "CREATE EXTENSION pg_deploy; "
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance int NOT NULL, note text NOT NULL); "
        f"INSERT INTO accounts SELECT i, 1000, 'account ' || i FROM generate_series(1, {int(p['rows'])}) i")
    conn = b.connect(name)
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE accounts")
    conn.close()
    if shutil.which("sqitch"):
        b.sqitch_warmup(ctx, name)
    return name


def lock_settings(db):
    """pg_deploy's lock-safe settings as the server reports them ("n/a" where this build has none) and the lock
    timeout in ms (None when there is none)."""
    conn = b.connect(db)
    conn.autocommit = True   # a SHOW that fails must not abort the ones after it
    shown, timeout_ms = {}, None
    with conn.cursor() as cur:
        cur.execute("SELECT deploy.version_key('1')")   # a C function: loads pg_deploy.so, its settings exist then
        for name in ("pg_deploy.lock_timeout", "pg_deploy.lock_attempts", "pg_deploy.lock_retry_time"):
            try:
                cur.execute(f"SHOW {name}")
                shown[name] = cur.fetchone()[0]
            except psycopg2.Error:
                shown[name] = "n/a"
        cur.execute("SELECT setting::float8, unit FROM pg_settings WHERE name = 'pg_deploy.lock_timeout'")
        row = cur.fetchone()
        if row:
            timeout_ms = row[0] * {"ms": 1, "s": 1000, "min": 60000}.get(row[1] or "ms", 1)
    conn.close()
    return shown, timeout_ms


# ---------------------------------------------------------------------------------------------------------------------
# the report


def fmt_s(v):
    return "—" if v is None else f"{v:+.2f}"


def figure_rows(runs):
    rows = []
    for run in runs:
        if run.error and not run.stats:
            rows.append([run.label, f"not measured: {run.error}"] + [""] * 8)
            continue
        base = run.stats.get("baseline")
        if base:
            rows.append([run.label, "baseline (load alone)", "—", "—", "—", f"{base['n']:,}",
                         b.fmt_ms(base["p50"]), b.fmt_ms(base["p99"]), b.fmt_ms(base["max"]), str(base["failed"])])
        for ph in run.phases:
            st = run.stats.get(ph.name)
            if st is None:
                continue
            result = "ok" if ph.ok else f"**failed**: {ph.message.replace('|', '/')}"
            aborted = st["aborted"]
            after = "— (none open)" if run.key == "alone" else fmt_s(ph.end - ph.blocker_end)
            rows.append([run.label, ph.name, result, f"{ph.end - ph.start:.2f}", after,
                         f"{st['n']:,}", b.fmt_ms(st["p50"]), b.fmt_ms(st["p99"]), b.fmt_ms(st["max"]),
                         str(st["failed"]) + (f" ({aborted} aborted client{'s' if aborted != 1 else ''})"
                                              if aborted else "")])
    return rows


def verdict(ok):
    return "**PASS**" if ok else "**FAIL**"


def goal_rows(runs, p, timeout_ms):
    rows = []
    bound = None if timeout_ms is None else timeout_ms + HEADROOM_MS
    alone = next((r for r in runs if r.key == "alone" and r.phases and r.phases[0].ok), None)
    own = f" (the release alone: {alone.phases[0].end - alone.phases[0].start:.2f} s)" if alone else ""
    for run in runs:
        for ph in run.phases:
            st = run.stats.get(ph.name)
            if st is None or st["max"] is None:
                continue
            measured = f"max {b.fmt_ms(st['max'])} ms, {st['failed']} failed" + ("" if ph.ok else ", phase failed")
            if run.key in PG_DEPLOY:
                goal = (f"{ph.name}: app max < lock timeout + {HEADROOM_MS:.0f} ms = "
                        + ("n/a (no pg_deploy.lock_timeout in this build)" if bound is None else f"{bound:,.0f} ms")
                        + ", 0 failed")
                ok = bound is not None and st["max"] < bound and st["failed"] == 0 and ph.ok
                rows.append([run.label, goal, measured, verdict(ok)])
                if ph.name == "deploy":
                    after = ph.end - ph.blocker_end
                    rows.append([run.label, f"deploy completes ≤ {COMPLETION_GOAL_S:.0f} s after the open "
                                 "transaction ends", f"{after:+.2f} s" + ("" if ph.ok else " (failed)") + own,
                                 verdict(ph.ok and after <= COMPLETION_GOAL_S)])
            elif run.key == "psql":
                need = 0.8 * p["blocker_s"] * 1000
                rows.append([run.label, f"{ph.name}: stalls the app about the open transaction "
                             f"(max ≥ 0.8 x {p['blocker_s']:g} s = {need:,.0f} ms; the reference)", measured,
                             verdict(st["max"] >= need)])
    return rows


def write_csv(path, runs):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["contender", "seconds", "transactions", "median_ms", "max_ms", "failed"])
        for run in runs:
            if not run.phases:
                continue
            for t, n, md, mx, failed in bins(run.txns, run.phases[0].blocker_start, run.stopped - 0.25):
                w.writerow([run.key, f"{t:.1f}", n, "" if md is None else f"{md:.3f}",
                            "" if mx is None else f"{mx:.3f}", failed])


def draw(path, runs, p, timeout_ms):
    """The app's latency over time, one panel per contender. Returns '' or why it was not drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
        from matplotlib.lines import Line2D
    except ImportError as e:
        return f"not drawn: matplotlib is missing ({e}); Debian's python3-matplotlib draws it"
    drawn = [r for r in runs if r.phases and r.txns]
    if not drawn:
        return "not drawn: no contender ran"
    fig, axes = plt.subplots(len(drawn), 1, figsize=(11, 2.4 * len(drawn) + 0.8), sharex=True, sharey=True,
                             squeeze=False)
    bound = None if timeout_ms is None else timeout_ms + HEADROOM_MS
    for ax, run in zip(axes[:, 0], drawn):
        origin = run.phases[0].blocker_start
        rows = [r for r in bins(run.txns, origin, run.stopped - 0.25) if r[3] is not None]
        ax.plot([r[0] for r in rows], [r[3] for r in rows], lw=0.9, color="tab:red")
        ax.plot([r[0] for r in rows], [r[2] for r in rows], lw=0.9, color="tab:blue")
        ax.set_yscale("log")
        for ph, color in zip(run.phases, ("tab:green", "tab:purple")):
            if ph.blocker_end > ph.blocker_start:
                ax.axvspan(ph.blocker_start - origin, ph.blocker_end - origin, color="0.88", zorder=0)
            for t, what in ((ph.start, "start"), (ph.end, "end")):
                ax.axvline(t - origin, color=color, ls="--" if what == "start" else "-", lw=1)
                ax.text(t - origin, 0.97, f" {ph.name} {what}", transform=ax.get_xaxis_transform(), fontsize=7,
                        color=color, rotation=90, ha="right", va="top")
        fails = [s - origin for s, _, lat, kind in run.txns if kind is not None] + \
                [t - origin for t, _ in run.aborts]
        if fails and rows:
            ax.plot(fails, [max(r[3] for r in rows)] * len(fails), "x", color="black", ms=5)
        if bound:
            ax.axhline(bound, color="black", ls=":", lw=0.8)
        ax.set_ylabel("latency (ms)")
        ax.set_title(run.label + ("" if all(ph.ok for ph in run.phases) else "  (a phase failed)"), fontsize=9,
                     loc="left", pad=12)
        ax.grid(True, which="major", axis="y", lw=0.3)
    axes[-1, 0].set_xlabel("seconds since the open transaction of the deploy phase began "
                           "(the app's transactions by scheduled start, 100 ms bins)")
    handles = [Line2D([], [], color="tab:red", lw=1, label="max latency"),
               Line2D([], [], color="tab:blue", lw=1, label="median latency"),
               Patch(color="0.88", label=f"open transaction ({p['blocker_s']:g} s)"),
               Line2D([], [], color="tab:green", ls="--", label="deploy start / end"),
               Line2D([], [], color="tab:purple", ls="--", label="rollback start / end"),
               Line2D([], [], color="black", marker="x", ls="", label="failed app transaction")]
    if bound:
        handles.append(Line2D([], [], color="black", ls=":", label=f"lock timeout + {HEADROOM_MS:.0f} ms"))
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"Live traffic: {p['rows']:,} rows, {p['clients']} clients"
                 + (f" at {p['rate']:,} tps" if p["rate"] else "") + f", deploy and rollback while a transaction "
                 f"stays open for {p['blocker_s']:g} s", fontsize=10)
    fig.tight_layout(rect=(0, 0.55 / (2.4 * len(drawn) + 0.8), 1, 0.99))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return ""


def picture_path(ctx):
    if os.environ.get("BENCH_LIVE_PNG"):
        return os.environ["BENCH_LIVE_PNG"]
    if ctx.mode_name == "full":
        return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "images",
                            "live-traffic.png")
    return side_file(ctx.results_path or os.path.join(ctx.work, "results.md"), ".png")


def side_file(results_path, ext):
    """bench/results/X.md → bench/results/X-live-traffic.EXT (X-live-traffic.md → X-live-traffic.EXT)."""
    base = re.sub(r"\.md$", "", results_path)
    return base + ("" if base.endswith("live-traffic") else "-live-traffic") + ext


def section_live_traffic(ctx, rep):
    p = params(ctx.mode_name)
    ctx.live_work = os.path.join(ctx.work, "live")
    os.makedirs(ctx.live_work, exist_ok=True)
    rep.add("## 5. Live traffic: a release deployed and rolled back under load, during an open transaction")
    rep.add()
    b.log(f"live-traffic: template with {p['rows']:,} rows")
    template = make_template(ctx, p)
    shown, timeout_ms = lock_settings(template)
    canonical = write_release(os.path.join(ctx.live_work, "release"))   # one release for every contender
    contenders = dict(alone=lambda: Psql(ctx, canonical), psql=lambda: Psql(ctx, canonical),
                      sqitch=lambda: Sqitch(ctx, write_sqitch_project(os.path.join(ctx.live_work, "sqitch"))),
                      sql=lambda: DeploySql(ctx, canonical), pgdeploy=lambda: PgdeployCli(ctx, canonical))
    describe(rep, p, shown)
    runs = []
    for key in p["contenders"]:
        if key == "sqitch" and not shutil.which("sqitch"):
            run = Run(key)
            run.error = "sqitch is not installed"
            runs.append(run)
            continue
        b.log(f"live-traffic: {LABELS[key]}")
        runs.append(run_contender(ctx, key, contenders[key](), dict(p, blocker_s=0) if key == "alone" else p,
                                  template))
    ctx.cluster.drop(template)
    report(ctx, rep, runs, p, timeout_ms)


def describe(rep, p, shown):
    rep.add(f"`accounts(id bigint primary key, balance int, note text)`, {p['rows']:,} rows. The application: "
            f"`pgbench -M prepared -c {p['clients']}`" + (f" at `-R {p['rate']}` tps" if p["rate"] else "")
            + ", half its transactions `SELECT balance FROM accounts WHERE id = :id`, half `UPDATE accounts SET "
            "balance = balance + 1 WHERE id = :id`, with a per-transaction log (`--log`, `--failures-detailed`); "
            "latency runs from each transaction's scheduled start, so a stall also counts against the transactions "
            "it kept from starting. A separate session runs `BEGIN; SELECT 1 FROM accounts LIMIT 1; SELECT "
            f"pg_sleep({p['blocker_s']:g}); COMMIT;`; {p['lead_s']:g} s after it took its lock the contender "
            "deploys the release (then, once the deploy and the open transaction are over and "
            f"{p['settle_s']:g} s passed, the same again for the rollback). Each contender runs on a fresh copy of "
            "the database (`CREATE DATABASE ... TEMPLATE`).")
    rep.add()
    rep.table(["migration", "up", "down"],
              [[f"{v} {n}", "; ".join(f"`{s}`" for s in up), "; ".join(f"`{s}`" for s in down)]
               for v, n, up, down in RELEASE])
    rep.add("Contenders: `psql -X -v ON_ERROR_STOP=1 -1 -f` per file (0002 without `-1`); `sqitch deploy` / `sqitch "
            "revert -y` (each transactional script in `BEGIN; ... COMMIT;`, Sqitch's registry created beforehand); "
            "`SELECT deploy.up()` / `SELECT deploy.rollback()` on one session in autocommit, the migrations "
            "registered beforehand with `pgdeploy load` (not part of the deploy), the non-transactional step run "
            "with `deploy.next_step()` / `deploy.step_done()`; `pgdeploy up --dir` (loading included) / `pgdeploy "
            "rollback`. pg_deploy runs with its defaults: "
            + ", ".join(f"`{k}` = {v}" for k, v in shown.items()) + ".")
    rep.add()


def report(ctx, rep, runs, p, timeout_ms):
    rep.add("Per phase, the application's transactions scheduled to start from the phase's start to "
            f"{p['settle_s']:g} s after both the phase and the open transaction ended; *after end of open "
            "transaction* is when the deploy (rollback) finished, in seconds after the open transaction committed "
            "(negative: before). Latencies in ms. Baseline: the load alone, before the first open transaction.")
    rep.add()
    rep.table(["contender", "phase", "result", "took s", "after end of open txn s",
               "app txns", "p50 ms", "p99 ms", "max ms", "failed app txns"], figure_rows(runs))
    for run in runs:
        if run.error and run.stats:
            rep.add(f"Note ({run.label}): {run.error}.")
            rep.add()
    rep.add("### Goals (live traffic, docs/benchmarks.md)")
    rep.add()
    rep.add("pg_deploy.lock_timeout: " + ("n/a: this build has no lock-safe mode, so the latency goals cannot pass"
                                          if timeout_ms is None else f"{timeout_ms:,.0f} ms") + ".")
    rep.add()
    rep.table(["contender", "goal", "measured", "verdict"], goal_rows(runs, p, timeout_ms))
    alone = next((r for r in runs if r.key == "alone" and len(r.phases) == 2 and r.stats), None)
    if alone:
        d, r = alone.phases
        rep.add(f"For scale: with no transaction left open, the release under the same load (psql -1 -f) took "
                f"{d.end - d.start:.2f} s to deploy and {r.end - r.start:.2f} s to roll back, and the app's max "
                f"latency was {b.fmt_ms(alone.stats['deploy']['max'])} ms during the deploy and "
                f"{b.fmt_ms(alone.stats['rollback']['max'])} ms during the rollback.")
        rep.add()
    if ctx.results_path:
        path = side_file(ctx.results_path, ".csv")
        write_csv(path, runs)
        rep.add(f"The app's latency per 100 ms for each contender: `{os.path.basename(path)}`.")
        rep.add()
    png = picture_path(ctx)
    why = draw(png, runs, p, timeout_ms)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shown_png = os.path.relpath(png, root) if os.path.abspath(png).startswith(root + os.sep) else png
    rep.add(f"Picture: {why}" if why else f"Picture: `{shown_png}`.")
    rep.add()
    ctx.results["live_traffic"] = [dict(contender=r.key, error=r.error, stats=r.stats,
                                        phases=[dict(name=ph.name, ok=ph.ok, message=ph.message,
                                                     after_open_txn_s=ph.end - ph.blocker_end)
                                                for ph in r.phases]) for r in runs]
