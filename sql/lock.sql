-- lock: the deploy lock is an advisory lock (1346651472, 1) scoped to the transaction, and its settings.
-- (Contention between sessions is in specs/concurrent_up.spec and specs/up_during_rollback.spec.)
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never

CREATE VIEW pg_temp.my_deploy_lock AS
SELECT locktype, classid, objid, objsubid, mode, granted FROM pg_locks
WHERE locktype = 'advisory' AND pid = pg_backend_pid();

-- Held by every operation until the end of the caller's transaction, then gone.
SELECT deploy.register('0001', 'schema', 'CREATE SCHEMA app', 'DROP SCHEMA app');
BEGIN;
SELECT deploy.up() ->> 'ok' AS ok;
SELECT * FROM pg_temp.my_deploy_lock;
COMMIT;
SELECT count(*) AS after_commit FROM pg_temp.my_deploy_lock;

-- Also when the operation fails: the error aborts the transaction and releases it.
BEGIN;
SELECT deploy.up(target => 'nope');
ROLLBACK;
SELECT count(*) AS after_rollback FROM pg_temp.my_deploy_lock;

-- Read-only functions do not take it.
BEGIN;
SELECT deploy.version_key('1.2');
SELECT count(*) AS after_version_key FROM pg_temp.my_deploy_lock;
COMMIT;

-- Settings: units, ranges and the documented defaults.
SHOW pg_deploy.lock_wait;
SET pg_deploy.lock_wait = '2s';
SHOW pg_deploy.lock_wait;
SET pg_deploy.lock_wait = -1;
\echo :LAST_ERROR_SQLSTATE
SET pg_deploy.rollback_window = '1d';
SHOW pg_deploy.rollback_window;
SET pg_deploy.max_rollback_attempts = 0;
\echo :LAST_ERROR_SQLSTATE
SET pg_deploy.allow_out_of_order = 'maybe';
\echo :LAST_ERROR_SQLSTATE
RESET ALL;

-- Operations refuse REPEATABLE READ (their snapshot would predate the lock) before touching anything.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT deploy.down();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT deploy.register('0002', 'x', 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT version FROM deploy.applied;
