-- nontransactional: migrations PostgreSQL will not run inside a function (CREATE INDEX CONCURRENTLY, VACUUM) are
-- planned as steps, run at top level by the client (here: psql with \gexec), checkpointed, and resumed; a failed
-- concurrent build's INVALID index is cleaned up before the retry.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never

SELECT deploy.register('0001', 'items', $$CREATE SCHEMA app;
CREATE TABLE app.items (id int PRIMARY KEY, code text);
INSERT INTO app.items VALUES (1, 'a'), (2, 'b'), (3, 'b');$$, 'DROP SCHEMA app CASCADE');
SELECT deploy.register('0002', 'unique_code', $$CREATE UNIQUE INDEX CONCURRENTLY items_code ON app.items (code);
VACUUM (ANALYZE) app.items;$$, 'DROP INDEX app.items_code');
SELECT deploy.register('0003', 'after', 'CREATE TABLE app.after (id int)', 'DROP TABLE app.after');
SELECT version, transactional FROM deploy.migrations ORDER BY sort_key;

-- No running deployment: no step.
SELECT deploy.next_step() IS NULL AS no_step;

-- up() applies 0001, then stops before 0002 and plans its statements as steps (NOTICE tells what to do).
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, r ->> 'version_after' AS version_after,
       jsonb_path_query_array(r, '$.applied[*].version') AS applied,
       jsonb_pretty(r -> 'awaiting_nontransactional') AS awaiting
FROM deploy.up(app_version => 'with-index') AS r;
SELECT id, state, version_before, version_after, finished_at IS NULL AS unfinished FROM deploy.deployments;
SELECT id, deployment_id, version, step, statement, state, attempts FROM deploy.checkpoints ORDER BY id;

-- up() again: still waiting, nothing new.
SELECT r ->> 'state' AS state, r -> 'awaiting_nontransactional' ->> 'version' AS version,
       jsonb_array_length(r -> 'awaiting_nontransactional' -> 'steps') AS steps
FROM deploy.up() AS r;
SELECT count(*) AS deployments FROM deploy.deployments;

-- Reporting a step that was not claimed: PD007. Unknown step: P0002. NULL: 22004.
SELECT deploy.step_done(1);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.step_done(2);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.step_done(999);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.step_done(NULL);
\echo :LAST_ERROR_SQLSTATE

-- Claim step 1 and run it at top level: the unique build fails on duplicate codes and leaves an INVALID index.
SELECT s ->> 'step_id' AS step_id, s ->> 'statement' AS statement, s -> 'cleanup' AS cleanup
FROM deploy.next_step(holder => 'psql-test') AS s \gset
\echo :step_id :cleanup
SELECT :'statement' \gexec
\echo :LAST_ERROR_SQLSTATE
SELECT indisvalid FROM pg_index WHERE indexrelid = 'app.items_code'::regclass;
SELECT deploy.step_failed(:step_id, :'LAST_ERROR_SQLSTATE', :'LAST_ERROR_MESSAGE') - 'schema_version' AS failed;
SELECT state, holder, attempts, error ->> 'sqlstate' AS sqlstate FROM deploy.checkpoints WHERE id = :step_id;
-- Reporting it failed again, or done, is a state conflict (it must be claimed again first).
SELECT deploy.step_failed(:step_id, '23505', 'again');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.step_done(:step_id);
\echo :LAST_ERROR_SQLSTATE
-- Bad arguments.
SELECT deploy.step_failed(:step_id, '235', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.step_failed(:step_id, '23505', NULL);
\echo :LAST_ERROR_SQLSTATE

-- Nothing else may run meanwhile: down and rollback of the running deployment are refused.
SELECT deploy.down();
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.rollback(deployment_id => 1);
\echo :LAST_ERROR_SQLSTATE

-- Fix the data; the retry hands out the same step with the cleanup of the INVALID index first.
DELETE FROM app.items WHERE id = 3;
SELECT s ->> 'step_id' AS step_id, s ->> 'statement' AS statement, s -> 'cleanup' AS cleanup,
       s -> 'cleanup' ->> 0 AS cleanup_sql
FROM deploy.next_step(holder => 'psql-test') AS s \gset
\echo :step_id :cleanup
SELECT :'cleanup_sql' \gexec
SELECT :'statement' \gexec
SELECT deploy.step_done(:step_id) - 'schema_version' AS done;
SELECT deploy.step_done(:step_id);
\echo :LAST_ERROR_SQLSTATE
SELECT indisvalid FROM pg_index WHERE indexrelid = 'app.items_code'::regclass;

-- Step 2 (VACUUM) completes the migration: 0002 becomes applied under the running deployment.
SELECT s ->> 'step_id' AS step_id, s ->> 'statement' AS statement, s -> 'cleanup' AS cleanup
FROM deploy.next_step() AS s \gset
\echo :step_id :statement :cleanup
SELECT :'statement' \gexec
SELECT deploy.step_done(:step_id) - 'schema_version' AS done;
SELECT deploy.next_step() IS NULL AS no_more_steps;
SELECT version, deployment_id, transactional FROM deploy.applied ORDER BY sort_key;
SELECT id, state, attempts, holder FROM deploy.checkpoints ORDER BY id;

-- The next up() resumes the same deployment with 0003 and finishes it.
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, r -> 'deployment_id' AS deployment_id,
       jsonb_path_query_array(r, '$.applied[*].version') AS applied, r ->> 'version_after' AS version_after
FROM deploy.up() AS r;
SELECT id, app_version, state, version_before, version_after FROM deploy.deployments;
SELECT kind, version, details ->> 'step' AS step FROM deploy.events WHERE deployment_id = 1 ORDER BY id;

-- A dry run does not rehearse non-transactional statements; it reports them.
SELECT deploy.register('0004', 'reindex', 'REINDEX INDEX CONCURRENTLY app.items_code', 'SELECT 1');
SELECT r ->> 'ok' AS ok, r -> 'awaiting_nontransactional' ->> 'version' AS version,
       r -> 'awaiting_nontransactional' ->> 'note' AS note
FROM deploy.up(dry_run => true) AS r;

-- A running deployment can be abandoned by a forced rollback: its applied migrations are reverted, its open steps
-- marked failed.
SELECT deploy.up() ->> 'state' AS state;
SELECT r ->> 'ok' AS ok, jsonb_path_query_array(r, '$.reverted[*].version') AS reverted
FROM deploy.rollback(deployment_id => 2, force => true) AS r;
SELECT id, state, rolled_back_by FROM deploy.deployments ORDER BY id;
SELECT deployment_id, state, error ->> 'message' AS message FROM deploy.checkpoints WHERE deployment_id = 2;
SELECT deploy.next_step() IS NULL AS no_step;
