-- pg_deploy install script, part 90: privileges. Runs last, so "ALL ... IN SCHEMA deploy" covers every object of
-- the install script.
--
-- Nothing is granted to PUBLIC. deploy_reader sees the state of deployments (status, views, the ledger without SQL
-- bodies); deploy_admin applies, reverts and registers. Every function is SECURITY INVOKER: migration SQL runs with
-- the caller's own rights, so deploy_admin lets a role drive pg_deploy but does not let it change objects it could
-- not change anyway. A watcher needs deploy_admin (it requests, claims and executes markers and writes events) plus
-- whatever rights the down scripts of the migrations need.

REVOKE ALL ON ALL TABLES IN SCHEMA deploy FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA deploy FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA deploy FROM PUBLIC;

-- Readers: the ledger, but no SQL bodies (up/down/verify SQL and checkpoint statements may embed secrets or data,
-- and readers include monitoring): column grants leave them out.
GRANT SELECT ON deploy.deployments, deploy.rollback_markers, deploy.archived, deploy.events, deploy.ledger_stats
    TO deploy_reader;
GRANT SELECT (version, sort_key, name, checksum, transactional, reversibility, registered_at, registered_by)
    ON deploy.migrations TO deploy_reader;
GRANT SELECT (version, sort_key, name, checksum, reversibility, transactional, deployment_id, applied_at, applied_by,
              duration_ms, baseline)
    ON deploy.applied TO deploy_reader;
GRANT SELECT (id, deployment_id, version, step, state, holder, started_at, finished_at, attempts, error)
    ON deploy.checkpoints TO deploy_reader;
GRANT SELECT ON deploy.migration_state, deploy.deployment_history, deploy.recent_events TO deploy_reader;

-- The reader functions, and the helpers they call (SECURITY INVOKER: the caller needs EXECUTE on those too).
GRANT EXECUTE ON FUNCTION
    deploy.version_key(text),
    deploy.status(),
    deploy.current_version(),
    deploy.require_version(text),
    deploy.validate(),
    deploy.rollback_eligibility(bigint),
    deploy.deploy_lock_holder(),
    deploy.check_version_arg(text, text),
    deploy.newest_revertible_deployment()
TO deploy_reader;

-- Admins: full DML on the ledger; the audit log only grows (INSERT, SELECT; its triggers refuse the rest anyway).
GRANT SELECT, INSERT, UPDATE, DELETE
    ON deploy.migrations, deploy.deployments, deploy.applied, deploy.checkpoints, deploy.rollback_markers,
       deploy.archived
    TO deploy_admin;
GRANT SELECT, INSERT ON deploy.events TO deploy_admin;
GRANT SELECT, UPDATE ON deploy.ledger_stats TO deploy_admin;   -- its triggers update it as the writer
GRANT SELECT ON deploy.migration_state, deploy.deployment_history, deploy.recent_events TO deploy_admin;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA deploy TO deploy_admin;
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA deploy TO deploy_admin;

-- The archive of data that lossy reverts dropped (created by the engine, when present): admins only, since it holds
-- application data.
DO $archive$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'deploy_archive') THEN
        REVOKE ALL ON SCHEMA deploy_archive FROM PUBLIC;
        REVOKE ALL ON ALL TABLES IN SCHEMA deploy_archive FROM PUBLIC;
        GRANT USAGE, CREATE ON SCHEMA deploy_archive TO deploy_admin;
        GRANT SELECT ON ALL TABLES IN SCHEMA deploy_archive TO deploy_admin;
    END IF;
END
$archive$;
