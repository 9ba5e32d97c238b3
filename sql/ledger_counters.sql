-- ledger_counters: deploy.ledger_stats stays exact under every writer (extension/sql/20_engine.sql,
-- deploy.ledger_changed). applied_count equals count(*) of deploy.applied after engine writes, baseline and manual
-- DML; order_generation moves exactly when a change may have left a pending migration older than the newest applied
-- one, so deploy.up() repeats its full out-of-order check only then, and still refuses every such migration.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS lc CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never
CREATE SCHEMA lc;

-- state: the counter against the real count, the generation, and whether the last clean check is still current.
CREATE FUNCTION lc.state(OUT counted bigint, OUT actual bigint, OUT generation bigint, OUT proven boolean)
LANGUAGE sql AS $$
    SELECT s.applied_count, (SELECT count(*) FROM deploy.applied), s.order_generation,
           s.order_checked IS NOT DISTINCT FROM s.order_generation
    FROM deploy.ledger_stats s
$$;

-- A fresh extension: one row, nothing applied, never checked.
SELECT * FROM lc.state();
SELECT deploy.register('1', 'one', 'CREATE TABLE lc.t1 (id int)', 'DROP TABLE lc.t1');
SELECT deploy.register('2', 'two', 'CREATE TABLE lc.t2 (id int)', 'DROP TABLE lc.t2');
SELECT deploy.register('3', 'three', 'CREATE TABLE lc.t3 (id int)', 'DROP TABLE lc.t3');
-- up() applies all three in one statement: counted 3; registering in order never moves the generation.
SELECT jsonb_path_query_array(deploy.up(), '$.applied[*].version') AS applied;
SELECT * FROM lc.state();
-- The next up() proves the order (nothing older pending) and records it.
SELECT deploy.up() ->> 'state' AS state;
SELECT * FROM lc.state();

-- Registering after the newest applied version: in order, the generation stays.
SELECT deploy.register('4', 'four', 'CREATE TABLE lc.t4 (id int)', 'DROP TABLE lc.t4');
SELECT * FROM lc.state();
-- Registering below it (late): the generation moves, and up() finds and refuses it.
SELECT deploy.register('2.5', 'late', 'CREATE TABLE lc.t25 (id int)', 'DROP TABLE lc.t25');
SELECT * FROM lc.state();
SELECT deploy.up();
SELECT deploy.unregister('2.5');
SELECT deploy.up() ->> 'state' AS state;
SELECT * FROM lc.state();

-- Reverting the newest rows (down, rollback) leaves no hole: the generation stays; the count follows.
SELECT jsonb_path_query_array(deploy.down(steps => 2), '$.reverted[*].version') AS reverted;
SELECT * FROM lc.state();
SELECT jsonb_path_query_array(deploy.up(), '$.applied[*].version') AS applied;
SELECT * FROM lc.state();

-- Manual DML is seen the same way. Deleting the newest applied row by hand: counted, no hole.
DELETE FROM deploy.applied WHERE version = '4';
SELECT * FROM lc.state();
-- Deleting a row below the newest: a hole, found and refused by up().
INSERT INTO deploy.applied (version, sort_key, name, checksum, reversibility, deployment_id)
SELECT version, sort_key, name, checksum, reversibility, (SELECT max(id) FROM deploy.deployments)
FROM deploy.migrations WHERE version = '4';
SELECT * FROM lc.state();
DELETE FROM deploy.applied WHERE version = '2';
SELECT * FROM lc.state();
SELECT deploy.up();
-- Putting it back by hand fills the hole; the next up() proves it again.
INSERT INTO deploy.applied (version, sort_key, name, checksum, reversibility, deployment_id)
SELECT version, sort_key, name, checksum, reversibility, (SELECT max(id) FROM deploy.deployments)
FROM deploy.migrations WHERE version = '2';
SELECT deploy.up() ->> 'state' AS state;
SELECT * FROM lc.state();

-- A manual INSERT into the ledger above a pending migration leaves that one behind (5 pending, 6 marked applied).
SELECT deploy.register('5', 'five', 'CREATE TABLE lc.t5 (id int)', 'DROP TABLE lc.t5');
SELECT deploy.register('6', 'six', 'CREATE TABLE lc.t6 (id int)', 'DROP TABLE lc.t6');
SELECT * FROM lc.state();
INSERT INTO deploy.applied (version, sort_key, name, checksum, reversibility, deployment_id)
SELECT version, sort_key, name, checksum, reversibility, (SELECT max(id) FROM deploy.deployments)
FROM deploy.migrations WHERE version = '6';
SELECT * FROM lc.state();
SELECT deploy.up();
DELETE FROM deploy.applied WHERE version = '6';
SELECT jsonb_path_query_array(deploy.up(), '$.applied[*].version') AS applied;
SELECT * FROM lc.state();

-- Rewriting a version or a sort key by hand proves nothing: the generation moves (other columns do not move it).
UPDATE deploy.migrations SET name = 'renamed' WHERE version = '6';
UPDATE deploy.applied SET duration_ms = 1 WHERE version = '6';
SELECT * FROM lc.state();
UPDATE deploy.applied SET sort_key = sort_key WHERE version = '6';
SELECT * FROM lc.state();
SELECT deploy.up() ->> 'state' AS state;
SELECT * FROM lc.state();

-- A statement that changes no row changes nothing.
DELETE FROM deploy.applied WHERE version = 'none';
INSERT INTO deploy.migrations SELECT * FROM deploy.migrations WHERE false;
SELECT * FROM lc.state();

-- A failed atomic up() writes no applied row: the count is unchanged.
SELECT deploy.register('7', 'seven', 'CREATE TABLE lc.t7 (id int)', 'DROP TABLE lc.t7');
SELECT deploy.register('8', 'bad', 'SELECT 1/0', 'SELECT 1');
SET client_min_messages = error;
SELECT deploy.up() ->> 'state' AS state;
RESET client_min_messages;
SELECT * FROM lc.state();
SELECT deploy.unregister('8');

-- TRUNCATE empties the ledger: counted 0 (nothing applied, so nothing can be out of order).
TRUNCATE deploy.applied;
SELECT * FROM lc.state();
SELECT (deploy.validate() -> 'problems') @> '[{"kind": "applied_count_mismatch"}]' AS mismatch;
-- baseline marks rows applied through the same trigger: counted once; then up() applies the rest.
SELECT deploy.baseline('6') ->> 'count' AS baselined;
SELECT * FROM lc.state();
SELECT jsonb_path_query_array(deploy.up(), '$.applied[*].version') AS applied;
SELECT * FROM lc.state();

-- The row deleted by hand: status() falls back to counting, up() to the full check (which still refuses).
DELETE FROM deploy.ledger_stats;
SELECT (deploy.status() ->> 'applied_count')::int AS status_count, (SELECT count(*) FROM deploy.applied) AS actual;
SELECT deploy.register('6.5', 'late', 'CREATE TABLE lc.t65 (id int)', 'DROP TABLE lc.t65');
SELECT deploy.up();
SELECT deploy.unregister('6.5');
SELECT deploy.register('10', 'ten', 'CREATE TABLE lc.t10 (id int)', 'DROP TABLE lc.t10');
SELECT jsonb_path_query_array(deploy.up(), '$.applied[*].version') AS applied;

-- The trigger function refuses to be called any other way.
SELECT deploy.ledger_changed();

SET client_min_messages = warning;
DROP EXTENSION pg_deploy CASCADE;
DROP SCHEMA lc CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_deploy;
