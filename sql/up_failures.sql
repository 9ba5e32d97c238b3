-- up_failures: a failing migration is named with its SQLSTATE, recorded, and persists; atomic and non-atomic modes.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never

SELECT deploy.register('0001', 'schema', 'CREATE SCHEMA app; CREATE TABLE app.base (id int PRIMARY KEY)', 'DROP SCHEMA app CASCADE');
SELECT deploy.up() ->> 'ok' AS ok;

-- Atomic (default): the second of three fails; the first is undone, the failure is recorded and returned, WARNING.
SELECT deploy.register('0002', 'good', 'CREATE TABLE app.good (id int)', 'DROP TABLE app.good');
SELECT deploy.register('0003', 'bad', $$INSERT INTO app.base VALUES (1);
INSERT INTO app.base VALUES (1);$$, 'DELETE FROM app.base');
SELECT deploy.register('0004', 'after', 'CREATE TABLE app.after (id int)', 'DROP TABLE app.after');
SELECT r - 'duration_ms' - 'failed' - 'undone' AS result,
       (r -> 'failed') - 'duration_ms' AS failed,
       jsonb_path_query_array(r, '$.undone[*].version') AS undone
FROM deploy.up(app_version => 'bad-release') AS r;
-- The failed deployment and its error persist; nothing of the batch stays.
SELECT id, state, app_version, version_before, version_after, (error || coalesce(error_private, '{}')) - 'duration_ms' AS error,
       finished_at IS NOT NULL AS finished
FROM deploy.deployments ORDER BY id;
SELECT version FROM deploy.applied ORDER BY sort_key;
SELECT to_regclass('app.good') AS good_table, (SELECT count(*) FROM app.base) AS base_rows;
SELECT kind, deployment_id, version, details ->> 'sqlstate' AS sqlstate FROM deploy.events
WHERE deployment_id = 2 ORDER BY id;

-- The recording survives the caller's transaction: it commits with it (and a ROLLBACK by the caller undoes it,
-- like any other SQL the caller runs).
BEGIN;
SELECT deploy.up() ->> 'ok' AS ok;
ROLLBACK;
SELECT count(*) AS deployments FROM deploy.deployments;

-- Runtime errors in migration SQL are captured with SQLSTATE, detail, hint and context.
SELECT deploy.register('0003', 'bad', $$DO $do$ BEGIN RAISE EXCEPTION 'custom failure' USING ERRCODE = 'P0001',
  DETAIL = 'some detail', HINT = 'some hint'; END $do$;$$, 'SELECT 1', replace => true);
SELECT r -> 'failed' ->> 'sqlstate' AS sqlstate, r -> 'failed' ->> 'message' AS message,
       r -> 'failed' ->> 'detail' AS detail, r -> 'failed' ->> 'hint' AS hint,
       r -> 'failed' ->> 'context' IS NOT NULL AS has_context
FROM deploy.up() AS r;

-- A transaction-control statement hidden where the parser cannot see it (inside DO) is caught at run time.
SELECT deploy.register('0003', 'bad', $$DO $do$ BEGIN COMMIT; END $do$;$$, 'SELECT 1', replace => true);
SELECT r -> 'failed' ->> 'sqlstate' AS sqlstate, r -> 'failed' ->> 'message' AS message FROM deploy.up() AS r;

-- A CREATE INDEX CONCURRENTLY that registration was told is transactional is refused at registration (PD004);
-- one executed dynamically fails at run time with PostgreSQL's own error.
SELECT deploy.register('0003', 'bad', $$DO $do$ BEGIN EXECUTE 'CREATE INDEX CONCURRENTLY ON app.base (id)'; END $do$;$$,
                       'SELECT 1', replace => true);
SELECT r -> 'failed' ->> 'sqlstate' AS sqlstate, r -> 'failed' ->> 'message' AS message FROM deploy.up() AS r;

-- pg_deploy.statement_timeout limits one migration; the caller's statement is not cancelled.
SELECT deploy.register('0003', 'slow', 'SELECT pg_sleep(2)', 'SELECT 1', replace => true);
SET pg_deploy.statement_timeout = '100ms';
SELECT r -> 'failed' ->> 'sqlstate' AS sqlstate, r -> 'failed' ->> 'message' AS message,
       (r -> 'failed' ->> 'duration_ms')::float8 < 1500 AS stopped_early
FROM deploy.up() AS r;
RESET pg_deploy.statement_timeout;
SELECT version FROM deploy.applied ORDER BY sort_key;

-- Non-atomic: what succeeded stays, the failure is recorded, and a rollback marker targets the state before.
SELECT deploy.register('0003', 'bad', 'SELECT 1/0', 'SELECT 1', replace => true);
SELECT r - 'duration_ms' - 'failed' - 'applied' - 'marker_id' AS result, r -> 'failed' ->> 'version' AS failed_version,
       jsonb_path_query_array(r, '$.applied[*].version') AS applied, r -> 'marker_id' IS NOT NULL AS has_marker
FROM deploy.up(atomic => false, app_version => 'partial') AS r;
SELECT version, deployment_id FROM deploy.applied ORDER BY sort_key;
SELECT deployment_id, target_version, reason, state, details -> 'failed' ->> 'sqlstate' AS sqlstate
FROM deploy.rollback_markers;
SELECT kind, version FROM deploy.events WHERE kind IN ('marker_requested', 'deployment_failed') ORDER BY id DESC LIMIT 2;

-- While a marker is open, up() refuses to start (55000) and writes nothing.
SELECT count(*) AS deployments FROM deploy.deployments \gset
SELECT deploy.up();
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) = :deployments AS unchanged FROM deploy.deployments;

-- Non-atomic with the first migration failing: nothing applied, so no marker. (The marker is executed by hand
-- here: deploy.rollback() of its deployment, then closed; markers have their own suite.)
SELECT deploy.rollback((SELECT deployment_id FROM deploy.rollback_markers WHERE state = 'pending')) ->> 'ok' AS rolled_back;
UPDATE deploy.rollback_markers SET state = 'done';
SELECT deploy.register('0002', 'good', 'SELECT 1/0', 'DROP TABLE app.good', replace => true);
SELECT r ->> 'ok' AS ok, r -> 'marker_id' AS marker_id, jsonb_array_length(r -> 'applied') AS applied
FROM deploy.up(atomic => false) AS r;
SELECT count(*) AS open_markers FROM deploy.rollback_markers WHERE state <> 'done';
