-- lock_safe: the lock-safe settings, a migration's own lock_timeout, the lock policy handed to top-level steps, and
-- no-op migrations (scripts of only comments). The retries themselves need a second session: specs/lock_retry.spec.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never

-- The defaults (docs/sql-reference.md, "Lock-safe mode"), and bad values refused by PostgreSQL's own checks.
SHOW pg_deploy.lock_timeout;
SHOW pg_deploy.lock_attempts;
SHOW pg_deploy.lock_retry_time;
SET pg_deploy.lock_attempts = 0;
SET pg_deploy.lock_timeout = -1;
SET pg_deploy.lock_retry_time = 'soon';

-- A migration's lock_timeout directive: stored in ms; a bad value is 22023 and nothing is stored.
SELECT deploy.register('1', 'schema', 'CREATE SCHEMA app; CREATE TABLE app.seen (version text, lock_timeout text)',
                       'DROP SCHEMA app CASCADE');
SELECT deploy.register('2', 'own_timeout',
                       $$INSERT INTO app.seen VALUES ('2', current_setting('lock_timeout'))$$,
                       $$INSERT INTO app.seen VALUES ('2 down', current_setting('lock_timeout'))$$,
                       lock_timeout => '2s');
SELECT deploy.register('3', 'default_timeout', $$INSERT INTO app.seen VALUES ('3', current_setting('lock_timeout'))$$,
                       $$INSERT INTO app.seen VALUES ('3 down', current_setting('lock_timeout'))$$);
SELECT deploy.register('4', 'bad', 'SELECT 1', lock_timeout => 'soon');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.register('4', 'bad', 'SELECT 1', lock_timeout => '-5ms');
\echo :LAST_ERROR_SQLSTATE
SELECT version, lock_timeout_ms FROM deploy.migrations ORDER BY sort_key;
-- Registering again with another lock_timeout is a change (replace => true), like any other.
SELECT deploy.register('3', 'default_timeout', $$INSERT INTO app.seen VALUES ('3', current_setting('lock_timeout'))$$,
                       $$INSERT INTO app.seen VALUES ('3 down', current_setting('lock_timeout'))$$,
                       lock_timeout => '1s');
\echo :LAST_ERROR_SQLSTATE

-- Each migration runs under its own lock timeout or the setting's; the session's own lock_timeout is back after.
SET lock_timeout = '7s';
SET pg_deploy.lock_timeout = '300ms';
SELECT r->'ok' AS ok, r->'lock_retries' AS lock_retries FROM deploy.up() AS r;
SELECT * FROM app.seen ORDER BY version;
SHOW lock_timeout;
-- The applied row keeps the migration's timeout: its revert waits as long.
SELECT version, lock_timeout_ms FROM deploy.applied ORDER BY sort_key;
SELECT (deploy.down(steps => 2))->'ok' AS reverted;
SELECT * FROM app.seen ORDER BY version;
-- pg_deploy.lock_timeout = 0 turns lock-safe mode off: the session's lock_timeout applies.
SET pg_deploy.lock_timeout = 0;
DELETE FROM app.seen;
SELECT (deploy.up())->'ok' AS ok;
SELECT * FROM app.seen ORDER BY version;
RESET pg_deploy.lock_timeout;
RESET lock_timeout;

-- No-op migrations: an up script of only comments, an empty down script. Registered with a notice, applied and
-- reverted like any other (a notice says so), recorded in the ledger and the events.
SELECT deploy.register('5', 'noop', E'-- this change was needed on another engine only\n/* nothing here */\n', '');
SELECT r->'ok' AS ok, jsonb_path_query_array(r, '$.applied[*].version') AS applied FROM deploy.up() AS r;
SELECT version, reversibility, down_sql FROM deploy.applied WHERE version = '5';
SELECT kind, version FROM deploy.events WHERE version = '5' ORDER BY id;
SELECT r->'ok' AS ok, jsonb_path_query_array(r, '$.reverted[*].version') AS reverted FROM deploy.down() AS r;
SELECT count(*) AS still_applied FROM deploy.applied WHERE version = '5';
-- An empty up script too.
SELECT deploy.register('6', 'empty', '');
SELECT (deploy.up())->'applied'->0->>'version' AS applied;

-- Top-level steps carry the lock policy: statements that refuse a transaction block run without the short timeout
-- (the client sends it transaction-locally, never as session state; CONCURRENTLY ones never make the application's
-- reads and writes queue), others with the migration's or the setting's timeout.
SELECT deploy.register('7', 'concurrent',
                       E'CREATE INDEX CONCURRENTLY seen_v ON app.seen (version);\nVACUUM app.seen;\n'
                       'ALTER TABLE app.seen ADD COLUMN seen_note text;',
                       'DROP INDEX app.seen_v', lock_timeout => '250ms');
SELECT (deploy.up())->'awaiting_nontransactional'->'version' AS awaiting;
SELECT s->'statement' AS statement, s->'lock_timeout_ms' AS lock_timeout_ms, s->'lock_retry' AS lock_retry
FROM deploy.next_step() AS s;
SELECT deploy.step_done((SELECT id FROM deploy.checkpoints WHERE version = '7' AND step = 1))->'state' AS state;
SELECT s->'statement' AS statement, s->'lock_timeout_ms' AS lock_timeout_ms FROM deploy.next_step() AS s;
SELECT deploy.step_done((SELECT id FROM deploy.checkpoints WHERE version = '7' AND step = 2))->'state' AS state;
SELECT s->'statement' AS statement, s->'lock_timeout_ms' AS lock_timeout_ms FROM deploy.next_step() AS s;
