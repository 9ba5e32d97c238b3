-- markers: request, claim with a lease, execute (idempotent), fail, needs_attention, resolve.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
\set SHOW_CONTEXT never
CREATE SCHEMA app;

SELECT deploy.register('1', 't1', 'CREATE TABLE app.t1 (id int)', 'DROP TABLE app.t1');
SELECT (deploy.up(app_version => 'rel-1')) ->> 'deployment_id' AS rel1 \gset
SELECT deploy.register('2', 't2', 'CREATE TABLE app.t2 (id int)', 'DROP TABLE app.t2');
SELECT (deploy.up(app_version => 'rel-2')) ->> 'deployment_id' AS rel2 \gset
-- A compact view of the markers for this file.
CREATE VIEW marker_view AS
SELECT id, deployment_id, target_version, reason, state, holder, attempts, last_error->>'sqlstate' AS last_sqlstate,
       resolution, details
FROM deploy.rollback_markers ORDER BY id;

-- request_rollback: bad arguments, each leaving no marker and no event.
SELECT deploy.request_rollback(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.request_rollback('   ');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.request_rollback('bad', details => '[1, 2]');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.request_rollback('bad', deployment_id => 999);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS markers, (SELECT count(*) FROM deploy.events WHERE kind LIKE 'marker%') AS marker_events
FROM deploy.rollback_markers;

-- The default target is the newest up deployment with something applied (rel-2); asking twice returns the
-- same open marker and writes one event.
SELECT deploy.request_rollback('health check failed', details => '{"check": "http"}') AS m1 \gset
SELECT :m1 AS m1, deploy.request_rollback('still failing') = :m1 AS same_marker;
SELECT deployment_id = :rel2 AS targets_rel2, target_version, reason, state, attempts, details FROM marker_view;
SELECT count(*) AS marker_requested_events FROM deploy.events WHERE kind = 'marker_requested';
SELECT jsonb_path_query_array(deploy.status(), '$.open_markers[*].state') AS open_markers;

-- claim_marker: bad arguments.
SELECT * FROM deploy.claim_marker(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM deploy.claim_marker('w', lease => '0 s');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM deploy.claim_marker('w', lease => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM deploy.claim_marker('w', marker_id => 999);
\echo :LAST_ERROR_SQLSTATE

-- watcher-a claims it; watcher-b finds nothing to claim, and cannot take that marker by id while the lease lives.
SELECT id, state, holder, attempts, lease_until > now() + interval '4 min' AS five_minute_lease
FROM deploy.claim_marker('watcher-a');
SELECT count(*) AS claimed_by_b FROM deploy.claim_marker('watcher-b');
-- (The lease's end is in each error's DETAIL; terse output hides it here because it moves with the clock.)
\set VERBOSITY terse
SELECT * FROM deploy.claim_marker('watcher-b', marker_id => :m1);
\echo :LAST_ERROR_SQLSTATE
-- Nor execute it, nor renew its lease, nor resolve it.
SELECT deploy.execute_rollback(:m1, 'watcher-b');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.renew_lease(:m1, 'watcher-b');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.resolve_marker(:m1, 'abandoned');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT state, holder, attempts FROM marker_view;
-- The holder renews; re-claiming its own marker renews too, without counting an attempt.
SELECT deploy.renew_lease(:m1, 'watcher-a', '10 min') > now() + interval '9 min' AS renewed;
SELECT id, holder, attempts FROM deploy.claim_marker('watcher-a', marker_id => :m1);

-- The revert fails (a view depends on the table): the marker records the error and becomes failed (claimable
-- again); nothing is rolled back, and the failure persists although the call returned normally.
CREATE VIEW app.v2 AS SELECT * FROM app.t2;
SET pg_deploy.max_rollback_attempts = 2;
SELECT r->'ok' AS ok, r->'state' AS state, r->'attempts' AS attempts, r->'error'->'sqlstate' AS sqlstate
FROM deploy.execute_rollback(:m1, 'watcher-a') r;
SELECT state, holder, attempts, last_sqlstate FROM marker_view;
SELECT deploy.current_version(), to_regclass('app.t2') IS NOT NULL AS t2_still_there;
-- Second attempt (psql, no holder: executing claims it) reaches max_rollback_attempts: needs_attention.
SELECT r->'ok' AS ok, r->'state' AS state, r->'attempts' AS attempts FROM deploy.execute_rollback(:m1) r;
SELECT state, attempts, last_sqlstate FROM marker_view;
-- A marker that needs attention is neither claimed nor executed again, until resolved.
SELECT count(*) AS claimable FROM deploy.claim_marker('watcher-a');
SELECT deploy.execute_rollback(:m1);
\echo :LAST_ERROR_SQLSTATE
SELECT jsonb_path_query_array(deploy.status(), '$.open_markers[*].state') AS open_markers;

-- resolve_marker: bad arguments, then closure by hand.
SELECT deploy.resolve_marker(:m1, 'maybe');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.resolve_marker(:m1, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.resolve_marker(999, 'done');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.resolve_marker(:m1, 'abandoned', 'a report view blocks the revert; kept rel-2');
SELECT state, resolution, details->>'resolution_note' AS note, details->>'resolved_from' AS resolved_from
FROM marker_view;
SELECT deploy.resolve_marker(:m1, 'done');
\echo :LAST_ERROR_SQLSTATE
-- Executing a done marker is a no-op that says so.
SELECT r->'ok' AS ok, r->'already_done' AS already_done, r->'state' AS state FROM deploy.execute_rollback(:m1) r;
SELECT deploy.current_version();

-- With the cause fixed, a new request executes: rel-2 is reverted through deploy.rollback().
DROP VIEW app.v2;
SELECT deploy.request_rollback('retry after dropping the view', :rel2) AS m2 \gset
SELECT r->'ok' AS ok, r->'state' AS state, r->'resolution' AS resolution, r->'rollback'->'ok' AS rollback_ok
FROM deploy.execute_rollback(:m2, 'watcher-a') r;
SELECT deploy.current_version(), to_regclass('app.t2') IS NULL AS t2_gone;
SELECT state FROM deploy.deployments WHERE id = :rel2;
-- Twice is a no-op; requesting a rollback of a rolled-back deployment is refused.
SELECT r->'ok' AS ok, r->'already_done' AS already_done FROM deploy.execute_rollback(:m2) r;
SELECT deploy.request_rollback('again', :rel2);
\echo :LAST_ERROR_SQLSTATE

-- A marker whose deployment was rolled back by someone else meanwhile is closed as done without reverting twice.
SELECT (deploy.up(app_version => 'rel-2b')) ->> 'deployment_id' AS rel2b \gset
SELECT deploy.request_rollback('bad again', :rel2b) AS m3 \gset
SELECT (deploy.rollback(deployment_id => :rel2b)) ->> 'ok' AS manual_rollback_ok;
SELECT r->'ok' AS ok, r->'already_rolled_back' AS already_rolled_back, r->'resolution' AS resolution
FROM deploy.execute_rollback(:m3) r;
-- Migration 2 was reverted twice in all: rel-2's revert above and the manual one; none by the marker.
SELECT count(*) AS reverted_events_for_2 FROM deploy.events WHERE kind = 'migration_reverted' AND version = '2';

-- An expired lease is taken over by another claimant (a watcher that died mid-rollback).
SELECT (deploy.up(app_version => 'rel-2c')) ->> 'deployment_id' AS rel2c \gset
SELECT deploy.request_rollback('bad third time', :rel2c) AS m4 \gset
SELECT holder, attempts FROM deploy.claim_marker('watcher-a', lease => '1 millisecond');
SELECT pg_sleep(0.05);
SELECT holder, attempts FROM deploy.claim_marker('watcher-b');
SELECT details->>'previous_holder' AS previous_holder, details->>'previous_state' AS previous_state
FROM deploy.events WHERE kind = 'marker_claimed' AND marker_id = :m4 ORDER BY id DESC LIMIT 1;
-- The old holder has lost it.
SELECT deploy.renew_lease(:m4, 'watcher-a');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY terse
SELECT deploy.execute_rollback(:m4, 'watcher-a');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT r->'ok' AS ok, r->'attempts' AS attempts FROM deploy.execute_rollback(:m4, 'watcher-b') r;

-- A watcher killed in the middle of a revert: its claim was committed, the revert's transaction dies with the
-- session, so nothing is half-reverted; the marker stays in_progress until its lease expires, then another watcher
-- takes it over and finishes (attempts count both).
SELECT deploy.register('3', 't3', 'CREATE TABLE app.t3 (id int)',
    $$SELECT pg_sleep(CASE WHEN current_setting('application_name') = 'regress_killed' THEN 60 ELSE 0 END);
      DROP TABLE app.t3$$);
SELECT (deploy.up(app_version => 'rel-3')) ->> 'deployment_id' AS rel3 \gset
SELECT deploy.request_rollback('killed mid-revert', :rel3) AS mk \gset
SELECT holder, attempts FROM deploy.claim_marker('watcher-k', lease => '1 second', marker_id => :mk);
CREATE EXTENSION IF NOT EXISTS dblink;
SELECT dblink_connect('killed', format('host=%s port=%s dbname=%s application_name=regress_killed',
                      split_part(current_setting('unix_socket_directories'), ',', 1), current_setting('port'),
                      current_database()));
SELECT dblink_send_query('killed', format('SELECT deploy.execute_rollback(%s, %L)', :mk, 'watcher-k'));
DO $$
BEGIN
    FOR i IN 1..600 LOOP   -- wait until the revert sleeps inside the down script
        EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity
                          WHERE application_name = 'regress_killed' AND wait_event = 'PgSleep');
        PERFORM pg_sleep(0.1);
        PERFORM pg_stat_clear_snapshot();
    END LOOP;
END
$$;
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'regress_killed';
SELECT dblink_disconnect('killed');
DO $$
BEGIN
    FOR i IN 1..600 LOOP
        EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'regress_killed');
        PERFORM pg_sleep(0.1);
        PERFORM pg_stat_clear_snapshot();
    END LOOP;
END
$$;
SELECT state, holder, attempts FROM marker_view WHERE id = :mk;
SELECT deploy.current_version(), to_regclass('app.t3') IS NOT NULL AS t3_still_there,
       (SELECT state FROM deploy.deployments WHERE id = :rel3) AS rel3_state,
       (SELECT count(*) FROM deploy.deployments WHERE reverts = :rel3) AS rollback_deployments;
SELECT pg_sleep(1.1);
SELECT holder, attempts FROM deploy.claim_marker('watcher-b');
SELECT r->'ok' AS ok, r->'state' AS state, r->'attempts' AS attempts FROM deploy.execute_rollback(:mk, 'watcher-b') r;
SELECT deploy.current_version(), to_regclass('app.t3') IS NULL AS t3_gone;
SELECT deploy.validate() ->> 'ok' AS ledger_valid;
DROP EXTENSION dblink;

-- A marker whose deployment row no longer exists (a damaged ledger; the foreign key normally prevents it) gets a
-- clear error, and the marker is left as it was.
SET session_replication_role = replica;
INSERT INTO deploy.rollback_markers (deployment_id, reason) VALUES (999, 'orphan') RETURNING id AS m5 \gset
RESET session_replication_role;
SELECT deploy.execute_rollback(:m5);
\echo :LAST_ERROR_SQLSTATE
SELECT state, attempts FROM marker_view WHERE id = :m5;
SELECT deploy.resolve_marker(:m5, 'abandoned', 'deployment row lost') ->> 'state' AS state;

-- execute_rollback's bad arguments.
SELECT deploy.execute_rollback(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.execute_rollback(999);
\echo :LAST_ERROR_SQLSTATE

-- The story of marker 1, from the events.
SELECT kind, details->>'attempt' AS attempt, details->'error'->>'sqlstate' AS sqlstate, details->>'resolution' AS resolution
FROM deploy.events WHERE marker_id = :m1 ORDER BY id;
SELECT id, state, attempts, resolution FROM marker_view;
