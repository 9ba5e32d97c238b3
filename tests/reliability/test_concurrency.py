"""Concurrency: many deployers at once never apply a migration twice.

Each round registers a fresh batch of slow migrations, then releases 16 deployers at the same instant (a barrier):
psycopg2 sessions calling deploy.up() in threads, or `pgdeploy up` processes. Half of them wait for the deploy lock
only briefly (so they meet the lock error), half wait long enough to queue behind the winner (so they meet a no-op).
Every outcome must be one of: applied the whole batch (exactly one winner per round), nothing to do, or the lock
error (55P03 / exit 4) naming the holder. Afterwards every migration is applied exactly once: one deploy.applied row,
one migration_applied event, its table exists.
"""
import json
import subprocess
import threading

import psycopg2

from conftest import LONG, PGDEPLOY_BIN, assert_consistent, slow_migrations, stats, table_for, trials

SESSIONS = 16


def _batch(round_no, size=3):
    return [f"{round_no:03d}.{i}" for i in range(1, size + 1)]


def _check_round(pg, versions, outcomes):
    winners = [o for o in outcomes if o[0] == "applied"]
    assert len(winners) == 1, f"expected exactly one winner, got {outcomes}"
    assert sorted(winners[0][1]) == sorted(versions), winners
    for kind, detail in outcomes:
        assert kind in ("applied", "noop", "locked"), (kind, detail)
    rows = pg.sql("SELECT version, count(*) FROM deploy.events WHERE kind = 'migration_applied' "
                  "AND version = ANY(%s) GROUP BY version", (versions,))
    assert dict(rows) == {v: 1 for v in versions}
    assert pg.scalar("SELECT count(*) FROM deploy.applied WHERE version = ANY(%s)", (versions,)) == len(versions)
    # One deployment per round wrote something; the no-ops wrote nothing.
    assert pg.scalar("SELECT count(DISTINCT deployment_id) FROM deploy.applied WHERE version = ANY(%s)",
                     (versions,)) == 1


def test_sixteen_sessions_call_up_at_once(pg, rng):
    rounds = trials(3, 50)
    all_versions = []
    seen = set()
    for r in range(1, rounds + 1):
        versions = _batch(r)
        slow_migrations(pg, versions, up_sleep=0.15)
        all_versions += versions
        conns = []
        for i in range(SESSIONS):
            c = pg.connect()
            with c.cursor() as cur:
                cur.execute("SET client_min_messages = error")
                # Short waits meet the lock error; long ones queue and then find nothing to do.
                cur.execute("SET pg_deploy.lock_wait = %s", ("50ms" if i % 2 else "20s",))
                cur.execute("SET application_name = %s", (f"rel-session-{i}",))
            conns.append(c)
        barrier = threading.Barrier(SESSIONS)
        outcomes = [None] * SESSIONS

        def worker(i):
            barrier.wait()
            try:
                with conns[i].cursor() as cur:
                    cur.execute("SELECT deploy.up()")
                    res = cur.fetchone()[0]
                if res["applied"]:
                    assert res["ok"] and res["state"] == "succeeded", res
                    outcomes[i] = ("applied", [a["version"] for a in res["applied"]])
                else:
                    assert res["ok"] and res["state"] == "nothing_to_do" and res["deployment_id"] is None, res
                    outcomes[i] = ("noop", res)
            except psycopg2.Error as e:
                if e.pgcode == "55P03":
                    assert "pid" in str(e) or "held" in str(e), str(e)
                    outcomes[i] = ("locked", e.pgerror)
                else:
                    outcomes[i] = ("error", f"{e.pgcode}: {e}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(SESSIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        _check_round(pg, versions, outcomes)
        seen |= {o[0] for o in outcomes}
        stats.add("concurrency.sql_rounds")
        stats.add("concurrency.sql_sessions", SESSIONS)
        stats.add("concurrency.lock_errors", sum(1 for o in outcomes if o[0] == "locked"))
        for c in conns:
            c.close()
    # Both kinds of loser were met: the lock error (short waits) and the no-op (waits that outlived the winner).
    assert seen == {"applied", "noop", "locked"}, seen
    assert_consistent(pg, all_versions)
    # No duplicate ledger rows anywhere: deployments that applied nothing would be noise.
    assert pg.scalar("SELECT count(*) FROM deploy.deployments") == rounds
    assert pg.scalar("SELECT count(*) FROM deploy.events WHERE kind = 'deployment_started'") == rounds


def test_sixteen_pgdeploy_up_processes_at_once(pg, write_migrations, tmp_path):
    rounds = trials(3, 50)
    all_versions = []
    files = {}
    for r in range(1, rounds + 1):
        versions = _batch(r, 2)
        all_versions += versions
        for v in versions:
            files[f"{v}_m{v.replace('.', '_')}.up.sql"] = \
                f"CREATE SCHEMA IF NOT EXISTS app;\nCREATE TABLE app.{table_for(v)} (id int);\nSELECT pg_sleep(0.2);\n"
            files[f"{v}_m{v.replace('.', '_')}.down.sql"] = f"DROP TABLE app.{table_for(v)};\n"
        mdir = write_migrations(files, subdir=f"round{r}")
        procs = []
        for i in range(SESSIONS):
            lock_wait = "100ms" if i % 2 else "30s"
            procs.append(subprocess.Popen(
                [PGDEPLOY_BIN, "up", "--dsn", pg.dsn, "--dir", mdir, "--app-version", f"rel-{r}",
                 "--lock-wait", lock_wait, "--json", "-q"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outcomes = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            if p.returncode == 0:
                doc = json.loads(out)
                assert doc["schema_version"] == 1, doc
                applied = [a["version"] for a in (doc.get("applied") or [])]
                if applied:
                    outcomes.append(("applied", applied))
                else:
                    outcomes.append(("noop", doc))
            elif p.returncode == 4:
                outcomes.append(("locked", err))
            else:
                outcomes.append(("error", f"exit {p.returncode}: {out} {err}"))
        # `pgdeploy up --app-version` records a deployment even when nothing is pending only if the contract says
        # so; what matters here: the batch was applied by exactly one process, and exactly once.
        _check_round(pg, versions, outcomes)
        stats.add("concurrency.cli_rounds")
        stats.add("concurrency.cli_processes", SESSIONS)
        stats.add("concurrency.lock_errors", sum(1 for o in outcomes if o[0] == "locked"))
    pg.sql("SELECT 1")
    assert_consistent(pg, all_versions)
