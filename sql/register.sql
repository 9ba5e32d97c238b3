-- register: the catalog of migrations; idempotent registration, drift, ambiguity and bad input.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never

-- A new migration, then the same content again: registered, unchanged.
SELECT deploy.register('0001', 'create_app', 'CREATE SCHEMA app; CREATE TABLE app.users (id int PRIMARY KEY);',
                       'DROP SCHEMA app CASCADE;');
SELECT deploy.register('0001', 'create_app', 'CREATE SCHEMA app; CREATE TABLE app.users (id int PRIMARY KEY);',
                       'DROP SCHEMA app CASCADE;');
SELECT version, sort_key, name, checksum = encode(sha256(convert_to(up_sql, 'UTF8')), 'hex') AS checksum_is_sha256,
       transactional, reversibility, registered_by = current_user AS by_me
FROM deploy.migrations;

-- Defaults: no down => irreversible; detected transactional flag.
SELECT deploy.register('0002', 'seed', 'INSERT INTO app.users VALUES (1)');
SELECT deploy.register('0003', 'lossy_one', 'ALTER TABLE app.users ADD COLUMN note text',
                       'ALTER TABLE app.users DROP COLUMN note', reversibility => 'lossy');
SELECT deploy.register('0004', 'concurrent_index', 'CREATE INDEX CONCURRENTLY users_note ON app.users (note)',
                       'DROP INDEX app.users_note');
SELECT version, transactional, reversibility, down_sql IS NULL AS no_down FROM deploy.migrations ORDER BY sort_key;

-- Pending migration with different content: PD008 unless replace => true.
SELECT deploy.register('0002', 'seed', 'INSERT INTO app.users VALUES (2)');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0002', 'seed', 'INSERT INTO app.users VALUES (2)', replace => true);
SELECT up_sql FROM deploy.migrations WHERE version = '0002';

-- Same natural key, different spelling: PD008.
SELECT deploy.register('001', 'other', 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('2', 'other', 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE

-- Applied migration: identical content is unchanged, changed up SQL is drift (PD001), even with replace.
SELECT deploy.up(target => '0001')->>'ok' AS applied_0001;
SELECT deploy.register('0001', 'create_app', 'CREATE SCHEMA app; CREATE TABLE app.users (id int PRIMARY KEY);',
                       'DROP SCHEMA app CASCADE;');
SELECT deploy.register('0001', 'create_app', 'CREATE SCHEMA app; CREATE TABLE app.users (id bigint PRIMARY KEY);',
                       'DROP SCHEMA app CASCADE;');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0001', 'create_app', 'CREATE SCHEMA app; CREATE TABLE app.users (id bigint PRIMARY KEY);',
                       'DROP SCHEMA app CASCADE;', replace => true);
\echo :LAST_ERROR_SQLSTATE
-- An applied migration's name/down SQL may be replaced explicitly (its applied row keeps the down SQL it ran with).
SELECT deploy.register('0001', 'create_app_v2', 'CREATE SCHEMA app; CREATE TABLE app.users (id int PRIMARY KEY);',
                       'DROP SCHEMA app CASCADE;', replace => true);

-- NULL and empty arguments.
SELECT deploy.register(NULL, 'x', 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0009', NULL, 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0009', 'x', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0009', 'x', 'SELECT 1', replace => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('', 'x', 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0009', ' ', 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE
-- Scripts of only comments or blanks (or empty) are deliberate no-ops: registered with a notice, applied like any
-- other (sql/up.sql). An empty down_sql is a revert with nothing to do; NULL means irreversible.
SELECT deploy.register('0901', 'blank', '  ');
SELECT deploy.register('0902', 'comment', '-- only a comment');
SELECT deploy.register('0903', 'empty_down', 'SELECT 1', '');
SELECT reversibility, down_sql FROM deploy.migrations WHERE version = '0903';
SELECT deploy.unregister(v) FROM unnest(ARRAY['0901', '0902', '0903']) v;
SELECT deploy.register('0009', 'x', 'SELECT 1', verify_sql => '');
\echo :LAST_ERROR_SQLSTATE

-- Invalid versions: whitespace, control characters, too long, bad characters.
SELECT deploy.register('00 09', 'x', 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register(E'0009\r', 'x', 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register(repeat('9', 65), 'x', 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0009;drop', 'x', 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE

-- Reversibility must match the down SQL.
SELECT deploy.register('0009', 'x', 'SELECT 1', reversibility => 'maybe');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0009', 'x', 'SELECT 1', reversibility => 'lossy');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0009', 'x', 'SELECT 1', 'SELECT 2', reversibility => 'irreversible');
\echo :LAST_ERROR_SQLSTATE

-- Syntax errors are refused at registration (42601, with the line), in up, down and verify SQL.
SELECT deploy.register('0009', 'x', E'CREATE TABLE app.t (id int);\nCREATE TABLE app.u (id int,);');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0009', 'x', 'SELECT 1', 'DROP TABL app.t');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0009', 'x', 'SELECT 1', verify_sql => 'SELEC 1');
\echo :LAST_ERROR_SQLSTATE

-- Transaction control inside migration SQL: PD009.
SELECT deploy.register('0009', 'x', 'CREATE TABLE app.t (id int); COMMIT;');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0009', 'x', 'BEGIN; SELECT 1; END;');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0009', 'x', 'SAVEPOINT a');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0009', 'x', 'SELECT 1', 'ROLLBACK');
\echo :LAST_ERROR_SQLSTATE
-- ... but a semicolon or COMMIT inside a string or a dollar-quoted body is not a statement.
SELECT deploy.register('0009', 'x', $sql$CREATE FUNCTION app.f() RETURNS text LANGUAGE sql AS $$ SELECT 'COMMIT; ROLLBACK' $$;$sql$,
                       'DROP FUNCTION app.f()');

-- Non-transactional statements are detected; declaring them transactional is PD004; in down SQL too (detected there,
-- they run as steps of the revert: sql/nontransactional_revert.sql).
SELECT deploy.register('0010', 'vacuum', 'VACUUM app.users');
SELECT deploy.register('0011', 'x', 'CREATE INDEX CONCURRENTLY i ON app.users (id)', transactional => true);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0011', 'x', 'ALTER SYSTEM SET work_mem = ''8MB''', transactional => true);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0011', 'x', 'CREATE INDEX i ON app.users (id)', 'DROP INDEX CONCURRENTLY app.i',
                       down_transactional => true);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0011', 'x', 'REINDEX TABLE CONCURRENTLY app.users');
SELECT deploy.register('0012', 'x', 'ALTER TABLE app.users ADD COLUMN x int; CREATE INDEX CONCURRENTLY ix ON app.users (x)');
SELECT version, transactional FROM deploy.migrations WHERE version IN ('0010', '0011', '0012') ORDER BY version;
-- transactional => false without such statements is the caller's choice.
SELECT deploy.register('0013', 'top_level', 'SELECT 1', transactional => false);

-- Events: one per registration or update, none for unchanged or refused ones.
SELECT kind, version, details->>'name' AS name FROM deploy.events ORDER BY id;

-- unregister: pending only.
SELECT deploy.unregister('0013');
SELECT deploy.unregister('0013');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.unregister('0001');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.unregister(NULL);
\echo :LAST_ERROR_SQLSTATE

-- Nothing refused above was stored.
SELECT version FROM deploy.migrations ORDER BY sort_key;
