-- privileges: nothing for PUBLIC; deploy_reader reads state (never SQL bodies); deploy_admin operates;
-- a role with neither gets 42501 everywhere. Functions are SECURITY INVOKER: the caller's rights run the SQL.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
\set SHOW_CONTEXT never
CREATE SCHEMA app;

DROP ROLE IF EXISTS regress_pd_reader;
DROP ROLE IF EXISTS regress_pd_admin;
DROP ROLE IF EXISTS regress_pd_nobody;
CREATE ROLE regress_pd_reader LOGIN IN ROLE deploy_reader;
CREATE ROLE regress_pd_admin LOGIN IN ROLE deploy_admin;
CREATE ROLE regress_pd_nobody LOGIN;
-- The admin role may create its migrations' objects in app (its own rights, not pg_deploy's).
GRANT USAGE, CREATE ON SCHEMA app TO regress_pd_admin;

-- Nothing in schema deploy is granted to PUBLIC: tables, sequences, routines, the schema itself.
SELECT count(*) AS public_grants_on_relations
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.relnamespace = 'deploy'::regnamespace AND a.grantee = 0;
SELECT count(*) AS relations_with_default_acl
FROM pg_class c WHERE c.relnamespace = 'deploy'::regnamespace AND c.relacl IS NULL AND c.relkind IN ('r', 'v', 'S');
SELECT count(*) AS public_grants_on_routines
FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
WHERE p.pronamespace = 'deploy'::regnamespace AND a.grantee = 0;
SELECT count(*) AS public_grants_on_schema
FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = 'deploy' AND a.grantee = 0;

-- One registered, applied migration to look at.
SELECT deploy.register('1', 'secret_setup', $$CREATE TABLE app.t (id int) -- password 'hunter2'$$, 'DROP TABLE app.t',
                       verify_sql => 'SELECT id FROM app.t');
SELECT (deploy.up()) ->> 'ok' AS up_ok;
ALTER TABLE app.t OWNER TO regress_pd_admin;

-- The reader: status, current_version, require_version, validate, rollback_eligibility, version_key, the views
-- and the ledger without SQL bodies.
SET ROLE regress_pd_reader;
SELECT deploy.current_version(), deploy.require_version('1'), deploy.version_key('1') IS NOT NULL AS has_key;
SELECT (deploy.status()) ->> 'current_version' AS status_version, (deploy.validate()) ->> 'ok' AS valid,
       (deploy.rollback_eligibility()) ->> 'eligible' AS eligible;
SELECT version, state FROM deploy.migration_state;
SELECT count(*) >= 1 AS sees_history FROM deploy.deployment_history;
SELECT count(*) >= 1 AS sees_events FROM deploy.recent_events;
SELECT version, name, checksum IS NOT NULL AS has_checksum FROM deploy.migrations;
SELECT count(*) AS applied FROM deploy.applied;
SELECT count(*) AS deployments FROM deploy.deployments;
SELECT count(*) AS markers FROM deploy.rollback_markers;
-- ... but no SQL bodies.
SELECT up_sql FROM deploy.migrations;
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM deploy.migrations;
\echo :LAST_ERROR_SQLSTATE
SELECT down_sql FROM deploy.applied;
\echo :LAST_ERROR_SQLSTATE
SELECT statement FROM deploy.checkpoints;
\echo :LAST_ERROR_SQLSTATE
-- ... and no operations.
SELECT deploy.up();
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('2', 'x', 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.rollback();
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.baseline('1');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.verify();
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.request_rollback('reader wants out');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM deploy.claim_marker('reader');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.execute_rollback(1);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.resolve_marker(1, 'done');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.log_event('marker_done');
\echo :LAST_ERROR_SQLSTATE
CALL deploy.run();
\echo :LAST_ERROR_SQLSTATE
INSERT INTO deploy.events (kind) VALUES ('forged');
\echo :LAST_ERROR_SQLSTATE
UPDATE deploy.deployments SET state = 'succeeded';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM deploy.applied;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- Nobody: not even status or the schema.
SET ROLE regress_pd_nobody;
SELECT deploy.status();
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.current_version();
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM deploy.migration_state;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM deploy.events;
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.up();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- The admin operates: register, up, verify, markers, rollback, baseline, run; reads the SQL it registered.
SET ROLE regress_pd_admin;
SELECT deploy.register('2', 'admin_table', 'CREATE TABLE app.t2 (id int)', 'DROP TABLE app.t2');
SELECT (deploy.up(app_version => 'rel-2')) ->> 'ok' AS up_ok;
SELECT up_sql FROM deploy.migrations WHERE version = '2';
SELECT (deploy.verify()) ->> 'ok' AS verify_ok;
SELECT deploy.request_rollback('admin test') AS m \gset
SELECT count(*) AS claimed FROM deploy.claim_marker('admin-watcher');
SELECT r->>'ok' AS ok, r->>'state' AS state FROM deploy.execute_rollback(:m, 'admin-watcher') r;
SELECT deploy.current_version();
SELECT deploy.log_event('watcher_decision', details => '{"decision": "hold"}') > 0 AS logged;
CALL deploy.run() \gset
SELECT :'result'::jsonb -> 'applied' -> 0 -> 'version' AS run_applied;
-- Even an admin cannot rewrite the audit log.
UPDATE deploy.events SET kind = 'forged';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM deploy.events;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE deploy.events;
\echo :LAST_ERROR_SQLSTATE
-- Migration SQL runs with the caller's rights: the admin role cannot reach what it has no rights on.
RESET ROLE;
CREATE TABLE app.owned_by_superuser (id int);
SET ROLE regress_pd_admin;
SELECT deploy.register('3', 'touch_superuser_table', 'DROP TABLE app.owned_by_superuser');
SELECT u->>'ok' AS ok, u->'failed'->>'sqlstate' AS sqlstate FROM deploy.up() u;
RESET ROLE;
SELECT to_regclass('app.owned_by_superuser') IS NOT NULL AS superuser_table_kept;

-- Clean up the roles (they are cluster-wide).
DROP EXTENSION pg_deploy CASCADE;
DROP SCHEMA app CASCADE;
DROP ROLE regress_pd_reader;
DROP ROLE regress_pd_admin;
DROP ROLE regress_pd_nobody;
