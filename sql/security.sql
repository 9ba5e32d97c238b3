-- security: the attacks of docs/security.md, performed. Each part plants something as an attacker, runs the entry
-- points as someone with more rights, and asserts that nothing of the attacker's ran and nothing stored changed.
--   1. search_path: an attacker with no grants in pg_deploy owns a schema on the caller's search_path and shadows
--      every pg_catalog operator and function with an exact-match copy that records who ran it and tries to make the
--      attacker superuser; a superuser then drives every entry point with that schema first on its path.
--   2. deploy_admin: writes to the ledger, the audit log and the counters are refused; the actor and time of an event
--      cannot be chosen; the internal steps cannot be called.
--   3. Stored SQL changed behind its checksum (by the table owner, or a tampered restore) is reported and never run.
--   4. Readers see messages and SQLSTATEs, never error detail, context or private details.
--   5. Input lengths are bounded (22001).
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
DROP SCHEMA IF EXISTS evil CASCADE;
DROP ROLE IF EXISTS regress_sec_attacker;
DROP ROLE IF EXISTS regress_sec_admin;
DROP ROLE IF EXISTS regress_sec_reader;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
CREATE ROLE regress_sec_attacker LOGIN;
CREATE ROLE regress_sec_admin LOGIN IN ROLE deploy_admin;
CREATE ROLE regress_sec_reader LOGIN IN ROLE deploy_reader;
CREATE SCHEMA app AUTHORIZATION regress_sec_admin;
CREATE SCHEMA evil AUTHORIZATION regress_sec_attacker;
GRANT CREATE ON SCHEMA deploy_archive TO regress_sec_admin;

-- 1. The attacker's trap (tests/security/trap.sql, shared with the e2e suite): pwn() records the role that ran it and,
-- when that role is a superuser, makes the attacker one; every pg_catalog operator and function whose types are
-- concrete gets a twin in schema evil that calls pwn() and then the original, and so do count(*), argument pairs
-- pg_catalog matches only through a cast (name || name, oid = regclass) and type names (domains): with the caller's
-- path "evil, pg_catalog" every unqualified name resolves to a twin.
SET ROLE regress_sec_attacker;
\i tests/security/trap.sql
RESET client_min_messages;
RESET ROLE;

-- The trap works: an unqualified operator under that path runs the attacker's code (here as a harmless role).
SET ROLE regress_sec_admin;
SET search_path = evil, pg_catalog;
SELECT 1 = 1 AS control;
RESET search_path;
RESET ROLE;
SELECT who, what FROM evil.pwned;
DELETE FROM evil.pwned;
SELECT setval('evil.hits', 1, false) AS trap_reset;

-- Migrations that use no operator or function of their own, so that anything the trap records came from pg_deploy.
-- 0 is adopted by baseline; 1 creates a table and is verified; 2 is lossy (its down drops a table with data: the
-- archive path runs); 3 builds an index concurrently (non-transactional steps); 4 fails.
SELECT deploy.register('0', 'existing', 'CREATE TABLE app.existing (id int)', 'DROP TABLE app.existing');
SELECT deploy.register('1', 'users', 'CREATE TABLE app.users (id int)', 'DROP TABLE app.users',
                       'SELECT id FROM app.users');
SELECT deploy.register('2', 'scores', 'CREATE TABLE app.scores (id int); INSERT INTO app.scores VALUES (7)',
                       'DROP TABLE app.scores', reversibility => 'lossy');
SELECT deploy.register('3', 'users_idx', 'CREATE INDEX CONCURRENTLY users_id_idx ON app.users (id)',
                       'DROP INDEX app.users_id_idx');
CREATE TABLE app.existing (id int);

-- A superuser drives every entry point with the attacker's schema first on its path. Results are kept in psql
-- variables and read afterwards under a clean path (reading them under the trap would run it).
SET search_path = evil, pg_catalog;
SELECT deploy.baseline('0', app_version => 'adopted') AS base \gset
SELECT deploy.up(dry_run => true) AS dry \gset
SELECT deploy.up(target => '2', app_version => 'r1') AS up1 \gset
SELECT deploy.status() AS status1 \gset
SELECT deploy.current_version() AS cv1, deploy.require_version('1') AS rv1 \gset
SELECT deploy.validate() AS validate1 \gset
SELECT deploy.verify() AS verify1 \gset
SELECT deploy.rollback_eligibility() AS elig1 \gset
SELECT deploy.down(dry_run => true) AS downdry \gset
SELECT deploy.rollback(dry_run => true) AS rbdry \gset
SELECT deploy.up(app_version => 'r2') AS up2 \gset
SELECT deploy.next_step() AS step \gset
RESET search_path;
SELECT (:'step'::jsonb ->> 'step_id') AS step_id \gset
SET search_path = evil, pg_catalog;
CREATE INDEX CONCURRENTLY users_id_idx ON app.users (id);
SELECT deploy.step_done(:step_id) AS stepdone \gset
SELECT deploy.up() AS up3 \gset
SELECT deploy.log_event('regress_note', NULL, NULL, NULL, '{"note": "by hand"}') AS ev \gset
SELECT deploy.request_rollback('health check failed') AS marker \gset
SELECT deploy.claim_marker('w1') AS claimed \gset
SELECT deploy.renew_lease(:marker, 'w1') AS renewed \gset
SELECT deploy.execute_rollback(:marker, 'w1') AS exec1 \gset
SELECT deploy.rollback() AS rb1 \gset
SELECT deploy.unregister('3') AS unreg \gset
CALL deploy.run(target => '1') \gset run_
SELECT deploy.register('4', 'fails', 'CREATE TABLE app.fails (id int); CREATE TABLE app.fails (id int)',
                       'DROP TABLE app.fails') AS reg4 \gset
SELECT deploy.up(atomic => false) AS upfail \gset
RESET search_path;
SELECT (:'upfail'::jsonb ->> 'marker_id') AS marker_up \gset
SET search_path = evil, pg_catalog;
SELECT deploy.resolve_marker(:marker_up, 'abandoned', 'not needed') AS resolved \gset
SELECT deploy.unregister('4') AS unreg4 \gset
SELECT deploy.down(to_version => '1') AS down1 \gset
RESET search_path;

-- Nothing of the attacker's ran, and the calls did what they do.
SELECT count(*) AS trap_runs, (SELECT is_called FROM evil.hits) AS trap_ran_in_a_rolled_back_call FROM evil.pwned;
SELECT rolsuper AS attacker_is_superuser FROM pg_roles WHERE rolname = 'regress_sec_attacker';
SELECT :'base'::jsonb ->> 'ok' AS baseline_ok, :'dry'::jsonb ->> 'ok' AS dry_ok, :'up1'::jsonb ->> 'ok' AS up1_ok,
       :'cv1' AS cv1, :'rv1' AS rv1, :'validate1'::jsonb ->> 'ok' AS validate_ok,
       :'verify1'::jsonb ->> 'ok' AS verify_ok, :'elig1'::jsonb ->> 'eligible' AS eligible,
       :'downdry'::jsonb ->> 'ok' AS down_dry_ok, :'rbdry'::jsonb ->> 'ok' AS rollback_dry_ok;
SELECT :'up2'::jsonb ->> 'state' AS up2_state, :'stepdone'::jsonb ->> 'migration_applied' AS step_applied,
       :'up3'::jsonb ->> 'state' AS up3_state, :'exec1'::jsonb ->> 'ok' AS marker_ok,
       :'exec1'::jsonb ->> 'state' AS marker_state, :'rb1'::jsonb ->> 'ok' AS rollback_ok, :'unreg' AS unregistered,
       :'run_result'::jsonb ->> 'ok' AS run_ok, :'upfail'::jsonb ->> 'ok' AS failing_up_ok,
       :'resolved'::jsonb ->> 'state' AS resolved_state, :'down1'::jsonb ->> 'ok' AS down_ok;
SELECT object_type, object_name, row_count FROM deploy.archived ORDER BY id;
SELECT version FROM deploy.applied ORDER BY sort_key;

-- The same with pg_catalog implicitly first (the usual path): only the cast-matched twins can win there.
SET search_path = evil;
SELECT deploy.up(app_version => 'r3') AS up4 \gset
SELECT deploy.request_rollback('again') AS marker2 \gset
SELECT deploy.execute_rollback(:marker2) AS exec2 \gset
RESET search_path;
SELECT count(*) AS trap_runs, (SELECT is_called FROM evil.hits) AS trap_ran_in_a_rolled_back_call FROM evil.pwned;
SELECT :'up4'::jsonb ->> 'ok' AS up4_ok, :'exec2'::jsonb ->> 'state' AS marker2_state;

-- Migration SQL keeps the caller's path: an unqualified name in it resolves there (here tables in app), and so does
-- the table a lossy down script drops, which is archived.
SET search_path = app;
SELECT deploy.register('5', 'unqualified_lossy', 'CREATE TABLE kept (id int); INSERT INTO kept VALUES (1), (2)',
                       'DROP TABLE kept', reversibility => 'lossy');
SELECT deploy.up() ->> 'ok' AS up_ok;
SELECT deploy.down() ->> 'ok' AS down_ok;
SELECT deploy.register('6', 'unqualified', 'CREATE TABLE plain (id int)', 'DROP TABLE plain');
SELECT deploy.up() ->> 'ok' AS up_ok;
RESET search_path;
SELECT to_regclass('app.plain') AS created_in_callers_schema;
SELECT object_name, row_count FROM deploy.archived WHERE version = '5';

-- 2. deploy_admin cannot write the ledger behind the functions' back.
SET ROLE regress_sec_admin;
UPDATE deploy.applied SET down_sql = 'ALTER ROLE regress_sec_admin SUPERUSER' WHERE version = '6';
\echo :LAST_ERROR_SQLSTATE
UPDATE deploy.migrations SET down_sql = 'SELECT 1', down_checksum = deploy.checksum('SELECT 1') WHERE version = '6';
\echo :LAST_ERROR_SQLSTATE
UPDATE deploy.migrations SET verify_sql = 'SELECT 1' WHERE version = '1';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO deploy.events (kind, actor, at) VALUES ('deployment_succeeded', 'postgres', '2020-01-01');
\echo :LAST_ERROR_SQLSTATE
UPDATE deploy.ledger_stats SET applied_count = 0;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM deploy.deployments;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO deploy.rollback_markers (deployment_id, reason) VALUES (1, 'forged');
\echo :LAST_ERROR_SQLSTATE
UPDATE deploy.checkpoints SET state = 'done';
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.log_events('deployment_succeeded', NULL, ARRAY['1'], ARRAY['2020-01-01'::timestamptz], ARRAY['{}'::jsonb]);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.execute_rollback_end('{"marker_id": 1}', '{"ok": true}', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.execute_rollback_begin(1, 'x', false);
\echo :LAST_ERROR_SQLSTATE
-- The functions set actor and time themselves.
SELECT deploy.log_event('regress_admin_note', details => '{"actor": "postgres"}') AS admin_event \gset
RESET ROLE;
SELECT actor, at > now() - interval '1 minute' AS at_is_now, details FROM deploy.events WHERE id = :admin_event;
SELECT version, deploy.checksum(down_sql) = down_checksum AS down_intact FROM deploy.applied WHERE version = '6';

-- 3. The table owner (or a tampered restore) changes stored SQL behind its checksum: reported, never run.
UPDATE deploy.applied SET down_sql = 'CREATE TABLE app.tampered (id int); DROP TABLE app.plain' WHERE version = '6';
UPDATE deploy.migrations SET verify_sql = 'CREATE TABLE app.tampered_verify (id int)' WHERE version = '1';
SELECT p ->> 'kind' AS kind, p ->> 'version' AS version, p ->> 'part' AS part, p ->> 'stored_in' AS stored_in
FROM jsonb_array_elements(deploy.validate() -> 'problems') p;
SELECT r ->> 'ok' AS ok, r -> 'failed' ->> 'sqlstate' AS sqlstate FROM deploy.down() AS r;
SELECT r ->> 'ok' AS ok, r -> 'failed' ->> 'sqlstate' AS sqlstate FROM deploy.down(dry_run => true) AS r;
SELECT x ->> 'ok' AS ok, x ->> 'sqlstate' AS sqlstate
FROM jsonb_array_elements(deploy.verify('1') -> 'results') x;
SELECT deploy.request_rollback('tampered down') AS marker3 \gset
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, r -> 'error' ->> 'sqlstate' AS sqlstate
FROM deploy.execute_rollback(:marker3) AS r;
SELECT to_regclass('app.tampered') AS tampered_ran, to_regclass('app.tampered_verify') AS tampered_verify_ran,
       to_regclass('app.plain') IS NOT NULL AS plain_kept;
SELECT kind, version, details ->> 'operation' AS operation FROM deploy.events WHERE kind = 'stored_sql_drift'
ORDER BY id;
SELECT deploy.resolve_marker(:marker3, 'abandoned', 'tampering investigated') ->> 'state' AS closed;
-- up: a pending migration whose stored up_sql changed is not run either (nor is its down SQL copied).
SELECT deploy.register('9', 'pending', 'CREATE TABLE app.nine (id int)', 'DROP TABLE app.nine');
UPDATE deploy.migrations SET up_sql = 'CREATE TABLE app.tampered_up (id int)' WHERE version = '9';
SELECT r ->> 'ok' AS ok, r -> 'failed' ->> 'sqlstate' AS sqlstate FROM deploy.up() AS r;
SELECT to_regclass('app.tampered_up') AS tampered_up_ran, count(*) AS applied_9 FROM deploy.applied WHERE version = '9';
SELECT kind, details ->> 'operation' AS operation FROM deploy.events WHERE kind = 'stored_sql_drift' AND version = '9';
SELECT deploy.unregister('9');

-- 4. Readers: message and SQLSTATE of a failure, never its detail or context (they quote the SQL's values).
CREATE TABLE app.secrets (token text PRIMARY KEY);
ALTER TABLE app.secrets OWNER TO regress_sec_admin;
SELECT deploy.register('7', 'leaks', $$INSERT INTO app.secrets VALUES ('s3cr3t-token');
INSERT INTO app.secrets VALUES ('s3cr3t-token')$$, 'DELETE FROM app.secrets');
SET ROLE regress_sec_admin;
SELECT r -> 'failed' ->> 'detail' AS admin_sees_detail FROM deploy.up() AS r;
RESET ROLE;
SET ROLE regress_sec_reader;
SELECT error_private FROM deploy.deployments;
\echo :LAST_ERROR_SQLSTATE
SELECT private_details FROM deploy.events;
\echo :LAST_ERROR_SQLSTATE
SELECT last_error_private FROM deploy.rollback_markers;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS rows_with_secret FROM (
    SELECT to_jsonb(d)::text AS t FROM (SELECT id, kind, state, error, metadata FROM deploy.deployments) d
    UNION ALL SELECT to_jsonb(h)::text FROM deploy.deployment_history h
    UNION ALL SELECT to_jsonb(e)::text FROM deploy.recent_events e
    UNION ALL SELECT deploy.status()::text
    UNION ALL SELECT to_jsonb(m)::text FROM (SELECT reason, details, last_error FROM deploy.rollback_markers) m) s
WHERE t LIKE '%s3cr3t%';
SELECT error ->> 'message' AS message, error ->> 'sqlstate' AS sqlstate FROM deploy.deployments
WHERE state = 'failed' ORDER BY id DESC LIMIT 1;
RESET ROLE;
SELECT error_private ->> 'detail' AS detail_for_admins FROM deploy.deployments WHERE state = 'failed'
ORDER BY id DESC LIMIT 1;
SELECT deploy.unregister('7');

-- 5. Input lengths (characters, not bytes) and the one table of limits.
SELECT deploy.request_rollback(repeat('x', 200000));
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.request_rollback(repeat('é', 1001));
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.up(app_version => repeat('v', 201));
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.rollback(reason => repeat('r', 1001));
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('8', repeat('n', 201), 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.claim_marker(repeat('h', 201));
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.up(metadata => jsonb_build_object('blob', repeat('m', 70000)));
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.log_event('regress', details => jsonb_build_object('blob', repeat('d', 70000)));
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.log_event(repeat('k', 65));
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.check_input_length('no_such_argument', 'x');
\echo :LAST_ERROR_SQLSTATE
-- 1,000 two-byte characters are within the 1,000-character limit of a reason.
SELECT deploy.request_rollback(repeat('é', 1000)) > 0 AS accepted;
SELECT count(*) AS markers_for_long_reasons FROM deploy.rollback_markers WHERE length(reason) > 1000;

SET client_min_messages = warning;
DROP EXTENSION pg_deploy CASCADE;
DROP SCHEMA app CASCADE;
DROP SCHEMA evil CASCADE;
DROP ROLE regress_sec_attacker;
DROP ROLE regress_sec_admin;
DROP ROLE regress_sec_reader;
