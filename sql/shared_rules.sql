-- shared_rules: the rules that SQL and the engine share have one implementation each (the engine's), and every
-- caller answers alike: the rollback window (deploy.rollback and deploy.rollback_eligibility judge it on the same
-- clock), the deploy lock (deploy.deploy_lock_holder, deploy.wait_for_deploy_lock) and the open marker states.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE EXTENSION pg_deploy;
\set SHOW_CONTEXT never
CREATE SCHEMA app;
CREATE FUNCTION app.sqlstate_of(query text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE query;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END
$$;
DROP ROLE IF EXISTS regress_pd_rules_reader;
DROP ROLE IF EXISTS regress_pd_rules_admin;
CREATE ROLE regress_pd_rules_reader IN ROLE deploy_reader;
CREATE ROLE regress_pd_rules_admin IN ROLE deploy_admin;

-- The rollback window, on one clock. A deployment that finished in this transaction, with a one-second window and
-- more than a second gone: eligibility says outside the window, and deploy.rollback() refuses it the same way
-- (PD006). (It once compared against the transaction's start, now(), and reverted it.)
SELECT deploy.register('1', 't1', 'CREATE TABLE app.t1 (id int)', 'DROP TABLE app.t1');
BEGIN;
SELECT deploy.up(app_version => 'rel-1') ->> 'ok' AS up_ok;
SET LOCAL pg_deploy.rollback_window = 1;
SELECT pg_sleep(1.2);
SELECT jsonb_path_query_array(deploy.rollback_eligibility(), '$.reasons[*].code') AS reasons;
SELECT app.sqlstate_of('SELECT deploy.rollback()') AS rollback;
SELECT app.sqlstate_of('SELECT deploy.rollback(force => true)') AS forced;
ROLLBACK;
-- The default target is the engine's too: nothing deployed, nothing to roll back (eligibility), P0002 (rollback,
-- request_rollback).
SELECT jsonb_path_query_array(deploy.rollback_eligibility(), '$.reasons[*].code') AS reasons;
SELECT deploy.newest_revertible_deployment();
SELECT app.sqlstate_of('SELECT deploy.rollback()') AS rollback,
       app.sqlstate_of('SELECT deploy.request_rollback(''why'')') AS request_rollback;

-- The deploy lock's holder, as pg_stat_activity would show it to the caller: this session holds it; the superuser
-- sees since when, a reader that may not see this session's activity gets "since" as NULL (as its own query of
-- pg_stat_activity would show it), not the engine's view of it.
SELECT deploy.deploy_lock_holder() IS NULL AS nobody_holds_it;
BEGIN;
SELECT true AS taken FROM deploy.wait_for_deploy_lock('deploy.test()');
SELECT (h->>'pid')::int = pg_backend_pid() AS holder_is_me, h->>'since' IS NOT NULL AS since_shown
FROM deploy.deploy_lock_holder() h;
SET LOCAL ROLE regress_pd_rules_reader;
SELECT (h->>'pid')::int = pg_backend_pid() AS holder_is_me, h ? 'application_name' AS names_application,
       h->'since' AS since
FROM deploy.deploy_lock_holder() h;
SELECT xact_start IS NULL AS hidden_from_reader FROM pg_stat_activity WHERE pid = pg_backend_pid();
COMMIT;
-- wait_for_deploy_lock refuses what the engine's operations refuse (25000 under REPEATABLE READ), and is granted to
-- nobody: deploy.baseline and deploy.execute_rollback call it as the owner.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT deploy.wait_for_deploy_lock('deploy.test()');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SET ROLE regress_pd_rules_admin;
SELECT deploy.wait_for_deploy_lock('deploy.test()');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- Open marker states: one list, which the partial unique index and every query use through deploy.marker_is_open.
SELECT c.state, deploy.marker_is_open(c.state) AS open
FROM unnest(ARRAY['pending', 'in_progress', 'done', 'failed', 'needs_attention']) AS c(state);
SELECT pg_get_indexdef('deploy.rollback_markers_open_idx'::regclass) AS open_index;
SELECT deploy.up(app_version => 'rel-1') ->> 'ok' AS up_ok;
SELECT deploy.request_rollback('first') = deploy.request_rollback('second') AS one_open_marker;
SELECT jsonb_array_length(deploy.status() -> 'open_markers') AS open_markers;
SELECT app.sqlstate_of('SELECT deploy.up()') AS up_while_open;
SELECT deploy.resolve_marker(1, 'abandoned') ->> 'state' AS state;
SELECT jsonb_array_length(deploy.status() -> 'open_markers') AS open_markers;
SELECT app.sqlstate_of('SELECT deploy.up()') AS up_when_closed;

DROP ROLE regress_pd_rules_reader;
DROP ROLE regress_pd_rules_admin;
