-- plan_cache: the engine keeps its prepared plans for the life of the backend (SPI_keepplan, extension/src/pg/spi.cpp).
-- Everything here runs in ONE session, so the second half uses plans prepared against the first extension's tables:
-- PostgreSQL's plancache must re-plan them against the new ones after DROP EXTENSION + CREATE EXTENSION.
-- It also checks that deploy.up(), which reads only the catalog range from the newest applied key on, still refuses
-- every out-of-order pending migration, however it came about (register, manual DML).
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS pc CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never
CREATE SCHEMA pc;

-- First life of the extension: every statement of register, up, down and status prepared and kept.
SELECT deploy.register('1', 'one', 'CREATE TABLE pc.t1 (id int)', 'DROP TABLE pc.t1');
SELECT deploy.register('2', 'two', 'CREATE TABLE pc.t2 (id int)', 'DROP TABLE pc.t2');
SELECT jsonb_path_query_array(deploy.up(), '$.applied[*].version') AS applied;
SELECT deploy.down() ->> 'ok' AS down_ok;
SELECT deploy.current_version();
SELECT 'deploy.migrations'::regclass::oid AS old_migrations \gset

-- Drop and create the extension again in the same session: new tables, new OIDs.
SET client_min_messages = warning;
DROP EXTENSION pg_deploy CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_deploy;
SELECT 'deploy.migrations'::regclass::oid <> :old_migrations AS new_oids;
DROP TABLE pc.t1;

-- The same statements again: registered into the new tables, not the dropped ones (which would raise).
SELECT deploy.register('1', 'one', 'CREATE TABLE pc.t1 (id int)', 'DROP TABLE pc.t1');
SELECT deploy.register('1', 'one', 'CREATE TABLE pc.t1 (id int)', 'DROP TABLE pc.t1');
SELECT deploy.register('2', 'two', 'CREATE TABLE pc.t2 (id int)', 'DROP TABLE pc.t2');
SELECT version, name FROM deploy.migrations ORDER BY sort_key;
SELECT jsonb_path_query_array(deploy.up(target => '1'), '$.applied[*].version') AS applied;
SELECT jsonb_path_query_array(deploy.up(), '$.applied[*].version') AS applied;
SELECT version FROM deploy.applied ORDER BY sort_key;
SELECT count(*) AS registered_events FROM deploy.events WHERE kind = 'migration_registered';

-- A cached plan also follows a change of search_path (the plancache re-analyses; the engine's texts are qualified).
CREATE SCHEMA decoy;
CREATE TABLE decoy.migrations (version text);
SET search_path = decoy, public;
SELECT deploy.register('3', 'three', 'CREATE TABLE pc.t3 (id int)', 'DROP TABLE pc.t3');
SELECT count(*) AS decoy_rows FROM decoy.migrations;
RESET search_path;
SELECT jsonb_path_query_array(deploy.up(), '$.applied[*].version') AS applied;

-- Out-of-order pending migrations are refused (55000) whatever made them: a registration older than the newest
-- applied version...
SELECT deploy.register('2.5', 'late', 'CREATE TABLE pc.t25 (id int)', 'DROP TABLE pc.t25');
SELECT deploy.register('4', 'four', 'CREATE TABLE pc.t4 (id int)', 'DROP TABLE pc.t4');
SELECT deploy.up();
SELECT deploy.up(target => '4');
SELECT deploy.unregister('2.5');
-- ...or manual DML that leaves a hole below the newest applied version (the ledger row of 2 deleted by hand).
DELETE FROM deploy.applied WHERE version = '2';
SELECT deploy.up();
SELECT deploy.up(dry_run => true);
SELECT version FROM deploy.applied ORDER BY sort_key;
-- With pg_deploy.allow_out_of_order the hole is filled in order, then the newer one.
DROP TABLE pc.t2;
SET pg_deploy.allow_out_of_order = on;
SELECT jsonb_path_query_array(deploy.up(), '$.applied[*].version') AS applied;
RESET pg_deploy.allow_out_of_order;
SELECT version FROM deploy.applied ORDER BY sort_key;
-- The target bounds the range read: up to 5 of 5 and 6, nothing past it.
SELECT deploy.register('5', 'five', 'CREATE TABLE pc.t5 (id int)', 'DROP TABLE pc.t5');
SELECT deploy.register('6', 'six', 'CREATE TABLE pc.t6 (id int)', 'DROP TABLE pc.t6');
SELECT jsonb_path_query_array(deploy.up(target => '5'), '$.applied[*].version') AS applied;
SELECT deploy.up(target => '5') ->> 'state' AS state;
SELECT deploy.up(target => '9');
SELECT jsonb_path_query_array(deploy.up(), '$.applied[*].version') AS applied;

SET client_min_messages = warning;
DROP EXTENSION pg_deploy CASCADE;
DROP SCHEMA pc CASCADE;
DROP SCHEMA decoy CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_deploy;
