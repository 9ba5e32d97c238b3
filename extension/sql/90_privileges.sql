-- pg_deploy install script, part 90: privileges. Runs last, so "ALL ... IN SCHEMA deploy" covers every object of
-- the install script. docs/security.md is the threat model these grants implement.
--
-- Nothing is granted to PUBLIC. deploy_reader sees the state of deployments (status, views, the ledger without SQL
-- bodies, error messages without their detail and context); deploy_admin applies, reverts and registers.
--
-- Nobody but the extension's owner writes the tables. deploy_admin changes them only through the functions: the C
-- engine runs its own statements as the owner (extension/src/pg/spi.cpp), the marker, baseline and event functions
-- are SECURITY DEFINER, and each sets the actor (deploy.acting_role()) and the time itself. So stored SQL cannot be
-- rewritten behind its checksum, an event cannot be forged or back-dated, and the counters cannot be falsified.
-- Migration, down and verify SQL still run with the caller's own rights: deploy_admin lets a role drive pg_deploy
-- but does not let it change objects it could not change anyway.

REVOKE ALL ON ALL TABLES IN SCHEMA deploy FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA deploy FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA deploy FROM PUBLIC;

-- Readers: the ledger, but no SQL bodies (up/down/verify SQL and checkpoint statements may embed secrets or data,
-- and readers include monitoring) and no error detail, context or hook output (they quote values): column grants
-- leave them out.
GRANT SELECT ON deploy.archived, deploy.ledger_stats, deploy.leases TO deploy_reader;
GRANT SELECT (id, kind, app_version, state, started_at, finished_at, started_by, version_before, version_after,
              reverts, rolled_back_by, error, metadata)
    ON deploy.deployments TO deploy_reader;
GRANT SELECT (id, deployment_id, target_version, reason, details, state, requested_by, requested_at, holder,
              lease_until, attempts, last_error, updated_at, resolved_by, resolution)
    ON deploy.rollback_markers TO deploy_reader;
GRANT SELECT (id, at, kind, deployment_id, version, marker_id, actor, details) ON deploy.events TO deploy_reader;
GRANT SELECT (version, sort_key, name, checksum, down_checksum, verify_checksum, transactional, down_transactional,
              reversibility, lock_timeout_ms, registered_at, registered_by)
    ON deploy.migrations TO deploy_reader;
GRANT SELECT (version, sort_key, name, checksum, down_checksum, reversibility, transactional, down_transactional,
              lock_timeout_ms, deployment_id, applied_at, applied_by, duration_ms, baseline)
    ON deploy.applied TO deploy_reader;
GRANT SELECT (id, deployment_id, version, step, state, holder, started_at, finished_at, attempts, error)
    ON deploy.checkpoints TO deploy_reader;
GRANT SELECT ON deploy.migration_state, deploy.deployment_history, deploy.recent_events TO deploy_reader;

-- The reader functions, and the helpers they call (SECURITY INVOKER: the caller needs EXECUTE on those too).
GRANT EXECUTE ON FUNCTION
    deploy.version_key(text),
    deploy.checksum(text),
    deploy.status(),
    deploy.current_version(),
    deploy.require_version(text),
    deploy.validate(),
    deploy.rollback_eligibility(bigint),
    deploy.deploy_lock_holder(),
    deploy.deployment_interrupted(text),
    deploy.check_version_arg(text, text),
    deploy.newest_revertible_deployment(),
    deploy.marker_is_open(text),
    deploy.acting_role()
TO deploy_reader;

-- Admins read everything and write nothing directly.
GRANT SELECT ON ALL TABLES IN SCHEMA deploy TO deploy_admin;

-- The admin functions. Not granted to anyone: deploy.log_events (takes event times), deploy.finish_marker_attempt,
-- deploy.execute_rollback_begin and deploy.execute_rollback_end (steps of execute_rollback that trust their
-- arguments), deploy.wait_for_deploy_lock; the engine calls them as the owner.
GRANT EXECUTE ON FUNCTION
    deploy.register(text, text, text, text, text, boolean, text, boolean, text, boolean),
    deploy.unregister(text),
    deploy.up(text, boolean, text, boolean, jsonb),
    deploy.down(integer, text, boolean, boolean, text),
    deploy.rollback(bigint, boolean, text, boolean),
    deploy.next_step(bigint, text),
    deploy.step_done(bigint),
    deploy.step_failed(bigint, text, text),
    deploy.verify(text),
    deploy.baseline(text, text),
    deploy.request_rollback(text, bigint, jsonb),
    deploy.claim_marker(text, interval, bigint),
    deploy.renew_lease(bigint, text, interval),
    deploy.fail_marker_attempt(bigint, text, jsonb),
    deploy.execute_rollback(bigint, text, boolean),
    deploy.resolve_marker(bigint, text, text),
    deploy.run_begin(text, text),
    deploy.run_step(jsonb),
    deploy.run_finish(jsonb),
    deploy.log_event(text, bigint, text, bigint, jsonb, jsonb),
    deploy.check_input_length(text, text),
    deploy.public_error(jsonb),
    deploy.private_error(jsonb)
TO deploy_admin;
GRANT EXECUTE ON PROCEDURE deploy.run(text, text, jsonb) TO deploy_admin;

-- The archive of data that lossy reverts dropped (created by the engine, when present): admins only, since it holds
-- application data. The archiver creates its tables as the caller, who must be able to read what it copies.
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
