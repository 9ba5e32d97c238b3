-- multibyte: long non-ASCII names in lossy reverts (the archive table name is cut on a character boundary and kept
-- unique; deploy.archived names the object with each part quoted), and C++ errors that used to reach users as XX000.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never
-- The names below are UTF-8; the suite needs a UTF8 database.
SELECT pg_catalog.getdatabaseencoding();

-- Table names of 60-63 bytes: 31 x 'é' (2 bytes), 21 x '表' (3 bytes), 15 x '🚀' (4 bytes); two names that share
-- a 60-byte prefix; a table named with a dot and capitals, and a 60-byte column name.
SELECT repeat('é', 31) AS e31, repeat('表', 21) AS cjk, repeat('🚀', 15) AS emoji,
       repeat('表', 20) || 'ab' AS twin_b, repeat('表', 20) || 'ac' AS twin_c, repeat('ü', 30) AS col,
       repeat('é', 31) || 'x' AS e31x, repeat('表', 20) || 'ad' AS twin_d \gset
SELECT octet_length(:'e31') AS e31, octet_length(:'cjk') AS cjk, octet_length(:'emoji') AS emoji,
       octet_length(:'twin_b') AS twins, octet_length(:'col') AS col;

SELECT deploy.register('0001', 'schema', 'CREATE SCHEMA app', 'DROP SCHEMA app CASCADE');
SELECT deploy.register('0002', 'multibyte', format($$
CREATE TABLE app.%1$I (id int PRIMARY KEY, v text);
CREATE TABLE app.%2$I (id int PRIMARY KEY, v text);
CREATE TABLE app.%3$I (id int PRIMARY KEY, v text);
CREATE TABLE app.%4$I (id int PRIMARY KEY);
CREATE TABLE app.%5$I (id int PRIMARY KEY);
CREATE TABLE app."Kunden.Übersicht" (id int PRIMARY KEY, %6$I text, "Größe" int);
INSERT INTO app.%1$I VALUES (1, 'e'), (2, 'e');
INSERT INTO app.%2$I VALUES (1, 'cjk');
INSERT INTO app.%3$I VALUES (1, 'emoji'), (2, 'emoji'), (3, 'emoji');
INSERT INTO app.%4$I VALUES (4);
INSERT INTO app.%5$I VALUES (5);
INSERT INTO app."Kunden.Übersicht" VALUES (1, 'ü', 10), (2, 'ü', 20)$$,
    :'e31', :'cjk', :'emoji', :'twin_b', :'twin_c', :'col'), format($$
DROP TABLE app.%1$I;
DROP TABLE app.%2$I;
DROP TABLE app.%3$I;
DROP TABLE app.%4$I;
DROP TABLE app.%5$I;
ALTER TABLE app."Kunden.Übersicht" DROP COLUMN %6$I;
DROP TABLE app."Kunden.Übersicht"$$,
    :'e31', :'cjk', :'emoji', :'twin_b', :'twin_c', :'col'), reversibility => 'lossy');
SELECT deploy.up() ->> 'ok' AS ok;

-- The original bug: this rollback failed with XX000 (a JSON exception on a name cut inside 'é'), every time.
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, jsonb_array_length(r -> 'archived') AS archived
FROM deploy.rollback() AS r;
SELECT object_type, object_name, archive_table, row_count FROM deploy.archived ORDER BY id;

-- Every archive table exists under a name of at most 63 bytes that is valid UTF-8 (cut between characters), and no
-- two share a name.
SELECT count(*) AS archives, count(DISTINCT archive_table) AS distinct_names,
       bool_and(pg_catalog.to_regclass(archive_table) IS NOT NULL) AS all_exist
FROM deploy.archived;
SELECT max(octet_length(c.relname)) AS longest_bytes,
       bool_and(pg_catalog.convert_from(pg_catalog.convert_to(c.relname::text, 'UTF8'), 'UTF8') = c.relname::text)
           AS valid_utf8
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'deploy_archive' AND c.relkind = 'r';
-- The copies hold the rows (the column's copy: the primary key and the column).
SELECT format('SELECT %L AS object, count(*) AS rows FROM %s', object_name, archive_table)
FROM deploy.archived ORDER BY id \gexec
SELECT format('SELECT * FROM %s ORDER BY 1', archive_table) FROM deploy.archived WHERE object_type = 'column' \gexec
-- The events and deploy.status() carry the same quoted names.
SELECT count(*) AS events, bool_and(e.details ->> 'object_name' = a.object_name) AS same_name
FROM deploy.events e JOIN deploy.archived a ON a.archive_table = e.details ->> 'archive_table'
WHERE e.kind = 'data_archived';
SELECT jsonb_path_query_array(deploy.status(), '$.archived[*].object_name') AS status_archived;

-- The same long table dropped twice by one revert: the second copy gets the next free name.
SELECT deploy.register('0003', 'twice',
    format('CREATE TABLE app.%1$I (id int); INSERT INTO app.%1$I VALUES (1)', :'e31x'),
    format('DROP TABLE app.%1$I; CREATE TABLE app.%1$I (id int); INSERT INTO app.%1$I VALUES (1), (2); '
           'DROP TABLE app.%1$I', :'e31x'), reversibility => 'lossy');
SELECT deploy.up() ->> 'ok' AS ok;
SELECT jsonb_path_query_array(deploy.down(), '$.archived[*].archive_table') AS archived;
SELECT archive_table, row_count FROM deploy.archived WHERE version = '0003' ORDER BY id;

-- Promises that hold with multibyte text (docs/sql-reference.md).
-- deploy.up(): a failing migration is recorded and returned (ok:false, a WARNING), not raised; the message keeps
-- its characters.
SELECT deploy.register('0004', 'fails', 'DO $do$BEGIN RAISE EXCEPTION ''échec: %'', repeat(''表'', 30); END$do$');
SELECT r ->> 'ok' AS ok, r -> 'failed' ->> 'sqlstate' AS sqlstate, r -> 'failed' ->> 'message' AS message
FROM deploy.up() AS r;
SELECT error ->> 'message' AS recorded FROM deploy.deployments WHERE state = 'failed' ORDER BY id DESC LIMIT 1;
SELECT deploy.unregister('0004');

-- deploy.down(): a failing lossy revert is recorded and returned, not raised; its copies vanish with it.
SELECT deploy.register('0005', 'bad_down', format('CREATE TABLE app.%I (id int)', :'twin_d'),
    format('DROP TABLE app.%I; DROP TABLE app.missing', :'twin_d'), reversibility => 'lossy');
SELECT deploy.up() ->> 'ok' AS ok;
SELECT count(*) AS archived_before FROM deploy.archived \gset
SELECT r ->> 'ok' AS ok, r -> 'failed' ->> 'sqlstate' AS sqlstate FROM deploy.down() AS r;
SELECT count(*) = :archived_before AS no_new_archive,
       pg_catalog.to_regclass(format('app.%I', :'twin_d')) IS NOT NULL AS table_kept
FROM deploy.archived;

-- deploy.execute_rollback(): a failing revert leaves the marker failed with its error, not raised.
SELECT deploy.request_rollback('bad down SQL') AS marker \gset
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, r -> 'error' ->> 'sqlstate' AS sqlstate
FROM deploy.execute_rollback(:marker) AS r;
SELECT state, last_error ->> 'sqlstate' AS last_error FROM deploy.rollback_markers WHERE id = :marker;
SELECT deploy.resolve_marker(:marker, 'abandoned', 'fixed by hand') ->> 'state' AS resolved;

-- deploy.current_version() and deploy.status() read all of this without raising.
SELECT deploy.current_version();
SELECT s ->> 'current_version' AS current_version, jsonb_array_length(s -> 'archived') AS archived
FROM deploy.status() AS s;

-- Previously XX000 (a C++ exception): a jsonb number beyond double precision in metadata is 22003 with a hint, and
-- nothing is written.
SELECT count(*) AS deployments_before FROM deploy.deployments \gset
SELECT deploy.up(metadata => '{"build": 1e400}');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.up(metadata => '{"build": {"size": -1e400}}');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) = :deployments_before AS nothing_written FROM deploy.deployments;
