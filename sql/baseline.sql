-- baseline: adopting an existing database; registered migrations up to a version are marked applied unrun.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
\set SHOW_CONTEXT never

-- The database already has the schema of migrations 1 and 2 (built before pg_deploy).
CREATE SCHEMA app;
CREATE TABLE app.users (id int PRIMARY KEY, email text);

-- Running these up scripts again would fail: baseline must not run them.
SELECT deploy.register('1', 'create_users', 'CREATE TABLE app.users (id int PRIMARY KEY)', 'DROP TABLE app.users');
SELECT deploy.register('2', 'add_email', 'ALTER TABLE app.users ADD COLUMN email text',
                       'ALTER TABLE app.users DROP COLUMN email');
SELECT deploy.register('3', 'create_orders', 'CREATE TABLE app.orders (id int PRIMARY KEY)', 'DROP TABLE app.orders');

-- Bad arguments first; each leaves the ledger empty.
SELECT deploy.baseline(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.baseline('two');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.baseline('2; DROP TABLE app.users');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.baseline('');
\echo :LAST_ERROR_SQLSTATE
-- Under REPEATABLE READ the snapshot would predate the deploy lock: refused.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT deploy.baseline('2');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT count(*) AS applied, (SELECT count(*) FROM deploy.deployments) AS deployments,
       (SELECT count(*) FROM deploy.events WHERE kind <> 'migration_registered') AS events
FROM deploy.applied;

-- Baseline through 2.
SELECT b - 'duration_ms' AS baseline FROM deploy.baseline('2', app_version => 'legacy-1.0') b;
SELECT version, name, baseline, duration_ms, deployment_id FROM deploy.applied ORDER BY sort_key;
SELECT id, kind, state, app_version, version_before, version_after, finished_at IS NOT NULL AS finished
FROM deploy.deployments;
SELECT kind, deployment_id, version FROM deploy.events WHERE kind <> 'migration_registered' ORDER BY id;
SELECT deploy.current_version();
-- The ledger now matches the schema; the checksums are those registered.
SELECT deploy.validate();

-- Baselining again over applied versions is refused (55000), and so is an unknown version (P0002).
SELECT deploy.baseline('2');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.baseline('3');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.baseline('7');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS applied, (SELECT count(*) FROM deploy.deployments) AS deployments FROM deploy.applied;

-- deploy.up() continues from the baseline: only 3 runs.
SELECT u->'ok' AS ok, jsonb_path_query_array(u, '$.applied[*].version') AS applied, u->'version_before' AS before
FROM deploy.up() u;
SELECT to_regclass('app.orders') IS NOT NULL AS orders_created;

-- A baseline deployment is not something to roll back.
SELECT jsonb_path_query_array(deploy.rollback_eligibility(1), '$.reasons[*].code') AS reasons;

-- The baseline rows carry the down SQL registered, so reverting past the baseline works like any migration.
SELECT version, down_sql FROM deploy.applied WHERE baseline ORDER BY sort_key;
