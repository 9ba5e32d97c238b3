-- dry_run: up/down/rollback rehearsed for real inside a subtransaction that is always rolled back; no rows anywhere.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
\set SHOW_CONTEXT never

SELECT deploy.register('0001', 'schema', 'CREATE SCHEMA app', 'DROP SCHEMA app');
SELECT deploy.register('0002', 'users', 'CREATE TABLE app.users (id int PRIMARY KEY); INSERT INTO app.users VALUES (1)',
                       'DROP TABLE app.users');
SELECT deploy.register('0003', 'depends_on_users', 'INSERT INTO app.users VALUES (2)', 'DELETE FROM app.users WHERE id = 2');

-- A snapshot of everything pg_deploy writes, to compare after each dry run.
CREATE TEMP VIEW ledger_counts AS
SELECT (SELECT count(*) FROM deploy.deployments) AS deployments, (SELECT count(*) FROM deploy.applied) AS applied,
       (SELECT count(*) FROM deploy.events) AS events, (SELECT count(*) FROM deploy.rollback_markers) AS markers,
       (SELECT count(*) FROM deploy.checkpoints) AS checkpoints, (SELECT count(*) FROM deploy.archived) AS archived;
SELECT * FROM ledger_counts;

-- The rehearsal really runs the SQL (0003 sees 0002's table) and reports per-migration timing.
SELECT r - 'duration_ms' - 'applied' AS result, jsonb_path_query_array(r, '$.applied[*].version') AS would_apply,
       jsonb_path_query_array(r, '$.applied[*].duration_ms ? (@ >= 0)') <> '[]' AS timed
FROM deploy.up(dry_run => true) AS r;
SELECT * FROM ledger_counts;
SELECT to_regnamespace('app') AS app_schema;

-- A failing rehearsal reports the error (and warns) and still leaves nothing.
SELECT deploy.register('0004', 'broken', 'INSERT INTO app.users VALUES (1)', 'SELECT 1');
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, r -> 'failed' ->> 'version' AS failed_version,
       r -> 'failed' ->> 'sqlstate' AS sqlstate, jsonb_path_query_array(r, '$.applied[*].version') AS before_failure
FROM deploy.up(dry_run => true) AS r;
SELECT * FROM ledger_counts;

-- A dry run does not need the open-marker check to pass and does not resume anything; it also works with target.
SELECT jsonb_path_query_array(deploy.up(dry_run => true, target => '0002'), '$.applied[*].version') AS would_apply;

-- Apply for real, then rehearse down and rollback.
SELECT deploy.up(target => '0003') ->> 'ok' AS ok;
SELECT * FROM ledger_counts \gset before_
SELECT r - 'duration_ms' - 'reverted' AS result, jsonb_path_query_array(r, '$.reverted[*].version') AS would_revert
FROM deploy.down(steps => 2, dry_run => true) AS r;
SELECT r ->> 'ok' AS ok, r ->> 'state' AS state, jsonb_path_query_array(r, '$.reverted[*].version') AS would_revert,
       r ->> 'version_after' AS version_after
FROM deploy.rollback(dry_run => true) AS r;
SELECT (SELECT count(*) FROM app.users) AS users_still_there,
       (SELECT row(l.*)::text FROM ledger_counts l) = row(:before_deployments, :before_applied, :before_events,
            :before_markers, :before_checkpoints, :before_archived)::text AS ledger_unchanged;

-- A failing down script in a dry run: ok false, nothing changed.
UPDATE deploy.applied SET down_sql = 'DROP TABLE app.no_such_table',
    down_checksum = deploy.checksum('DROP TABLE app.no_such_table') WHERE version = '0003';
SELECT r ->> 'ok' AS ok, r -> 'failed' ->> 'sqlstate' AS sqlstate, r -> 'failed' ->> 'version' AS version
FROM deploy.down(dry_run => true) AS r;
SELECT version FROM deploy.applied ORDER BY sort_key;
