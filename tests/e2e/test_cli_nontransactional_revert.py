"""Concurrent reverts: a down script with DROP INDEX CONCURRENTLY (declared with `-- pg_deploy: transaction=off` in the
.down.sql file) runs statement by statement at top level, one checkpoint per statement, driven by `pgdeploy rollback`,
`pgdeploy down` and `pgdeploy markers execute` (`pgdeploy once` and the watcher: test_watch_nontransactional_revert.py).
A pgdeploy killed while its DROP INDEX CONCURRENTLY waits for an old transaction is resumed by running the command
again: the drop finished by the dead client's backend is recognised, an interrupted one is finished."""
import json
import signal

import pytest

from conftest import run_pgdeploy, wait_for
from revert_helpers import assert_back_on_v1, backend_gone, deploy_two_releases, start_blocked_drop
from watch_helpers import events

def test_rollback_runs_the_down_script_at_top_level(pg, write_migrations):
    _, v2 = deploy_two_releases(pg, write_migrations)
    assert pg.sql("SELECT version, down_transactional FROM deploy.applied ORDER BY sort_key") == \
        [("0001", True), ("0002", False), ("0003", True)]
    code, out, err = run_pgdeploy("rollback", "--reason", "bad release", "--json", "--dsn", pg.dsn)
    assert code == 0, (out, err)
    doc = json.loads(out)
    assert doc["ok"] is True and doc["state"] == "succeeded" and doc["resumed"] is True
    assert doc["reverts"] == v2 and doc["version_after"] == "0001"
    assert [r["version"] for r in doc["reverted"]] == ["0003", "0002"]
    assert [(s["version"], s["step"], s["ok"]) for s in doc["steps"]] == [("0002", 1, True)]
    assert "the down SQL of 0002_sku_index runs at top level" in err
    assert "0002_sku_index step 1 ... ok" in err
    assert_back_on_v1(pg, v2)
    rollback_id = doc["deployment_id"]
    assert pg.sql("SELECT version, step, state, holder LIKE 'pgdeploy@%%' FROM deploy.checkpoints "
                  "WHERE deployment_id = %s", (rollback_id,)) == [("0002", 1, "done", True)]
    assert pg.sql("SELECT version FROM deploy.events WHERE kind = 'migration_reverted' AND deployment_id = %s "
                  "ORDER BY id", (rollback_id,)) == [("0003",), ("0002",)]


def test_down_runs_the_down_script_at_top_level_and_says_so(pg, write_migrations):
    _, v2 = deploy_two_releases(pg, write_migrations)
    before = pg.snapshot()
    code, out, err = run_pgdeploy("down", "--steps", "2", "--dry-run", "--dsn", pg.dsn)
    assert code == 0, (out, err)
    assert "dry run: would revert 1 migration: 0003 -> 0002" in out
    assert "the down SQL of 0002 sku_index runs at top level and was not rehearsed" in out
    assert pg.snapshot() == before
    code, out, err = run_pgdeploy("down", "--steps", "2", "--dsn", pg.dsn)
    assert code == 0, (out, err)
    assert "reverted 2 migrations: 0003 -> 0001" in out, out
    assert "0002_sku_index step 1 ... ok" in err
    assert_back_on_v1(pg, v2)


@pytest.mark.parametrize("backend", ["finishes_the_drop", "is_terminated"])
def test_killed_rollback_resumes_with_the_next_rollback(pg, write_migrations, backend):
    """SIGKILL `pgdeploy rollback` while its DROP INDEX CONCURRENTLY waits for an old transaction. Its backend either
    finishes the drop once the transaction ends (the step's work is done but was never reported), or is terminated
    (the drop is interrupted; the index is left INVALID). Either way `pgdeploy rollback` again resumes the same
    rollback deployment and finishes it: index gone, every migration reverted exactly once."""
    _, v2 = deploy_two_releases(pg, write_migrations)
    proc, blocker, waiting = start_blocked_drop(pg, ["rollback", "--json", "--dsn", pg.dsn])
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rollback_id = pg.scalar("SELECT id FROM deploy.deployments WHERE kind = 'rollback'")
        assert pg.scalar("SELECT state FROM deploy.deployments WHERE id = %s", (rollback_id,)) == "running"
        assert pg.scalar("SELECT state FROM deploy.checkpoints WHERE deployment_id = %s", (rollback_id,)) == "running"
        assert pg.sql("SELECT version FROM deploy.applied ORDER BY sort_key") == [("0001",), ("0002",)]
        if backend == "is_terminated":
            assert pg.scalar("SELECT pg_terminate_backend(%s)", (waiting,)) is True
            wait_for(lambda: backend_gone(pg, waiting), what="the terminated backend to go")
            assert pg.scalar("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = 'items_sku_idx'::regclass") \
                is False   # an interrupted concurrent drop leaves the index INVALID
    finally:
        blocker.rollback()
        blocker.close()
    # The dead client's backend finishes its statement and then goes (it holds the session deploy lock until then).
    wait_for(lambda: backend_gone(pg, waiting), what="the dead client's backend to end")

    code, out, err = run_pgdeploy("rollback", "--json", "--dsn", pg.dsn)
    assert code == 0, (out, err)
    doc = json.loads(out)
    assert doc["ok"] is True and doc["deployment_id"] == rollback_id and doc["resumed"] is True
    assert [r["version"] for r in doc["reverted"]] == ["0003", "0002"]
    assert_back_on_v1(pg, v2)
    assert pg.scalar("SELECT attempts FROM deploy.checkpoints WHERE deployment_id = %s", (rollback_id,)) == 2
    found = [e[3] for e in events(pg, "checkpoint_done", rollback_id)]
    if backend == "finishes_the_drop":
        assert doc.get("steps") is None and found[0].get("found_dropped") is True, found
    else:
        assert [s["ok"] for s in doc["steps"]] == [True] and "found_dropped" not in found[0], found


def test_an_up_while_the_revert_waits_is_refused_with_how_to_finish_it(pg, write_migrations):
    d, v2 = deploy_two_releases(pg, write_migrations)
    result = pg.scalar("SELECT deploy.rollback()")   # from psql: stops at the step, nobody runs it
    assert result["state"] == "running" and result["awaiting_nontransactional"]["version"] == "0002"
    code, out, err = run_pgdeploy("up", "--dir", d, "--json", "--dsn", pg.dsn)
    assert code == 7, (out, err)   # 55000, as every refusal of that kind
    error = json.loads(out)["error"]
    assert error["sqlstate"] == "55000" and "rollback deployment" in error["message"]
    assert "pgdeploy rollback" in error["hint"]
    code, out, err = run_pgdeploy("rollback", "--dsn", pg.dsn)
    assert code == 0, (out, err)
    assert_back_on_v1(pg, v2)


def test_markers_execute_drives_the_steps(pg, write_migrations):
    _, v2 = deploy_two_releases(pg, write_migrations)
    marker = pg.scalar("SELECT deploy.request_rollback('by hand', %s)", (v2,))
    code, out, err = run_pgdeploy("markers", "execute", str(marker), "--json", "--dsn", pg.dsn)
    assert code == 0, (out, err)
    doc = json.loads(out)
    assert doc["state"] == "done" and doc["resolution"] == "rolled_back"
    assert [s["version"] for s in doc["steps"]] == ["0002"]
    assert_back_on_v1(pg, v2)
