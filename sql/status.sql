-- status: deploy.status(), deploy.current_version(), deploy.require_version() and the views for humans.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
\set SHOW_CONTEXT never
CREATE SCHEMA app;

-- Nothing registered: an empty but complete document.
SELECT jsonb_pretty(deploy.status());
SELECT deploy.current_version();
SELECT deploy.require_version('1');
\echo :LAST_ERROR_SQLSTATE

-- Three migrations; versions order naturally (2 before 10).
SELECT deploy.register('1', 'create_users', 'CREATE TABLE app.users (id int PRIMARY KEY)', 'DROP TABLE app.users');
SELECT deploy.register('2', 'add_email', 'ALTER TABLE app.users ADD COLUMN email text',
                       'ALTER TABLE app.users DROP COLUMN email', reversibility => 'lossy');
SELECT deploy.register('10', 'create_orders', 'CREATE TABLE app.orders (id int PRIMARY KEY)');
SELECT s->'pending' AS pending, s->'pending_count' AS pending_count, s->'applied_count' AS applied_count,
       s->'current_version' AS current_version
FROM deploy.status() s;

SELECT (deploy.up(target => '2', app_version => 'rel-1')) ->> 'ok' AS up_ok;
SELECT deploy.current_version();
SELECT s->'pending' AS pending, s->'applied_count' AS applied_count, s->'current_version' AS current_version,
       jsonb_path_query_array(s->'applied', '$[*].version') AS applied_newest_first,
       s->'last_deployment'->'kind' AS kind, s->'last_deployment'->'state' AS state,
       s->'last_deployment'->'app_version' AS app_version,
       s->'last_deployment'->'version_before' AS version_before,
       s->'last_deployment'->'version_after' AS version_after,
       s->'lock_holder' AS lock_holder, s->'open_markers' AS open_markers,
       s->'running_checkpoints' AS running_checkpoints, s->'archived' AS archived
FROM deploy.status() s;
-- Every key of the documented shape is present.
SELECT array_agg(k ORDER BY k) AS status_keys FROM jsonb_object_keys(deploy.status()) k;

-- require_version: at or below the current version returns the current version.
SELECT deploy.require_version('1'), deploy.require_version('2');
-- Above it (natural order: 10 > 2) raises PD005 naming both versions.
SELECT deploy.require_version('10');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.require_version('3');
\echo :LAST_ERROR_SQLSTATE
-- Bad arguments.
SELECT deploy.require_version(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.require_version('');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.require_version('1 OR 1=1');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.require_version(repeat('9', 65));
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.require_version(E'1\n');
\echo :LAST_ERROR_SQLSTATE
-- None of that changed anything.
SELECT deploy.current_version(), (SELECT count(*) FROM deploy.deployments) AS deployments;

-- The deploy lock holder is reported while someone holds it (here: this session, inside a transaction).
BEGIN;
SELECT pg_advisory_xact_lock(1346651472, 1);
SELECT (s->'lock_holder'->>'pid')::int = pg_backend_pid() AS holder_is_me,
       s->'lock_holder' ? 'application_name' AS names_application, s->'lock_holder' ? 'since' AS has_since
FROM deploy.status() s;
ROLLBACK;
SELECT deploy.status()->'lock_holder' AS lock_holder_after;

-- Views.
SELECT version, state, name, deployment_id IS NOT NULL AS has_deployment, reversibility, transactional, checksum_ok
FROM deploy.migration_state;
SELECT id, kind, state, app_version, version_before, version_after, still_applied, failed_version
FROM deploy.deployment_history;
SELECT kind, deployment_id, version FROM deploy.recent_events ORDER BY id;

-- A failed deployment shows in status and the history with its error.
SELECT deploy.register('11', 'broken', 'ALTER TABLE app.nope ADD COLUMN x int', 'SELECT 1');
SELECT (deploy.up(app_version => 'rel-2')) ->> 'ok' AS up_ok;
SELECT s->'last_deployment'->>'state' AS state, s->'last_deployment'->'error'->>'version' AS failed_version,
       s->'last_deployment'->'error'->>'sqlstate' AS sqlstate, s->'current_version' AS current_version
FROM deploy.status() s;
SELECT id, kind, state, failed_version, failed_sqlstate, still_applied FROM deploy.deployment_history;

-- An applied migration that is no longer registered, and a drifted one, show in migration_state.
UPDATE deploy.migrations SET checksum = 'edited' WHERE version = '1';
DELETE FROM deploy.migrations WHERE version = '2';
SELECT version, state, checksum_ok FROM deploy.migration_state;

-- running_checkpoints lists the unfinished steps, without their SQL (rows written by hand here; the engine writes
-- them for real in its suites).
INSERT INTO deploy.checkpoints (deployment_id, version, step, statement, state)
VALUES (1, '10', 1, 'CREATE INDEX CONCURRENTLY i ON app.users (id)', 'pending'),
       (1, '10', 2, 'VACUUM app.users', 'done');
SELECT jsonb_path_query_array(deploy.status()->'running_checkpoints', '$[*].step') AS unfinished_steps,
       deploy.status()->'running_checkpoints'->0 ? 'statement' AS shows_sql;

-- current_version is one probe of the unique sort_key index, whatever the size of the ledger.
EXPLAIN (COSTS OFF) SELECT version FROM deploy.applied ORDER BY sort_key DESC LIMIT 1;
