#!/usr/bin/env python3
"""pg_deploy benchmarks: the ledger against the raw floor and Sqitch, a large ledger, the watcher at scale, big scripts
and live traffic (bench/big_scripts.py, bench/live_traffic.py).

Run it through bench/run (which installs Sqitch, builds, and starts a throwaway cluster with pg_virtualenv); this file
expects the PG* environment of a running PostgreSQL 15 server with pg_deploy installed, and is told where the
`pgdeploy` binary and the helper programs are.

Every figure is measured in this run: contenders alternate within each round (the order rotates), each on a database
created fresh from a template, and the tables report the best and the median of the rounds, with ratios computed
from this run's own floor. A contender that cannot run is reported as "not measured: <why>", never estimated.
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request

import psycopg2
import psycopg2.extensions

import big_scripts  # section 4 (bench/big_scripts.py)
import live_traffic  # section 5 (bench/live_traffic.py)

# ---------------------------------------------------------------------------------------------------------------------
# modes

MODES = {
    # full: the figures of docs/benchmarks.md (about 15 minutes on 2 cores)
    "full": dict(ns=[100, 1000, 5000], rounds=5, rounds_by_n={5000: 3}, sqitch_ns=[100], sqitch_rounds=3,
                 durable_ns=[1000], durable_rounds=2, durable_sqitch_ns=[],
                 ledger_applied=100_000, ledger_events=1_000_000, ledger_rounds=15,
                 pgbench_seconds=10, pgbench_clients=[1, 4],
                 cycle_checks=1000, cycle_cycles=7, idle_checks=5000, idle_seconds=30, idle_warmup=5,
                 rollback_migrations=100, rollback_rounds=3, rollback_interval="1s",
                 scripts_ns=[50_000, 500_000], scripts_rounds=3, scripts_cancels=10, scripts_literal_mb=60),
    # quick: the same shape with small N, for a developer's check (about 3 minutes)
    "quick": dict(ns=[100, 1000], rounds=3, rounds_by_n={}, sqitch_ns=[100], sqitch_rounds=2,
                  durable_ns=[100], durable_rounds=2, durable_sqitch_ns=[],
                  ledger_applied=10_000, ledger_events=100_000, ledger_rounds=7,
                  pgbench_seconds=3, pgbench_clients=[1, 4],
                  cycle_checks=1000, cycle_cycles=3, idle_checks=5000, idle_seconds=8, idle_warmup=3,
                  rollback_migrations=100, rollback_rounds=1, rollback_interval="1s",
                  scripts_ns=[50_000, 500_000], scripts_rounds=1, scripts_cancels=5, scripts_literal_mb=60),
    # smoke: tiny N; tests/e2e/test_bench_smoke.py runs it in the default test run (it proves the bench runs)
    "smoke": dict(ns=[5], rounds=1, rounds_by_n={}, sqitch_ns=[5], sqitch_rounds=1,
                  durable_ns=[], durable_rounds=0, durable_sqitch_ns=[],
                  ledger_applied=500, ledger_events=5_000, ledger_rounds=2,
                  pgbench_seconds=1, pgbench_clients=[2],
                  cycle_checks=20, cycle_cycles=2, idle_checks=50, idle_seconds=2, idle_warmup=1,
                  rollback_migrations=5, rollback_rounds=1, rollback_interval="300ms",
                  scripts_ns=[5_000], scripts_rounds=1, scripts_cancels=2, scripts_literal_mb=2),
}

SECTIONS = ["migrations", "ledger", "watcher", "scripts", "live-traffic"]
REFERENCE_SUBXACT = "reference: DO block, one subtransaction per EXECUTE (not a floor)"

# ---------------------------------------------------------------------------------------------------------------------
# helpers


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def connect(dbname):
    conn = psycopg2.connect(dbname=dbname, application_name="pg_deploy-bench")
    conn.autocommit = True
    return conn


class Cluster:
    """The server from the PG* environment; creates and drops the throwaway databases of the run."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.admin = connect(os.environ.get("PGDATABASE_ADMIN", "postgres"))
        self.count = 0

    def sql(self, q, params=None):
        with self.admin.cursor() as cur:
            cur.execute(q, params)
            return cur.fetchall() if cur.description else []

    def create(self, template, name=None):
        self.count += 1
        name = name or f"{self.prefix}_{self.count}"
        self.sql(f'DROP DATABASE IF EXISTS "{name}"')
        self.sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    def drop(self, name):
        # A watcher or psql that just exited may still hold a session for a few ms.
        for _ in range(50):
            try:
                self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except psycopg2.Error:
                time.sleep(0.1)
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextlib.contextmanager
    def fresh(self, template):
        """A database created from template for one contender's run, dropped afterwards whatever happened."""
        name = self.create(template)
        try:
            yield name
        finally:
            self.drop(name)

    def make_template(self, name, setup_sql=None, from_template="template0"):
        self.sql(f'DROP DATABASE IF EXISTS "{name}"')
        self.sql(f'CREATE DATABASE "{name}" TEMPLATE "{from_template}"')
        if setup_sql:
            c = connect(name)
            with c.cursor() as cur:
                cur.execute(setup_sql)
            c.close()
        return name


def dsn_for(dbname):
    """A key=value conninfo for a benchmark database (the rest comes from the PG* environment)."""
    return f"dbname={dbname}"


def best(xs):
    return min(xs) if xs else None


def med(xs):
    return statistics.median(xs) if xs else None


def pct(xs, p):
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def fmt_ms(v, digits=1):
    if v is None:
        return "—"
    if v < 1:
        return f"{v:.3f}"
    if v < 10:
        return f"{v:.2f}"
    return f"{v:,.{digits}f}"


def fmt_ratio(v):
    return "—" if v is None else f"{v:.3f}x"


def goal_mark(ok):
    return "met" if ok else "**missed**"


def one_line(e, limit=240):
    """An exception as one table-safe line: type, first line of the message (PostgreSQL's HINT/QUERY lines dropped)."""
    text = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    text = text.replace("|", "/")
    return text if len(text) <= limit else text[:limit] + "..."


def backend_cpu_ms(conn):
    """On-CPU time of the connection's backend so far (/proc/PID/schedstat, nanoseconds): unlike the wall clock it
    does not count the time the backend waited for a CPU that other processes of this shared machine held."""
    with open(f"/proc/{conn.get_backend_pid()}/schedstat") as f:
        return int(f.read().split()[0]) / 1e6


def timed_cpu(conn, fn):
    """(wall ms, backend CPU ms) of fn, which runs one statement on conn."""
    c0 = backend_cpu_ms(conn)
    t = timed(fn)
    return t, backend_cpu_ms(conn) - c0


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def stop_process(proc):
    """SIGTERM a child that still runs (a watcher: it shuts down cleanly), SIGKILL it after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


class Report:
    """Markdown printed as it is produced (stdout) and kept for the results file."""

    def __init__(self, path):
        self.lines = []
        self.path = path

    def add(self, text=""):
        self.lines.append(text)
        print(text, flush=True)

    def table(self, header, rows):
        self.add("| " + " | ".join(header) + " |")
        self.add("|" + "|".join(" --- " for _ in header) + "|")
        for r in rows:
            self.add("| " + " | ".join(str(x) for x in r) + " |")
        self.add()

    def save(self):
        if self.path:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "w") as f:
                f.write("\n".join(self.lines) + "\n")


# ---------------------------------------------------------------------------------------------------------------------
# migrations: the floor, deploy.up(), deploy.rollback(), pgdeploy up --dir, Sqitch


def version_of(i):
    return f"{i:05d}"


def create_stmt(i):
    return f"CREATE TABLE t{i} (id int primary key, v text)"


def drop_stmt(i):
    return f"DROP TABLE t{i}"


def count_bench_tables(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname ~ '^t[0-9]+$'")
        return cur.fetchone()[0]


class MigrationBench:
    """One N: templates, files, and one timed run per contender per round."""

    def __init__(self, ctx, n):
        self.ctx = ctx
        self.n = n
        self.work = os.path.join(ctx.work, f"n{n}")
        os.makedirs(self.work, exist_ok=True)
        self.creates = [create_stmt(i) for i in range(1, n + 1)]
        self.drops = [drop_stmt(i) for i in range(n, 0, -1)]   # newest first, as a revert runs
        # psql -1 -f files
        self.create_file = os.path.join(self.work, "create.sql")
        self.drop_file = os.path.join(self.work, "drop.sql")
        with open(self.create_file, "w") as f:
            f.write(";\n".join(self.creates) + ";\n")
        with open(self.drop_file, "w") as f:
            f.write(";\n".join(self.drops) + ";\n")
        # pgdeploy files
        self.cpu = None   # (up, down) backend CPU ms of the last SQL contender run
        self.mig_dir = os.path.join(self.work, "migrations")
        os.makedirs(self.mig_dir, exist_ok=True)
        for i in range(1, n + 1):
            v = version_of(i)
            with open(os.path.join(self.mig_dir, f"{v}_create_t{i}.up.sql"), "w") as f:
                f.write(create_stmt(i) + ";\n")
            with open(os.path.join(self.mig_dir, f"{v}_create_t{i}.down.sql"), "w") as f:
                f.write(drop_stmt(i) + ";\n")
        # a template with the N migrations registered (registration is not timed for deploy.up())
        refresh_ext_template(ctx)
        self.tpl_registered = ctx.cluster.make_template(f"{ctx.prefix}_tpl_reg_{n}", from_template=ctx.tpl_ext)
        c = connect(self.tpl_registered)
        with c.cursor() as cur:
            cur.execute("SELECT count(deploy.register(lpad(i::text, 5, '0'), 'create_t' || i, "
                        "format('CREATE TABLE t%%s (id int primary key, v text)', i), "
                        "format('DROP TABLE t%%s', i))) FROM generate_series(1, %s) i", (n,))
            cur.execute("SELECT count(*) FROM deploy.migrations")
            assert cur.fetchone()[0] == n, "registration did not register every migration"
        c.close()

    # -- the floor: no ledger at all, one transaction, three ways; each way's database then drops its tables raw --
    def floor_simple(self):
        with self.ctx.cluster.fresh(self.ctx.tpl_plain) as db:
            c = connect(db)
            cur = c.cursor()
            t_up, cpu_up = timed_cpu(c, lambda: cur.execute("BEGIN;" + ";".join(self.creates) + ";COMMIT;"))
            assert count_bench_tables(c) == self.n
            t_down, cpu_down = timed_cpu(c, lambda: cur.execute("BEGIN;" + ";".join(self.drops) + ";COMMIT;"))
            assert count_bench_tables(c) == 0
            c.close()
            self.cpu = (cpu_up, cpu_down)
            return t_up, t_down

    def floor_psql(self):
        with self.ctx.cluster.fresh(self.ctx.tpl_plain) as db:
            argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-d", db, "-f"]
            t0 = time.perf_counter()
            r = run(argv + [self.create_file])
            t_up = (time.perf_counter() - t0) * 1000
            if r.returncode != 0:
                raise RuntimeError(f"psql -1 -f failed: {r.stderr.strip()[:300]}")
            c = connect(db)
            assert count_bench_tables(c) == self.n
            t0 = time.perf_counter()
            r = run(argv + [self.drop_file])
            t_down = (time.perf_counter() - t0) * 1000
            if r.returncode != 0:
                raise RuntimeError(f"psql -1 -f (drops) failed: {r.stderr.strip()[:300]}")
            assert count_bench_tables(c) == 0
            c.close()
            return t_up, t_down

    def _run_do_blocks(self, statement_template):
        """Runs the N creates, then the N drops, each as one DO block of EXECUTEs shaped by statement_template."""
        with self.ctx.cluster.fresh(self.ctx.tpl_plain) as db:
            c = connect(db)
            cur = c.cursor()

            def do_block(stmts):
                return "DO $bench$ BEGIN\n" + "".join(statement_template.format(s) + "\n" for s in stmts) + \
                    "END $bench$"

            up_sql, down_sql = do_block(self.creates), do_block(self.drops)
            t_up, cpu_up = timed_cpu(c, lambda: cur.execute(up_sql))
            assert count_bench_tables(c) == self.n
            t_down, cpu_down = timed_cpu(c, lambda: cur.execute(down_sql))
            assert count_bench_tables(c) == 0
            c.close()
            self.cpu = (cpu_up, cpu_down)
            return t_up, t_down

    def floor_do(self):
        return self._run_do_blocks("EXECUTE '{}';")

    # -- reference (not a floor): the same DO block with every EXECUTE in its own BEGIN ... EXCEPTION block, i.e. one
    #    subtransaction per statement, the structure deploy.up() used before it switched to one batch subtransaction:
    #    it shows what PostgreSQL charges for that --
    def reference_subxact(self):
        return self._run_do_blocks("BEGIN EXECUTE '{}'; EXCEPTION WHEN OTHERS THEN RAISE; END;")

    # -- pg_deploy in the database: SELECT deploy.up() then SELECT deploy.rollback() --
    def deploy_up(self):
        with self.ctx.cluster.fresh(self.tpl_registered) as db:
            c = connect(db)
            cur = c.cursor()
            t_up, cpu_up = timed_cpu(c, lambda: cur.execute("SELECT deploy.up()"))
            res = cur.fetchone()[0]
            if not res.get("ok") or len(res.get("applied") or []) != self.n:
                raise RuntimeError(f"deploy.up() did not apply {self.n}: {json.dumps(res)[:300]}")
            assert count_bench_tables(c) == self.n
            t_down, cpu_down = timed_cpu(c, lambda: cur.execute("SELECT deploy.rollback()"))
            res = cur.fetchone()[0]
            if not res.get("ok", False):
                raise RuntimeError(f"deploy.rollback() failed: {json.dumps(res)[:300]}")
            assert count_bench_tables(c) == 0, "deploy.rollback() left tables behind"
            c.close()
            self.cpu = (cpu_up, cpu_down)
            return t_up, t_down

    # -- pgdeploy up --dir: reading the files and registering them included --
    def pgdeploy_up(self):
        with self.ctx.cluster.fresh(self.ctx.tpl_ext) as db:
            argv = [self.ctx.pgdeploy, "up", "--dir", self.mig_dir, "--dsn", dsn_for(db), "--quiet", "--json"]
            t0 = time.perf_counter()
            r = run(argv)
            t = (time.perf_counter() - t0) * 1000
            if r.returncode != 0:
                raise RuntimeError(f"pgdeploy up exited {r.returncode}: {(r.stderr or r.stdout).strip()[:300]}")
            c = connect(db)
            if count_bench_tables(c) != self.n:
                raise RuntimeError("pgdeploy up did not create every table")
            c.close()
            return t, None

    # -- Sqitch: one change per migration, deployed by `sqitch deploy` (each change its own psql run) --
    def sqitch_project(self):
        proj = os.path.join(self.work, "sqitch")
        if os.path.exists(proj):
            return proj
        for d in ("deploy", "revert", "verify"):
            os.makedirs(os.path.join(proj, d), exist_ok=True)
        with open(os.path.join(proj, "sqitch.conf"), "w") as f:
            f.write("[core]\n\tengine = pg\n\tplan_file = sqitch.plan\n\ttop_dir = .\n"
                    "[user]\n\tname = pg_deploy bench\n\temail = bench@localhost\n"
                    "[deploy]\n\tverify = false\n[rebase]\n\tverify = false\n")
        lines = ["%syntax-version=1.0.0", "%project=bench", ""]
        for i in range(1, self.n + 1):
            name = f"c{version_of(i)}"
            lines.append(f"{name} 2026-01-01T00:00:00Z pg_deploy bench <bench@localhost> # create t{i}")
            with open(os.path.join(proj, "deploy", name + ".sql"), "w") as f:
                f.write(f"BEGIN;\n{create_stmt(i)};\nCOMMIT;\n")
            with open(os.path.join(proj, "revert", name + ".sql"), "w") as f:
                f.write(f"BEGIN;\n{drop_stmt(i)};\nCOMMIT;\n")
            with open(os.path.join(proj, "verify", name + ".sql"), "w") as f:
                f.write(f"SELECT 1/count(*) FROM pg_class WHERE relname = 't{i}';\n")
        with open(os.path.join(proj, "sqitch.plan"), "w") as f:
            f.write("\n".join(lines) + "\n")
        return proj

    def sqitch(self):
        proj = self.sqitch_project()
        with self.ctx.cluster.fresh(self.ctx.tpl_sqitch) as db:
            target = f"db:pg:{db}"
            t0 = time.perf_counter()
            r = run(["sqitch", "deploy", "--target", target], cwd=proj, env=self.ctx.sqitch_env)
            t_up = (time.perf_counter() - t0) * 1000
            if r.returncode != 0:
                raise RuntimeError(f"sqitch deploy exited {r.returncode}: {(r.stderr or r.stdout).strip()[:300]}")
            c = connect(db)
            if count_bench_tables(c) != self.n:
                raise RuntimeError("sqitch deploy did not create every table")
            t0 = time.perf_counter()
            r = run(["sqitch", "revert", "-y", "--target", target], cwd=proj, env=self.ctx.sqitch_env)
            t_down = (time.perf_counter() - t0) * 1000
            if r.returncode != 0:
                raise RuntimeError(f"sqitch revert exited {r.returncode}: {(r.stderr or r.stdout).strip()[:300]}")
            if count_bench_tables(c) != 0:
                raise RuntimeError("sqitch revert left tables behind")
            c.close()
            return t_up, t_down


def section_migrations(ctx, rep):
    m = ctx.mode
    rep.add("## 1. Applying and reverting N trivial migrations")
    rep.add()
    rep.add("Statement per migration: `CREATE TABLE tN (id int primary key, v text)`; revert: `DROP TABLE tN`, newest "
            "first. Every contender gets a database created fresh from a template for every round; the order of the "
            "contenders rotates from round to round. Times are wall-clock milliseconds seen by the client "
            "(psycopg2 for SQL statements: connection opened before the clock starts; whole process runs for "
            "`psql`, `pgdeploy` and `sqitch`). After each run the benchmark checks that all N tables exist (and "
            "that none is left after a revert).")
    rep.add()
    fsync = ctx.cluster.sql("SHOW fsync")[0][0]
    rep.add(f"### 1a. fsync = {fsync} (as the cluster came): the ledger's own cost, not hidden behind the disk")
    rep.add()
    ctx.results["migrations"] = migration_pass(ctx, rep, m["ns"], m["rounds"], m["sqitch_ns"], m["sqitch_rounds"],
                                               "1a", m["rounds_by_n"])
    rep.add("### 1b. fsync = on: the same contenders paying for durability")
    rep.add()
    if not m["durable_ns"]:
        rep.add("Skipped in this mode (the fsync = on pass runs in the full and quick modes).")
        rep.add()
        return
    if os.environ.get("BENCH_INNER") != "1":
        rep.add("not measured: the fsync = on pass changes the server's fsync setting (ALTER SYSTEM), which bench/run "
                "does only in the throwaway cluster it starts itself")
        rep.add()
        return
    ctx.cluster.sql("ALTER SYSTEM SET fsync = on")
    ctx.cluster.sql("SELECT pg_reload_conf()")
    time.sleep(0.5)
    try:
        rep.add(f"`ALTER SYSTEM SET fsync = on` + `pg_reload_conf()` in the benchmark's own cluster (now "
                f"fsync = {ctx.cluster.sql('SHOW fsync')[0][0]}), reset afterwards. Every `CREATE TABLE` with a "
                "primary key then costs one fsync of the new index (PostgreSQL 15's btree build syncs it at the "
                "end), so the disk dominates the floor and the ledger alike.")
        rep.add()
        ctx.results["migrations_durable"] = migration_pass(ctx, rep, m["durable_ns"], m["durable_rounds"],
                                                           m["durable_sqitch_ns"], m["durable_rounds"], "1b")
    finally:
        ctx.cluster.sql("ALTER SYSTEM RESET fsync")
        ctx.cluster.sql("SELECT pg_reload_conf()")


def floor_figures(floor_names, walls, cpus):
    """The floor of a table: the fastest way by median (marked in the table), the best single run of any way, and
    the lowest median backend CPU of the ways that run on a connection of ours."""
    named = [k for k in floor_names if walls[k]]
    if not named:
        return dict(name=None, median=None, best=None, cpu=None)
    by_median = min(named, key=lambda k: med(walls[k]))
    with_cpu = [k for k in named if cpus[k]]
    return dict(name=by_median, median=med(walls[by_median]), best=min(best(walls[k]) for k in named),
                cpu=min(med(cpus[k]) for k in with_cpu) if with_cpu else None)


def contender_rows(names, walls, cpus, errors, floor, n):
    rows = []
    for name in names:
        xs = walls.get(name) or []
        if not xs:
            if name in errors:
                rows.append([name, f"not measured: {errors[name]}", "", "", "", "", "", "", ""])
            continue
        b, md_ = best(xs), med(xs)
        c = med(cpus.get(name) or [])
        rows.append([name + (" ← floor" if name == floor["name"] else ""), len(xs), fmt_ms(b), fmt_ms(md_),
                     fmt_ratio(md_ / floor["median"]) if floor["median"] else "—",
                     fmt_ratio(b / floor["best"]) if floor["best"] else "—",
                     fmt_ms(c) if c is not None else "— (separate process)",
                     fmt_ratio(c / floor["cpu"]) if (c is not None and floor["cpu"]) else "—",
                     fmt_ms(md_ / n * 1000, 0)])
    return rows


def migration_pass(ctx, rep, ns, default_rounds, sqitch_ns, sqitch_rounds, label, rounds_by_n=None):
    summary = []
    for n in ns:
        rounds = (rounds_by_n or {}).get(n, default_rounds)
        # the subtransaction reference is slow at large N (quadratic in PostgreSQL): one round says what it must
        reference_rounds = 1 if n >= 5000 else rounds
        log(f"migrations: N={n}: preparing")
        mb = MigrationBench(ctx, n)
        contenders = {
            "floor: one simple-query message": mb.floor_simple,
            "floor: psql -1 -f": mb.floor_psql,
            "floor: one DO block of EXECUTEs": mb.floor_do,
            "SELECT deploy.up() / deploy.rollback()": mb.deploy_up,
            "pgdeploy up --dir (load + apply)": mb.pgdeploy_up,
            REFERENCE_SUBXACT: mb.reference_subxact,
        }
        with_sqitch = n in sqitch_ns
        if with_sqitch:
            contenders["sqitch deploy / revert"] = mb.sqitch
        ups = {k: [] for k in contenders}
        downs = {k: [] for k in contenders}
        cpu_ups = {k: [] for k in contenders}
        cpu_downs = {k: [] for k in contenders}
        errors = {}
        names = list(contenders)
        for rnd in range(rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                if name in errors:
                    continue
                if name.startswith("sqitch") and rnd >= sqitch_rounds:
                    continue
                if name == REFERENCE_SUBXACT and rnd >= reference_rounds:
                    continue
                try:
                    mb.cpu = None
                    up, down = contenders[name]()
                    ups[name].append(up)
                    if down is not None:
                        downs[name].append(down)
                    if mb.cpu:
                        cpu_ups[name].append(mb.cpu[0])
                        cpu_downs[name].append(mb.cpu[1])
                except Exception as e:  # reported in the table, never estimated
                    errors[name] = one_line(e)
                    log(f"migrations: N={n}: {name}: not measured: {errors[name]}")
            log(f"migrations: N={n}: round {rnd + 1}/{rounds} done")
        if not with_sqitch:
            errors["sqitch deploy / revert"] = (
                f"Sqitch runs at N = {', '.join(f'{x:,}' for x in sqitch_ns)} only (one psql process per change, "
                "about 80 ms each here)" if sqitch_ns else "Sqitch runs in section 1a only")
        floor_names = [k for k in names if k.startswith("floor") and ups[k]]
        fl = floor_figures(floor_names, ups, cpu_ups)
        fd = floor_figures(floor_names, downs, cpu_downs)

        rep.add(f"#### {label}, N = {n:,} ({rounds} rounds; Sqitch {min(rounds, sqitch_rounds)}, the reference "
                f"{reference_rounds})")
        rep.add()
        header = ["contender", "runs", "best ms", "median ms", "median / floor", "best / floor best",
                  "backend CPU ms (median)", "CPU / floor CPU", "µs per migration (median)"]
        rep.add("Apply:")
        rep.add()
        rep.table(header, contender_rows(names + ([] if with_sqitch else ["sqitch deploy / revert"]), ups, cpu_ups,
                                         errors, fl, n))
        rep.add("Revert (the same tables dropped; deploy.rollback() reverts from the down SQL stored in the ledger):")
        rep.add()
        rep.table(header, contender_rows([k for k in names if not k.startswith("pgdeploy")], downs, cpu_downs,
                                         errors, fd, n))
        up_name, pg_name, sq_name = ("SELECT deploy.up() / deploy.rollback()", "pgdeploy up --dir (load + apply)",
                                     "sqitch deploy / revert")
        summary.append(dict(
            n=n, floor_up=fl, floor_down=fd,
            up=(med(ups[up_name]), best(ups[up_name]), med(cpu_ups[up_name])),
            down=(med(downs[up_name]), best(downs[up_name]), med(cpu_downs[up_name])),
            pgdeploy=(med(ups[pg_name]), best(ups[pg_name]), None),
            sqitch=(med(ups[sq_name]), best(ups[sq_name]), None) if with_sqitch else (None, None, None),
            errors=errors))
        ctx.cluster.drop(mb.tpl_registered)

    rep.add(f"#### {label}: goals (docs/benchmarks.md, 'Goals at a glance')")
    rep.add()
    rep.add("Each ratio three ways: wall median / wall best / backend CPU (the CPU figure is the least disturbed by "
            "other load on the machine; pgdeploy and Sqitch are separate processes, so wall only). The ledger's cost "
            "per migration is (deploy.up() − floor) / N on the backend's CPU time.")
    rep.add()
    rows = []
    for s_ in summary:
        def three(x, f, goal):
            parts = [x[0] / f["median"] if (x[0] is not None and f["median"]) else None,
                     x[1] / f["best"] if (x[1] is not None and f["best"]) else None,
                     x[2] / f["cpu"] if (x[2] is not None and f["cpu"]) else None]
            text = " / ".join(fmt_ratio(p_) for p_ in parts)
            if goal and s_["n"] == 1000 and any(p_ is not None for p_ in parts):
                text += f" (goal ≤ {goal}x: " + " / ".join(
                    "—" if p_ is None else ("met" if p_ <= goal else "**missed**") for p_ in parts) + ")"
            return text
        fl_, fd_ = s_["floor_up"], s_["floor_down"]
        ledger_cpu = ((s_["up"][2] - fl_["cpu"]) / s_["n"] * 1000) if (s_["up"][2] is not None and fl_["cpu"]) \
            else None
        rows.append([f"{s_['n']:,}", three(s_["up"], fl_, 1.05), three(s_["pgdeploy"], fl_, 1.3),
                     three(s_["down"], fd_, 1.05), three(s_["sqitch"], fl_, None),
                     fmt_ms(fl_["cpu"] / s_["n"] * 1000, 0) if fl_["cpu"] else "—",
                     fmt_ms(s_["up"][2] / s_["n"] * 1000, 0) if s_["up"][2] else "—",
                     fmt_ms(ledger_cpu, 0) if ledger_cpu is not None else "—"])
    rep.table(["N", "deploy.up() / floor", "pgdeploy up / floor", "deploy.rollback() / raw DROPs", "sqitch / floor",
               "floor CPU µs/migration", "deploy.up() CPU µs/migration", "ledger CPU µs/migration"], rows)
    return summary


# ---------------------------------------------------------------------------------------------------------------------
# the large ledger: 100,000 applied migrations, 1,000,000 events


def fill_ledger(conn, applied, events):
    per_deployment = 100
    deployments = max(1, applied // per_deployment)
    with conn.cursor() as cur:
        cur.execute("""
            INSERT INTO deploy.deployments (kind, app_version, state, started_at, finished_at, version_before,
                                            version_after, metadata)
            SELECT 'up', 'release-' || d, 'succeeded',
                   now() - interval '400 days' + d * interval '5 minutes',
                   now() - interval '400 days' + d * interval '5 minutes' + interval '2 seconds',
                   CASE WHEN d > 1 THEN lpad(((d - 1) * %(per)s)::text, 6, '0') END,
                   lpad(least(d * %(per)s, %(applied)s)::text, 6, '0'), '{}'
            FROM generate_series(1, %(deps)s) d""", dict(per=per_deployment, applied=applied, deps=deployments))
        cur.execute("SELECT min(id) FROM deploy.deployments")
        first_id = cur.fetchone()[0]
        cur.execute("""
            INSERT INTO deploy.migrations (version, sort_key, name, up_sql, down_sql, checksum, down_checksum,
                                           registered_at)
            SELECT v, deploy.version_key(v), 'migration_' || i, u, d, deploy.checksum(u), deploy.checksum(d),
                   now() - interval '400 days'
            FROM generate_series(1, %(applied)s) i,
                 LATERAL (SELECT lpad(i::text, 6, '0') AS v,
                                 'CREATE TABLE IF NOT EXISTS old_' || i || ' (id int)' AS u,
                                 'DROP TABLE IF EXISTS old_' || i AS d) x""",
                    dict(applied=applied))
        cur.execute("""
            INSERT INTO deploy.applied (version, sort_key, name, checksum, down_sql, down_checksum, reversibility,
                                        transactional, deployment_id, applied_at, duration_ms)
            SELECT m.version, m.sort_key, m.name, m.checksum, m.down_sql, m.down_checksum, 'reversible', true,
                   %(first)s + (substr(m.version, 1, 6)::int - 1) / %(per)s, m.registered_at, 0.2
            FROM deploy.migrations m""", dict(first=first_id, per=per_deployment))
        cur.execute("""
            INSERT INTO deploy.events (at, kind, deployment_id, version, details)
            SELECT now() - interval '400 days' + e * interval '30 seconds',
                   (ARRAY['migration_registered', 'deployment_started', 'migration_applied',
                          'deployment_succeeded'])[1 + e %% 4],
                   %(first)s + (e %% %(deps)s), lpad((1 + e %% %(applied)s)::text, 6, '0'), '{}'
            FROM generate_series(1, %(events)s) e""", dict(first=first_id, deps=deployments, applied=applied,
                                                           events=events))
    return deployments


def pgbench_latencies(ctx, db, script_sql, clients, seconds):
    """pgbench with a custom script and --log: returns (latencies in ms of every transaction, tps)."""
    d = tempfile.mkdtemp(prefix="pgbench-", dir=ctx.work)
    script = os.path.join(d, "script.sql")
    with open(script, "w") as f:
        f.write(script_sql + "\n")
    argv = ["pgbench", "-n", "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)), "-T", str(seconds),
            "-f", script, "-l", f"--log-prefix={d}/log", "-d", db]
    r = run(argv)
    if r.returncode != 0:
        raise RuntimeError(f"pgbench exited {r.returncode}: {r.stderr.strip()[:300]}")
    lat = []
    for fn in os.listdir(d):
        if fn.startswith("log"):
            with open(os.path.join(d, fn)) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3:
                        lat.append(int(parts[2]) / 1000.0)
    tps = None
    for line in r.stdout.splitlines():
        if line.startswith("tps"):
            tps = float(line.split("=")[1].split()[0])
    shutil.rmtree(d, ignore_errors=True)
    if not lat:
        raise RuntimeError("pgbench wrote no transaction log")
    return lat, tps


def section_ledger(ctx, rep):
    m = ctx.mode
    applied, events = m["ledger_applied"], m["ledger_events"]
    rep.add(f"## 2. A large ledger: {applied:,} applied migrations, {events:,} events")
    rep.add()
    refresh_ext_template(ctx)
    db = ctx.cluster.create(ctx.tpl_ext, name=f"{ctx.prefix}_ledger")
    conn = connect(db)
    log(f"ledger: generating {applied:,} applied migrations and {events:,} events")
    t_fill = timed(lambda: fill_ledger(conn, applied, events))
    with conn.cursor() as cur:
        t_vac = timed(lambda: cur.execute("VACUUM ANALYZE"))
        cur.execute("SELECT (SELECT count(*) FROM deploy.applied), (SELECT count(*) FROM deploy.migrations), "
                    "(SELECT count(*) FROM deploy.events), (SELECT count(*) FROM deploy.deployments), "
                    "deploy.current_version(), pg_size_pretty(pg_database_size(current_database()))")
        n_applied, n_mig, n_events, n_deps, current, size = cur.fetchone()
    rep.add(f"Generated with INSERT ... SELECT generate_series straight into deploy.deployments ({n_deps:,} rows), "
            f"deploy.migrations ({n_mig:,}), deploy.applied ({n_applied:,}; sort_key = deploy.version_key(version)) "
            f"and deploy.events ({n_events:,}) in {t_fill / 1000:.1f} s; then `VACUUM ANALYZE` "
            f"({t_vac / 1000:.1f} s), as autovacuum would have done on a ledger that grew over time. Current version "
            f"{current}; database size {size}.")
    rep.add()

    # one more trivial migration through deploy.up() vs the floor, alternating, on warm connections
    rounds = m["ledger_rounds"]
    base = applied
    with conn.cursor() as cur:
        cur.execute("SELECT count(deploy.register(lpad(i::text, 6, '0'), 'more_' || i, "
                    "format('CREATE TABLE more_%%s (id int primary key, v text)', i), "
                    "format('DROP TABLE more_%%s', i))) FROM generate_series(%s, %s) i",
                    (base + 1, base + rounds))
    floor_conn = connect(db)
    up_t, floor_t, up_cpu, floor_cpu = [], [], [], []
    errors = None
    for k in range(1, rounds + 1):
        i = base + k
        v = f"{i:06d}"

        def do_up():
            with conn.cursor() as cur:
                t, cpu = timed_cpu(conn, lambda: cur.execute("SELECT deploy.up(target => %s)", (v,)))
                up_cpu.append(cpu)
                res = cur.fetchone()[0]
                if not res.get("ok") or len(res.get("applied") or []) != 1:
                    raise RuntimeError(f"deploy.up(target => {v}) did not apply one migration: "
                                       f"{json.dumps(res)[:300]}")
                up_t.append(t)

        def do_floor():
            with floor_conn.cursor() as cur:
                t, cpu = timed_cpu(floor_conn, lambda: cur.execute(
                    f"BEGIN;CREATE TABLE floor_{i} (id int primary key, v text);COMMIT;"))
                floor_t.append(t)
                floor_cpu.append(cpu)

        try:
            for fn in ((do_up, do_floor) if k % 2 else (do_floor, do_up)):
                fn()
        except Exception as e:
            errors = one_line(e)
            log(f"ledger: one more migration: not measured: {errors}")
            break
    rep.add("### One more trivial migration on top of the large ledger")
    rep.add()
    if up_t and floor_t:
        extra = med(up_t) - med(floor_t)
        rep.table(["contender", "runs", "best ms", "median ms", "backend CPU ms (median)"],
                  [["floor: BEGIN; CREATE TABLE ...; COMMIT (one message)", len(floor_t), fmt_ms(best(floor_t)),
                    fmt_ms(med(floor_t)), fmt_ms(med(floor_cpu))],
                   ["SELECT deploy.up(target => next)", len(up_t), fmt_ms(best(up_t)), fmt_ms(med(up_t)),
                    fmt_ms(med(up_cpu))]])
        extra_cpu = med(up_cpu) - med(floor_cpu)
        rep.add(f"deploy.up() costs **{extra:.2f} ms** more than the floor (median wall clock; goal ≤ 2 ms: "
                f"{goal_mark(extra <= 2.0)}); best vs best {best(up_t) - best(floor_t):.2f} ms; backend CPU "
                f"{extra_cpu:.2f} ms more ({goal_mark(extra_cpu <= 2.0)}). Warm connections, the contenders "
                "alternate; each deploy.up() applies exactly one migration.")
        ctx.results["ledger_one_more_extra_cpu_ms"] = extra_cpu
        ctx.results["ledger_one_more_extra_ms"] = extra
    else:
        rep.add(f"not measured: {errors}")
    rep.add()

    # pgbench
    rep.add("### pgbench: status and current version on the large ledger")
    rep.add()
    rep.add(f"`pgbench -n -c C -j min(C,{os.cpu_count()}) -T {m['pgbench_seconds']} -f script.sql -l` (simple "
            "protocol, unix socket); the median and p90 come from the per-transaction log, not from averages. "
            "`SELECT 1` is there to show what one round trip costs on this machine.")
    rep.add()
    rows = []
    scripts = [("SELECT 1", None), ("SELECT deploy.current_version()", 0.1), ("SELECT deploy.status()", 2.0)]
    for clients in m["pgbench_clients"]:
        for sql, goal in scripts:
            log(f"ledger: pgbench -c {clients}: {sql}")
            try:
                lat, tps = pgbench_latencies(ctx, db, sql + ";", clients, m["pgbench_seconds"])
                md_ = med(lat)
                ctx.results.setdefault("pgbench", []).append(dict(sql=sql, clients=clients, median=md_, tps=tps))
                rows.append([f"`{sql}`", clients, f"{len(lat):,}", f"{tps:,.0f}" if tps else "—", fmt_ms(md_),
                             fmt_ms(pct(lat, 0.9)), fmt_ms(pct(lat, 0.99)),
                             "" if goal is None else f"< {goal} ms: {goal_mark(md_ < goal)}"])
            except Exception as e:
                rows.append([f"`{sql}`", clients, f"not measured: {one_line(e)}", "", "", "", "", ""])
    rep.table(["statement", "clients", "transactions", "tps", "median ms", "p90 ms", "p99 ms", "goal"], rows)
    # the server-side share of status(): EXPLAIN ANALYZE's execution time, no round trip, no client
    with conn.cursor() as cur:
        ts = []
        for _ in range(30):
            cur.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) SELECT deploy.status()")
            ts.append(float(cur.fetchone()[0][0]["Execution Time"]))
    rep.add(f"Server-side execution time of `deploy.status()` (EXPLAIN ANALYZE, 30 calls in one warm session): "
            f"median {fmt_ms(med(ts))} ms, best {fmt_ms(best(ts))} ms.")
    rep.add()
    ctx.results["status_server_ms"] = med(ts)
    conn.close()
    floor_conn.close()
    ctx.cluster.drop(db)


# ---------------------------------------------------------------------------------------------------------------------
# the watcher


class Stub:
    """bench/tools/http_stub on 127.0.0.1: starts, tells its port, and stops when we close its stdin."""

    def __init__(self, ctx, lifetime, events_file=None):
        self.port_file = tempfile.mktemp(prefix="stub-port-", dir=ctx.work)
        argv = [ctx.http_stub, "--port-file", self.port_file, "--lifetime", str(lifetime)]
        if events_file:
            argv += ["--events", events_file]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE)
        for _ in range(100):
            if os.path.exists(self.port_file):
                break
            time.sleep(0.05)
        with open(self.port_file) as f:
            self.port = int(f.read().strip())
        self.base = f"http://127.0.0.1:{self.port}"

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=5) as r:
            return r.read().decode()

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()


def write_watch_config(path, dsn, checks, interval, extra=None, level="info"):
    cfg = {"watcher_id": "bench", "database": {"dsn": dsn, "poll_interval": "1s"},
           "checks": checks, "logging": {"level": level}}
    if extra:
        cfg.update(extra)
    with open(path, "w") as f:
        json.dump(cfg, f)


def load_checks(stub, count, interval, timeout="2s"):
    return [{"name": f"load_{i}", "type": "http", "url": f"{stub.base}/h/{i}", "interval": interval,
             "timeout": timeout, "critical": False} for i in range(count)]


def proc_cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])   # utime + stime (fields 14 and 15)


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])   # kB
    return None


def section_watcher(ctx, rep):
    m = ctx.mode
    rep.add("## 3. The watcher")
    rep.add()

    # --- one cycle over 1,000 http checks -------------------------------------------------------------------------
    rep.add(f"### One check cycle over {m['cycle_checks']:,} http checks")
    rep.add()
    stub = Stub(ctx, lifetime=600)
    try:
        cfg_path = os.path.join(ctx.work, "cycle.json")
        write_watch_config(cfg_path, "", load_checks(stub, m["cycle_checks"], "1s"), "1s")
        if not ctx.watch_cycle:
            raise RuntimeError("bench/tools/watch_cycle was not built (needs libpgdeploy_core.a)")
        r = run([ctx.watch_cycle, "--config", cfg_path, "--cycles", str(m["cycle_cycles"])], timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"watch_cycle exited {r.returncode}: {r.stderr.strip()[:300]}")
        out = json.loads(r.stdout)
        cyc = out["cycles_ms"]
        all_ok = all(o == out["checks"] for o in out["ok"])
        rep.add(f"`bench/tools/watch_cycle` parses the same JSON config with pgdeploy's parser and calls pgdeploy's "
                f"`run_checks()` (watcher/src/watch/checks.cpp, the call the daemon's loop makes each interval) over "
                f"all {out['checks']:,} checks against `bench/tools/http_stub` (cpp-httplib on 127.0.0.1), "
                f"{len(cyc)} cycles, timed with a monotonic clock.")
        rep.add()
        rep.table(["checks", "cycles", "best ms", "median ms", "worst ms", "every check ok", "goal < 1,000 ms"],
                  [[f"{out['checks']:,}", len(cyc), fmt_ms(best(cyc)), fmt_ms(med(cyc)), fmt_ms(max(cyc)),
                    "yes" if all_ok else f"no: {out['first_problem']}", goal_mark(med(cyc) < 1000)]])
        ctx.results["cycle_ms"] = med(cyc)
    except Exception as e:
        rep.add(f"not measured: {one_line(e)}")
        rep.add()
    finally:
        stub.stop()

    # --- idle CPU and RSS over 5,000 checks at a 1 s interval -------------------------------------------------------
    rep.add(f"### `pgdeploy watch` steady state: {m['idle_checks']:,} http checks every 1 s, no deployment")
    rep.add()
    stub = Stub(ctx, lifetime=600)
    refresh_ext_template(ctx)
    db = ctx.cluster.create(ctx.tpl_ext)
    rows = []
    notes = []
    stub_note = ""
    try:
        variants = [("`pgdeploy watch` (no state_file, no metrics)", None),
                    ("`pgdeploy watch` with state_file and metrics.listen, /metrics scraped every 15 s", {
                        "state_file": os.path.join(ctx.work, "idle-state.json"),
                        "metrics": {"listen": f"127.0.0.1:{free_port()}"}})]
        for label, extra in variants:
            try:
                r = watch_idle(ctx, stub, db, extra)
                rows.append([label, f"{m['idle_checks']:,}", f"{r['cpu']:.1f}", f"{med(r['rss']) / 1024:.1f}",
                             f"{max(r['rss']) / 1024:.1f}", f"{r['hwm'] / 1024:.1f}", f"{r['rate']:,.0f}",
                             goal_mark(r["cpu"] < 1.0), goal_mark(max(r["rss"]) / 1024 < 30)])
                if extra is None:
                    ctx.results["idle"] = dict(cpu=r["cpu"], rss_mb=max(r["rss"]) / 1024, rate=r["rate"])
                    stub_note = (f"The stub answered {r['rate']:,.0f} requests/s during the window "
                                 f"({m['idle_checks']:,} expected if every check runs every second); the stub itself "
                                 f"used {r['stub_cpu']:.1f} % of a CPU.")
                else:
                    ctx.results["idle_published"] = dict(cpu=r["cpu"], rss_mb=max(r["rss"]) / 1024)
            except Exception as e:
                notes.append(f"{label}: not measured: {one_line(e)}")
        try:
            f = curl_floor(ctx, stub, m["idle_checks"], m["idle_seconds"], m["idle_warmup"])
            rows.append(["libcurl alone (`bench/tools/curl_floor`, the floor)", f"{f['count']:,}",
                         f"{f['cpu_pct']:.1f}", f"{f['rss_mb']:.1f}", f"{f['rss_mb']:.1f}", f"{f['hwm_mb']:.1f}",
                         f"{f['requests_per_s']:,.0f}" + (f" ({f['errors']} errors)" if f["errors"] else ""),
                         goal_mark(f["cpu_pct"] < 1.0), goal_mark(f["rss_mb"] < 30)])
            ctx.results["curl_floor"] = dict(cpu=f["cpu_pct"], rss_mb=f["rss_mb"])
        except Exception as e:
            notes.append(f"libcurl floor: not measured: {one_line(e)}")
    finally:
        stub.stop()
        ctx.cluster.drop(db)
    rep.add(f"Measured from `/proc/PID/stat` (utime+stime) and `/proc/PID/status` (VmRSS sampled every second, "
            f"VmHWM) over {m['idle_seconds']} s after {m['idle_warmup']} s of warm-up. {stub_note} The second row "
            f"writes the state file every second and serves the metrics, scraped every 15 s (as a production "
            f"watcher would). The floor is what libcurl alone costs for the same requests: `bench/tools/curl_floor` GETs the "
            f"same {m['idle_checks']:,} URLs every second through one multi handle the way the watcher's HttpRunner "
            f"does (kept-alive connections, 4 at once to the one host, reused easy handles) and nothing else; it "
            f"measures itself with getrusage.")
    rep.add()
    if rows:
        rep.table(["program", "checks", "CPU % of one core", "RSS median MB", "RSS max MB", "VmHWM MB",
                   "checks/s served", "goal CPU < 1 %", "goal RSS < 30 MB"], rows)
    for n_ in notes:
        rep.add(n_)
        rep.add()

    # --- detection to rollback complete, 100 migrations ------------------------------------------------------------
    nmig = m["rollback_migrations"]
    interval = m["rollback_interval"]
    rep.add(f"### Detection to rollback complete: a release of {nmig} migrations turns unhealthy")
    rep.add()
    rows = []
    notes = []
    for rnd in range(m["rollback_rounds"]):
        try:
            rows.append(rollback_round(ctx, nmig, interval))
        except Exception as e:
            notes.append(f"round {rnd + 1}: not measured: {one_line(e)}")
            log(f"watcher rollback: {notes[-1]}")
    rep.add(f"One http check on the stub's `/app` (interval {interval}, timeout 500ms, failure_threshold 3, error "
            f"rate off), database-only rollback (no app hook). Release r1 (1 migration) then r2 ({nmig} migrations) "
            "are applied with deploy.up(app_version => ...); the watcher is healthy on r2, then the stub turns /app "
            "to 503. Threshold = when the stub answered the 3rd failing check (stub clock); decision = "
            "`watcher_decision` event; done = `marker_done` event; database revert = the rollback deployment's "
            "finished_at − started_at (all on this machine's clock). The migrations are the same unqualified "
            "`CREATE TABLE tN` / `DROP TABLE tN` as in section 1: the watcher's revert runs them with the "
            "database's search_path, as a user's psql would.")
    rep.add()
    if rows:
        rep.table(["round", "first 503 → threshold ms", "threshold → decision ms", "threshold → rollback done ms",
                   "database revert ms", "goal decision ≤ 1 interval", "goal revert < 1,000 ms"],
                  [[i + 1, fmt_ms(r["onset_to_threshold"]), fmt_ms(r["threshold_to_decision"]),
                    fmt_ms(r["threshold_to_done"]), fmt_ms(r["revert_ms"]),
                    goal_mark(r["threshold_to_decision"] <= r["interval_ms"]), goal_mark(r["revert_ms"] < 1000)]
                   for i, r in enumerate(rows)])
        ctx.results["rollback"] = rows
    for n_ in notes:
        rep.add(n_)
        rep.add()


def free_port():
    """A TCP port free on 127.0.0.1 right now (for a metrics.listen that the benchmark scrapes)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def watch_idle(ctx, stub, db, extra):
    """`pgdeploy watch` over idle_checks http checks every second, no deployment: CPU and RSS from /proc."""
    m = ctx.mode
    hz = os.sysconf("SC_CLK_TCK")
    cfg_path = os.path.join(ctx.work, "idle.json")
    write_watch_config(cfg_path, dsn_for(db), load_checks(stub, m["idle_checks"], "1s"), "1s", extra=extra)
    logf = open(os.path.join(ctx.work, "idle-watch.log"), "a")
    proc = subprocess.Popen([ctx.pgdeploy, "watch", "--config", cfg_path], stdout=logf, stderr=logf)
    try:
        time.sleep(m["idle_warmup"])
        if proc.poll() is not None:
            raise RuntimeError(f"pgdeploy watch exited {proc.returncode} (log {logf.name})")
        req0 = json.loads(stub.get("/stats"))["requests"]
        stub_t0 = proc_cpu_ticks(stub.proc.pid)
        t0, c0 = time.monotonic(), proc_cpu_ticks(proc.pid)
        rss = []
        end = t0 + m["idle_seconds"]
        listen = (extra or {}).get("metrics", {}).get("listen")
        next_scrape = t0
        while time.monotonic() < end:
            if listen and time.monotonic() >= next_scrape:
                # As Prometheus would (its default interval is 1 min; 15 s is a common setting).
                with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as r:
                    r.read()
                next_scrape += 15
            time.sleep(1)
            if proc.poll() is not None:
                raise RuntimeError(f"pgdeploy watch exited {proc.returncode} during the measurement")
            rss.append(proc_status(proc.pid, "VmRSS"))
        t1, c1 = time.monotonic(), proc_cpu_ticks(proc.pid)
        req1 = json.loads(stub.get("/stats"))["requests"]
        stub_t1 = proc_cpu_ticks(stub.proc.pid)
        hwm = proc_status(proc.pid, "VmHWM")
        return dict(cpu=(c1 - c0) / hz / (t1 - t0) * 100, stub_cpu=(stub_t1 - stub_t0) / hz / (t1 - t0) * 100,
                    rate=(req1 - req0) / (t1 - t0), rss=rss, hwm=hwm)
    finally:
        stop_process(proc)
        logf.close()


def curl_floor(ctx, stub, count, seconds, warmup):
    """bench/tools/curl_floor against the stub: what libcurl alone costs for the watcher's http load."""
    if not ctx.curl_floor:
        raise RuntimeError("bench/tools/curl_floor was not built")
    r = run([ctx.curl_floor, "--base", stub.base, "--count", str(count), "--seconds", str(seconds),
             "--warmup", str(warmup)], timeout=seconds + warmup + 120)
    if r.returncode != 0:
        raise RuntimeError(f"curl_floor exited {r.returncode}: {r.stderr.strip()[:300]}")
    return json.loads(r.stdout)


def rollback_round(ctx, nmig, interval):
    interval_ms = {"ms": 1, "s": 1000}["ms" if interval.endswith("ms") else "s"] * int(interval.rstrip("ms"))
    events_file = tempfile.mktemp(prefix="stub-events-", dir=ctx.work)
    stub = Stub(ctx, lifetime=300, events_file=events_file)
    refresh_ext_template(ctx)
    db = ctx.cluster.create(ctx.tpl_ext)
    proc = None
    conn = connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT deploy.register('00000', 'r1_base', 'CREATE TABLE r1_base (id int)', "
                        "'DROP TABLE r1_base')")
            cur.execute("SELECT deploy.up(app_version => 'r1')")
            assert cur.fetchone()[0]["ok"]
            cur.execute("SELECT count(deploy.register(lpad(i::text, 5, '0'), 'create_t' || i, "
                        "format('CREATE TABLE t%%s (id int primary key, v text)', i), "
                        "format('DROP TABLE t%%s', i))) FROM generate_series(1, %s) i", (nmig,))
        cfg_path = tempfile.mktemp(prefix="rollback-", suffix=".json", dir=ctx.work)
        checks = [{"name": "app", "type": "http", "url": f"{stub.base}/app", "interval": interval,
                   "timeout": "500ms", "failure_threshold": 3, "success_threshold": 1,
                   "error_rate": {"enabled": False}}]
        write_watch_config(cfg_path, dsn_for(db), checks, interval,
                           extra={"decision": {"watch_window": "30m", "cooldown": "0s", "health_recovery": "1m"}},
                           level="debug")
        logf = open(cfg_path + ".log", "w")
        proc = subprocess.Popen([ctx.pgdeploy, "watch", "--config", cfg_path], stdout=logf, stderr=logf)
        time.sleep(max(1.0, 2 * interval_ms / 1000))
        with conn.cursor() as cur:
            cur.execute("SELECT deploy.up(app_version => 'r2')")
            res = cur.fetchone()[0]
            assert res["ok"] and len(res["applied"]) == nmig, "r2 was not applied"
            dep = res["deployment_id"]
        # healthy on r2 for a few checks, so that the watcher knows the deployment
        time.sleep(max(2.0, 3 * interval_ms / 1000))
        if proc.poll() is not None:
            raise RuntimeError(f"pgdeploy watch exited {proc.returncode} (log {logf.name})")
        onset = int(stub.get("/control/fail"))
        state = None
        deadline = time.monotonic() + 30 + 10 * interval_ms / 1000
        with conn.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute("SELECT state FROM deploy.deployments WHERE id = %s", (dep,))
                state = cur.fetchone()[0]
                if state == "rolled_back":
                    cur.execute("SELECT count(*) FROM deploy.events WHERE kind = 'marker_done'")
                    if cur.fetchone()[0] > 0:
                        break
                time.sleep(0.05)
            if state != "rolled_back":
                raise RuntimeError(f"deployment {dep} is {state} 30 s after the app turned unhealthy "
                                   f"(watcher log {logf.name})")
            cur.execute("""SELECT
                (SELECT extract(epoch FROM min(at)) * 1000 FROM deploy.events WHERE kind = 'watcher_decision'),
                (SELECT extract(epoch FROM min(at)) * 1000 FROM deploy.events WHERE kind = 'marker_done'),
                (SELECT extract(epoch FROM finished_at - started_at) * 1000 FROM deploy.deployments
                  WHERE kind = 'rollback' ORDER BY id DESC LIMIT 1)""")
            decision_at, done_at, revert_ms = [float(x) if x is not None else None for x in cur.fetchone()]
            assert count_bench_tables(conn) == 0, "tables of r2 are still there"
        failing = []
        with open(events_file) as f:
            for line in f:
                t, st = line.split()
                if int(st) != 200 and int(t) >= onset:
                    failing.append(int(t))
        if len(failing) < 3:
            raise RuntimeError("the stub saw fewer than 3 failing checks")
        threshold = failing[2]
        if decision_at is None or done_at is None or revert_ms is None:
            raise RuntimeError("the ledger lacks the watcher_decision / marker_done events or the rollback row")
        return dict(onset_to_threshold=threshold - onset, threshold_to_decision=decision_at - threshold,
                    threshold_to_done=done_at - threshold, revert_ms=revert_ms, interval_ms=interval_ms)
    finally:
        if proc:
            stop_process(proc)
        conn.close()
        stub.stop()
        ctx.cluster.drop(db)


# ---------------------------------------------------------------------------------------------------------------------
# main


class Ctx:
    pass


def refresh_ext_template(ctx):
    """A template with a fresh CREATE EXTENSION pg_deploy. Others may `make install` a new pg_deploy.so while the
    benchmark runs (a shared tree); a template made hours ago would then pair old SQL objects with a new library. Each
    section (and each N) therefore starts from an extension created just before it."""
    ctx.ext_count = getattr(ctx, "ext_count", 0) + 1
    old = ctx.tpl_ext
    ctx.tpl_ext = ctx.cluster.make_template(f"{ctx.prefix}_tpl_ext_{ctx.ext_count}", "CREATE EXTENSION pg_deploy")
    if old:
        ctx.cluster.drop(old)


def extension_digest():
    """sha256 of the installed pg_deploy.so and install script: printed at the end if they changed during the run."""
    import hashlib
    libdir = run(["pg_config", "--pkglibdir"]).stdout.strip()
    sharedir = run(["pg_config", "--sharedir"]).stdout.strip()
    h = hashlib.sha256()
    for path in (os.path.join(libdir, "pg_deploy.so"), os.path.join(sharedir, "extension", "pg_deploy--0.1.sql")):
        try:
            with open(path, "rb") as f:
                h.update(f.read())
        except OSError:
            h.update(b"missing")
    return h.hexdigest()[:12]


def machine_and_server(cluster):
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    settings = {}
    for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level", "shared_buffers",
                 "max_wal_size", "max_locks_per_transaction", "max_connections", "jit", "autovacuum"):
        settings[name] = cluster.sql(f"SHOW {name}")[0][0]
    return dict(nproc=os.cpu_count(), mem_gb=mem_kb / 1024 / 1024, cpu=cpu, kernel=platform.release(),
                settings=settings)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=list(MODES), default="full")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma list of: " + ", ".join(SECTIONS))
    ap.add_argument("--pgdeploy", required=True)
    ap.add_argument("--http-stub", required=True)
    ap.add_argument("--watch-cycle", default="")
    ap.add_argument("--curl-floor", default="")
    ap.add_argument("--results", default="", help="markdown file to write (default: none)")
    ap.add_argument("--command", default="bench/run", help="the command line to print with the results")
    args = ap.parse_args()

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in SECTIONS:
            ap.error(f"--only: unknown section {s!r} (known: {', '.join(SECTIONS)})")

    ctx = Ctx()
    ctx.mode = MODES[args.mode]
    ctx.mode_name = args.mode
    ctx.results_path = args.results
    ctx.pgdeploy = args.pgdeploy
    ctx.http_stub = args.http_stub
    ctx.watch_cycle = args.watch_cycle
    ctx.curl_floor = args.curl_floor
    ctx.prefix = f"bench_{os.getpid()}"
    ctx.work = tempfile.mkdtemp(prefix="pg_deploy-bench-")
    ctx.results = {}
    ctx.cluster = Cluster(ctx.prefix)
    ctx.sqitch_env = dict(os.environ)

    rep = Report(args.results)
    started = time.monotonic()
    info = machine_and_server(ctx.cluster)
    rep.add(f"# pg_deploy benchmarks — {datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC')} ({args.mode})")
    rep.add()
    rep.add(f"Command: `{args.command}`")
    rep.add()
    rep.add(f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['mem_gb']:.1f} GiB RAM, Linux {info['kernel']}; "
            f"PostgreSQL {info['settings']['server_version']} in a throwaway pg_virtualenv cluster. Server settings "
            + ("as the cluster came (pg_virtualenv's defaults, plus `max_locks_per_transaction = 512` that bench/run "
               "sets because 5,000 `CREATE TABLE`s in one transaction take about 20,000 locks, more than the default "
               "64 x 100 slots hold, for the floor and every contender alike; nothing else is tuned, except the "
               "fsync = on pass of section 1b, which says so): " if os.environ.get("BENCH_INNER") == "1" else
               "of the server the benchmark was given (not its own cluster; nothing tuned): ") +
            ", ".join(f"{k} = {v}" for k, v in info["settings"].items() if k != "server_version") + ".")
    data_dir = ctx.cluster.sql("SHOW data_directory")[0][0]
    fs = run(["stat", "-f", "-c", "%T", data_dir]).stdout.strip() or "?"
    rep.add()
    rep.add(f"Cluster files: `{data_dir}` on {fs}" + (" (tmpfs: `bench/run --ram`, no file system in the figures)."
                                                      if fs == "tmpfs" else
                                                      " (a disk file system: creating files is part of every figure; "
                                                      "`bench/run --ram` measures without it)."))
    la = os.getloadavg()
    rep.add(f"Load average when the run started: {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1 / 5 / 15 min; the machine "
            "is shared, so the rounds alternate and the best and the median are both shown).")
    rep.add()

    try:
        ctx.tpl_plain = ctx.cluster.make_template(f"{ctx.prefix}_tpl_plain")
        ctx.tpl_ext = None
        ctx.so_digest = extension_digest()
        ctx.tpl_sqitch = None
        if "migrations" in only:
            ctx.tpl_sqitch = make_sqitch_template(ctx)
        for section in only:
            log(f"section {section}")
            try:
                {"migrations": section_migrations, "ledger": section_ledger, "watcher": section_watcher,
                 "scripts": big_scripts.section_scripts,
                 "live-traffic": live_traffic.section_live_traffic}[section](ctx, rep)
            except Exception as e:
                traceback.print_exc()
                rep.add(f"Section {section}: not measured: {one_line(e)}")
                rep.add()
            rep.save()
    finally:
        for name in [r[0] for r in ctx.cluster.sql(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (ctx.prefix + "%",))]:
            ctx.cluster.drop(name)
        shutil.rmtree(ctx.work, ignore_errors=True)
    digest = extension_digest()
    if digest != ctx.so_digest:
        rep.add(f"**Note:** the installed pg_deploy (pg_deploy.so or its install script) changed during this run "
                f"({ctx.so_digest} → {digest}): someone ran `make install`. Sections after the change measured the "
                "new build (each section creates the extension afresh).")
    else:
        rep.add(f"The installed pg_deploy did not change during the run (sha256 of pg_deploy.so + install script: "
                f"{digest}).")
    rep.add()
    la = os.getloadavg()
    rep.add(f"Total run time: {(time.monotonic() - started) / 60:.1f} min; load average at the end "
            f"{la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}.")
    rep.save()
    return 0


def make_sqitch_template(ctx):
    """A database with Sqitch's registry already created (a one-change warm-up project deployed into it), so that
    the timed `sqitch deploy` does what a deploy does, like deploy.up() over a registered catalog."""
    name = ctx.cluster.make_template(f"{ctx.prefix}_tpl_sqitch")
    if shutil.which("sqitch"):
        sqitch_warmup(ctx, name)
    return name


def sqitch_warmup(ctx, name):
    """Deploys a one-change project into database name: Sqitch's registry then exists there."""
    proj = os.path.join(ctx.work, "sqitch-warmup")
    for d in ("deploy", "revert"):
        os.makedirs(os.path.join(proj, d), exist_ok=True)
    with open(os.path.join(proj, "sqitch.conf"), "w") as f:
        f.write("[core]\n\tengine = pg\n[user]\n\tname = pg_deploy bench\n\temail = bench@localhost\n")
    with open(os.path.join(proj, "sqitch.plan"), "w") as f:
        f.write("%syntax-version=1.0.0\n%project=warmup\n\n"
                "w1 2026-01-01T00:00:00Z pg_deploy bench <bench@localhost> # warm-up\n")
    with open(os.path.join(proj, "deploy", "w1.sql"), "w") as f:
        f.write("SELECT 1;\n")
    with open(os.path.join(proj, "revert", "w1.sql"), "w") as f:
        f.write("SELECT 1;\n")
    r = run(["sqitch", "deploy", "--target", f"db:pg:{name}"], cwd=proj, env=ctx.sqitch_env)
    if r.returncode != 0:
        log(f"sqitch warm-up failed: {r.stderr.strip()[:300]}")


if __name__ == "__main__":
    sys.exit(main())
