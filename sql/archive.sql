-- archive: a lossy revert first copies the tables and columns its down SQL drops into deploy_archive.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never

SELECT deploy.register('0001', 'customers', $$CREATE SCHEMA app;
CREATE TABLE app.customers (id int PRIMARY KEY, name text);
INSERT INTO app.customers VALUES (1, 'ann'), (2, 'bob');$$, 'DROP SCHEMA app CASCADE');
SELECT deploy.up() ->> 'ok' AS ok;

SELECT deploy.register('0002', 'scores', $$CREATE TABLE app.audit (id int, what text);
INSERT INTO app.audit VALUES (1, 'created'), (2, 'created'), (3, 'updated');
ALTER TABLE app.customers ADD COLUMN score int;
UPDATE app.customers SET score = id * 10;$$,
$$DROP TABLE IF EXISTS app.no_such_table;
DROP TABLE app.audit;
ALTER TABLE app.customers DROP COLUMN score;$$, reversibility => 'lossy');
SELECT deploy.up(app_version => 'scores') ->> 'ok' AS ok;

-- The rollback archives the table and the column (with the primary key), then drops them.
SELECT r ->> 'ok' AS ok, jsonb_pretty(r -> 'archived') AS archived
FROM deploy.rollback() AS r;
SELECT deployment_id, version, object_type, object_name, archive_table, row_count,
       expires_at BETWEEN now() + interval '7 days' - interval '1 minute' AND now() + interval '7 days' AS expires_in_window
FROM deploy.archived ORDER BY id;
SELECT * FROM deploy_archive."3_audit" ORDER BY id;
SELECT * FROM deploy_archive."3_customers_score" ORDER BY id;
SELECT to_regclass('app.audit') AS audit, (SELECT count(*) FROM pg_attribute
  WHERE attrelid = 'app.customers'::regclass AND attname = 'score' AND NOT attisdropped) AS score_column;
SELECT kind, version, details ->> 'archive_table' AS archive_table FROM deploy.events WHERE kind = 'data_archived' ORDER BY id;

-- Applying and reverting again archives under the new deployment's id (no clash with the first copy).
SELECT deploy.up() ->> 'ok' AS ok;
SELECT jsonb_path_query_array(deploy.down(), '$.archived[*].archive_table') AS archived;

-- A failing lossy revert keeps nothing half-done: no archive, no drop.
SELECT deploy.up() ->> 'ok' AS ok;
UPDATE deploy.applied SET down_sql = 'DROP TABLE app.audit; DROP TABLE app.missing;',
    down_checksum = deploy.checksum('DROP TABLE app.audit; DROP TABLE app.missing;') WHERE version = '0002';
SELECT count(*) AS archived_before FROM deploy.archived \gset
SELECT r ->> 'ok' AS ok, r -> 'failed' ->> 'sqlstate' AS sqlstate FROM deploy.down() AS r;
SELECT count(*) = :archived_before AS no_new_archive, to_regclass('app.audit') AS audit_kept FROM deploy.archived;

-- Reversible (not lossy) down SQL is not archived; a dry run never archives.
SELECT deploy.register('0003', 'plain', 'CREATE TABLE app.plain (id int)', 'DROP TABLE app.plain');
UPDATE deploy.applied SET down_sql = 'DROP TABLE app.audit; ALTER TABLE app.customers DROP COLUMN score',
    down_checksum = deploy.checksum('DROP TABLE app.audit; ALTER TABLE app.customers DROP COLUMN score') WHERE version = '0002';
SELECT deploy.up() ->> 'ok' AS ok;
SELECT jsonb_path_query_array(deploy.down(dry_run => true, steps => 2), '$.reverted[*].version') AS rehearsed;
SELECT jsonb_path_query_array(deploy.down(), '$.archived[*]') AS archived_for_plain;
SELECT count(*) = :archived_before AS still_no_new_archive FROM deploy.archived;

-- Readers may see the list of archives but not their contents.
SET ROLE deploy_reader;
SELECT count(*) > 0 AS sees_list FROM deploy.archived;
SELECT count(*) FROM deploy_archive."3_audit";
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
