-- up: applying pending migrations in natural order, deployments, events, targets, resume of nothing-to-do.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never

-- Nothing registered: nothing to do, nothing written.
SELECT deploy.up() - 'duration_ms' AS result;
SELECT count(*) AS deployments FROM deploy.deployments;

-- Registered out of order on purpose: 10 must come after 9 (natural order).
SELECT deploy.register('10', 'ten', 'CREATE TABLE app.t10 (id int)', 'DROP TABLE app.t10');
SELECT deploy.register('9', 'nine', 'CREATE TABLE app.t9 (id int)', 'DROP TABLE app.t9');
SELECT deploy.register('1', 'schema', 'CREATE SCHEMA app', 'DROP SCHEMA app');
SELECT deploy.register('2', 'users', $$CREATE TABLE app.users (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO app.users VALUES (1, 'a@example.com'), (2, 'b@example.com');$$, 'DROP TABLE app.users');

-- Unknown target: P0002, nothing written.
SELECT deploy.up(target => '99');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.up(target => 'not valid');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.up(dry_run => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.up(atomic => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.up(app_version => '');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.up(metadata => '[1]');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS deployments, (SELECT count(*) FROM deploy.applied) AS applied FROM deploy.deployments;

-- Up to a target.
SELECT r - 'duration_ms' - 'applied' AS result, jsonb_path_query_array(r, '$.applied[*].version') AS applied
FROM deploy.up(target => '2', app_version => 'release-1', metadata => '{"ticket": "OPS-1"}') AS r;
SELECT id, kind, app_version, state, version_before, version_after, metadata, finished_at IS NOT NULL AS finished
FROM deploy.deployments ORDER BY id;
SELECT version, sort_key, name, deployment_id, applied_by = current_user AS by_me, duration_ms >= 0 AS timed,
       down_sql, reversibility, baseline
FROM deploy.applied ORDER BY sort_key;
SELECT count(*) AS users FROM app.users;

-- The rest, in natural order: 9 then 10.
SELECT r - 'duration_ms' - 'applied' AS result, jsonb_path_query_array(r, '$.applied[*].version') AS applied
FROM deploy.up(app_version => 'release-2') AS r;
SELECT version FROM deploy.applied ORDER BY sort_key;

-- Nothing pending: no deployment, unless an app_version is given (a release without schema change).
SELECT deploy.up() - 'duration_ms' AS result;
SELECT r - 'duration_ms' AS result FROM deploy.up(app_version => 'release-3') AS r;
SELECT id, app_version, state, version_before, version_after FROM deploy.deployments ORDER BY id;

-- A target that is already applied: nothing to do.
SELECT deploy.up(target => '9') ->> 'state' AS state;

-- Events of the deployments, in order (NOTIFY payloads carry the ids only).
SELECT kind, deployment_id, version FROM deploy.events WHERE deployment_id IS NOT NULL ORDER BY id;

-- Out-of-order pending migrations are refused (55000) unless pg_deploy.allow_out_of_order.
SELECT deploy.register('3', 'late', 'CREATE TABLE app.t3 (id int)', 'DROP TABLE app.t3');
SELECT deploy.register('11', 'next', 'CREATE TABLE app.t11 (id int)', 'DROP TABLE app.t11');
SELECT deploy.up();
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS applied FROM deploy.applied;
SET pg_deploy.allow_out_of_order = on;
SELECT jsonb_path_query_array(deploy.up(), '$.applied[*].version') AS applied;
RESET pg_deploy.allow_out_of_order;

-- Migration SQL runs with the caller's search_path and rights (SECURITY INVOKER: no escalation).
SELECT deploy.register('12', 'search_path', 'CREATE TABLE t12_in_search_path (id int)', 'DROP TABLE t12_in_search_path');
SET search_path = app, public;
SELECT deploy.up() ->> 'ok' AS ok;
RESET search_path;
SELECT relnamespace::regnamespace FROM pg_class WHERE relname = 't12_in_search_path';
SELECT prosecdef FROM pg_proc WHERE oid = 'deploy.up(text, boolean, text, boolean, jsonb)'::regprocedure;

-- A reader may not call up() (42501), and nothing changes.
SET ROLE deploy_reader;
SELECT deploy.up();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- The GUCs exist with their documented defaults, and the prefix is reserved.
SELECT name, setting, unit FROM pg_settings WHERE name LIKE 'pg_deploy.%' ORDER BY name;
SET pg_deploy.no_such_setting = 1;
\echo :LAST_ERROR_SQLSTATE
