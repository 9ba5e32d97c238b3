"""Big scripts: registration is linear, a cancel or terminate stops register/up/verify/validate within a second, the
size limits hold, and the batched parse and run agree with PostgreSQL's own parse of the whole script.

The scripts are built in the server (repeat()) and kept in a table, so each call under test sends a short query and
reads its script from there, as a caller sending it as a bind parameter would: the 50 MB are never parsed as a
literal of the calling statement, which PostgreSQL could not interrupt either.

Sizes: quick (default) about 8-16 MB per script; long (PGDEPLOY_LONG=1) the 50-60 MB of the goal in
docs/benchmarks.md (50 MB of 500,000 statements). Moments of the cancels are drawn from the seeded rng over the
duration of an uninterrupted run of the same call.
"""
import re
import threading
import time

import psycopg2
import pytest

from conftest import LONG, ledger_state, stats, trials

LIMIT_SECONDS = 1.0          # what a cancel or terminate must take at most
STATEMENT = "INSERT INTO app.big (id, note) VALUES (1, 'about one hundred bytes of a statement, goal''s size.');"
MANY = 500_000 if LONG else 80_000      # statements of STATEMENT (100 bytes each with its newline)
LITERAL = 60_000_000 if LONG else 16_000_000
DENSE = 50 if LONG else 4                # statements of 1,000,007 bytes of code: just under the 1 MB limit



def many(n):
    """An SQL expression building a script of n statements of STATEMENT in the server."""
    return "repeat('{}', {})".format((STATEMENT + "\n").replace("'", "''"), n)


# Each shape is an SQL expression building a script in the server.
SHAPES = {
    # many ordinary statements: the goal's shape
    "many": many(MANY),
    # one statement that is mostly a string constant: cheap per byte, but one uninterruptible raw_parser call
    "literal": f"'SELECT ''' || repeat('x', {LITERAL}) || ''';'",
    # the densest SQL there is, each statement just under the limit of 1 MB of code
    "dense": f"repeat('SELECT ' || repeat('1+', 500000) || '1;' || chr(10), {DENSE})",
    # a DO block whose body is one dollar quote
    "dollar": f"'DO $body$ BEGIN ' || repeat('PERFORM 1; ', {LITERAL // 11}) || 'END $body$;'",
}


class Call:
    """One statement on its own connection, in a thread: when it ended, with what result or error."""

    def __init__(self, dsn, sql, params=None):
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("SET client_min_messages = error")
        self.pid = self.conn.get_backend_pid()
        self.result = self.error = self.ended = None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, args=(sql, params), daemon=True)
        self.thread.start()

    def _run(self, sql, params):
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, params)
                self.result = cur.fetchone()[0] if cur.description else None
        except Exception as e:  # noqa: BLE001 (inspected by the test)
            self.error = e
        finally:
            self.ended = time.monotonic()

    def join(self, timeout=600):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call did not end"
        try:
            self.conn.close()
        except Exception:
            pass
        return self

    @property
    def seconds(self):
        return self.ended - self.started


def stage(pg, key, expression):
    """Builds a script in the server and keeps it in public.big_scripts; returns its size in bytes."""
    pg.sql("CREATE TABLE IF NOT EXISTS public.big_scripts (k text PRIMARY KEY, body text NOT NULL)")
    pg.sql(f"INSERT INTO public.big_scripts VALUES (%s, {expression}) "
           "ON CONFLICT (k) DO UPDATE SET body = excluded.body", (key,))
    return pg.scalar("SELECT octet_length(body) FROM public.big_scripts WHERE k = %s", (key,))


def register_sql(version, key, column="up_sql"):
    script = f"(SELECT body FROM public.big_scripts WHERE k = '{key}')"
    if column == "up_sql":
        return f"SELECT deploy.register('{version}', 'big', {script})"
    return f"SELECT deploy.register('{version}', 'big', 'SELECT 1', {column} => {script})"


class Latency:
    """From a signal to the end of the call: wall seconds, and the seconds of it that the backend spent runnable but
    waiting for a CPU that other processes held (schedstat's run_delay, sampled until the backend ends). On a shared
    machine with more runnable processes than cores every uninterruptible step stretches; wall - waited is what the
    stop took on the backend's own account."""

    def __init__(self, wall, waited):
        self.wall, self.waited = wall, waited

    @property
    def own(self):
        return self.wall - self.waited

    def __str__(self):
        return f"{self.wall:.3f} s ({self.own:.3f} s without the wait for a CPU)"


def _run_delay(pid):
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def interrupt(pg, call, how, delay):
    """Sends pg_cancel_backend or pg_terminate_backend after delay seconds; returns the Latency of the stop, or None
    when the call had ended before the signal."""
    time.sleep(delay)
    delays = [_run_delay(call.pid)]
    sent = time.monotonic()
    assert pg.scalar(f"SELECT pg_{how}_backend(%s)", (call.pid,)) in (True, False)
    while call.ended is None:
        d = _run_delay(call.pid)
        if d is not None:
            delays.append(d)
        time.sleep(0.002)
    call.join()
    if call.ended < sent:
        return None
    stats.add(f"big_inputs.{how}s_landed")
    waited = delays[-1] - delays[0] if delays[0] is not None else 0.0
    return Latency(call.ended - sent, max(waited, 0.0))


def assert_within_limit(latency, what):
    """The stop took at most LIMIT_SECONDS on the backend's own account; in the quick mode, whose scripts leave no
    uninterruptible step longer than a tenth of that, on the wall clock too, whatever the machine's load."""
    assert latency.own <= LIMIT_SECONDS, f"{what}: {latency}"
    if not LONG:
        assert latency.wall <= LIMIT_SECONDS, f"{what}: {latency}"


def assert_stopped(call, how, latency):
    if how == "cancel":
        assert isinstance(call.error, psycopg2.errors.QueryCanceled), repr(call.error)
    else:
        assert isinstance(call.error, psycopg2.OperationalError), repr(call.error)
    assert_within_limit(latency, how)


def server_identity(pg):
    """The postmaster's start time: a crash restart (what kill -9 of a backend causes) changes it."""
    return pg.scalar("SELECT pg_postmaster_start_time()")


def backend_cpu_seconds(pid):
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


# ---- registration -------------------------------------------------------------------------------------------------

def test_registration_time_grows_linearly(pg):
    """The old parser rescanned from the start for every statement: 2 MB took 29 s. Four times the statements must
    cost about four times the backend's CPU time (quadratic would be sixteen), and in the long mode the goal's
    50 MB of 500,000 statements must register in under 5 s of CPU."""
    small, big = MANY // 4, MANY
    stage(pg, "small", many(small))
    size = stage(pg, "big", SHAPES["many"])
    cpu = {}
    for key in ("small", "big"):
        conn = pg.connect()
        pid = conn.get_backend_pid()
        before = backend_cpu_seconds(pid)
        t0 = time.monotonic()
        with conn.cursor() as cur:
            cur.execute(register_sql(f"lin.{key}", key))
            assert cur.fetchone()[0] == "registered"
        cpu[key] = backend_cpu_seconds(pid) - before
        print(f"[figure] register {key}: wall {time.monotonic() - t0:.2f} s, backend CPU {cpu[key]:.2f} s")
        conn.close()
    ratio = cpu["big"] / max(cpu["small"], 1e-3)
    print(f"[figure] {size / 1e6:.1f} MB, {big} statements; CPU ratio for 4x the statements: {ratio:.2f}")
    assert ratio < 8, f"4x the statements cost {ratio:.1f}x: not linear"
    if LONG:
        assert cpu["big"] < 5.0, f"50 MB registered in {cpu['big']:.2f} s of CPU (goal: under 5 s)"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_cancel_stops_register_within_a_second(pg, rng, shape):
    size = stage(pg, shape, SHAPES[shape])
    full = Call(pg.dsn, register_sql("full", shape)).join()
    assert full.error is None and full.result == "registered", repr(full.error)
    print(f"[figure] {shape}: {size / 1e6:.1f} MB registered in {full.seconds:.2f} s")
    landed = 0
    for trial in range(trials(3, 10)):
        call = Call(pg.dsn, register_sql(f"c{trial}", shape))
        latency = interrupt(pg, call, "cancel", rng.uniform(0.02, 0.9) * full.seconds)
        if latency is None:
            assert call.error is None, repr(call.error)
            assert pg.scalar("SELECT deploy.unregister(%s)", (f"c{trial}",))
            continue
        landed += 1
        assert_stopped(call, "cancel", latency)
        print(f"[figure] {shape}: cancel answered in {latency}")
        assert pg.scalar("SELECT count(*) FROM deploy.migrations WHERE version = %s", (f"c{trial}",)) == 0
    assert landed > 0, "no cancel landed during the registration"


def test_terminate_stops_register_without_a_server_restart(pg, rng):
    stage(pg, "many", SHAPES["many"])
    started = server_identity(pg)
    bystander = pg.connect()
    full = Call(pg.dsn, register_sql("full", "many")).join()
    assert full.error is None, repr(full.error)
    landed = 0
    for trial in range(trials(2, 6)):
        call = Call(pg.dsn, register_sql(f"k{trial}", "many"))
        latency = interrupt(pg, call, "terminate", rng.uniform(0.05, 0.8) * full.seconds)
        if latency is None:
            continue
        landed += 1
        assert_stopped(call, "terminate", latency)
        assert pg.scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (call.pid,)) == 0
        assert pg.scalar("SELECT count(*) FROM deploy.migrations WHERE version = %s", (f"k{trial}",)) == 0
    assert landed > 0, "no terminate landed during the registration"
    assert server_identity(pg) == started, "the server restarted"
    with bystander.cursor() as cur:   # a crash restart would have closed every other session
        cur.execute("SELECT 1")
        assert cur.fetchone()[0] == 1


def test_script_limit_is_inclusive_and_refused_above(pg):
    """64 MB is accepted (a single literal, cheap to parse); one byte more is 54000 before anything is parsed."""
    limit = 64 * 1024 * 1024
    frame = len("SELECT '';")
    stage(pg, "at", f"'SELECT ''' || repeat('x', {limit - frame}) || ''';'")
    stage(pg, "over", f"'SELECT ''' || repeat('x', {limit + 1 - frame}) || ''';'")
    assert pg.scalar(register_sql("at", "at")) == "registered"
    with pytest.raises(psycopg2.Error) as e:
        pg.sql(register_sql("over", "over"))
    assert e.value.pgcode == "54000"
    assert f"up_sql of migration over is {limit + 1} bytes" in e.value.pgerror
    with pytest.raises(psycopg2.Error) as e:
        pg.sql(register_sql("over_down", "over", column="down_sql"))
    assert e.value.pgcode == "54000" and "down_sql of migration over_down" in e.value.pgerror
    assert pg.scalar("SELECT count(*) FROM deploy.migrations") == 1


# ---- up, verify, validate -------------------------------------------------------------------------------------------

def _big_migration(pg):
    pg.sql("CREATE SCHEMA IF NOT EXISTS app")
    assert pg.scalar("SELECT deploy.register('1', 'table', 'CREATE TABLE app.big (id int, note text)', "
                     "'DROP TABLE app.big')") == "registered"
    assert pg.scalar("SELECT deploy.up()")["ok"]
    stage(pg, "many", SHAPES["many"])
    assert pg.scalar("SELECT deploy.register('2', 'big', (SELECT body FROM public.big_scripts WHERE k = 'many'), "
                     "'DELETE FROM app.big')") == "registered"


@pytest.mark.parametrize("how", ["cancel", "terminate"])
def test_interrupt_stops_up_of_a_huge_script(pg, rng, how):
    """deploy.up() of one migration of MANY statements: the script runs batch by batch, so a cancel or terminate is
    answered within a second wherever it lands; the ledger and the table are exactly as before, and up() then
    completes."""
    _big_migration(pg)
    started = server_identity(pg)
    rehearsal = Call(pg.dsn, "SELECT deploy.up(dry_run => true)").join()
    assert rehearsal.error is None and rehearsal.result["ok"], repr(rehearsal.error)
    print(f"[figure] up of {MANY} statements (dry run): {rehearsal.seconds:.2f} s")
    landed = 0
    for _ in range(trials(3, 8)):
        before = ledger_state(pg)
        call = Call(pg.dsn, "SELECT deploy.up(app_version => 'big')")
        latency = interrupt(pg, call, how, rng.uniform(0.05, 0.8) * rehearsal.seconds)
        if latency is None:   # quicker than the rehearsal: undo it and draw again
            assert call.error is None and call.result["ok"], repr(call.error)
            assert pg.scalar("SELECT deploy.down()")["ok"]
            continue
        landed += 1
        assert_stopped(call, how, latency)
        print(f"[figure] up: {how} answered in {latency}")
        assert ledger_state(pg) == before
        assert pg.scalar("SELECT count(*) FROM app.big") == 0
    assert landed > 0, "no signal landed during up()"
    assert server_identity(pg) == started
    done = pg.scalar("SELECT deploy.up(app_version => 'big')")
    assert done["ok"] and [m["version"] for m in done["applied"]] == ["2"], done
    assert pg.scalar("SELECT count(*) FROM app.big") == MANY


def test_cancel_stops_verify(pg, rng):
    """Through SQL only (deploy.verify() may move to C++): a verify script that sleeps, one that computes, and one
    of many statements are each cancelled within a second."""
    pg.sql("CREATE SCHEMA IF NOT EXISTS app")
    stage(pg, "verify_many", "repeat('SELECT 1;' || chr(10), 100000)")
    scripts = {
        "1": "'SELECT pg_sleep(60)'",
        "2": "'SELECT count(*) FROM generate_series(1, 10000000000)'",
        "3": "(SELECT body FROM public.big_scripts WHERE k = 'verify_many')",
    }
    for version, verify in scripts.items():
        assert pg.scalar(f"SELECT deploy.register('{version}', 'v{version}', 'SELECT 1', verify_sql => {verify})")
    assert pg.scalar("SELECT deploy.up()")["ok"]
    for version in ("1", "2"):   # these never end by themselves
        call = Call(pg.dsn, "SELECT deploy.verify(%s)", (version,))
        latency = interrupt(pg, call, "cancel", rng.uniform(0.1, 0.5))
        assert_stopped(call, "cancel", latency)
        print(f"[figure] verify {version}: cancel answered in {latency}")
    rehearsal = Call(pg.dsn, "SELECT deploy.verify('3')").join()
    assert rehearsal.error is None and rehearsal.result["ok"], repr(rehearsal.error)
    landed = 0
    for _ in range(trials(3, 8)):
        call = Call(pg.dsn, "SELECT deploy.verify('3')")
        latency = interrupt(pg, call, "cancel", rng.uniform(0.05, 0.8) * rehearsal.seconds)
        if latency is None:
            continue
        landed += 1
        assert_stopped(call, "cancel", latency)
        print(f"[figure] verify 3: cancel answered in {latency}")
    assert landed > 0, "no cancel landed during the verify of many statements"


def test_cancel_stops_validate_on_huge_bodies(pg, rng):
    """deploy.validate() over applied migrations whose stored SQL is huge: it answers a cancel within a second, or
    ends within a second of it."""
    count = trials(4, 10)
    stage(pg, "literal", SHAPES["literal"])
    for i in range(count):
        assert pg.scalar(register_sql(f"{i + 1}", "literal")) == "registered"
    assert pg.scalar("SELECT deploy.baseline(%s)", (str(count),))
    full = Call(pg.dsn, "SELECT deploy.validate()").join()
    assert full.error is None and full.result["ok"], repr(full.error)
    print(f"[figure] validate over {count} bodies of {LITERAL / 1e6:.0f} MB: {full.seconds:.3f} s")
    for _ in range(trials(3, 10)):
        call = Call(pg.dsn, "SELECT deploy.validate()")
        latency = interrupt(pg, call, "cancel", rng.uniform(0, 1.0) * full.seconds)
        if latency is None:
            continue
        assert call.error is None or isinstance(call.error, psycopg2.errors.QueryCanceled), repr(call.error)
        assert_within_limit(latency, "validate")
        print(f"[figure] validate: cancel answered in {latency}")


# ---- the batched parse and run against PostgreSQL's parse of the whole script ----------------------------------------
#
# A script is cut into batches by a splitter of our own (extension/src/sql_split.cpp) and each batch goes to the raw
# parser, or to SPI_execute, alone. PostgreSQL's own reading of the whole script is the oracle: the same script sent
# as one simple query. Statements mix everything that can hide a semicolon, in UTF-8, and the scripts are several
# batches long (256 KB each).

# Statements (without their final semicolon) that each insert rows tagged {k} into table d; {u} is U& when
# standard_conforming_strings is on (U&'' is an error when it is off).
FRAGMENTS = [
    "INSERT INTO d VALUES ({k}, 'a;b''c')",
    "INSERT INTO d VALUES ({k}, E'x\\';y\\\\')",
    "INSERT INTO d VALUES ({k}, $q$ ; $$ ; 'x $q$)",
    "INSERT INTO d VALUES ({k}, 'part1;'\n  -- comment ; 'x\n  'part2;')",
    "INSERT INTO d VALUES ({k}, E'e1;'\n'\\';e2')",
    "INSERT INTO d /* c ; /* nested ; */ ' */ VALUES ({k}, {u}'\\0041;')",
    "INSERT INTO d VALUES ({k}, 'é;日本;😀')",
    "INSERT INTO \"d\" VALUES ({k}, 'x') -- trailing ; 'comment\n",
    "CREATE FUNCTION f{k}() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT 'f;1'; "
    "SELECT CASE WHEN true THEN 'f;2' END; END;\nINSERT INTO d VALUES ({k}, f{k}())",
    "CREATE TABLE r{k} (x int);\nCREATE RULE rr{k} AS ON INSERT TO r{k} DO ALSO "
    "(INSERT INTO d VALUES ({k}, 'rule;1'); INSERT INTO d VALUES ({k}, 'rule;2'));\nINSERT INTO r{k} VALUES (1)",
    ";;INSERT INTO d VALUES ({k}, B'0101'::text || X'1F'::text)",
    "INSERT INTO d SELECT {k}, v FROM (VALUES ('p;1'), ('p;2')) AS t(v)",
    "INSERT INTO d VALUES ({k}, $é$;$é$)",
    "DO $do$ BEGIN INSERT INTO d VALUES ({k}, 'do;'); END $do$",
]
# Only when standard_conforming_strings is off: a backslash escapes a quote in a plain literal.
FRAGMENTS_SCS_OFF = ["INSERT INTO d VALUES ({k}, 'back\\';slash'), ({k}, N'n\\';')"]
PAD_ALPHABET = "abc ;$-/*'\"é日😀"


def _statement(k, scs, rng):
    if rng.random() < 0.5:   # a padding literal most often: it makes the size, the others make the cases
        pad = "".join(rng.choices(PAD_ALPHABET, k=rng.randint(20, 400))).replace("'", "''")
        return f"INSERT INTO d VALUES ({k}, '{pad}')"
    template = rng.choice(FRAGMENTS + ([] if scs else FRAGMENTS_SCS_OFF))
    return template.replace("{k}", str(k)).replace("{u}", "U&" if scs else "")


def _script(rng, scs, size):
    parts, total, k = [], 0, 0
    while total < size:
        k += 1
        text = _statement(k, scs, rng) + ";" + rng.choice(["\n", " ", "\n\n", "\t-- ;\n"])
        parts.append(text)
        total += len(text.encode())
    return "".join(parts)


def _session(pg, scs, schema):
    conn = pg.connect()
    with conn.cursor() as cur:
        cur.execute(f"SET standard_conforming_strings = {'on' if scs else 'off'}")
        cur.execute("SET client_min_messages = error")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        cur.execute(f"SET search_path = {schema}")
        cur.execute("CREATE TABLE IF NOT EXISTS d (k int, v text)")
    return conn


def _rows(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT k, v FROM d ORDER BY k, v")
        return cur.fetchall()


def test_batched_run_does_what_the_whole_script_does(pg, rng):
    for trial in range(trials(2, 12)):
        scs = trial % 2 == 0
        script = _script(rng, scs, trials(600_000, 1_500_000))
        direct = _session(pg, scs, f"direct{trial}")
        with direct.cursor() as cur:
            cur.execute(script)
        staged = _session(pg, scs, f"staged{trial}")
        with staged.cursor() as cur:
            cur.execute("SELECT deploy.register(%s, 'mixed', %s)", (f"{trial + 1}", script))
            assert cur.fetchone()[0] == "registered"
            cur.execute("SELECT deploy.up()")
            res = cur.fetchone()[0]
            assert res["ok"], res
        expected, got = _rows(direct), _rows(staged)
        print(f"[figure] trial {trial}: {len(script.encode()) / 1e3:.0f} kB, {len(expected)} rows, "
              f"standard_conforming_strings {'on' if scs else 'off'}")
        assert len(expected) > 100
        assert got == expected
        stats.add("big_inputs.differential_scripts")


def _whole_parse(conn, script):
    """PostgreSQL's verdict on the script: None when it parses, else (sqlstate, character position). The script is
    sent as one simple query behind a nextval(): PostgreSQL parses the whole string before it runs any of it, and a
    sequence does not roll back, so the sequence moved if and only if the script parsed (whatever running it then
    did: the statements go to a schema of their own)."""
    probe = "SELECT nextval('probe');\n"
    with conn.cursor() as cur:
        cur.execute("CREATE SEQUENCE IF NOT EXISTS probe")
        cur.execute("SELECT last_value, is_called FROM probe")
        before = cur.fetchone()
        error = None
        try:
            cur.execute(probe + script)
        except psycopg2.Error as e:
            error = e
        cur.execute("SELECT last_value, is_called FROM probe")
        if cur.fetchone() != before:
            return None
    assert error is not None
    return error.pgcode, int(error.diag.statement_position or 0) - len(probe)


def test_errors_read_as_in_a_parse_of_the_whole_script(pg, rng):
    """Scripts cut at a random character (unterminated literals, comments, bodies) or with a typo at a random
    statement: deploy.register() refuses exactly those PostgreSQL refuses, with its SQLSTATE and the same character
    position; the others register."""
    cases = trials(24, 200)
    refused = 0
    sessions = {scs: _session(pg, scs, "errs") for scs in (True, False)}
    for case in range(cases):
        scs = case % 3 != 0
        conn = sessions[scs]
        script = _script(rng, scs, rng.choice([4_000, 300_000, 700_000]))
        if case % 2:
            script = script[:rng.randrange(1, len(script))]
        else:
            at = rng.choice([m.start() for m in re.finditer("INSERT", script)])
            script = script[:at] + "INSERTT" + script[at + 6:]
        verdict = _whole_parse(conn, script)
        with conn.cursor() as cur:
            try:
                cur.execute("SELECT deploy.register(%s, 'cut', %s)", (f"{case + 1}", script))
                outcome = None
            except psycopg2.Error as e:
                outcome = e
        if verdict is None:
            assert outcome is None or (outcome.pgcode == "22023" and "holds no SQL statement" in outcome.pgerror), \
                repr(outcome)
        else:
            refused += 1
            assert outcome is not None, f"registered, but PostgreSQL says {verdict}"
            assert (outcome.pgcode, outcome.diag.message_detail) == \
                (verdict[0], f"character {verdict[1]} of up_sql of migration {case + 1}"), outcome.pgerror
            line = script[:verdict[1] - 1].count("\n") + 1
            assert f"at line {line}:" in outcome.diag.message_primary
        stats.add("big_inputs.error_scripts")
    assert refused >= cases // 2
