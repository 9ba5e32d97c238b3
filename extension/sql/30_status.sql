-- pg_deploy install script, part 30: the read side (current version, status) and the deploy lock's SQL declarations.

-- Checkpoints are kept forever (one per step of every resumable deployment), but status only wants the unfinished
-- ones: a partial index keeps that lookup independent of the history's size.
CREATE INDEX checkpoints_unfinished_idx ON deploy.checkpoints (deployment_id, version, step)
    WHERE state <> 'done';

-- The deploy lock (advisory, transaction-scoped, bounded wait) has one implementation, the engine's
-- (extension/src/pg/lock.cpp); these declare it for the SQL side.
-- deploy.deploy_lock_holder reports who holds it, {"pid", "application_name", "since"} or NULL: status() shows it, as
-- the lock wait error does. "since" is NULL for callers that may not see other roles' activity (pg_stat_activity's
-- rule).
CREATE FUNCTION deploy.deploy_lock_holder()
RETURNS jsonb
LANGUAGE c STABLE
AS 'MODULE_PATHNAME', 'pgdeploy_deploy_lock_holder';

-- deploy.wait_for_deploy_lock takes the deploy lock for the PL/pgSQL operations (baseline, execute_rollback,
-- acquire_deploy_lease), as the engine's own functions do: READ COMMITTED only (25000), at most pg_deploy.lock_wait
-- for the lock and for another holder's live deploy lease (deploy.leases), then 55P03 naming the holder. A caller
-- passing the lease's own holder is not kept out by it. The lock is re-entrant within a transaction, so calling
-- deploy.rollback()/deploy.up() afterwards is fine.
CREATE FUNCTION deploy.wait_for_deploy_lock(operation text, lease_holder text DEFAULT NULL)
RETURNS void
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pgdeploy_wait_for_deploy_lock';

-- deploy.deployment_interrupted: a deployment left running with nobody working on it (no session holds the deploy
-- lock, no live deploy lease): its client was cut off, by a failover or a crash. Nothing of it is half-applied (each
-- migration commits whole; a non-transactional one resumes at its first unfinished step), and the next deploy.up(),
-- deploy.rollback() or pgdeploy command of the same kind resumes it. deploy.status() shows it as interrupted.
CREATE FUNCTION deploy.deployment_interrupted(state text)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
SELECT state = 'running'
   AND NOT EXISTS (SELECT 1 FROM deploy.leases l WHERE l.name = 'deploy' AND l.expires_at >= clock_timestamp())
   AND deploy.deploy_lock_holder() IS NULL
$fn$;

-- deploy.check_version_arg refuses a NULL or malformed version argument with the contract's SQLSTATEs before it
-- reaches a query, so a typo reads "invalid version" rather than "unknown version".
CREATE FUNCTION deploy.check_version_arg(version text, argument text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF version IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', argument USING ERRCODE = '22004';
    END IF;
    IF version !~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$' THEN
        RAISE EXCEPTION 'invalid version %: % must be 1-64 characters from [A-Za-z0-9._-], starting with a letter or digit',
                        quote_literal(left(version, 80)), argument
            USING ERRCODE = '22023';
    END IF;
END
$fn$;

-- deploy.current_version is called by applications on every start-up and health check: one probe of the unique
-- sort_key index, nothing else.
CREATE FUNCTION deploy.current_version()
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT version FROM deploy.applied ORDER BY sort_key DESC LIMIT 1
$fn$;

-- deploy.require_version lets an application refuse to start against a schema older than it needs. It raises rather
-- than returning false, so a start-up check cannot ignore the answer by accident.
CREATE FUNCTION deploy.require_version(version text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    needed_key   text;
    current_row  record;
BEGIN
    PERFORM deploy.check_version_arg(version, 'version');
    needed_key := deploy.version_key(version);
    SELECT a.version, a.sort_key INTO current_row
    FROM deploy.applied a ORDER BY a.sort_key DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'schema version % required, but the database has nothing applied', version
            USING ERRCODE = 'PD005',
                  HINT = 'Apply the migrations first (deploy.up() or pgdeploy up).';
    END IF;
    IF current_row.sort_key < needed_key COLLATE "C" THEN
        RAISE EXCEPTION 'schema version % required, but the database is at %', version, current_row.version
            USING ERRCODE = 'PD005',
                  HINT = 'Apply the pending migrations (deploy.up() or pgdeploy up) before starting this release.';
    END IF;
    RETURN current_row.version;
END
$fn$;

-- deploy.status is the one-call overview for psql, pgdeploy status and the watcher. It must stay fast on a ledger
-- with 100,000 applied rows and millions of events, so every part is an index probe or a bounded index range:
-- "pending" is what deploy.up() would apply next (registered versions above the current one, in order); older
-- unapplied versions are out-of-order and are reported by deploy.validate(), which may scan. events are never read.
CREATE FUNCTION deploy.status()
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    current_row  record;
    result       jsonb;
BEGIN
    SELECT a.version, a.sort_key INTO current_row
    FROM deploy.applied a ORDER BY a.sort_key DESC LIMIT 1;

    SELECT jsonb_build_object(
        'schema_version', 1,
        'current_version', current_row.version,
        'applied_count', coalesce((SELECT applied_count FROM deploy.ledger_stats), (SELECT count(*) FROM deploy.applied)),
        'pending_count', (SELECT count(*) FROM deploy.migrations m
                          WHERE current_row.sort_key IS NULL OR m.sort_key > current_row.sort_key),
        'pending', coalesce((
            SELECT jsonb_agg(jsonb_build_object('version', p.version, 'name', p.name,
                                                'transactional', p.transactional,
                                                'reversibility', p.reversibility) ORDER BY p.sort_key)
            FROM (SELECT m.version, m.name, m.transactional, m.reversibility, m.sort_key
                  FROM deploy.migrations m
                  WHERE current_row.sort_key IS NULL OR m.sort_key > current_row.sort_key
                  ORDER BY m.sort_key LIMIT 100) p), '[]'),
        'applied', coalesce((
            SELECT jsonb_agg(jsonb_build_object('version', r.version, 'name', r.name,
                                                'applied_at', r.applied_at, 'deployment_id', r.deployment_id,
                                                'baseline', r.baseline) ORDER BY r.sort_key DESC)
            FROM (SELECT a.version, a.name, a.applied_at, a.deployment_id, a.baseline, a.sort_key
                  FROM deploy.applied a ORDER BY a.sort_key DESC LIMIT 20) r), '[]'),
        'last_deployment', (
            SELECT jsonb_build_object('id', d.id, 'kind', d.kind, 'state', d.state, 'app_version', d.app_version,
                                      'started_at', d.started_at, 'finished_at', d.finished_at,
                                      'started_by', d.started_by, 'version_before', d.version_before,
                                      'version_after', d.version_after, 'error', d.error,
                                      'interrupted', deploy.deployment_interrupted(d.state))
            FROM deploy.deployments d ORDER BY d.id DESC LIMIT 1),
        'lock_holder', deploy.deploy_lock_holder(),
        'leases', coalesce((
            SELECT jsonb_agg(jsonb_build_object('lease', l.name, 'holder', l.holder, 'operation', l.operation,
                                                'acquired_at', l.acquired_at, 'renewed_at', l.renewed_at,
                                                'expires_at', l.expires_at,
                                                'expired', l.expires_at < clock_timestamp()) ORDER BY l.name)
            FROM deploy.leases l), '[]'),
        'open_markers', coalesce((
            SELECT jsonb_agg(jsonb_build_object('id', k.id, 'deployment_id', k.deployment_id, 'state', k.state,
                                                'reason', k.reason, 'target_version', k.target_version,
                                                'holder', k.holder, 'lease_until', k.lease_until,
                                                'attempts', k.attempts, 'requested_at', k.requested_at,
                                                'last_error', k.last_error) ORDER BY k.id)
            FROM deploy.rollback_markers k
            WHERE deploy.marker_is_open(k.state)), '[]'),
        'running_checkpoints', coalesce((
            SELECT jsonb_agg(jsonb_build_object('id', c.id, 'deployment_id', c.deployment_id,
                                                'version', c.version, 'step', c.step, 'state', c.state,
                                                'holder', c.holder, 'started_at', c.started_at,
                                                'attempts', c.attempts, 'error', c.error)
                             ORDER BY c.deployment_id, c.version, c.step)
            FROM (SELECT c0.id, c0.deployment_id, c0.version, c0.step, c0.state, c0.holder, c0.started_at,
                         c0.attempts, c0.error
                  FROM deploy.checkpoints c0 WHERE c0.state <> 'done'
                  ORDER BY c0.deployment_id, c0.version, c0.step LIMIT 100) c), '[]'),
        'archived', coalesce((
            SELECT jsonb_agg(jsonb_build_object('id', x.id, 'deployment_id', x.deployment_id,
                                                'version', x.version, 'object_type', x.object_type,
                                                'object_name', x.object_name, 'archive_table', x.archive_table,
                                                'row_count', x.row_count, 'archived_at', x.archived_at,
                                                'expires_at', x.expires_at) ORDER BY x.id DESC)
            FROM (SELECT * FROM deploy.archived x0 ORDER BY x0.id DESC LIMIT 100) x), '[]')
    ) INTO result;
    RETURN result;
END
$fn$;
