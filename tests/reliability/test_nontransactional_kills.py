"""Kills during a non-transactional deploy driven by `pgdeploy up` (CREATE INDEX CONCURRENTLY at top level, one
checkpoint per statement).

At a seeded random moment either the server side goes (pg_terminate_backend of pgdeploy's session, found by its
application_name) or the client does (SIGKILL of the pgdeploy process, leaving its step 'running'). Then
`pgdeploy up` again must complete: every migration applied exactly once, both indexes present and VALID (an INVALID
index left by the interrupted concurrent build is dropped and rebuilt), every checkpoint done, validate clean.
"""
import json
import os
import signal
import subprocess
import time

from conftest import FreshDatabase, PGDEPLOY_BIN, run_pgdeploy, stats, trials, wait_until

FILES = {
    "0001_items.up.sql": "CREATE TABLE items (id int PRIMARY KEY, sku text);\n"
                         "INSERT INTO items SELECT g, 'sku-' || g FROM generate_series(1, 20000) g;\n",
    "0001_items.down.sql": "DROP TABLE items;\n",
    "0002_sku_index.up.sql": "-- pg_deploy: transaction=off\n"
                             "CREATE INDEX CONCURRENTLY items_sku_idx ON items (sku);\n"
                             "SELECT pg_sleep(0.3);\n"
                             "CREATE INDEX CONCURRENTLY items_sku_lower_idx ON items (lower(sku));\n"
                             "SELECT pg_sleep(0.3);\n",
    "0002_sku_index.down.sql": "DROP INDEX items_sku_idx;\nDROP INDEX items_sku_lower_idx;\n",
    "0003_after.up.sql": "ALTER TABLE items ADD COLUMN price int;\n",
    "0003_after.down.sql": "ALTER TABLE items DROP COLUMN price;\n",
}


def test_kill_during_nontransactional_up(rng, write_migrations):
    mdir = write_migrations(FILES)
    mid = 0
    for trial in range(trials(4, 30)):
        with FreshDatabase() as db:
            app = f"rel-victim-{trial}"
            proc = subprocess.Popen([PGDEPLOY_BIN, "up", "--dir", mdir, "--app-version", "r1", "--json", "-q",
                                     "--dsn", db.dsn + f" application_name={app}"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(0.05, 1.0))
            how = "terminate" if trial % 2 == 0 else "sigkill"
            if how == "terminate":
                db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (app,))
            else:
                proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
            stats.add("kills.nontransactional")
            finished = proc.returncode == 0
            mid += not finished
            print(f"trial {trial}: {how}, first run exit {proc.returncode}")
            assert proc.returncode in (0, 1, 3, -9), (proc.returncode, out, err)
            v = db.scalar("SELECT deploy.validate()")
            assert v["ok"], v
            # The dead client's backend finishes its statement and then goes: an operator retries after that.
            wait_until(lambda: db.scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                         (app,)) == 0, timeout=30, what="the dead client's session to end")
            # Resume. A step left 'running' by a dead client must not block it for long.
            code, out, err = run_pgdeploy("up", "--dir", mdir, "--app-version", "r1", "--json",
                                          "--dsn", db.dsn, timeout=120)
            assert code == 0, (out, err)
            assert [r[0] for r in db.sql("SELECT version FROM deploy.applied ORDER BY sort_key")] == \
                ["0001", "0002", "0003"]
            applied = dict(db.sql("SELECT version, count(*) FROM deploy.events WHERE kind = 'migration_applied' "
                                  "GROUP BY version"))
            reverted = db.scalar("SELECT count(*) FROM deploy.events WHERE kind = 'migration_reverted'")
            assert reverted == 0 and applied == {"0001": 1, "0002": 1, "0003": 1}, applied
            idx = dict(db.sql("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON "
                              "c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid WHERE t.relname = 'items' "
                              "AND c.relname <> 'items_pkey'"))
            assert idx == {"items_sku_idx": True, "items_sku_lower_idx": True}, idx
            assert db.scalar("SELECT count(*) FROM deploy.checkpoints WHERE state <> 'done'") == 0, \
                db.sql("SELECT version, step, state, holder FROM deploy.checkpoints ORDER BY id")
            assert db.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'items' "
                             "AND column_name = 'price'") == 1
            assert db.scalar("SELECT deploy.validate()")["ok"]
    assert mid > 0, "no kill landed before the deploy finished"


def test_resume_after_a_dead_client_whose_concurrent_index_was_built(pg, write_migrations):
    """Regression (found by test_kill_during_nontransactional_up): a client claims a CREATE INDEX CONCURRENTLY step
    (deploy.next_step marks it running) and dies; its backend finishes the build, so the index exists and is VALID,
    but the step was never reported done. The resume must see that the step's work is there (or rebuild it) and
    complete, not fail forever with 42P07 "relation already exists"."""
    mdir = write_migrations({
        "0001_items.up.sql": "CREATE TABLE items (id int PRIMARY KEY, sku text);\n"
                             "INSERT INTO items SELECT g, g::text FROM generate_series(1, 100) g;\n",
        "0001_items.down.sql": "DROP TABLE items;\n",
        "0002_idx.up.sql": "-- pg_deploy: transaction=off\nCREATE INDEX CONCURRENTLY items_sku_idx ON items (sku);\n",
        "0002_idx.down.sql": "DROP INDEX items_sku_idx;\n",
    })
    code, out, err = run_pgdeploy("load", mdir, "--dsn", pg.dsn)
    assert code == 0, err
    res = pg.scalar("SELECT deploy.up(app_version => 'r1')")
    assert res["awaiting_nontransactional"]["version"] == "0002", res
    step = pg.scalar("SELECT deploy.next_step(NULL, 'dead-client')")
    assert "CREATE INDEX CONCURRENTLY" in step["statement"], step
    pg.sql(step["statement"])            # the dead client's backend completed the build; nobody reported it
    code, out, err = run_pgdeploy("up", "--dir", mdir, "--app-version", "r1", "--dsn", pg.dsn)
    stats.add("kills.nontransactional")
    assert code == 0, err
    assert [r[0] for r in pg.sql("SELECT version FROM deploy.applied ORDER BY sort_key")] == ["0001", "0002"]
    assert pg.scalar("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                     "WHERE c.relname = 'items_sku_idx'") is True
    assert pg.scalar("SELECT count(*) FROM deploy.checkpoints WHERE state <> 'done'") == 0
    assert pg.scalar("SELECT deploy.validate()")["ok"]


REVERT_FILES = dict(FILES, **{
    "0002_sku_index.down.sql": "-- pg_deploy: transaction=off\n"
                               "DROP INDEX CONCURRENTLY items_sku_idx;\n"
                               "SELECT pg_sleep(0.3);\n"
                               "DROP INDEX CONCURRENTLY items_sku_lower_idx;\n"
                               "SELECT pg_sleep(0.3);\n",
})


def test_kill_during_nontransactional_rollback(rng, write_migrations):
    """The same kills during `pgdeploy rollback` of a release whose down script drops its indexes concurrently
    (statement by statement at top level, one checkpoint each). `pgdeploy rollback` of that deployment again must
    finish: 0002 and 0003 reverted exactly once, both indexes gone (an INVALID one left by an interrupted drop is
    dropped by the retried step, a drop the dead client's backend finished is recognised), every checkpoint done,
    nothing running, validate clean."""
    mdir = write_migrations(REVERT_FILES)
    mid = 0
    for trial in range(trials(4, 30)):
        with FreshDatabase() as db:
            code, out, err = run_pgdeploy("up", "--dir", mdir, "--target", "0001", "--app-version", "r1", "--dsn",
                                          db.dsn)
            assert code == 0, err
            code, out, err = run_pgdeploy("up", "--dir", mdir, "--app-version", "r2", "--json", "--dsn", db.dsn)
            assert code == 0, err
            r2 = json.loads(out)["deployment_id"]
            app = f"rel-revert-victim-{trial}"
            proc = subprocess.Popen([PGDEPLOY_BIN, "rollback", "--deployment", str(r2), "--json", "-q",
                                     "--dsn", db.dsn + f" application_name={app}"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(0.05, 1.0))
            how = "terminate" if trial % 2 == 0 else "sigkill"
            if how == "terminate":
                db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (app,))
            else:
                proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
            stats.add("kills.nontransactional_revert")
            finished = proc.returncode == 0
            mid += not finished
            print(f"trial {trial}: {how}, first run exit {proc.returncode}")
            assert proc.returncode in (0, 1, 3, -9), (proc.returncode, out, err)
            assert db.scalar("SELECT deploy.validate()")["ok"]
            wait_until(lambda: db.scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                         (app,)) == 0, timeout=30, what="the dead client's session to end")
            done_before = db.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (r2,)) == "rolled_back"
            code, out, err = run_pgdeploy("rollback", "--deployment", str(r2), "--json", "--dsn", db.dsn,
                                          timeout=120)
            # Rolled back already (the kill came after the end): refused as already rolled back (exit 7).
            assert code == (7 if done_before else 0), (out, err)
            assert db.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (r2,)) == "rolled_back"
            assert [r[0] for r in db.sql("SELECT version FROM deploy.applied ORDER BY sort_key")] == ["0001"]
            reverted = dict(db.sql("SELECT version, count(*) FROM deploy.events WHERE kind = 'migration_reverted' "
                                   "GROUP BY version"))
            assert reverted == {"0002": 1, "0003": 1}, reverted
            idx = db.sql("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                         "JOIN pg_class t ON t.oid = i.indrelid WHERE t.relname = 'items' AND c.relname <> 'items_pkey'")
            assert idx == [], idx
            assert db.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'items' "
                             "AND column_name = 'price'") == 0
            assert db.scalar("SELECT count(*) FROM deploy.checkpoints WHERE state <> 'done'") == 0, \
                db.sql("SELECT deployment_id, version, step, state, holder FROM deploy.checkpoints ORDER BY id")
            assert db.scalar("SELECT count(*) FROM deploy.deployments WHERE state = 'running'") == 0
            assert db.scalar("SELECT deploy.validate()")["ok"]
    assert mid > 0, "no kill landed before the rollback finished"
