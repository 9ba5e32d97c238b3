-- big_inputs: the size limits of deploy.register() (54000), and big scripts (read and run in batches of 256 kB):
-- statements, lines and errors come out as a parse of the whole script puts them.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never

-- A script over 64 MB (67108864 bytes) is refused before it is parsed (up, down and verify SQL alike;
-- tests/reliability/test_big_inputs.py has the others and the script of exactly 64 MB).
SELECT deploy.register('0001', 'too_big', 'SELECT 1', 'SELECT ''' || repeat('x', 67108855) || ''';');
\echo :LAST_ERROR_SQLSTATE

-- One statement may hold 1 MB (1048576 bytes) of SQL outside string constants, dollar quotes, comments and
-- blanks: at the limit it is accepted, one byte more is refused, naming the statement's line.
SELECT deploy.register('0002', 'dense_at_limit', 'SELECT ' || repeat('1+', 524284) || '11');
SELECT deploy.register('0003', 'dense_over', E'SELECT 1;\n\n' || 'SELECT ' || repeat('1+', 524284) || '111');
\echo :LAST_ERROR_SQLSTATE
-- Literals cost little to parse: a statement of 2 MB that is mostly a string constant is fine.
SELECT deploy.register('0004', 'long_literal', 'SELECT ''' || repeat('x;', 1000000) || ''';');
SELECT deploy.register('0005', 'long_dollar', 'DO $b$ BEGIN ' || repeat('PERFORM 1; ', 200000) || 'END $b$;');
SELECT version, octet_length(up_sql) FROM deploy.migrations ORDER BY sort_key;

-- A script of 20,000 statements (about 1 MB, four batches) runs whole, each statement once.
SELECT deploy.register('0006', 'many', 'CREATE SCHEMA app; CREATE TABLE app.t (i int PRIMARY KEY); ' ||
                       'INSERT INTO app.t VALUES (0);' ||
                       repeat(E'\nINSERT INTO app.t SELECT max(i) + 1 FROM app.t; -- a ; in a comment', 19999));
SELECT deploy.unregister(version) FROM deploy.migrations WHERE version <> '0006';
SELECT (deploy.up())->'applied'->0->>'version' AS applied;
SELECT count(*), sum(i), max(i) FROM app.t;

-- Errors in a big script carry the line and character a parse of the whole script gives.
SELECT deploy.register('0007', 'typo_at_the_end', repeat(E'SELECT 1;\n', 40000) || 'SELEC 2;');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0007', 'unterminated', repeat(E'SELECT ''a;b'';\n', 30000) || 'SELECT $x$ 1;');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('0007', 'commit_inside', repeat(E'SELECT 1;\n', 30000) || E'COMMIT;\n' ||
                       repeat(E'SELECT 1;\n', 30000));
\echo :LAST_ERROR_SQLSTATE
-- Only semicolons: a no-op, registered with a notice (and applied with one).
SELECT deploy.register('0099', 'only_semicolons', repeat(';', 300000));
-- A SQL-standard function body holds semicolons; its statement is not cut there.
SELECT deploy.register('0007', 'atomic_body', repeat(E'SELECT 1;\n', 30000) ||
                       E'CREATE FUNCTION app.f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\n' ||
                       E'  SELECT CASE WHEN true THEN 2 END;\nEND;\nSELECT app.f();');
SELECT (deploy.up())->'applied'->0->>'version' AS applied;
SELECT app.f();
SELECT version FROM deploy.migrations ORDER BY sort_key;
