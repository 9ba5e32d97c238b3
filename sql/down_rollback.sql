-- down_rollback: reverting from the stored down SQL, atomically, newest first; refusals; failing down scripts.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never

SELECT deploy.register('0001', 'schema', 'CREATE SCHEMA app', 'DROP SCHEMA app');
SELECT deploy.register('0002', 'users', 'CREATE TABLE app.users (id int PRIMARY KEY)', 'DROP TABLE app.users');
SELECT deploy.up(app_version => 'v1') ->> 'ok' AS ok;
SELECT deploy.register('0003', 'orders', 'CREATE TABLE app.orders (id int)', 'DROP TABLE app.orders');
SELECT deploy.register('0004', 'items', 'CREATE TABLE app.items (id int)', 'DROP TABLE app.items');
SELECT deploy.up(app_version => 'v2') ->> 'ok' AS ok;

-- Nothing to roll back / bad arguments: clear errors, nothing written.
SELECT deploy.rollback(deployment_id => 999);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.rollback(force => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.down(steps => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.down(steps => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.down(steps => 10);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.down(to_version => '0009');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.down(to_version => 'bad version');
\echo :LAST_ERROR_SQLSTATE
-- Deployment 1 cannot be rolled back while deployment 2 builds on it.
SELECT deploy.rollback(deployment_id => 1);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS deployments FROM deploy.deployments;

-- Rollback of the last deployment (default): newest first, atomically; the target is marked rolled back.
SELECT r - 'duration_ms' - 'reverted' AS result, jsonb_path_query_array(r, '$.reverted[*].version') AS reverted
FROM deploy.rollback(reason => 'smoke test failed') AS r;
SELECT id, kind, app_version, state, version_before, version_after, reverts, rolled_back_by, metadata
FROM deploy.deployments ORDER BY id;
SELECT version FROM deploy.applied ORDER BY sort_key;
SELECT to_regclass('app.orders') AS orders, to_regclass('app.items') AS items;
SELECT kind, deployment_id, version FROM deploy.events WHERE deployment_id >= 2 ORDER BY id;
-- Twice: it is already rolled back (55000); the default now finds deployment 1.
SELECT deploy.rollback(deployment_id => 2);
\echo :LAST_ERROR_SQLSTATE
-- Only up deployments can be rolled back.
SELECT deploy.rollback(deployment_id => 3);
\echo :LAST_ERROR_SQLSTATE

-- down(): re-apply, then step back one at a time or to a version.
SELECT deploy.up(app_version => 'v3') ->> 'ok' AS ok;
SELECT jsonb_path_query_array(deploy.down(), '$.reverted[*].version') AS reverted;
SELECT jsonb_path_query_array(deploy.down(to_version => '0001'), '$.reverted[*].version') AS reverted;
SELECT version FROM deploy.applied ORDER BY sort_key;
-- Deployment 4 lost all its migrations through down(): it counts as rolled back.
SELECT id, kind, state, rolled_back_by FROM deploy.deployments WHERE id >= 4 ORDER BY id;
SELECT deploy.down(to_version => '0001') - 'duration_ms' AS nothing_to_do;

-- Irreversible migrations: PD002 without force; with force the ledger row goes and no SQL runs.
SELECT deploy.register('0005', 'irreversible', 'CREATE TABLE app.keep (id int)');
SELECT deploy.up() ->> 'ok' AS ok;
SELECT deploy.down();
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.rollback();
\echo :LAST_ERROR_SQLSTATE
SELECT version FROM deploy.applied ORDER BY sort_key;
SELECT r ->> 'ok' AS ok, r -> 'forced' AS forced, r -> 'reverted' -> 0 ->> 'sql_run' AS sql_run
FROM deploy.down(force => true) AS r;
SELECT to_regclass('app.keep') AS still_there, (SELECT count(*) FROM deploy.applied WHERE version = '0005') AS applied;
-- (0005 is pending again now; take it out of the catalog so the next up does not re-apply it.)
SELECT deploy.unregister('0005');
DROP TABLE app.keep;

-- A failing down script: the revert is atomic (nothing reverted), the failed deployment persists, WARNING, ok false.
SELECT deploy.register('0006', 'a', 'CREATE TABLE app.a (id int)', 'DROP TABLE app.a');
SELECT deploy.register('0007', 'b', 'CREATE TABLE app.b (id int)', 'DROP TABLE app.no_such_table');
SELECT deploy.up(app_version => 'v5') ->> 'ok' AS ok;
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, (r -> 'failed') - 'context' AS failed, r -> 'reverted' AS reverted
FROM deploy.rollback() AS r;
SELECT version FROM deploy.applied ORDER BY sort_key;
SELECT to_regclass('app.a') AS a, to_regclass('app.b') AS b;
SELECT kind, state, reverts, error ->> 'sqlstate' AS sqlstate FROM deploy.deployments ORDER BY id DESC LIMIT 2;

-- The rollback window: outside it, PD006 unless force.
UPDATE deploy.applied SET down_sql = 'DROP TABLE app.b', down_checksum = deploy.checksum('DROP TABLE app.b')
WHERE version = '0007';
UPDATE deploy.deployments SET started_at = now() - interval '8 days', finished_at = now() - interval '8 days'
WHERE app_version = 'v5';
\set VERBOSITY terse
SELECT deploy.rollback();
\set VERBOSITY default
\echo :LAST_ERROR_SQLSTATE
SET pg_deploy.rollback_window = '30d';
SELECT deploy.rollback(dry_run => true) ->> 'ok' AS inside_longer_window;
RESET pg_deploy.rollback_window;
SELECT jsonb_path_query_array(deploy.rollback(force => true), '$.reverted[*].version') AS reverted_with_force;
SELECT version FROM deploy.applied ORDER BY sort_key;
