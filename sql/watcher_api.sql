-- watcher_api: the functions pgdeploy reads the ledger through (extension/sql/80_watcher_api.sql): their result
-- shapes on an empty and a busy ledger, the leadership and session deploy locks, and who may call them.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
\set SHOW_CONTEXT never
CREATE SCHEMA app;

-- Nothing deployed yet: one row, every column NULL.
SELECT * FROM deploy.watch_view();
SELECT deploy.pending_count() AS pending, deploy.list_markers() AS markers;

-- rel-1, then rel-2 with an irreversible migration.
SELECT deploy.register('1', 't1', 'CREATE TABLE app.t1 (id int)', 'DROP TABLE app.t1');
SELECT (deploy.up(app_version => 'rel-1')) ->> 'deployment_id' AS rel1 \gset
SELECT deploy.register('2', 't2', 'CREATE TABLE app.t2 (id int)', reversibility => 'irreversible');
SELECT (deploy.up(app_version => 'rel-2')) ->> 'deployment_id' AS rel2 \gset
SELECT deployment_id = :rel2 AS is_rel2, state, app_version, version_before, version_after,
       age_ms BETWEEN 0 AND 600000 AS fresh, irreversible_versions, judged,
       target_deployment_id = :rel1 AS target_is_rel1, target_app_version, target_schema_version, target_failing,
       last_rollback_age_ms
FROM deploy.watch_view();

-- pending_count: everything registered and not applied, or up to a target in version order.
SELECT deploy.register('3', 't3', 'CREATE TABLE app.t3 (id int)', 'DROP TABLE app.t3');
SELECT deploy.register('10', 't10', 'CREATE TABLE app.t10 (id int)', 'DROP TABLE app.t10');
SELECT deploy.pending_count() AS all_pending, deploy.pending_count('3') AS through_3,
       deploy.pending_count('9') AS through_9, deploy.pending_count('1') AS through_1;

-- A watcher's decision against rel-2 judges it; a watcher seeing rel-1's release unhealthy makes the target failing.
SELECT deploy.log_event('watcher_decision', :rel2, details => '{"kind": "none"}') > 0 AS logged;
SELECT judged FROM deploy.watch_view();
SELECT deploy.log_event('watcher_decision', :rel2, details => '{"kind": "freeze"}') > 0 AS logged;
SELECT judged, target_failing FROM deploy.watch_view();
SELECT deploy.log_event('watcher_unhealthy', :rel1) > 0 AS logged;
SELECT target_failing FROM deploy.watch_view();

-- Markers: a pending one is claimable by anybody; once claimed, only by its holder (own) until the lease ends.
SELECT deploy.request_rollback('health check failed') AS m1 \gset
SELECT id = :m1 AS is_m1, state, attempts, idle_ms BETWEEN 0 AND 600000 AS recent, own
FROM deploy.claimable_markers('watcher-a');
SELECT last_rollback_age_ms BETWEEN 0 AND 600000 AS recent_rollback FROM deploy.watch_view();
SELECT id = :m1 AS claimed_m1 FROM deploy.claim_marker('watcher-a');
SELECT id = :m1 AS is_m1, state, attempts, own FROM deploy.claimable_markers('watcher-a');
SELECT count(*) AS claimable_for_b FROM deploy.claimable_markers('watcher-b');
SELECT count(*) AS claimable_for_nobody FROM deploy.claimable_markers(NULL);
SELECT id = :m1 AS held_m1 FROM deploy.held_markers('watcher-a');
SELECT count(*) AS held_by_b FROM deploy.held_markers('watcher-b');

-- marker_context: the versions a rollback leaves and returns to, and the hook's runs so far.
SELECT deploy.log_event('watcher_hook_started', :rel2, marker_id => :m1) > 0 AS logged;
SELECT deploy.log_event('watcher_hook_started', :rel2, marker_id => :m1) > 0 AS logged;
SELECT id = :m1 AS is_m1, deployment_id = :rel2 AS is_rel2, state, holder, attempts, reason, from_app_version,
       to_app_version, from_schema_version, to_schema_version, hook_runs, hook_done
FROM deploy.marker_context(:m1);
SELECT deploy.log_event('watcher_hook_done', :rel2, marker_id => :m1) > 0 AS logged;
SELECT hook_runs, hook_done FROM deploy.marker_context(:m1);
SELECT count(*) AS unknown_marker_rows FROM deploy.marker_context(999);

-- list_markers: newest first, the reader's columns, open ones only on request, at most max_rows.
SELECT jsonb_array_length(deploy.list_markers()) AS all_markers,
       jsonb_array_length(deploy.list_markers(open_only => true)) AS open_markers,
       deploy.list_markers(max_rows => 0) AS none,
       (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(deploy.list_markers() -> 0) k) AS fields;
SELECT deploy.fail_marker_attempt(:m1, 'watcher-a', '{"message": "hook failed"}') AS after_failure;
SELECT deploy.resolve_marker(:m1, 'abandoned', 'by hand') ->> 'state' AS resolved;
SELECT jsonb_array_length(deploy.list_markers(open_only => true)) AS open_markers,
       deploy.list_markers() -> 0 ->> 'state' AS newest_state;

-- Leadership and the deploy lease are rows (sql/leases.sql tests them); here only who may take them.

-- Privileges: a reader may read through the API but neither lead nor hold the deploy lock; a role without grants
-- may call nothing.
DROP ROLE IF EXISTS regress_wapi_reader;
DROP ROLE IF EXISTS regress_wapi_admin;
DROP ROLE IF EXISTS regress_wapi_nobody;
CREATE ROLE regress_wapi_reader IN ROLE deploy_reader;
CREATE ROLE regress_wapi_admin IN ROLE deploy_admin;
CREATE ROLE regress_wapi_nobody;
GRANT USAGE ON SCHEMA deploy TO regress_wapi_nobody;

SET ROLE regress_wapi_reader;
SELECT deployment_id = :rel2 AS is_rel2, judged, target_failing FROM deploy.watch_view();
SELECT count(*) AS claimable FROM deploy.claimable_markers('watcher-a');
SELECT count(*) AS held FROM deploy.held_markers('watcher-a');
SELECT hook_runs, hook_done FROM deploy.marker_context(:m1);
SELECT jsonb_array_length(deploy.list_markers()) AS markers, deploy.pending_count() AS pending;
\set VERBOSITY terse
SELECT deploy.try_watcher_leadership('reader');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.acquire_deploy_lease('reader', 'regress');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.release_deploy_lease('reader');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS leases_visible FROM deploy.leases;
\set VERBOSITY default
RESET ROLE;

SET ROLE regress_wapi_admin;
SELECT deployment_id = :rel2 AS is_rel2 FROM deploy.watch_view();
SELECT deploy.try_watcher_leadership('admin') AS leads;
SELECT deploy.release_watcher_leadership('admin') AS released;
SELECT deploy.acquire_deploy_lease('admin', 'regress') ->> 'holder' AS lease_holder;
SELECT deploy.release_deploy_lease('admin') AS released;
RESET ROLE;

SET ROLE regress_wapi_nobody;
\set VERBOSITY terse
SELECT * FROM deploy.watch_view();
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM deploy.claimable_markers('x');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM deploy.held_markers('x');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM deploy.marker_context(1);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.list_markers();
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.pending_count();
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.try_watcher_leadership('nobody');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.acquire_deploy_lease('nobody', 'regress');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.release_deploy_lease('nobody');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM deploy.leases;
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
RESET ROLE;

REVOKE USAGE ON SCHEMA deploy FROM regress_wapi_nobody;
DROP ROLE regress_wapi_reader;
DROP ROLE regress_wapi_admin;
DROP ROLE regress_wapi_nobody;
DROP EXTENSION pg_deploy CASCADE;
DROP SCHEMA app CASCADE;
