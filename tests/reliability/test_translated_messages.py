"""Under a translated lc_messages (German here) pg_deploy tells its own per-migration timeout from a cancel and from
the caller's statement_timeout by what it knows (which timer fired), never by the English text of the message:

- pg_deploy.statement_timeout stopping a migration or a verify script is a failure of that migration or script,
  recorded (ok:false, a failed deployment), and the call returns;
- a cancel request (pg_cancel_backend) and the caller's own statement_timeout abort the whole call with 57014 and
  leave the ledger exactly as it was.

scripts/setup generates the de_DE.UTF-8 locale; PostgreSQL's German catalog ships with the server package. The
first test proves the messages really are German in this session, so the others cannot pass on English text.
"""
import time

import psycopg2
import pytest

from conftest import Background, fetch_one, ledger_state, slow_migrations

GERMAN = "de_DE.UTF-8"
SETUP = (f"SET lc_messages = '{GERMAN}'",)


def german(conn):
    with conn.cursor() as cur:
        cur.execute(f"SET lc_messages = '{GERMAN}'")
    return conn


def test_messages_are_translated(pg):
    conn = german(pg.connect())
    with conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.DivisionByZero) as err:
            cur.execute("SELECT 1/0")
    assert "Division durch Null" in str(err.value), str(err.value)
    with conn.cursor() as cur:
        cur.execute("SET statement_timeout = '50ms'")
        with pytest.raises(psycopg2.errors.QueryCanceled) as err:
            cur.execute("SELECT pg_sleep(1)")
    assert "statement timeout" not in str(err.value), str(err.value)


def test_own_timeout_is_a_failed_migration(pg):
    slow_migrations(pg, ["1"], up_sleep=2.0)
    conn = german(pg.connect())
    with conn.cursor() as cur:
        cur.execute("SET pg_deploy.statement_timeout = '200ms'")
        cur.execute("SET client_min_messages = error")
        cur.execute("SELECT deploy.up(app_version => 'r1')")
        res = cur.fetchone()[0]
    assert res["ok"] is False and res["failed"]["sqlstate"] == "57014", res
    assert pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (res["deployment_id"],)) == "failed"
    assert pg.scalar("SELECT count(*) FROM deploy.applied") == 0


def test_own_timeout_fails_one_verify_script_and_the_rest_still_run(pg):
    pg.sql("CREATE SCHEMA app")
    pg.scalar("SELECT deploy.register('1', 'slow_check', 'CREATE TABLE app.a (id int)', 'DROP TABLE app.a', "
              "'SELECT pg_sleep(2)')")
    pg.scalar("SELECT deploy.register('2', 'quick_check', 'CREATE TABLE app.b (id int)', 'DROP TABLE app.b', "
              "'SELECT id FROM app.b')")
    assert pg.scalar("SELECT deploy.up()")["ok"]
    conn = german(pg.connect())
    with conn.cursor() as cur:
        cur.execute("SET pg_deploy.statement_timeout = '200ms'")
        cur.execute("SET client_min_messages = error")
        cur.execute("SELECT deploy.verify()")
        res = cur.fetchone()[0]
    by_version = {r["version"]: r for r in res["results"]}
    assert by_version["1"]["ok"] is False and by_version["1"]["sqlstate"] == "57014", res
    assert by_version["2"]["ok"] is True, res


@pytest.mark.parametrize("how", ["cancel", "caller_statement_timeout"])
def test_cancel_and_callers_timeout_abort_the_whole_call(pg, how):
    slow_migrations(pg, ["1", "2"], up_sleep=1.5)
    before = ledger_state(pg)
    setup = SETUP + (("SET statement_timeout = '400ms'",) if how == "caller_statement_timeout" else ())
    bg = Background(pg.dsn, fetch_one("SELECT deploy.up(app_version => 'r1')"), setup_sql=setup)
    if how == "cancel":
        time.sleep(0.4)
        assert pg.scalar("SELECT pg_cancel_backend(%s)", (bg.pid,)) is True
    bg.join()
    assert isinstance(bg.error, psycopg2.errors.QueryCanceled), repr(bg.error)
    assert "statement timeout" not in str(bg.error)   # German text: the decision cannot have come from it
    assert ledger_state(pg) == before
