-- Migration, down and verify SQL run with the caller's search_path, whichever entry point runs them:
-- deploy.up (tested in up.sql), CALL deploy.run, deploy.verify, deploy.execute_rollback.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
CREATE SCHEMA app;
SET search_path = app, public;

SELECT deploy.register('1', 'users', 'CREATE TABLE users (id int primary key)', 'DROP TABLE users',
                       'SELECT id FROM users');
SELECT deploy.register('2', 'orders', 'CREATE TABLE orders (id int primary key, user_id int REFERENCES users)',
                       'DROP TABLE orders', 'SELECT user_id FROM orders');
CALL deploy.run(app_version => 'r1') \gset
SELECT :'result'::jsonb ->> 'ok' AS run_ok, deploy.current_version();
SELECT relname, relnamespace::regnamespace FROM pg_class WHERE relname IN ('users', 'orders') ORDER BY 1;

SELECT deploy.verify() ->> 'ok' AS verify_ok;

SELECT deploy.request_rollback('unqualified down SQL', deployment_id => max(id)) AS marker
FROM deploy.deployments WHERE kind = 'up' \gset
SELECT r ->> 'ok' AS executed_ok FROM deploy.execute_rollback(:marker, holder => 'regress') AS r;
SELECT state FROM deploy.rollback_markers WHERE id = :marker;
SELECT deploy.current_version(), to_regclass('app.orders') IS NULL AS orders_dropped;
RESET search_path;
