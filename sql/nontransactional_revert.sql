-- nontransactional_revert: a down SQL that PostgreSQL will not run inside a function (DROP INDEX CONCURRENTLY,
-- REINDEX ... CONCURRENTLY) is registered (detected or declared), planned as steps of the revert deployment, run at
-- top level by the client (here: psql with \gexec), checkpointed and resumed by calling the revert again. Refusals
-- while such a revert runs, dry runs, work found done after a dead client, REINDEX leftovers, and markers whose revert
-- stops at steps.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never

-- Registration: detected, declared, refused.
SELECT deploy.register('0001', 'items', $$CREATE SCHEMA app;
CREATE TABLE app.items (id int PRIMARY KEY, code text);
INSERT INTO app.items VALUES (1, 'a'), (2, 'b'), (3, 'c');$$, 'DROP SCHEMA app CASCADE');
SELECT deploy.register('0002', 'code_index', 'CREATE INDEX CONCURRENTLY items_code ON app.items (code)',
                       'DROP INDEX CONCURRENTLY app.items_code');
SELECT deploy.register('0003', 'note', 'ALTER TABLE app.items ADD COLUMN note text',
                       'ALTER TABLE app.items DROP COLUMN note');
SELECT deploy.register('0004', 'note_index', 'CREATE INDEX items_note ON app.items (note)',
                       $$-- rebuild what the index made bloated, without blocking writes
DROP INDEX CONCURRENTLY IF EXISTS app.items_note;
REINDEX TABLE CONCURRENTLY app.items;$$);
SELECT deploy.register('0005', 'extra', 'CREATE TABLE app.extra (id int)', 'DROP TABLE app.extra',
                       down_transactional => true);
SELECT version, transactional, down_transactional FROM deploy.migrations ORDER BY sort_key;
-- Declared transactional but holds DROP INDEX CONCURRENTLY: PD004, naming down_transactional.
SELECT deploy.register('0009', 'x', 'CREATE INDEX i9 ON app.items (id)', 'DROP INDEX CONCURRENTLY app.i9',
                       down_transactional => true);
\echo :LAST_ERROR_SQLSTATE
-- down_transactional without a down_sql, and a lossy revert that would run at top level: 22023.
SELECT deploy.register('0009', 'x', 'SELECT 1', down_transactional => false);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0009', 'x', 'CREATE TABLE app.t9 (id int)',
                       'DROP INDEX CONCURRENTLY IF EXISTS app.i9; DROP TABLE app.t9', reversibility => 'lossy');
\echo :LAST_ERROR_SQLSTATE
-- Verify SQL always runs in a transaction: still PD004 there.
SELECT deploy.register('0009', 'x', 'SELECT 1', 'SELECT 1', 'REINDEX TABLE CONCURRENTLY app.items');
\echo :LAST_ERROR_SQLSTATE
-- Declared non-transactional without such a statement: the caller's choice. Changing the flag is a change.
SELECT deploy.register('0009', 'x', 'SELECT 1', 'SELECT 2', down_transactional => false);
SELECT deploy.register('0009', 'x', 'SELECT 1', 'SELECT 2', down_transactional => false);
SELECT deploy.register('0009', 'x', 'SELECT 1', 'SELECT 2');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.unregister('0009');

-- Apply everything: 0002's up SQL runs as steps too.
SELECT deploy.up(app_version => 'r1') ->> 'state' AS state;
SELECT s ->> 'step_id' AS step_id, s ->> 'statement' AS statement FROM deploy.next_step() AS s \gset
SELECT :'statement' \gexec
SELECT deploy.step_done(:step_id) ->> 'migration_applied' AS applied;
SELECT r ->> 'state' AS state, jsonb_path_query_array(r, '$.applied[*].version') AS applied FROM deploy.up() AS r;
-- The applied rows keep how their down SQL runs (a revert never reads the catalog).
SELECT version, deployment_id, transactional, down_transactional FROM deploy.applied ORDER BY sort_key;

-- A dry run rehearses the transactional revert of 0005 and reports 0004's steps as not rehearsed.
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, jsonb_path_query_array(r, '$.reverted[*].version') AS reverted,
       r -> 'awaiting_nontransactional' AS awaiting, r ->> 'version_after' AS version_after
FROM deploy.rollback(dry_run => true) AS r;

-- The rollback reverts 0005 in its batch, then stops at 0004: its down SQL is planned as two steps of the rollback
-- deployment, which stays running (the NOTICE says how to finish).
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, r ->> 'deployment_id' AS deployment_id, r ->> 'reverts' AS reverts,
       jsonb_path_query_array(r, '$.reverted[*].version') AS reverted, r ->> 'version_after' AS version_after,
       jsonb_pretty(r -> 'awaiting_nontransactional') AS awaiting
FROM deploy.rollback(reason => 'bad release') AS r;
SELECT id, kind, state, reverts, version_before, version_after, metadata FROM deploy.deployments ORDER BY id;
SELECT deployment_id, version, step, state FROM deploy.checkpoints WHERE deployment_id = 2 ORDER BY id;

-- While it runs: up, down and a rollback of another deployment are refused (55000), naming it.
SELECT deploy.up();
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.down();
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.rollback(deployment_id => 7);
\echo :LAST_ERROR_SQLSTATE
-- Calling the rollback again (for the same deployment, or without one) waits for the same steps.
SELECT r ->> 'state' AS state, r ->> 'deployment_id' AS deployment_id, r ->> 'resumed' AS resumed,
       r -> 'awaiting_nontransactional' ->> 'version' AS version,
       jsonb_array_length(r -> 'awaiting_nontransactional' -> 'steps') AS steps
FROM deploy.rollback(deployment_id => 1) AS r;
SELECT count(*) AS deployments FROM deploy.deployments;

-- Step 1 (DROP INDEX CONCURRENTLY) at top level.
SELECT s ->> 'step_id' AS step_id, s ->> 'statement' AS statement, s -> 'cleanup' AS cleanup,
       s ->> 'version' AS version, s ->> 'name' AS name
FROM deploy.next_step(holder => 'psql-test') AS s \gset
\echo :version :name :statement :cleanup
SELECT :'statement' \gexec
SELECT deploy.step_done(:step_id) - 'schema_version' AS done;

-- An interrupted REINDEX ... CONCURRENTLY leaves an INVALID <index>_ccnew behind (made here by a failed unique
-- build): step 2 hands out its cleanup first.
CREATE UNIQUE INDEX CONCURRENTLY items_code_ccnew ON app.items ((1));
SELECT s ->> 'step_id' AS step_id, s ->> 'statement' AS statement, s -> 'cleanup' AS cleanup,
       s -> 'cleanup' ->> 0 AS cleanup_sql
FROM deploy.next_step(holder => 'psql-test') AS s \gset
\echo :statement :cleanup
SELECT :'cleanup_sql' \gexec
SELECT :'statement' \gexec
SELECT deploy.step_done(:step_id) - 'schema_version' AS done;
SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'app.items'::regclass ORDER BY 1;
SELECT version FROM deploy.applied ORDER BY sort_key;
SELECT kind, version, details ->> 'from_deployment' AS from_deployment, details ->> 'sql_run' AS sql_run
FROM deploy.events WHERE deployment_id = 2 AND kind = 'migration_reverted' ORDER BY id;

-- The rollback resumes: 0003 in a batch, then it stops at 0002's DROP INDEX CONCURRENTLY.
SELECT r ->> 'state' AS state, r ->> 'resumed' AS resumed, jsonb_path_query_array(r, '$.reverted[*].version') AS reverted,
       r -> 'awaiting_nontransactional' ->> 'version' AS version
FROM deploy.rollback() AS r;
-- A client claims that step and dies after its drop completed, before reporting it: the next claim finds the index
-- gone and completes the step (found_dropped) instead of failing forever with "does not exist".
SELECT s ->> 'statement' AS statement FROM deploy.next_step(holder => 'dead-client') AS s \gset
SELECT :'statement' \gexec
SELECT deploy.next_step(holder => 'psql-test') IS NULL AS no_more_steps;
SELECT kind, version, details - 'step_id' - 'duration_ms' AS details FROM deploy.events
WHERE deployment_id = 2 AND kind IN ('checkpoint_done', 'migration_reverted') AND version = '0002' ORDER BY id;

-- The last call finishes it as a transactional rollback ends: the target is rolled back, everything reverted is
-- listed.
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, r ->> 'resumed' AS resumed,
       jsonb_path_query_array(r, '$.reverted[*].version') AS reverted, r ->> 'version_after' AS version_after
FROM deploy.rollback() AS r;
SELECT id, kind, state, rolled_back_by, version_after FROM deploy.deployments ORDER BY id;
SELECT count(*) AS applied, (SELECT count(*) FROM deploy.checkpoints WHERE state <> 'done') AS open_steps
FROM deploy.applied;
SELECT kind, deployment_id, version FROM deploy.events WHERE deployment_id IN (1, 2) AND id > (
    SELECT max(id) FROM deploy.events WHERE kind = 'checkpoint_done' AND deployment_id = 2) ORDER BY id;
SELECT to_regclass('app.items') IS NULL AS schema_gone;

-- deploy.down(): the same, with a step that fails and is retried; down's arguments do not matter on resume.
SELECT deploy.up(app_version => 'r2', target => '0003') ->> 'state' AS state;
SELECT s ->> 'step_id' AS step_id, s ->> 'statement' AS statement FROM deploy.next_step() AS s \gset
SELECT :'statement' \gexec
SELECT deploy.step_done(:step_id) ->> 'migration_applied' AS applied;
SELECT deploy.up(target => '0003') ->> 'state' AS state;
SELECT r ->> 'state' AS state, r ->> 'deployment_id' AS deployment_id,
       jsonb_path_query_array(r, '$.reverted[*].version') AS reverted,
       r -> 'awaiting_nontransactional' ->> 'version' AS version
FROM deploy.down(steps => 2) AS r;
SELECT deploy.rollback();
\echo :LAST_ERROR_SQLSTATE
SELECT r ->> 'state' AS state, r ->> 'deployment_id' AS deployment_id, r ->> 'resumed' AS resumed
FROM deploy.down(steps => 3) AS r;
SELECT s ->> 'step_id' AS step_id FROM deploy.next_step(holder => 'psql-test') AS s \gset
SELECT deploy.step_failed(:step_id, '55P03', 'lock timeout') ->> 'state' AS state;
SELECT s ->> 'step_id' AS step_id, s ->> 'statement' AS statement, s -> 'cleanup' AS cleanup
FROM deploy.next_step(holder => 'psql-test') AS s \gset
\echo :statement :cleanup
SELECT :'statement' \gexec
SELECT deploy.step_done(:step_id) ->> 'migration_reverted' AS reverted;
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, jsonb_path_query_array(r, '$.reverted[*].version') AS reverted,
       r ->> 'version_after' AS version_after
FROM deploy.down(steps => 3) AS r;
SELECT id, kind, state, version_before, version_after FROM deploy.deployments WHERE id >= 3 ORDER BY id;
SELECT version FROM deploy.applied ORDER BY sort_key;

-- Markers: the revert stops at steps, the marker stays in_progress under its holder's lease; another holder cannot
-- take it while the lease lives, can once it expired (its holder died), and resumes the same rollback deployment.
SELECT deploy.up(app_version => 'r3', target => '0002') ->> 'state' AS state;
SELECT s ->> 'step_id' AS step_id, s ->> 'statement' AS statement FROM deploy.next_step() AS s \gset
SELECT :'statement' \gexec
SELECT deploy.step_done(:step_id) ->> 'migration_applied' AS applied;
SELECT deploy.up(target => '0002') ->> 'state' AS state;
SELECT deploy.request_rollback('health check failed') AS marker \gset
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, r ->> 'holder' AS holder, r ->> 'attempts' AS attempts,
       r -> 'awaiting_nontransactional' ->> 'version' AS version, r -> 'rollback' ->> 'deployment_id' AS rollback_id
FROM deploy.execute_rollback(:marker, 'watcher-a') AS r;
SELECT state, holder, attempts FROM deploy.rollback_markers WHERE id = :marker;
\set VERBOSITY terse
SELECT deploy.execute_rollback(:marker, 'watcher-b');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
-- watcher-a dies; its lease runs out.
UPDATE deploy.rollback_markers SET lease_until = clock_timestamp() - interval '1 second' WHERE id = :marker;
SELECT r ->> 'state' AS state, r ->> 'holder' AS holder, r ->> 'attempts' AS attempts,
       r -> 'rollback' ->> 'deployment_id' AS rollback_id, r -> 'rollback' ->> 'resumed' AS resumed
FROM deploy.execute_rollback(:marker, 'watcher-b') AS r;
SELECT s ->> 'step_id' AS step_id, s ->> 'statement' AS statement FROM deploy.next_step(holder => 'watcher-b') AS s \gset
SELECT :'statement' \gexec
SELECT deploy.step_done(:step_id) ->> 'migration_reverted' AS reverted;
-- Nothing of the deployment is applied any more, but its rollback still runs: executing the marker finishes it.
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, r ->> 'resolution' AS resolution, r ->> 'attempts' AS attempts,
       r -> 'rollback' ->> 'state' AS rollback_state,
       jsonb_path_query_array(r, '$.rollback.reverted[*].version') AS reverted
FROM deploy.execute_rollback(:marker, 'watcher-b') AS r;
SELECT kind, details ->> 'holder' AS holder FROM deploy.events WHERE marker_id = :marker ORDER BY id;
SELECT id, kind, state, reverts, rolled_back_by FROM deploy.deployments WHERE id >= 5 ORDER BY id;
SELECT version FROM deploy.applied ORDER BY sort_key;

-- A resumed revert whose batch fails: the failure is recorded (ok false, a WARNING), what its steps reverted stays
-- reverted, and the deployment they emptied is rolled back by the failed revert.
SELECT bool_and(deploy.unregister(v)) AS unregistered FROM unnest('{0002,0003,0004,0005}'::text[]) v;
SELECT deploy.register('0006', 'broken_down', 'CREATE TABLE app.t6 (id int)', 'DROP TABLE app.t6_missing');
SELECT deploy.up(app_version => 'r4') ->> 'state' AS state;
SELECT deploy.register('0007', 'i7', 'CREATE INDEX i7 ON app.items (id)', 'DROP INDEX CONCURRENTLY app.i7');
SELECT deploy.up(app_version => 'r5') ->> 'state' AS state;
SELECT r ->> 'state' AS state, r -> 'awaiting_nontransactional' ->> 'version' AS version
FROM deploy.down(steps => 2) AS r;
SELECT s ->> 'step_id' AS step_id, s ->> 'statement' AS statement FROM deploy.next_step() AS s \gset
SELECT :'statement' \gexec
SELECT deploy.step_done(:step_id) ->> 'migration_reverted' AS reverted;
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, r -> 'failed' ->> 'version' AS failed_version,
       r -> 'failed' ->> 'sqlstate' AS sqlstate, r ->> 'version_after' AS version_after
FROM deploy.down() AS r;
SELECT id, kind, app_version, state, rolled_back_by, version_after FROM deploy.deployments WHERE id >= 7 ORDER BY id;
SELECT version FROM deploy.applied ORDER BY sort_key;
SELECT deploy.up() ->> 'state' AS up_again;
