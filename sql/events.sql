-- events: every state change writes exactly one event in the same transaction; the log is append-only.
-- (The NOTIFY payload is checked in specs/claim_marker.spec, where isolationtester prints notifications without
-- the sender's pid.)
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
\set SHOW_CONTEXT never
CREATE SCHEMA app;
-- The events written since the last call, as (kind, version, marker) rows.
CREATE TABLE seen (last_id bigint);
INSERT INTO seen VALUES (0);
CREATE FUNCTION new_events() RETURNS TABLE (kind text, version text, marker_id bigint, deployment_set boolean)
LANGUAGE plpgsql AS $$
DECLARE
    from_id bigint := (SELECT last_id FROM seen);
BEGIN
    UPDATE seen SET last_id = coalesce((SELECT max(id) FROM deploy.events), 0);
    RETURN QUERY SELECT e.kind, e.version, e.marker_id, e.deployment_id IS NOT NULL
                 FROM deploy.events e WHERE e.id > from_id ORDER BY e.id;
END
$$;

-- Registering and applying.
SELECT deploy.register('1', 'one', 'CREATE TABLE app.one (id int)', 'DROP TABLE app.one');
SELECT deploy.register('2', 'two', 'CREATE TABLE app.two (id int)', 'DROP TABLE app.two');
SELECT * FROM new_events();
SELECT (deploy.up(target => '1')) ->> 'ok' AS up_ok;
SELECT * FROM new_events();

-- A rolled-back transaction leaves no event (and no state change).
BEGIN;
SELECT (deploy.up()) ->> 'ok' AS up_ok;
SELECT count(*) > 0 AS events_inside_transaction FROM deploy.events WHERE version = '2';
ROLLBACK;
SELECT * FROM new_events();
SELECT deploy.current_version();

-- Markers: requested, claimed, failed, claimed, done; each transition one event.
SELECT (deploy.up()) ->> 'ok' AS up_ok;
SELECT * FROM new_events();
CREATE VIEW app.v AS SELECT * FROM app.two;
SELECT deploy.request_rollback('events test') AS m \gset
SELECT deploy.request_rollback('asked twice: no new event') = :m AS same;
SELECT * FROM new_events();
SELECT count(*) FROM deploy.claim_marker('w1');
-- Re-claiming one's own live marker renews it: no event. renew_lease writes none either.
SELECT count(*) FROM deploy.claim_marker('w1', marker_id => :m);
SELECT deploy.renew_lease(:m, 'w1') IS NOT NULL AS renewed;
SELECT * FROM new_events();
SELECT (deploy.execute_rollback(:m, 'w1')) ->> 'state' AS state;
SELECT * FROM new_events();
DROP VIEW app.v;
SELECT (deploy.execute_rollback(:m, 'w1')) ->> 'state' AS state;
SELECT * FROM new_events();
-- A no-op (done marker) writes nothing.
SELECT (deploy.execute_rollback(:m)) ->> 'already_done' AS already_done;
SELECT * FROM new_events();
-- Refused calls write nothing.
SELECT deploy.request_rollback('');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.resolve_marker(:m, 'done');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.baseline('7');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM new_events();

-- needs_attention and resolve.
SET pg_deploy.max_rollback_attempts = 1;
SELECT (deploy.up()) ->> 'ok' AS up_ok;
CREATE VIEW app.v AS SELECT * FROM app.two;
SELECT deploy.request_rollback('will need attention') AS m2 \gset
SELECT (deploy.execute_rollback(:m2)) ->> 'state' AS state;
SELECT deploy.resolve_marker(:m2, 'abandoned', 'keeping it') ->> 'state' AS state;
SELECT * FROM new_events();
DROP VIEW app.v;

-- Each event names who did it; kinds are the contract's.
SELECT DISTINCT actor = current_user AS actor_is_me FROM deploy.events;
SELECT kind FROM deploy.events
EXCEPT
SELECT unnest(ARRAY['migration_registered', 'migration_updated', 'deployment_started', 'migration_applied',
                    'migration_failed', 'deployment_succeeded', 'deployment_failed', 'migration_reverted',
                    'deployment_rolled_back', 'baseline', 'marker_requested', 'marker_claimed', 'marker_done',
                    'marker_failed', 'marker_needs_attention', 'marker_resolved', 'checkpoint_done',
                    'checkpoint_failed', 'data_archived', 'watcher_decision']);

-- Append-only, for everyone including the superuser that owns the table.
SELECT count(*) AS events_before FROM deploy.events \gset
UPDATE deploy.events SET kind = 'forged' WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM deploy.events WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE deploy.events;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) = :events_before AS all_events_kept, count(*) FILTER (WHERE kind = 'forged') AS forged
FROM deploy.events;
-- deploy.log_event refuses an empty kind.
SELECT deploy.log_event('');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.log_event(NULL);
\echo :LAST_ERROR_SQLSTATE
-- deploy.log_events, the bulk form: one row per element in array order, at the given times (its single NOTIFY per
-- batch is checked in tests/e2e/test_event_notify.py: psql prints a listener's PID).
SELECT max(id) AS before_bulk FROM deploy.events \gset
SELECT deploy.log_events('bulk_check', NULL, ARRAY['b1', 'b2', 'b3'],
                         ARRAY['2026-01-01 00:00:01+00', '2026-01-01 00:00:02+00', NULL]::timestamptz[],
                         ARRAY['{"n": 1}', '{"n": 2}', NULL]::jsonb[]) AS written;
SELECT version, at = '2026-01-01 00:00:01+00' AS first_time, details FROM deploy.events
WHERE id > :before_bulk ORDER BY id;
SELECT count(*) AS stamped_now FROM deploy.events WHERE id > :before_bulk AND at > now() - interval '1 hour';
-- Empty arrays write nothing; arrays of different lengths and an empty kind are refused, and nothing is written.
SELECT deploy.log_events('bulk_check', NULL, '{}', '{}', '{}') AS written;
SELECT deploy.log_events('bulk_check', NULL, ARRAY['b4'], ARRAY[now()], '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.log_events('', NULL, ARRAY['b4'], ARRAY[now()], ARRAY['{}'::jsonb]);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS bulk_rows FROM deploy.events WHERE kind = 'bulk_check';
