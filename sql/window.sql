-- window: deploy.rollback_eligibility() and the rollback window (pg_deploy.rollback_window, default 7 days).
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
\set SHOW_CONTEXT never
CREATE SCHEMA app;
-- The parts of an eligibility answer that do not move with the clock.
CREATE FUNCTION eligibility(d bigint DEFAULT NULL) RETURNS TABLE (deployment_id bigint, eligible boolean,
    with_force boolean, reasons jsonb, irreversible jsonb, lossy jsonb, later jsonb, window_len text)
LANGUAGE sql AS $$
    SELECT (e->>'deployment_id')::bigint, (e->>'eligible')::boolean, (e->>'eligible_with_force')::boolean,
           jsonb_path_query_array(e, '$.reasons[*].code'), e->'irreversible', e->'lossy', e->'later_deployments',
           e->>'rollback_window'
    FROM deploy.rollback_eligibility(d) e
$$;

-- Nothing deployed: nothing to roll back (not an error: the watcher asks this routinely).
SELECT * FROM eligibility();
SELECT deploy.rollback_eligibility(42);
\echo :LAST_ERROR_SQLSTATE

SELECT deploy.register('1', 't1', 'CREATE TABLE app.t1 (id int)', 'DROP TABLE app.t1');
SELECT (deploy.up(app_version => 'rel-1')) ->> 'deployment_id' AS rel1 \gset
SELECT deploy.register('2', 't2', 'CREATE TABLE app.t2 (id int, note text)', 'DROP TABLE app.t2',
                       reversibility => 'lossy');
SELECT (deploy.up(app_version => 'rel-2')) ->> 'deployment_id' AS rel2 \gset

-- Fresh deployments are inside the window; rel-1 has rel-2 on top of it.
SELECT * FROM eligibility();
SELECT * FROM eligibility(:rel2);
SELECT * FROM eligibility(:rel1);
-- window_ends_at is the deployment's end plus the window.
SELECT (e->>'window_ends_at')::timestamptz = d.finished_at + interval '7 days' AS seven_days
FROM deploy.rollback_eligibility(:rel2) e, deploy.deployments d WHERE d.id = :rel2;

-- The window is a GUC: shorter, and zero.
SET pg_deploy.rollback_window = '1h';
SELECT window_len, eligible FROM eligibility(:rel2);
SELECT (e->>'window_ends_at')::timestamptz = d.finished_at + interval '1 hour' AS one_hour
FROM deploy.rollback_eligibility(:rel2) e, deploy.deployments d WHERE d.id = :rel2;
SET pg_deploy.rollback_window = 0;
SELECT window_len, eligible, with_force, reasons FROM eligibility(:rel2);
RESET pg_deploy.rollback_window;

-- A deployment eight days old is outside the default window: not eligible, but force may override.
UPDATE deploy.deployments SET started_at = started_at - interval '8 days', finished_at = finished_at - interval '8 days'
WHERE id = :rel2;
SELECT eligible, with_force, reasons FROM eligibility(:rel2);
SELECT r->>'message' AS message FROM jsonb_array_elements(deploy.rollback_eligibility(:rel2)->'reasons') r;

-- A marker for it goes straight to needs_attention (retrying cannot help) with PD006, and reverts nothing.
SELECT deploy.request_rollback('too late?', :rel2) AS m1 \gset
SELECT r->'ok' AS ok, r->'state' AS state, r->'error'->'sqlstate' AS sqlstate
FROM deploy.execute_rollback(:m1, 'w') r;
SELECT deploy.current_version();
SELECT deploy.resolve_marker(:m1, 'abandoned', 'retry with force') ->> 'state' AS state;
-- With force it is reverted.
SELECT deploy.request_rollback('forced', :rel2) AS m2 \gset
SELECT r->'ok' AS ok, r->'state' AS state FROM deploy.execute_rollback(:m2, 'w', force => true) r;
SELECT deploy.current_version();
SELECT eligible, reasons FROM eligibility(:rel2);

-- Irreversible migrations: refused without force (PD002 on the marker), forceable.
SELECT deploy.register('3', 'drop_it', 'CREATE TABLE app.t3 (id int)');
SELECT (deploy.up(app_version => 'rel-3')) ->> 'deployment_id' AS rel3 \gset
SELECT eligible, with_force, reasons, irreversible FROM eligibility(:rel3);
SELECT deploy.request_rollback('irreversible', :rel3) AS m3 \gset
SELECT r->'ok' AS ok, r->'state' AS state, r->'error'->'sqlstate' AS sqlstate
FROM deploy.execute_rollback(:m3, 'w') r;
SELECT deploy.current_version();

-- Kinds other than up are never eligible, not even with force: here the rollback deployment itself (baseline.sql
-- shows a baseline).
SELECT d.id AS rollback_deployment FROM deploy.deployments d WHERE d.kind = 'rollback' ORDER BY d.id LIMIT 1 \gset
SELECT eligible, with_force, reasons FROM eligibility(:rollback_deployment);
-- A running deployment is not eligible yet (a marker for it stays retryable: failed, not needs_attention).
INSERT INTO deploy.deployments (kind, state) VALUES ('up', 'running') RETURNING id AS running \gset
SELECT eligible, reasons FROM eligibility(:running);
SELECT deploy.request_rollback('stuck deploy', :running) AS m4 \gset
SELECT r->'ok' AS ok, r->'state' AS state, r->'error'->'reasons'->0->'code' AS reason
FROM deploy.execute_rollback(:m4, 'w') r;
