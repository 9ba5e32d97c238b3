"""Names and messages that are not plain ASCII, through the C++ engine: nothing may reach a user as XX000 (a C++
exception), and the functions documented not to raise for a failing migration (up, down, rollback,
execute_rollback) keep that promise.

- UTF8 database: a lossy revert of a table with a long multibyte name (the archive name used to be cut inside a
  character: XX000 on every attempt) succeeds, and `pgdeploy status` (table and --json) shows the quoted names.
- SQL_ASCII and LATIN1 databases: the engine's JSON is UTF-8, and text in these encodings is not; such bytes become
  U+FFFD in results and events instead of failing the call, while deploy.archived (a text column) keeps the exact
  name. A migration's error message with such bytes is recorded, not raised. Where the engine still writes text into
  JSON without replacement (a rollback's reason), it is 22021 with a hint, not XX000.
"""
import json

import psycopg2
import pytest

from conftest import FreshDatabase, run_pgdeploy, stats


def EncodedDatabase(encoding):
    """A throwaway database in the given encoding (locale C, which accepts any encoding) with pg_deploy; only errors
    cross to the client, whose SQL_ASCII codec is ascii."""
    return FreshDatabase(f"pgdeploy_enc_{encoding.lower()}_",
                         f"ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
                         client_min_messages="error")


def quiet(db):
    """Only ASCII crosses to psycopg2 in these tests (its SQL_ASCII codec is ascii); warnings stay on the server."""
    db.sql("SET client_min_messages = error")


def test_utf8_long_multibyte_lossy_revert_and_pgdeploy_status(pg):
    pg.sql("SET client_min_messages = error")
    name = "表" * 21  # 63 bytes: "<deployment>_" + name needs the cut
    assert pg.scalar("SELECT deploy.register('1', 'app', 'CREATE SCHEMA app', 'DROP SCHEMA app')") == "registered"
    assert pg.scalar("SELECT deploy.up() ->> 'ok'") == "true"
    pg.sql("SELECT deploy.register('2', 'mb', format('CREATE TABLE app.%%I (id int PRIMARY KEY, %%I text); "
           "INSERT INTO app.%%I VALUES (1, ''x'')', %s, %s, %s), "
           "format('ALTER TABLE app.%%I DROP COLUMN %%I; DROP TABLE app.%%I', %s, %s, %s), reversibility => 'lossy')",
           (name, "ü" * 30, name, name, "ü" * 30, name))
    assert pg.scalar("SELECT deploy.up() ->> 'ok'") == "true"
    result = pg.scalar("SELECT deploy.rollback()")
    assert result["ok"] is True, result
    assert [a["object_name"] for a in result["archived"]] == [f'app."{name}"."{"ü" * 30}"', f'app."{name}"']
    stats.add("bad_inputs")

    rc, out, err = run_pgdeploy("status", "--dsn", pg.dsn)
    assert rc == 0, err
    assert f'app."{name}"' in out and "archived data" in out
    rc, out, err = run_pgdeploy("status", "--dsn", pg.dsn, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert sorted(a["object_name"] for a in doc["archived"]) == sorted(a["object_name"] for a in result["archived"])


# Raw bytes that are not UTF-8: 62 x 0xE9 ('é' in LATIN1), a table name that is also too long for
# "<deployment>_" + name.
LONG_E9 = "convert_from(decode(repeat('e9', 62), 'hex'), %s)"


@pytest.mark.parametrize("encoding", ["SQL_ASCII", "LATIN1"])
def test_non_utf8_database_lossy_revert_is_archived_not_raised(encoding):
    with EncodedDatabase(encoding) as db:
        quiet(db)
        table = LONG_E9 % f"'{encoding}'"
        db.sql("SELECT deploy.register('1', 'app', 'CREATE SCHEMA app', 'DROP SCHEMA app')")
        assert db.scalar("SELECT deploy.up() ->> 'ok'") == "true"
        db.sql(f"SELECT deploy.register('2', 'e9', "
               f"format('CREATE TABLE app.%I (id int); INSERT INTO app.%I VALUES (1)', {table}, {table}), "
               f"format('DROP TABLE app.%I', {table}), reversibility => 'lossy')")
        assert db.scalar("SELECT deploy.up() ->> 'ok'") == "true"
        ok, archived = db.sql("SELECT r ->> 'ok', jsonb_array_length(r -> 'archived') FROM deploy.rollback() r")[0]
        assert (ok, archived) == ("true", 1)
        # deploy.archived keeps the exact name (a text column, not JSON); the archive table holds the row.
        exact, rows, length = db.sql(
            f"SELECT a.object_name = 'app.' || quote_ident({table}), a.row_count, octet_length(c.relname) "
            "FROM deploy.archived a JOIN pg_class c ON c.oid = to_regclass(a.archive_table)")[0]
        assert (exact, rows) == (True, 1) and length <= 63
        # The event's JSON carries U+FFFD where the bytes were not UTF-8.
        assert db.scalar("SELECT position(decode('efbfbd', 'hex') IN convert_to(details ->> 'object_name', %s)) > 0 "
                         "FROM deploy.events WHERE kind = 'data_archived'", (encoding,)) is True
        stats.add("bad_inputs")


@pytest.mark.parametrize("encoding", ["SQL_ASCII", "LATIN1"])
def test_non_utf8_database_migration_error_is_recorded_not_raised(encoding):
    with EncodedDatabase(encoding) as db:
        quiet(db)
        raise_it = f"DO $$BEGIN RAISE EXCEPTION '%', {LONG_E9 % repr(encoding)}; END$$"
        db.sql(f"SELECT deploy.register('1', 'fails', $m${raise_it}$m$)")
        ok, sqlstate = db.sql("SELECT r ->> 'ok', r -> 'failed' ->> 'sqlstate' FROM deploy.up() r")[0]
        assert (ok, sqlstate) == ("false", "P0001")
        assert db.scalar("SELECT state FROM deploy.deployments ORDER BY id DESC LIMIT 1") == "failed"
        # A failing down script with such a message: down() returns ok:false, execute_rollback() fails the marker.
        db.sql("SELECT deploy.unregister('1')")
        db.sql(f"SELECT deploy.register('2', 'bad_down', 'CREATE TABLE t (id int)', $m${raise_it}$m$)")
        assert db.scalar("SELECT deploy.up() ->> 'ok'") == "true"
        assert db.sql("SELECT r ->> 'ok', r -> 'failed' ->> 'sqlstate' FROM deploy.down() r")[0] == ("false", "P0001")
        marker = db.scalar("SELECT deploy.request_rollback('bad down')")
        assert db.sql("SELECT r ->> 'ok', r ->> 'state' FROM deploy.execute_rollback(%s) r", (marker,))[0] == \
            ("false", "failed")
        assert db.scalar("SELECT last_error ->> 'sqlstate' FROM deploy.rollback_markers WHERE id = %s",
                         (marker,)) == "P0001"
        stats.add("bad_inputs", 3)


def test_latin1_rollback_reason_is_22021_with_a_hint_not_xx000():
    """Where the engine still writes text into JSON with no replacement (a rollback's reason goes into the
    deployment's metadata), a non-UTF-8 byte is refused with 22021 and a hint, and nothing is written."""
    with EncodedDatabase("LATIN1") as db:
        quiet(db)
        db.sql("SELECT deploy.register('1', 'a', 'CREATE TABLE a (id int)', 'DROP TABLE a')")
        assert db.scalar("SELECT deploy.up() ->> 'ok'") == "true"
        before = db.scalar("SELECT count(*) FROM deploy.deployments")
        conn = db.connect()
        with conn.cursor() as cur:
            with pytest.raises(psycopg2.Error) as raised:
                cur.execute("SELECT deploy.rollback(reason => convert_from('\\x636166e9'::bytea, 'LATIN1'))")
        assert raised.value.pgcode == "22021"
        assert "UTF-8" in raised.value.diag.message_primary and raised.value.diag.message_hint
        assert db.scalar("SELECT count(*) FROM deploy.deployments") == before
        stats.add("bad_inputs")
