"""NOTIFY pg_deploy: every single event (deploy.log_event) sends one; the per-migration events a call writes in bulk
(deploy.log_events: migration_applied, migration_reverted) send one for the batch, carrying its last event and the
count. A listener that reads rows by id sees every event either way."""
import json
import select


def drain(conn, timeout=2.0):
    """The payloads of the notifications delivered to conn (a listener) within timeout, in order."""
    payloads = []
    wait = timeout
    while select.select([conn], [], [], wait) != ([], [], []):
        conn.poll()
        while conn.notifies:
            payloads.append(json.loads(conn.notifies.pop(0).payload))
        wait = 0.2  # after the first delivery, until the connection stays quiet
    return payloads


def test_a_deployment_notifies_once_per_event_and_once_per_batch(pg):
    for i in range(1, 4):
        pg.sql("SELECT deploy.register(%s, %s, %s, %s)",
               (str(i), f"m{i}", f"CREATE TABLE n{i} (id int)", f"DROP TABLE n{i}"))
    listener = pg.connect()
    listener.cursor().execute("LISTEN pg_deploy")

    assert pg.scalar("SELECT deploy.up() ->> 'ok'") == "true"
    notes = drain(listener)
    assert [n["kind"] for n in notes] == ["deployment_started", "migration_applied", "deployment_succeeded"]
    batch = notes[1]
    assert batch["count"] == 3 and batch["version"] == "3"
    # The batch's payload names its last event: the rows up to that id are the three migrations, in order.
    rows = pg.sql("SELECT version FROM deploy.events WHERE kind = 'migration_applied' AND id <= %s ORDER BY id",
                  (batch["id"],))
    assert [r[0] for r in rows] == ["1", "2", "3"]

    assert pg.scalar("SELECT deploy.rollback() ->> 'ok'") == "true"
    notes = drain(listener)
    reverted = [n for n in notes if n["kind"] == "migration_reverted"]
    assert len(reverted) == 1 and reverted[0]["count"] == 3 and reverted[0]["version"] == "1"
    rows = pg.sql("SELECT version FROM deploy.events WHERE kind = 'migration_reverted' ORDER BY id")
    assert [r[0] for r in rows] == ["3", "2", "1"]


def test_a_failed_batch_notifies_nothing_for_the_migrations_it_undid(pg):
    pg.sql("SELECT deploy.register('1', 'good', 'CREATE TABLE g1 (id int)', 'DROP TABLE g1')")
    pg.sql("SELECT deploy.register('2', 'bad', 'SELECT 1/0', 'SELECT 1')")
    listener = pg.connect()
    listener.cursor().execute("LISTEN pg_deploy")
    with pg.conn.cursor() as cur:
        cur.execute("SET client_min_messages = error")
        cur.execute("SELECT deploy.up() ->> 'state'")
        assert cur.fetchone()[0] == "failed"
    kinds = [n["kind"] for n in drain(listener)]
    assert "migration_applied" not in kinds
    assert kinds[-1] == "deployment_failed"
    assert pg.scalar("SELECT count(*) FROM deploy.events WHERE kind = 'migration_applied'") == 0
