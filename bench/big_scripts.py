"""Section 4 of bench/bench.py: big scripts (security issue, item 6).

Registering a 2 MB script took 29 s and a 50 MB one never finished (the parser rescanned from the start for every
statement), and nothing stopped it but kill -9. Measured here, each on a fresh database:

- deploy.register() of one script of N statements of 100 bytes (the goal: 50 MB, 500,000 statements, under 5 s),
  the script read from a table so that the figure is the function's own (wall clock and backend CPU);
- `pgdeploy load` of a directory holding that script as one file: the whole client path (read, send, register);
- how long a pg_cancel_backend takes to stop deploy.register() (the goal: within 1 s), sent at a random moment of
  the registration of the same script and of a script that is one 60 MB string constant (one raw_parser call that
  cannot be cut);
- deploy.up() of the N statements, and how long a cancel takes to stop it.
"""
import os
import random
import threading
import time

import psycopg2

import bench as b

STATEMENT = "INSERT INTO app.big (id, note) VALUES (1, 'about one hundred bytes of a statement, goal''s size.');\n"


def stage(conn, key, expression):
    """A script built in the server (repeat()), kept in a table: the call under test sends a short query."""
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS public.bench_scripts (k text PRIMARY KEY, body text NOT NULL)")
        cur.execute(f"INSERT INTO public.bench_scripts VALUES (%s, {expression}) "
                    "ON CONFLICT (k) DO UPDATE SET body = excluded.body", (key,))
        cur.execute("SELECT octet_length(body) FROM public.bench_scripts WHERE k = %s", (key,))
        return cur.fetchone()[0]


def many_expression(n):
    quoted = STATEMENT.replace("'", "''")
    return f"repeat('{quoted}', {n})"


def register_call(version, key):
    return f"SELECT deploy.register('{version}', 'big', (SELECT body FROM public.bench_scripts WHERE k = '{key}'))"


def timed_call(db, sql):
    """(wall ms, backend CPU ms) of one statement on a new connection."""
    conn = b.connect(db)
    try:
        with conn.cursor() as cur:
            return b.timed_cpu(conn, lambda: cur.execute(sql))
    finally:
        conn.close()


def cancel_latency(db, sql, delay):
    """Runs sql on its own connection, cancels it after delay seconds; the seconds from the cancel to the end of the
    call, or None when the call ended first (then it is undone by the caller's fresh database)."""
    conn = b.connect(db)
    pid = conn.get_backend_pid()
    ended = {}

    def run():
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        except psycopg2.errors.QueryCanceled:
            ended["cancelled"] = True
        finally:
            ended["at"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(delay)
    sent = time.monotonic()
    admin = b.connect(db)
    with admin.cursor() as cur:
        cur.execute("SELECT pg_cancel_backend(%s)", (pid,))
    admin.close()
    t.join(600)
    conn.close()
    if not ended.get("cancelled"):
        return None
    return ended["at"] - sent


def section_scripts(ctx, rep):
    m = ctx.mode
    rep.add("## 4. Big scripts: registration, `pgdeploy load`, cancel")
    rep.add()
    rep.add(f"Each script is N statements of {len(STATEMENT)} bytes (`{STATEMENT.strip()[:60]}...`). "
            "deploy.register() reads it from a table, so the figure is the function's own and not the parse of a "
            "50 MB literal in the calling statement; `pgdeploy load` sends the file as a bind parameter. "
            "Backend CPU from /proc/PID/schedstat. Best and median of the rounds; each round on a fresh database.")
    rep.add()
    b.refresh_ext_template(ctx)
    rng = random.Random(20261122)
    rows, goal_rows = [], []
    for n in m["scripts_ns"]:
        walls, cpus, loads = [], [], []
        size = 0
        for _ in range(m["scripts_rounds"]):
            with ctx.cluster.fresh(ctx.tpl_ext) as db:
                conn = b.connect(db)
                size = stage(conn, "many", many_expression(n))
                conn.close()
                wall, cpu = timed_call(db, register_call("1", "many"))
                walls.append(wall)
                cpus.append(cpu)
            with ctx.cluster.fresh(ctx.tpl_ext) as db:
                loads.append(load_directory(ctx, db, n))
        mb = size / 1e6
        rows.append([f"{n:,}", f"{mb:.1f}", b.fmt_ms(b.best(walls)), b.fmt_ms(b.med(walls)), b.fmt_ms(b.best(cpus)),
                     f"{mb / (b.best(walls) / 1000):.0f}", b.fmt_ms(b.best(loads)), b.fmt_ms(b.med(loads))])
        if n >= 500_000:
            goal_rows.append(f"{mb:.0f} MB of {n:,} statements: median {b.med(walls) / 1000:.2f} s "
                             f"(goal < 5 s: {b.goal_mark(b.med(walls) < 5000)}), `pgdeploy load` median "
                             f"{b.med(loads) / 1000:.2f} s")
        b.log(f"scripts: N = {n:,} registered in {b.fmt_ms(b.med(walls))} ms (median)")
    rep.add("### deploy.register() and `pgdeploy load` of one script of N statements")
    rep.add()
    rep.table(["N statements", "MB", "register best ms", "register median ms", "register backend CPU ms (best)",
               "MB/s", "pgdeploy load best ms", "pgdeploy load median ms"], rows)
    for g in goal_rows:
        rep.add(g)
        rep.add()

    rep.add("### A cancel during deploy.register() and deploy.up()")
    rep.add()
    n = m["scripts_ns"][-1]
    literal = m["scripts_literal_mb"] * 1_000_000
    cases = [("register: N statements", many_expression(n), "register"),
             ("register: one string constant", f"'SELECT ''' || repeat('x', {literal}) || ''';'", "register"),
             ("up: N statements", many_expression(n), "up")]
    rows = []
    for label, expression, what in cases:
        latencies, duration, size = [], None, 0
        with ctx.cluster.fresh(ctx.tpl_ext) as db:
            conn = b.connect(db)
            size = stage(conn, "s", expression)
            if what == "up":
                with conn.cursor() as cur:
                    cur.execute("CREATE SCHEMA app; CREATE TABLE app.big (id int, note text)")
                    cur.execute(register_call("1", "s"))
            conn.close()
            call = register_call("t", "s") if what == "register" else "SELECT deploy.up()"
            probe = call if what == "register" else "SELECT deploy.up(dry_run => true)"
            duration, _ = timed_call(db, probe)
            if what == "register":
                timed_call(db, "SELECT deploy.unregister('t')")
            for trial in range(m["scripts_cancels"]):
                latency = cancel_latency(db, call.replace("'t'", f"'t{trial}'"),
                                         rng.uniform(0.05, 0.9) * duration / 1000)
                if latency is not None:
                    latencies.append(latency * 1000)
        rows.append([label, f"{size / 1e6:.1f}", b.fmt_ms(duration), f"{len(latencies)} / {m['scripts_cancels']}",
                     b.fmt_ms(b.med(latencies)), b.fmt_ms(max(latencies) if latencies else None),
                     b.goal_mark(bool(latencies) and max(latencies) <= 1000)])
        b.log(f"scripts: {label}: cancel max {b.fmt_ms(max(latencies) if latencies else None)} ms")
    rep.table(["call", "MB", "uninterrupted ms", "cancels that landed", "median ms to stop", "worst ms to stop",
               "goal ≤ 1,000 ms"], rows)
    rep.add("A cancel is sent at a random moment of the call (uniform over 5-90 % of its uninterrupted duration); "
            "\"ms to stop\" runs from `pg_cancel_backend()` returning to the call's error reaching the client. The "
            "string constant is one statement: one raw_parser call, which PostgreSQL cannot interrupt.")
    rep.add()


def load_directory(ctx, db, n):
    """Wall ms of `pgdeploy load DIR` for a directory with one migration file of n statements."""
    d = os.path.join(ctx.work, f"scripts_{n}")
    path = os.path.join(d, "0001_big.up.sql")
    if not os.path.exists(path):
        os.makedirs(d, exist_ok=True)
        with open(path, "w") as f:
            f.write(STATEMENT * n)
    t0 = time.perf_counter()
    r = b.run([ctx.pgdeploy, "load", d, "--dsn", b.dsn_for(db), "--quiet"])
    wall = (time.perf_counter() - t0) * 1000
    if r.returncode != 0:
        raise RuntimeError(f"pgdeploy load exited {r.returncode}: {r.stderr.strip()[:300]}")
    return wall
