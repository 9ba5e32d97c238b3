-- validate_verify: deploy.validate() (ledger against catalog) and deploy.verify() (verify SQL, always rolled back).
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
\set SHOW_CONTEXT never
CREATE SCHEMA app;

-- An empty ledger is valid, and verify has nothing to check.
SELECT deploy.validate();
SELECT deploy.verify();

SELECT deploy.register('1', 'users', 'CREATE TABLE app.users (id int PRIMARY KEY, name text)', 'DROP TABLE app.users',
                       verify_sql => 'SELECT id, name FROM app.users WHERE false');
SELECT deploy.register('2', 'audit', 'CREATE TABLE app.audit (id int)', 'DROP TABLE app.audit',
                       verify_sql => 'INSERT INTO app.audit VALUES (42); SELECT 1/count(*) FROM app.audit');
SELECT deploy.register('3', 'no_verify', 'CREATE TABLE app.plain (id int)', 'DROP TABLE app.plain');
SELECT deploy.register('5', 'later', 'CREATE TABLE app.later (id int)', 'DROP TABLE app.later');
SELECT (deploy.up(target => '3')) ->> 'ok' AS up_ok;
SELECT deploy.validate();

-- verify: 1 and 2 pass, 3 has no verify SQL (skipped, not a failure). Durations vary: shown apart.
SELECT v - 'results' AS summary, jsonb_path_query_array(v, '$.results[*] ? (@.ok == true).version') AS passed,
       jsonb_path_query_array(v, '$.results[*] ? (@.skipped == true).version') AS skipped,
       jsonb_path_query_array(v, '$.results[*].duration_ms ? (@ >= 0)') <> '[]' AS has_durations
FROM deploy.verify() v;
-- The verify SQL of 2 inserted a row and saw it; that was rolled back.
SELECT count(*) AS audit_rows FROM app.audit;
-- One version only.
SELECT jsonb_path_query_array(deploy.verify('1'), '$.results[*].version') AS verified;

-- A verify that fails: the schema no longer matches (someone dropped a column by hand).
ALTER TABLE app.users DROP COLUMN name;
SELECT v->'ok' AS ok, v->'checked' AS checked, v->'failed' AS failed,
       (SELECT jsonb_agg(r - 'duration_ms') FROM jsonb_array_elements(v->'results') r
        WHERE r->>'ok' = 'false') AS failures
FROM deploy.verify() v;
ALTER TABLE app.users ADD COLUMN name text;

-- verify's bad arguments.
SELECT deploy.verify('5');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.verify('99');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.verify('not a version');
\echo :LAST_ERROR_SQLSTATE
-- A verify script that tries to commit is a failure of that script, not of the function.
UPDATE deploy.migrations SET verify_sql = 'COMMIT', verify_checksum = deploy.checksum('COMMIT') WHERE version = '3';
SELECT r->>'version' AS version, r->>'ok' AS ok, r->>'sqlstate' AS sqlstate
FROM jsonb_array_elements(deploy.verify('3')->'results') r;
UPDATE deploy.migrations SET verify_sql = NULL, verify_checksum = NULL WHERE version = '3';
-- The session's statement_timeout bounds a verify call.
UPDATE deploy.migrations SET verify_sql = 'SELECT pg_sleep(5)', verify_checksum = deploy.checksum('SELECT pg_sleep(5)')
WHERE version = '3';
SET statement_timeout = '100ms';
SELECT deploy.verify('3');
\echo :LAST_ERROR_SQLSTATE
RESET statement_timeout;
UPDATE deploy.migrations SET verify_sql = NULL, verify_checksum = NULL WHERE version = '3';

-- validate finds each kind of problem.
-- 1. Out of order: 2.5 sorts between 2 and 3 (natural order) and is not applied: a migration merged late.
SELECT deploy.register('2.5', 'merged_late', 'CREATE TABLE app.late (id int)', 'DROP TABLE app.late');
-- 2. Drift: the registered SQL of an applied migration was edited behind deploy.register's back.
UPDATE deploy.migrations SET up_sql = up_sql || ' -- edited', checksum = 'edited' WHERE version = '2';
-- 3. Applied but no longer registered.
DELETE FROM deploy.migrations WHERE version = '1';
SELECT jsonb_pretty(deploy.validate());
-- validate changes nothing.
SELECT count(*) AS applied, (SELECT count(*) FROM deploy.migrations) AS registered FROM deploy.applied;
-- verify skips what it cannot check, and says why.
SELECT r->>'version' AS version, r->>'ok' AS ok, r->>'reason' AS reason
FROM jsonb_array_elements(deploy.verify()->'results') r;
