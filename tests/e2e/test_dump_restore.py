"""pg_dump keeps the ledger: a database dumped and restored into a fresh one has the same migrations, applied rows,
deployments, markers and events, the identity sequences continue after the restored ids, and the restored ledger is
valid and usable (rollback from the restored down SQL works)."""
import subprocess
import uuid

import psycopg2

from conftest import PgDatabase, admin_connect


def test_dump_and_restore_keeps_the_ledger(pg, tmp_path):
    pg.sql("CREATE SCHEMA app")
    pg.sql("SELECT deploy.register('1', 'users', 'CREATE TABLE app.users (id int primary key)', 'DROP TABLE app.users')")
    pg.sql("SELECT deploy.register('2', 'orders', 'CREATE TABLE app.orders (id int primary key)', "
           "'DROP TABLE app.orders')")
    assert pg.scalar("SELECT deploy.up(app_version => 'r1') ->> 'ok'") == "true"
    pg.sql("SELECT deploy.register('3', 'items', 'CREATE TABLE app.items (id int)', 'DROP TABLE app.items')")
    assert pg.scalar("SELECT deploy.up(app_version => 'r2') ->> 'ok'") == "true"
    pg.sql("SELECT deploy.request_rollback('kept through a dump')")
    before = pg.snapshot()
    status_before = pg.scalar("SELECT deploy.status() -> 'applied_count'")
    assert status_before == 3

    dump = tmp_path / "ledger.dump"
    subprocess.run(["pg_dump", "-Fc", "-f", str(dump), "-d", pg.dsn], check=True)

    name = "pgdeploy_restore_" + uuid.uuid4().hex[:8]
    admin = admin_connect()
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    restored = PgDatabase(name)
    try:
        subprocess.run(["pg_restore", "--exit-on-error", "-d", restored.dsn, str(dump)], check=True)
        after = restored.snapshot()
        for key in ("migrations", "applied", "deployments", "markers", "events", "tables"):
            assert after[key] == before[key], key
        assert restored.scalar("SELECT deploy.status() -> 'applied_count'") == 3
        # The counters are not dumped: the restore's COPY into deploy.applied counted the rows through the trigger,
        # and nothing claims the out-of-order check was done on the restored ledger.
        assert restored.sql("SELECT applied_count, order_checked IS NULL FROM deploy.ledger_stats") == [(3, True)]
        assert restored.scalar("SELECT deploy.validate() ->> 'ok'") == "true"
        # Identity sequences continue after the restored rows instead of colliding with them.
        next_event = restored.scalar("SELECT deploy.log_event('restored_check')")
        assert next_event > max(r[0] for r in restored.sql("SELECT id FROM deploy.events WHERE kind <> 'restored_check'"))
        # The restored down SQL is enough to execute the open marker.
        marker = restored.scalar("SELECT id FROM deploy.rollback_markers WHERE state = 'pending'")
        result = restored.scalar("SELECT deploy.execute_rollback(%s, holder => 'restore-test')", (marker,))
        assert result["ok"] is True
        assert restored.scalar("SELECT deploy.current_version()") == "2"
        assert restored.scalar("SELECT to_regclass('app.items')") is None
        assert restored.scalar("SELECT deploy.status() -> 'applied_count'") == 2
    finally:
        restored.close()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
