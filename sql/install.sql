-- install: a fresh CREATE EXTENSION, again after DROP EXTENSION, and in a second database of the same cluster
-- (the roles are cluster-wide and must be reused, not re-created).
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
\set SHOW_CONTEXT never
SELECT current_database() AS regress_db \gset

-- The installed version and the schema; not relocatable.
SELECT extname, extversion, extrelocatable, extnamespace::regnamespace FROM pg_extension WHERE extname = 'pg_deploy';
ALTER EXTENSION pg_deploy SET SCHEMA public;
\echo :LAST_ERROR_SQLSTATE

-- The tables and views of the contract are extension members.
SELECT c.relname, c.relkind
FROM pg_depend d JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
WHERE d.refclassid = 'pg_extension'::regclass
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_deploy')
  AND c.relkind IN ('r', 'v')
ORDER BY c.relname;
-- pg_dump keeps the ledger's rows: 8 tables and 5 identity sequences are registered as configuration.
SELECT cardinality(extconfig) AS dumped_relations FROM pg_extension WHERE extname = 'pg_deploy';

-- The operational routines of the contract exist with their signatures.
SELECT p.oid::regprocedure AS routine, p.prokind
FROM pg_proc p
WHERE p.pronamespace = 'deploy'::regnamespace
  AND p.proname IN ('status', 'current_version', 'require_version', 'validate', 'verify', 'baseline',
                    'request_rollback', 'claim_marker', 'renew_lease', 'execute_rollback', 'resolve_marker',
                    'rollback_eligibility', 'run')
ORDER BY p.oid::regprocedure::text;
-- SECURITY DEFINER is kept to the functions that write the ledger for deploy_admin and run no user SQL (events,
-- markers, baseline) and to validate (reads bodies to hash them, returns none); each pins search_path. Everything
-- that runs migration, down or verify SQL is SECURITY INVOKER (the C engine), so that SQL keeps the caller's rights.
SELECT p.oid::regprocedure AS security_definer, p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'c') AS is_c,
       coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false) AS pinned
FROM pg_proc p WHERE p.pronamespace = 'deploy'::regnamespace AND p.prosecdef ORDER BY p.oid::regprocedure::text;
-- Every SQL and PL/pgSQL routine pins search_path, except deploy.run (a procedure with a SET clause cannot COMMIT),
-- which uses no operator and calls only schema-qualified functions with arguments of their exact types.
SELECT p.oid::regprocedure AS without_pinned_search_path
FROM pg_proc p
WHERE p.pronamespace = 'deploy'::regnamespace
  AND p.prolang IN (SELECT oid FROM pg_language WHERE lanname IN ('sql', 'plpgsql'))
  AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)
ORDER BY p.oid::regprocedure::text;

-- A fresh ledger is empty and says so.
SELECT deploy.current_version();
SELECT deploy.status() - 'lock_holder';

-- DROP and CREATE again: the roles survive (cluster-wide) and are reused; the new ledger starts empty.
SELECT deploy.register('0001', 'first', 'CREATE TABLE app_install_t (id int)', 'DROP TABLE app_install_t');
SELECT deploy.up() ->> 'ok' AS up_ok;
DROP EXTENSION pg_deploy;
DROP TABLE app_install_t;
SELECT rolname FROM pg_roles WHERE rolname IN ('deploy_admin', 'deploy_reader') ORDER BY 1;
CREATE EXTENSION pg_deploy;
SELECT count(*) AS migrations FROM deploy.migrations;
SELECT count(*) AS events FROM deploy.events;
SELECT pg_has_role('deploy_admin', 'deploy_reader', 'MEMBER') AS admin_is_reader;

-- A second database in the same cluster: the roles already exist there too.
DROP DATABASE IF EXISTS pg_deploy_second_db;
CREATE DATABASE pg_deploy_second_db;
\c pg_deploy_second_db
SET client_min_messages = warning;
CREATE EXTENSION pg_deploy;
SELECT extversion FROM pg_extension WHERE extname = 'pg_deploy';
SELECT deploy.register('0001', 'first', 'CREATE TABLE second_t (id int)', 'DROP TABLE second_t');
SELECT deploy.up() ->> 'version_after' AS second_db_version;
SELECT deploy.current_version();
\c :regress_db
SET client_min_messages = warning;
DROP DATABASE pg_deploy_second_db;
-- ... and the first database did not see any of it.
SELECT deploy.current_version() IS NULL AS first_db_untouched;

-- CREATE EXTENSION a third time in the same session, after DROP ... CASCADE.
DROP EXTENSION pg_deploy CASCADE;
CREATE EXTENSION pg_deploy;
SELECT deploy.status() ->> 'schema_version' AS schema_version;
