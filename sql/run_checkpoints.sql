-- run_checkpoints: CALL deploy.run() commits after each migration with a checkpoint, so a failure or a killed
-- session keeps what was done, and the next run resumes at the first unfinished migration.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
\set SHOW_CONTEXT never
CREATE SCHEMA app;
-- The stable parts of a run result (timings and the run id vary).
CREATE FUNCTION run_summary(r jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT (r - 'duration_ms' - 'run_id' - 'failed_deployment_id')
           || jsonb_build_object('applied', jsonb_path_query_array(r, '$.applied[*].version'),
                                 'failed', r->'failed'->'version', 'failed_sqlstate', r->'failed'->'sqlstate')
$$;

SELECT deploy.register('1', 'one', 'CREATE TABLE app.one (id int)', 'DROP TABLE app.one');
SELECT deploy.register('2', 'two', 'CREATE TABLE app.two (id int)', 'DROP TABLE app.two');
SELECT deploy.register('3', 'three', 'CREATE TABLE app.three (id int); SELECT 1/0', 'DROP TABLE app.three');

-- 3 fails: 1 and 2 stay applied (each committed with its checkpoint); 3's failed deployment is recorded.
CALL deploy.run(app_version => 'rel-1') \gset
SELECT run_summary(:'result');
SELECT d.kind, d.state, d.app_version, d.version_before, d.version_after, d.metadata ? 'run_id' AS in_run
FROM deploy.deployments d ORDER BY d.id;
SELECT c.version, c.step, c.state, c.error->>'sqlstate' AS sqlstate, c.statement FROM deploy.checkpoints c ORDER BY c.id;
SELECT kind, version FROM deploy.events WHERE kind LIKE 'checkpoint%' ORDER BY id;
-- All deployments of the run share its run_id.
SELECT count(DISTINCT metadata->>'run_id') AS run_ids FROM deploy.deployments;
SELECT deploy.current_version(), to_regclass('app.three') IS NULL AS three_absent;

-- Fix 3 and run again: it resumes at 3.
SELECT deploy.register('3', 'three', 'CREATE TABLE app.three (id int)', 'DROP TABLE app.three', replace => true);
CALL deploy.run(app_version => 'rel-1') \gset
SELECT run_summary(:'result');
-- Nothing left: an empty run.
CALL deploy.run() \gset
SELECT run_summary(:'result');
SELECT deploy.current_version();

-- target stops the run; bad targets are refused before anything runs.
SELECT deploy.register('4', 'four', 'CREATE TABLE app.four (id int)', 'DROP TABLE app.four');
SELECT deploy.register('5', 'five', 'CREATE TABLE app.five (id int)', 'DROP TABLE app.five');
CALL deploy.run(target => '99');
\echo :LAST_ERROR_SQLSTATE
CALL deploy.run(target => 'x y');
\echo :LAST_ERROR_SQLSTATE
CALL deploy.run(target => '4') \gset
SELECT run_summary(:'result');
SELECT deploy.current_version();
-- A target at or below the current version has nothing to do (run never goes down).
CALL deploy.run(target => '2') \gset
SELECT run_summary(:'result');

-- Inside an explicit transaction block the first COMMIT is refused, and everything is rolled back.
BEGIN;
CALL deploy.run();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT deploy.current_version(), (SELECT count(*) FROM deploy.checkpoints) AS checkpoints;

-- A session killed in the middle of a run (here: terminated while migration 7 sleeps) keeps 5 and 6, loses
-- only 7, leaves no half-written deployment, and the next run resumes at 7.
SELECT deploy.register('6', 'six', 'CREATE TABLE app.six (id int)', 'DROP TABLE app.six');
SELECT deploy.register('7', 'seven', 'CREATE TABLE app.seven (id int); SELECT pg_sleep(60)', 'DROP TABLE app.seven');
CREATE EXTENSION IF NOT EXISTS dblink;
SELECT dblink_connect('runner', format('host=%s port=%s dbname=%s application_name=regress_runner',
                      split_part(current_setting('unix_socket_directories'), ',', 1), current_setting('port'),
                      current_database()));
SELECT dblink_send_query('runner', 'CALL deploy.run(app_version => ''rel-2'')');
DO $$
BEGIN
    FOR i IN 1..600 LOOP   -- wait up to 60 s for 6 to commit and 7 to start sleeping
        EXIT WHEN EXISTS (SELECT 1 FROM deploy.applied WHERE version = '6')
              AND EXISTS (SELECT 1 FROM pg_stat_activity
                          WHERE application_name = 'regress_runner' AND wait_event = 'PgSleep');
        PERFORM pg_sleep(0.1);
        PERFORM pg_stat_clear_snapshot();   -- pg_stat_activity is otherwise frozen for the transaction
    END LOOP;
END
$$;
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'regress_runner';
SELECT dblink_disconnect('runner');
DO $$
BEGIN
    FOR i IN 1..600 LOOP   -- wait for the terminated backend to go away
        EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'regress_runner');
        PERFORM pg_sleep(0.1);
        PERFORM pg_stat_clear_snapshot();   -- pg_stat_activity is otherwise frozen for the transaction
    END LOOP;
END
$$;
SELECT deploy.current_version(), to_regclass('app.seven') IS NULL AS seven_absent;
SELECT count(*) AS running_deployments FROM deploy.deployments WHERE state = 'running';
SELECT deploy.validate() ->> 'ok' AS ledger_valid;
SELECT deploy.status() -> 'lock_holder' AS lock_holder;
DROP EXTENSION dblink;
SELECT deploy.register('7', 'seven', 'CREATE TABLE app.seven (id int)', 'DROP TABLE app.seven', replace => true);
CALL deploy.run(app_version => 'rel-2') \gset
SELECT run_summary(:'result');
SELECT version FROM deploy.applied ORDER BY sort_key;

-- A non-transactional migration stops the run before it, saying how to continue.
SELECT deploy.register('8', 'eight', 'CREATE TABLE app.eight (id int)', 'DROP TABLE app.eight');
SELECT deploy.register('9', 'concurrent_index', 'CREATE INDEX CONCURRENTLY eight_idx ON app.eight (id)',
                       'DROP INDEX app.eight_idx', transactional => false);
CALL deploy.run() \gset
SELECT run_summary(:'result');
SELECT deploy.current_version();
SELECT :'result'::jsonb -> 'awaiting_nontransactional' -> 'version' AS awaiting;
