"""The bad-input catalogue: every case gets its exact SQLSTATE (SQL functions) or exit code (pgdeploy), and nothing
stored changes (every ledger table's row count and md5 are compared before and after each case).

Four tables of cases, each parametrized: SQL functions, migration files (`pgdeploy load`), watcher configuration
files (`pgdeploy watch --check-config`), and command-line arguments. The shared database holds a realistic ledger:
0001 (reversible) applied by deployment 1, 0002 (irreversible) applied by deployment 2, 0003 pending, an open marker
on deployment 2 claimed by holder h1.
"""
import json
import os

import psycopg2
import pytest

from conftest import ledger_state, run_pgdeploy, sqlstate_of, stats

LOCK = "1346651472, 1"


@pytest.fixture(scope="module")
def ledger(module_db):
    db = module_db
    db.sql("CREATE SCHEMA app")
    db.sql("SELECT deploy.register('0001', 'a', 'CREATE TABLE app.a (id int)', 'DROP TABLE app.a')")
    assert db.scalar("SELECT deploy.up(app_version => 'v1')")["ok"]
    db.sql("SELECT deploy.register('0002', 'b', 'CREATE TABLE app.b (id int)')")
    assert db.scalar("SELECT deploy.up(app_version => 'v2')")["ok"]
    db.sql("SELECT deploy.register('0003', 'c', 'CREATE TABLE app.c (id int)', 'DROP TABLE app.c')")
    marker = db.scalar("SELECT deploy.request_rollback('bad release', 2)")
    assert db.sql("SELECT id FROM deploy.claim_marker('h1', '1 hour', %s)", (marker,))
    db.marker = marker
    return db


def assert_unchanged(db, before, case):
    after = ledger_state(db)
    assert after == before, f"{case}: the ledger changed: " + ", ".join(
        t for t in before if before[t] != after[t])
    assert db.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'app'") == 2, f"{case}: app tables changed"


# (id, SQL, expected SQLSTATE). %(m)s is the open marker's id.
SQL_CASES = [
    # register: versions
    ("register-null-version", "SELECT deploy.register(NULL, 'x', 'SELECT 1')", "22004"),
    ("register-empty-version", "SELECT deploy.register('', 'x', 'SELECT 1')", "22023"),
    ("register-leading-space", "SELECT deploy.register(' 9', 'x', 'SELECT 1')", "22023"),
    ("register-trailing-space", "SELECT deploy.register('9 ', 'x', 'SELECT 1')", "22023"),
    ("register-65-chars", "SELECT deploy.register(repeat('9', 65), 'x', 'SELECT 1')", "22023"),
    ("register-newline", "SELECT deploy.register(E'9\\n1', 'x', 'SELECT 1')", "22023"),
    ("register-nul-like-control", "SELECT deploy.register(E'9\\x01', 'x', 'SELECT 1')", "22023"),
    ("register-leading-dash", "SELECT deploy.register('-9', 'x', 'SELECT 1')", "22023"),
    ("register-sql-in-version", "SELECT deploy.register('9;DROP TABLE app.a', 'x', 'SELECT 1')", "22023"),
    ("register-quote-in-version", "SELECT deploy.register('9''1', 'x', 'SELECT 1')", "22023"),
    ("register-slash-in-version", "SELECT deploy.register('9/1', 'x', 'SELECT 1')", "22023"),
    ("register-non-ascii-version", "SELECT deploy.register('9é', 'x', 'SELECT 1')", "22023"),
    ("register-ambiguous-spelling", "SELECT deploy.register('001', 'x', 'SELECT 1')", "PD008"),
    ("register-ambiguous-pending", "SELECT deploy.register('03', 'x', 'SELECT 1')", "PD008"),
    # register: bodies and options
    ("register-null-name", "SELECT deploy.register('9', NULL, 'SELECT 1')", "22004"),
    ("register-empty-name", "SELECT deploy.register('9', '', 'SELECT 1')", "22023"),
    ("register-null-up", "SELECT deploy.register('9', 'x', NULL)", "22004"),
    # An empty or blank up_sql is a no-op migration (sql/lock_safe.sql), not bad input.
    ("register-bad-lock-timeout", "SELECT deploy.register('9', 'x', 'SELECT 1', lock_timeout => 'soon')", "22023"),
    ("register-negative-lock-timeout", "SELECT deploy.register('9', 'x', 'SELECT 1', lock_timeout => '-1s')", "22023"),
    ("register-up-syntax-error", "SELECT deploy.register('9', 'x', 'CREAT TABLE app.z (id int)')", "42601"),
    ("register-down-syntax-error", "SELECT deploy.register('9', 'x', 'SELECT 1', 'DROP TABL app.z')", "42601"),
    ("register-verify-syntax-error", "SELECT deploy.register('9', 'x', 'SELECT 1', 'SELECT 1', 'SELEC 1')", "42601"),
    ("register-up-commit", "SELECT deploy.register('9', 'x', 'CREATE TABLE app.z (id int); COMMIT')", "PD009"),
    ("register-up-begin", "SELECT deploy.register('9', 'x', 'BEGIN; CREATE TABLE app.z (id int)')", "PD009"),
    ("register-up-rollback", "SELECT deploy.register('9', 'x', 'ROLLBACK')", "PD009"),
    ("register-down-commit", "SELECT deploy.register('9', 'x', 'SELECT 1', 'DROP TABLE app.z; COMMIT')", "PD009"),
    ("register-bad-reversibility", "SELECT deploy.register('9', 'x', 'SELECT 1', reversibility => 'maybe')",
     "22023"),
    ("register-reversible-without-down",
     "SELECT deploy.register('9', 'x', 'SELECT 1', reversibility => 'reversible')", "22023"),
    ("register-cic-declared-transactional",
     "SELECT deploy.register('9', 'x', 'CREATE INDEX CONCURRENTLY z ON app.a (id)', transactional => true)", "PD004"),
    ("register-vacuum-declared-transactional",
     "SELECT deploy.register('9', 'x', 'VACUUM app.a', transactional => true)", "PD004"),
    ("register-drift-applied", "SELECT deploy.register('0001', 'a', 'CREATE TABLE app.a (id bigint)', "
     "'DROP TABLE app.a')", "PD001"),
    ("register-drift-applied-replace", "SELECT deploy.register('0001', 'a', 'CREATE TABLE app.a (id bigint)', "
     "'DROP TABLE app.a', replace => true)", "PD001"),
    # unregister
    ("unregister-null", "SELECT deploy.unregister(NULL)", "22004"),
    ("unregister-unknown", "SELECT deploy.unregister('9999')", "P0002"),
    ("unregister-applied", "SELECT deploy.unregister('0001')", "55000"),
    # up
    ("up-while-marker-open", "SELECT deploy.up(target => '0003')", "55000"),
    ("up-empty-target", "SELECT deploy.up(target => '')", "22023"),
    ("up-invalid-target", "SELECT deploy.up(target => 'bad version')", "22023"),
    ("up-lock-held", "SELECT deploy.up()", "55P03"),
    # down / rollback
    ("down-zero-steps", "SELECT deploy.down(steps => 0)", "22023"),
    ("down-negative-steps", "SELECT deploy.down(steps => -1)", "22023"),
    ("down-null-steps", "SELECT deploy.down(steps => NULL)", "22004"),
    ("down-unknown-to-version", "SELECT deploy.down(to_version => '9999')", "P0002"),
    ("down-irreversible", "SELECT deploy.down()", "PD002"),
    ("down-lock-held", "SELECT deploy.down()", "55P03"),
    ("rollback-unknown-deployment", "SELECT deploy.rollback(deployment_id => 99999)", "P0002"),
    ("rollback-negative-deployment", "SELECT deploy.rollback(deployment_id => -1)", "P0002"),
    ("rollback-irreversible", "SELECT deploy.rollback(deployment_id => 2)", "PD002"),
    ("rollback-built-upon", "SELECT deploy.rollback(deployment_id => 1)", "55000"),
    ("rollback-lock-held", "SELECT deploy.rollback()", "55P03"),
    # baseline, require_version, version_key
    ("baseline-null", "SELECT deploy.baseline(NULL)", "22004"),
    ("baseline-unknown", "SELECT deploy.baseline('9999')", "P0002"),
    ("require-version-newer", "SELECT deploy.require_version('9999')", "PD005"),
    ("require-version-null", "SELECT deploy.require_version(NULL)", "22004"),
    ("require-version-invalid", "SELECT deploy.require_version('bad v')", "22023"),
    ("version-key-empty", "SELECT deploy.version_key('')", "22023"),
    # markers
    ("request-rollback-null-reason", "SELECT deploy.request_rollback(NULL)", "22004"),
    # NULL is 22004, empty (or blank) text 22023, as for every text argument
    ("request-rollback-empty-reason", "SELECT deploy.request_rollback('')", "22023"),
    ("request-rollback-blank-reason", "SELECT deploy.request_rollback('  ')", "22023"),
    ("request-rollback-unknown-deployment", "SELECT deploy.request_rollback('x', 99999)", "P0002"),
    ("claim-null-holder", "SELECT * FROM deploy.claim_marker(NULL)", "22004"),
    ("claim-empty-holder", "SELECT * FROM deploy.claim_marker('')", "22023"),
    ("claim-negative-lease", "SELECT * FROM deploy.claim_marker('h2', '-1 min')", "22023"),
    ("claim-unknown-marker", "SELECT * FROM deploy.claim_marker('h2', '5 min', 99999)", "P0002"),
    ("claim-held-by-other", "SELECT * FROM deploy.claim_marker('h2', '5 min', %(m)s)", "PD007"),
    ("execute-unknown-marker", "SELECT deploy.execute_rollback(99999)", "P0002"),
    ("execute-null-marker", "SELECT deploy.execute_rollback(NULL)", "22004"),
    ("execute-held-by-other", "SELECT deploy.execute_rollback(%(m)s, 'h2')", "PD007"),
    ("resolve-unknown-marker", "SELECT deploy.resolve_marker(99999, 'done')", "P0002"),
    ("resolve-bad-resolution", "SELECT deploy.resolve_marker(%(m)s, 'maybe')", "22023"),
    ("eligibility-unknown", "SELECT deploy.rollback_eligibility(99999)", "P0002"),
    # verify, steps, events
    ("verify-unknown", "SELECT deploy.verify('9999')", "P0002"),
    ("step-done-unknown", "SELECT deploy.step_done(99999)", "P0002"),
    ("step-failed-unknown", "SELECT deploy.step_failed(99999, 'XX000', 'x')", "P0002"),
    ("next-step-unknown-deployment", "SELECT deploy.next_step(99999)", "P0002"),
    ("log-event-null-kind", "SELECT deploy.log_event(NULL)", "22004"),
    ("log-event-empty-kind", "SELECT deploy.log_event('')", "22023"),
    ("log-events-empty-kind", "SELECT deploy.log_events('', NULL, ARRAY['1'], ARRAY[now()], ARRAY['{}'::jsonb])", "22023"),
    ("log-events-lengths", "SELECT deploy.log_events('k', NULL, ARRAY['1', '2'], ARRAY[now()], ARRAY['{}'::jsonb])",
     "22023"),
    ("ledger-changed-direct", "SELECT deploy.ledger_changed()", "22023"),
    ("events-update", "UPDATE deploy.events SET kind = 'x'", "42501"),
    ("events-delete", "DELETE FROM deploy.events", "42501"),
    ("events-truncate", "TRUNCATE deploy.events", "42501"),
    # the procedure commits: inside a transaction block it refuses at once, saying how to call it
    ("run-in-transaction-block", "BEGIN; CALL deploy.run(); COMMIT", "55000"),
]

LOCK_HELD_CASES = {"up-lock-held", "down-lock-held", "rollback-lock-held"}


@pytest.mark.parametrize("case,query,expected", SQL_CASES, ids=[c[0] for c in SQL_CASES])
def test_sql_bad_input(ledger, case, query, expected):
    before = ledger_state(ledger)
    holder = None
    setup = ["SET pg_deploy.lock_wait = '100ms'"]
    if case in LOCK_HELD_CASES:
        holder = psycopg2.connect(ledger.dsn)
        with holder.cursor() as cur:
            cur.execute(f"SELECT pg_advisory_xact_lock({LOCK})")   # held until the transaction ends
    try:
        got = sqlstate_of(ledger, query.replace("%(m)s", str(ledger.marker)), setup=setup)
    finally:
        if holder is not None:
            holder.rollback()
            holder.close()
    stats.add("bad_input.sql")
    assert got == expected, f"{case}: expected SQLSTATE {expected}, got {got}"
    assert_unchanged(ledger, before, case)


def test_sql_bad_input_on_a_fresh_ledger(pg):
    """Cases the shared ledger cannot show (its open marker makes up() refuse first)."""
    pg.sql("CREATE SCHEMA app")
    pg.sql("SELECT deploy.register('0001', 'a', 'CREATE TABLE app.a (id int)', 'DROP TABLE app.a')")
    before = ledger_state(pg)
    assert sqlstate_of(pg, "SELECT deploy.up(target => '9999')") == "P0002"
    assert ledger_state(pg) == before
    # A marker for a deployment that is already rolled back is closed as done, not run twice.
    dep = pg.scalar("SELECT deploy.up(app_version => 'v1')")["deployment_id"]
    marker = pg.scalar("SELECT deploy.request_rollback('x', %s)", (dep,))
    assert pg.scalar("SELECT deploy.rollback(%s)", (dep,))["ok"]
    res = pg.scalar("SELECT deploy.execute_rollback(%s)", (marker,))
    assert res["ok"], res
    assert pg.scalar("SELECT count(*) FROM deploy.events WHERE kind = 'migration_reverted'") == 1
    # Resolving a closed marker is a state conflict.
    assert pg.scalar("SELECT state FROM deploy.rollback_markers WHERE id = %s", (marker,)) == "done"
    before = ledger_state(pg)
    assert sqlstate_of(pg, "SELECT deploy.resolve_marker(%s, 'abandoned')" % marker) == "PD007"
    assert ledger_state(pg) == before
    stats.add("bad_input.sql", 3)


# ---- migration files: pgdeploy load DIR ---------------------------------------------------------------------------

UP = "CREATE TABLE app.f (id int);\n"
FILE_CASES = [
    # (id, files {name: content}, expected exit code)
    ("down-without-up", {"0100_x.down.sql": "DROP TABLE app.f;\n"}, 2),
    ("verify-without-up", {"0100_x.verify.sql": "SELECT 1;\n"}, 2),
    ("same-version-twice", {"0100_x.up.sql": UP, "0100_y.up.sql": UP}, 2),
    ("same-key-two-spellings", {"0100_x.up.sql": UP, "100_y.up.sql": UP}, 2),
    ("version-with-space", {"01 00_x.up.sql": UP}, 2),
    ("missing-name", {"0100.up.sql": UP}, 2),
    ("unknown-directive", {"0100_x.up.sql": "-- pg_deploy: colour=blue\n" + UP}, 2),
    ("bad-transaction-value", {"0100_x.up.sql": "-- pg_deploy: transaction=maybe\n" + UP}, 2),
    ("bad-reversible-value", {"0100_x.up.sql": "-- pg_deploy: reversible=sometimes\n" + UP}, 2),
    ("directive-not-key-value", {"0100_x.up.sql": "-- pg_deploy: transaction\n" + UP}, 2),
    ("contradicting-directives", {"0100_x.up.sql": "-- pg_deploy: transaction=on\n-- pg_deploy: transaction=off\n"
                                  + UP}, 2),
    ("not-utf8", {"0100_x.up.sql": b"CREATE TABLE app.f (v text DEFAULT '\xff\xfe');\n"}, 2),
    # An empty or blank file is a no-op migration (tests/e2e/test_noop_and_directives.py), not bad input.
    ("bad-lock-timeout", {"0100_x.up.sql": "-- pg_deploy: lock_timeout=soon\n" + UP}, 2),
    ("lock-timeout-in-down-file", {"0100_x.up.sql": UP, "0100_x.down.sql": "-- pg_deploy: lock_timeout=2s\nSELECT 1;"},
     2),
    ("nul-byte", {"0100_x.up.sql": b"CREATE TABLE app.f (id int);\x00\n"}, 2),
    ("one-good-one-bad", {"0100_x.up.sql": UP, "0101_y.up.sql": "-- pg_deploy: colour=blue\nSELECT 1;"}, 2),
    ("flyway-single-underscore", {"V100_x.sql": UP}, 2),
    ("directory-named-like-a-file", {"0100_x.up.sql/inner.txt": "x"}, 2),
]


@pytest.mark.parametrize("case,files,expected", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_migration_files_bad_input(ledger, write_migrations, case, files, expected):
    before = ledger_state(ledger)
    mdir = write_migrations(files)
    code, out, err = run_pgdeploy("load", mdir, "--dsn", ledger.dsn, "--json")
    stats.add("bad_input.files")
    assert code == expected, f"{case}: expected exit {expected}, got {code}\nstdout: {out}\nstderr: {err}"
    assert err.strip(), f"{case}: no message on stderr"
    assert_unchanged(ledger, before, case)


def test_migration_files_special_cases(ledger, write_migrations, tmp_path):
    """Cases that do not fit the table: missing directory, a file instead of a directory, SQL that the server
    refuses (syntax, COMMIT), and drift of an applied migration's file (exit 6)."""
    cases = [
        ("missing-dir", [str(tmp_path / "nope")], 2),
        ("file-not-dir", [__file__], 2),
        ("syntax-error", [write_migrations({"0100_x.up.sql": "CREAT TABLE app.f (id int);\n"})], 2),
        ("commit-in-file", [write_migrations({"0100_x.up.sql": UP + "COMMIT;\n"})], 2),
        ("drift", [write_migrations({"0001_a.up.sql": "CREATE TABLE app.a (id bigint)",
                                     "0001_a.down.sql": "DROP TABLE app.a"})], 6),
    ]
    for case, args, expected in cases:
        before = ledger_state(ledger)
        code, out, err = run_pgdeploy("load", *args, "--dsn", ledger.dsn)
        stats.add("bad_input.files")
        assert code == expected, f"{case}: expected exit {expected}, got {code}\nstdout: {out}\nstderr: {err}"
        assert_unchanged(ledger, before, case)


# ---- watcher configuration files: pgdeploy watch --check-config -----------------------------------------------------

def _good_config():
    return {
        "watcher_id": "w1",
        "database": {"dsn": "dbname=nowhere"},
        "checks": [{"name": "api", "type": "http", "url": "http://127.0.0.1:9/health", "interval": "1s"}],
        "rollback": {"command": ["/bin/true"]},
    }


def _with(path, value):
    cfg = _good_config()
    node = cfg
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return json.dumps(cfg)


_DELETE = object()

CONFIG_CASES = [
    ("not-json", "{ this is not json", 2),
    ("empty-file", "", 2),
    ("top-level-array", "[]", 2),
    ("unknown-top-key", _with("colour", "blue"), 2),
    ("misspelt-threshold", _with("checks.0.failure_treshold", 3), 2),
    ("check-without-type", _with("checks.0.type", _DELETE), 2),
    ("unknown-check-type", _with("checks.0.type", "smtp"), 2),
    ("interval-not-duration", _with("checks.0.interval", "soon"), 2),
    ("interval-negative", _with("checks.0.interval", "-1s"), 2),
    ("interval-zero", _with("checks.0.interval", "0s"), 2),
    ("threshold-zero", _with("checks.0.failure_threshold", 0), 2),
    ("threshold-too-large", _with("checks.0.failure_threshold", 1001), 2),
    ("threshold-string", _with("checks.0.failure_threshold", "3"), 2),
    ("http-without-url", _with("checks.0.url", _DELETE), 2),
    ("expect-status-999", _with("checks.0.expect_status", 999), 2),
    ("tcp-without-port", _with("checks.0", {"name": "t", "type": "tcp", "host": "127.0.0.1"}), 2),
    ("tcp-port-too-large", _with("checks.0", {"name": "t", "type": "tcp", "host": "127.0.0.1", "port": 70000}), 2),
    ("command-empty-argv", _with("checks.0", {"name": "c", "type": "command", "argv": []}), 2),
    ("command-argv-string", _with("checks.0", {"name": "c", "type": "command", "argv": "true; rm -rf /"}), 2),
    ("error-rate-above-one", _with("checks.0.error_rate", {"threshold": 1.5}), 2),
    ("duplicate-check-names", json.dumps({**_good_config(), "checks": [_good_config()["checks"][0]] * 2}), 2),
    ("checks-not-array", _with("checks", {"name": "api"}), 2),
    ("database-not-object", _with("database", 5), 2),
    ("rollback-order-bad", _with("rollback.order", "sideways"), 2),
    ("rollback-command-empty", _with("rollback.command", []), 2),
    ("metrics-not-loopback", _with("metrics", {"listen": "0.0.0.0:9187"}), 2),
    ("metrics-no-port", _with("metrics", {"listen": "127.0.0.1"}), 2),
    ("logging-level-bad", _with("logging", {"level": "loud"}), 2),
    ("watcher-id-too-long", _with("watcher_id", "w" * 129), 2),
    ("decision-window-bad", _with("decision", {"watch_window": "forever"}), 2),
    # found by fuzz_config: a number beyond double made nlohmann throw out_of_range (exit 1, "internal")
    ("number-overflow-top", "3e390", 2),
    ("number-overflow-threshold", _with("checks.0.failure_threshold", 0).replace('"failure_threshold": 0',
                                                                                 '"failure_threshold": 1e999'), 2),
]


@pytest.mark.parametrize("case,text,expected", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_watch_config_bad_input(tmp_path, case, text, expected):
    path = tmp_path / "watch.json"
    path.write_text(text)
    code, out, err = run_pgdeploy("watch", "--check-config", "--config", str(path))
    stats.add("bad_input.config")
    assert code == expected, f"{case}: expected exit {expected}, got {code}\nstdout: {out}\nstderr: {err}"
    assert (out + err).strip(), f"{case}: no message"


def test_watch_config_good_one_passes(tmp_path):
    """The base of the config table is itself valid: each case above fails for its own reason."""
    path = tmp_path / "watch.json"
    path.write_text(json.dumps(_good_config()))
    code, out, err = run_pgdeploy("watch", "--check-config", "--config", str(path))
    assert code == 0, out + err


def test_watch_config_missing_file(tmp_path):
    code, out, err = run_pgdeploy("watch", "--check-config", "--config", str(tmp_path / "nope.json"))
    stats.add("bad_input.config")
    assert code == 2, out + err
    code, out, err = run_pgdeploy("watch", "--check-config", "--config", str(tmp_path))
    stats.add("bad_input.config")
    assert code == 2, out + err


# ---- command-line arguments ---------------------------------------------------------------------------------------

CLI_CASES = [
    ("no-command", [], 2),
    ("unknown-command", ["deploy-everything"], 2),
    ("unknown-flag", ["up", "--colour"], 2),
    ("abbreviated-flag", ["up", "--tar", "0003"], 2),
    ("flag-twice", ["up", "--target", "0003", "--target", "0003"], 2),
    ("missing-value", ["up", "--target"], 2),
    ("empty-value", ["up", "--target="], 2),
    ("value-for-switch", ["up", "--json=yes"], 2),
    ("unexpected-positional", ["up", "extra"], 2),
    ("steps-zero", ["down", "--steps", "0"], 2),
    ("steps-not-number", ["down", "--steps", "two"], 2),
    ("steps-negative", ["down", "--steps", "-1"], 2),
    ("steps-and-to", ["down", "--steps", "1", "--to", "0001"], 2),
    ("lock-wait-bogus", ["up", "--lock-wait", "soon"], 2),
    ("log-format-bogus", ["status", "--log-format", "xml"], 2),
    ("load-without-dir", ["load"], 2),
    ("load-two-dirs", ["load", "a", "b"], 2),
    ("markers-bad-action", ["markers", "explode"], 2),
    ("markers-execute-without-id", ["markers", "execute"], 2),
    ("markers-option-for-other-action", ["markers", "list", "--resolution", "done"], 2),
    ("rollback-deployment-not-number", ["rollback", "--deployment", "last"], 2),
    ("watch-without-config", ["watch"], 2),
    ("watch-check-config-and-status", ["watch", "--check-config", "--status", "--config", "/dev/null"], 2),
    ("once-unknown-arg", ["once", "--forever"], 2),
]


@pytest.mark.parametrize("case,args,expected", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_arguments(ledger, case, args, expected):
    before = ledger_state(ledger)
    code, out, err = run_pgdeploy(*args, env={"PGDATABASE": ledger.name, "PGDEPLOY_WATCH_CONFIG": None})
    stats.add("bad_input.cli")
    assert code == expected, f"{case}: expected exit {expected}, got {code}\nstdout: {out}\nstderr: {err}"
    assert err.strip(), f"{case}: no message on stderr"
    assert_unchanged(ledger, before, case)


def test_cli_connection_and_extension_errors(ledger, pg):
    """Exit 3 when the server cannot be reached, 8 when the database lacks the extension, 4 when the lock is held
    (and the password of a DSN never appears in the output)."""
    from conftest import free_port
    before = ledger_state(ledger)
    dsn = f"host=127.0.0.1 port={free_port()} dbname=x user=u password=sekrit-pw connect_timeout=2"
    code, out, err = run_pgdeploy("status", "--dsn", dsn)
    stats.add("bad_input.cli")
    assert code == 3, out + err
    assert "sekrit-pw" not in out + err
    code, out, err = run_pgdeploy("up", "--dsn", "this is not a dsn")
    stats.add("bad_input.cli")
    assert code in (2, 3), out + err
    pg.sql("DROP EXTENSION pg_deploy CASCADE")
    code, out, err = run_pgdeploy("status", "--dsn", pg.dsn)
    stats.add("bad_input.cli")
    assert code == 8, out + err
    holder = psycopg2.connect(ledger.dsn)
    try:
        with holder.cursor() as cur:
            cur.execute(f"SELECT pg_advisory_xact_lock({LOCK})")
        code, out, err = run_pgdeploy("up", "--dsn", ledger.dsn, "--lock-wait", "100ms")
        stats.add("bad_input.cli")
        assert code == 4, out + err
    finally:
        holder.rollback()
        holder.close()
    assert_unchanged(ledger, before, "connection errors")
