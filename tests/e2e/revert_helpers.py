"""Helpers for the concurrent-revert suites (test_cli_nontransactional_revert.py, test_watch_nontransactional_revert.py):
a release whose down script holds DROP INDEX CONCURRENTLY, the checks that the database is back on the release
before it, and a DROP INDEX CONCURRENTLY made to wait by an old transaction (to kill its client in the middle).

- ``deploy_two_releases(pg, write_migrations)``: v1 = 0001 (table items), v2 = 0002 (an index; its down script says
  `-- pg_deploy: transaction=off` and drops it concurrently) + 0003 (table prices). Returns (dir, v2's deployment).
- ``assert_back_on_v1(pg, v2)``: ledger and schema are v1's, every migration reverted exactly once, nothing running.
- ``start_blocked_drop(pg, argv)``: starts `pgdeploy ARGV` while a transaction holds items; returns (process, the
  blocking connection, the pid of the backend whose drop waits).
"""
import json
import subprocess
import time

from conftest import PGDEPLOY_BIN, run_pgdeploy

FILES = {
    "0001_items.up.sql": "CREATE TABLE items (id int PRIMARY KEY, sku text);\n"
                         "INSERT INTO items SELECT g, 'sku-' || g FROM generate_series(1, 1000) g;\n",
    "0001_items.down.sql": "DROP TABLE items;\n",
    "0002_sku_index.up.sql": "CREATE INDEX items_sku_idx ON items (sku);\n",
    "0002_sku_index.down.sql": "-- pg_deploy: transaction=off\n"
                               "-- The index is used by live queries: drop it without blocking them.\n"
                               "DROP INDEX CONCURRENTLY items_sku_idx;\n",
    # Its own table, so that its revert does not wait for the transaction the kill tests hold open on items.
    "0003_price.up.sql": "CREATE TABLE prices (item int, price int);\n",
    "0003_price.down.sql": "DROP TABLE prices;\n",
}


def deploy_two_releases(pg, write_migrations):
    """v1 = 0001, v2 = 0002 + 0003 (the release to revert). Returns (directory, v2's deployment id)."""
    d = write_migrations(FILES)
    assert run_pgdeploy("up", "--dir", d, "--target", "0001", "--app-version", "v1", "--dsn", pg.dsn)[0] == 0
    code, out, err = run_pgdeploy("up", "--dir", d, "--app-version", "v2", "--json", "--dsn", pg.dsn)
    assert code == 0, err
    return d, json.loads(out)["deployment_id"]


def index_exists(pg):
    return pg.scalar("SELECT to_regclass('public.items_sku_idx') IS NOT NULL")


def assert_back_on_v1(pg, v2):
    """The ledger and the schema are v1's: 0002 and 0003 reverted exactly once, v2 rolled back."""
    assert pg.sql("SELECT version FROM deploy.applied ORDER BY sort_key") == [("0001",)]
    assert not index_exists(pg)
    assert pg.scalar("SELECT to_regclass('public.prices') IS NULL") and pg.scalar("SELECT to_regclass('public.items')")
    assert pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (v2,)) == "rolled_back"
    reverted = dict(pg.sql("SELECT version, count(*) FROM deploy.events WHERE kind = 'migration_reverted' "
                           "GROUP BY version"))
    assert reverted == {"0002": 1, "0003": 1}, reverted
    assert pg.scalar("SELECT count(*) FROM deploy.checkpoints WHERE state <> 'done'") == 0
    assert pg.scalar("SELECT count(*) FROM deploy.deployments WHERE state = 'running'") == 0
    assert pg.scalar("SELECT deploy.validate()")["ok"]


def start_blocked_drop(pg, command):
    """Holds a transaction on `items` open so that DROP INDEX CONCURRENTLY must wait, starts `pgdeploy COMMAND`, and
    returns (process, the blocking connection, the pid of the backend whose drop waits)."""
    blocker = pg.connect(autocommit=False)
    blocker.cursor().execute("SELECT count(*) FROM items")   # an old transaction that uses the table
    proc = subprocess.Popen([PGDEPLOY_BIN, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    waiting = None
    for _ in range(300):
        waiting = pg.scalar("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                            "AND query ILIKE '%%DROP INDEX CONCURRENTLY%%' AND wait_event_type = 'Lock'", (pg.name,))
        if waiting or proc.poll() is not None:
            break
        time.sleep(0.05)
    if not waiting:
        proc.kill()
        out, err = proc.communicate()
        blocker.rollback()
        blocker.close()
        raise AssertionError(("pgdeploy never reached the DROP INDEX CONCURRENTLY step", out, err))
    return proc, blocker, waiting


def backend_gone(pg, pid):
    return pg.scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 0
