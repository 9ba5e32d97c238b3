-- pg_deploy install script, part 80: the watcher's API. pgdeploy (the watcher, `pgdeploy once` and the CLI) asks the
-- extension what it needs to know through these functions instead of reading deploy.* tables, so that the ledger's
-- layout can change under a deployed watcher (docs/sql-reference.md, "The watcher's API"). The read functions are
-- SECURITY INVOKER: they see what the caller's grants let it see, as a direct SELECT did. What must outlive a
-- transaction (the deploy lease, the watcher's leadership) is a lease row, never session state (docs/architecture.md,
-- "Locks").

-- deploy.watch_view: the newest up deployment, the release a rollback would return to, and what the watcher's rules
-- need about both, in one row (all NULL but last_rollback_age_ms when nothing was deployed). Ages come from the
-- server's clock, so clock skew between watcher hosts does not move a watch window. "judged": a watcher already
-- decided against this deployment or a marker exists for it. "target_failing": any deployment of the target's
-- release (same row, or same app_version) got a marker or was seen unhealthy by a watcher.
CREATE FUNCTION deploy.watch_view()
RETURNS TABLE (deployment_id bigint, state text, app_version text, version_before text, version_after text,
               age_ms bigint, irreversible_versions text[], judged boolean, target_deployment_id bigint,
               target_app_version text, target_schema_version text, target_failing boolean,
               last_rollback_age_ms bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
WITH cur AS (
    SELECT d.id, d.state, d.app_version, d.version_before, d.version_after, d.started_at, d.finished_at
    FROM deploy.deployments d WHERE d.kind = 'up' ORDER BY d.id DESC LIMIT 1
), tgt AS (
    SELECT t.id, t.app_version, t.version_after FROM deploy.deployments t, cur
    WHERE t.id < cur.id AND t.kind IN ('up', 'baseline') AND t.state = 'succeeded'
    ORDER BY t.id DESC LIMIT 1
)
SELECT cur.id, cur.state, cur.app_version, cur.version_before, cur.version_after,
       (extract(epoch FROM clock_timestamp() - coalesce(cur.finished_at, cur.started_at)) * 1000)::bigint,
       CASE WHEN cur.id IS NOT NULL THEN
           coalesce((SELECT array_agg(a.version ORDER BY a.sort_key) FROM deploy.applied a
                      WHERE a.deployment_id = cur.id AND a.reversibility = 'irreversible'), '{}')
       END,
       CASE WHEN cur.id IS NOT NULL THEN
           EXISTS (SELECT 1 FROM deploy.rollback_markers m WHERE m.deployment_id = cur.id)
           OR EXISTS (SELECT 1 FROM deploy.events e
                      WHERE e.deployment_id = cur.id AND e.kind = 'watcher_decision'
                        AND e.details ->> 'kind' IN ('rollback', 'freeze', 'would_rollback'))
       END,
       tgt.id, tgt.app_version, tgt.version_after,
       CASE WHEN tgt.id IS NOT NULL THEN
           EXISTS (SELECT 1 FROM deploy.deployments x
                   WHERE (x.id = tgt.id OR (tgt.app_version IS NOT NULL AND x.app_version = tgt.app_version))
                     AND (EXISTS (SELECT 1 FROM deploy.rollback_markers m WHERE m.deployment_id = x.id)
                          OR EXISTS (SELECT 1 FROM deploy.events e
                                     WHERE e.deployment_id = x.id AND e.kind = 'watcher_unhealthy')))
       END,
       (SELECT (extract(epoch FROM clock_timestamp() - max(m.requested_at)) * 1000)::bigint
          FROM deploy.rollback_markers m)
FROM (SELECT 1) one LEFT JOIN cur ON true LEFT JOIN tgt ON true
$fn$;

-- deploy.claimable_markers: the markers a holder could claim now, oldest first: pending, failed (claimable again),
-- in_progress under an expired lease, and in_progress under the holder's own lease (after a restart with the same
-- watcher id). idle_ms is the time since the marker last changed, for the caller's retry backoff; claiming still goes
-- through deploy.claim_marker, which decides under a row lock.
CREATE FUNCTION deploy.claimable_markers(holder text)
RETURNS TABLE (id bigint, state text, attempts integer, idle_ms bigint, own boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
SELECT k.id, k.state, k.attempts,
       (extract(epoch FROM clock_timestamp() - k.updated_at) * 1000)::bigint,
       coalesce(k.state = 'in_progress' AND k.holder = claimable_markers.holder, false)
FROM deploy.rollback_markers k
WHERE k.state IN ('pending', 'failed')
   OR (k.state = 'in_progress' AND (k.lease_until < clock_timestamp() OR k.holder = claimable_markers.holder))
ORDER BY k.id
$fn$;

-- deploy.held_markers: the in_progress markers a holder still holds, live lease or not (a watcher restarted with the
-- same id resumes them).
CREATE FUNCTION deploy.held_markers(holder text)
RETURNS TABLE (id bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
SELECT k.id FROM deploy.rollback_markers k
WHERE k.state = 'in_progress' AND k.holder = held_markers.holder
ORDER BY k.id
$fn$;

-- deploy.marker_context: what a rollback's app hook and its events need about one marker: the release and schema
-- version it leaves and the ones it returns to, and how often the hook already ran for it (watcher_hook_started
-- events) and whether it finished (a watcher_hook_done event: the app side is already back). No row: no such marker.
CREATE FUNCTION deploy.marker_context(marker_id bigint)
RETURNS TABLE (id bigint, deployment_id bigint, state text, holder text, attempts integer, reason text,
               from_app_version text, to_app_version text, from_schema_version text, to_schema_version text,
               hook_runs integer, hook_done boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
SELECT m.id, m.deployment_id, m.state, m.holder, m.attempts, m.reason,
       d.app_version,
       (SELECT t.app_version FROM deploy.deployments t
         WHERE t.id < d.id AND t.kind IN ('up', 'baseline') AND t.state = 'succeeded'
         ORDER BY t.id DESC LIMIT 1),
       coalesce(d.version_after, deploy.current_version()),
       coalesce(m.target_version, d.version_before),
       (SELECT count(*) FROM deploy.events e WHERE e.marker_id = m.id AND e.kind = 'watcher_hook_started')::integer,
       EXISTS (SELECT 1 FROM deploy.events e WHERE e.marker_id = m.id AND e.kind = 'watcher_hook_done')
FROM deploy.rollback_markers m JOIN deploy.deployments d ON d.id = m.deployment_id
WHERE m.id = marker_context.marker_id
$fn$;

-- deploy.list_markers: the newest markers first, at most max_rows of them, as a jsonb array of objects (the columns
-- a reader may see); open_only keeps those not yet closed (pending, in_progress, failed, needs_attention).
CREATE FUNCTION deploy.list_markers(open_only boolean DEFAULT false, max_rows integer DEFAULT 50)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
SELECT coalesce(jsonb_agg(to_jsonb(k) ORDER BY k.id DESC), '[]')
FROM (SELECT m.id, m.deployment_id, m.state, m.reason, m.target_version, m.attempts, m.holder, m.lease_until,
             m.requested_by, m.requested_at, m.updated_at, m.last_error, m.resolution, m.resolved_by, m.details
      FROM deploy.rollback_markers m
      WHERE NOT coalesce(open_only, false) OR m.state IN ('pending', 'in_progress', 'failed', 'needs_attention')
      ORDER BY m.id DESC LIMIT max_rows) k
$fn$;

-- deploy.pending_count: how many registered migrations are not applied, up to and including target when given
-- (what deploy.up(target) would apply, in the engine's version order).
CREATE FUNCTION deploy.pending_count(target text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
SELECT count(*) FROM deploy.migrations m
WHERE NOT EXISTS (SELECT 1 FROM deploy.applied a WHERE a.version = m.version)
  AND (target IS NULL OR m.sort_key <= deploy.version_key(target))
$fn$;

-- deploy.check_lease_args: the one rule for a lease's holder and ttl (22004 NULL, 22001 holder too long, 22023 a ttl
-- that is not positive or over 1 day).
CREATE FUNCTION deploy.check_lease_args(holder text, ttl interval)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF holder IS NULL OR ttl IS NULL THEN
        RAISE EXCEPTION 'holder and ttl must not be NULL' USING ERRCODE = '22004';
    END IF;
    PERFORM deploy.check_input_length('holder', holder);
    IF ttl <= interval '0' OR ttl > interval '1 day' THEN
        RAISE EXCEPTION 'ttl must be positive and at most 1 day, not %', ttl USING ERRCODE = '22023';
    END IF;
END
$fn$;

-- Leases (deploy.leases, part 10): the deploy lease and the watcher's leadership. One rule takes, renews and takes
-- over both: deploy.take_lease. A holder renews by taking again; a live lease of another holder is refused; an
-- expired one is taken over, with a lease_taken_over event naming whom it replaced.
CREATE FUNCTION deploy.take_lease(lease text, holder text, operation text, ttl interval)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    now_ts  timestamptz := clock_timestamp();
    old     deploy.leases;
    taken   deploy.leases;
BEGIN
    PERFORM deploy.check_lease_args(holder, ttl);
    PERFORM deploy.check_input_length('operation', operation);
    SELECT * INTO old FROM deploy.leases l WHERE l.name = take_lease.lease FOR UPDATE;
    IF FOUND AND old.holder <> take_lease.holder AND old.expires_at >= now_ts THEN
        RETURN jsonb_build_object('acquired', false, 'lease', lease, 'holder', old.holder,
                                  'operation', old.operation, 'expires_at', old.expires_at);
    END IF;
    INSERT INTO deploy.leases AS l (name, holder, operation, acquired_at, renewed_at, expires_at, pid,
                                    application_name)
    VALUES (lease, holder, operation, now_ts, now_ts, now_ts + ttl, pg_backend_pid(),
            current_setting('application_name'))
    ON CONFLICT (name) DO UPDATE
        SET holder = EXCLUDED.holder, operation = coalesce(EXCLUDED.operation, l.operation),
            acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at >= now_ts THEN l.acquired_at
                               ELSE EXCLUDED.acquired_at END,
            renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at, pid = EXCLUDED.pid,
            application_name = EXCLUDED.application_name
    RETURNING * INTO taken;
    IF old.holder IS NOT NULL AND old.holder <> take_lease.holder THEN
        PERFORM deploy.log_event('lease_taken_over', NULL, NULL, NULL,
                                 jsonb_build_object('lease', lease, 'holder', holder, 'operation', operation,
                                                    'previous_holder', old.holder,
                                                    'previous_operation', old.operation,
                                                    'expired_at', old.expires_at));
    END IF;
    RETURN jsonb_build_object('acquired', true, 'lease', lease, 'holder', taken.holder,
                              'operation', taken.operation, 'acquired_at', taken.acquired_at,
                              'expires_at', taken.expires_at,
                              'took_over', CASE WHEN old.holder IS NOT NULL AND old.holder <> take_lease.holder
                                                THEN jsonb_build_object('holder', old.holder,
                                                                        'operation', old.operation,
                                                                        'expired_at', old.expires_at) END);
END
$fn$;

-- deploy.give_up_lease ends a holder's lease (false when it did not hold it: expired and taken over).
CREATE FUNCTION deploy.give_up_lease(lease text, holder text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF holder IS NULL THEN
        RAISE EXCEPTION 'holder must not be NULL' USING ERRCODE = '22004';
    END IF;
    DELETE FROM deploy.leases l WHERE l.name = give_up_lease.lease AND l.holder = give_up_lease.holder;
    RETURN FOUND;
END
$fn$;

-- deploy.acquire_deploy_lease: the deploy lease, for a client that runs statements at top level between
-- deploy.next_step() and deploy.step_done() (CREATE INDEX CONCURRENTLY): each function call is its own transaction,
-- so without a lease a second client could be handed the same running step. Waits like every deploy operation (the
-- deploy lock and another holder's live lease, at most pg_deploy.lock_wait; 55P03 names the holder), then takes the
-- lease, or renews it when holder already holds it. The holder renews it while it works (deploy.renew_deploy_lease,
-- from another connection while a statement runs) and gives it back with deploy.release_deploy_lease; a holder that
-- died blocks the others for at most ttl.
CREATE FUNCTION deploy.acquire_deploy_lease(holder text, operation text, ttl interval DEFAULT '30 seconds')
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF holder IS NULL THEN
        RAISE EXCEPTION 'holder must not be NULL' USING ERRCODE = '22004';
    END IF;
    PERFORM deploy.wait_for_deploy_lock(coalesce(operation, 'deploy.acquire_deploy_lease()'), holder);
    RETURN deploy.take_lease('deploy', holder, operation, ttl);
END
$fn$;

-- deploy.renew_deploy_lease: false when holder no longer holds the deploy lease (it expired and was taken over):
-- the holder must stop. Waits for nothing, so a renewal never queues behind the holder's own work.
CREATE FUNCTION deploy.renew_deploy_lease(holder text, ttl interval DEFAULT '30 seconds')
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM deploy.check_lease_args(holder, ttl);
    UPDATE deploy.leases l
    SET renewed_at = clock_timestamp(), expires_at = clock_timestamp() + ttl, pid = pg_backend_pid(),
        application_name = current_setting('application_name')
    WHERE l.name = 'deploy' AND l.holder = renew_deploy_lease.holder;
    RETURN FOUND;
END
$fn$;

CREATE FUNCTION deploy.release_deploy_lease(holder text)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT deploy.give_up_lease('deploy', holder) $fn$;

-- deploy.try_watcher_leadership: one watcher leads. It calls this on every cycle: true while it leads (taken when
-- free or expired, renewed when its own), false while another watcher's lease is live. A leader that stops
-- renewing (dead, cut off by a failover) loses leadership when its ttl runs out.
CREATE FUNCTION deploy.try_watcher_leadership(holder text, ttl interval DEFAULT '15 seconds')
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN (deploy.take_lease('watcher_leader', holder, 'watcher', ttl) ->> 'acquired')::boolean;
END
$fn$;

CREATE FUNCTION deploy.release_watcher_leadership(holder text)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT deploy.give_up_lease('watcher_leader', holder) $fn$;

REVOKE ALL ON FUNCTION deploy.watch_view(), deploy.claimable_markers(text), deploy.held_markers(text),
    deploy.marker_context(bigint), deploy.list_markers(boolean, integer), deploy.pending_count(text),
    deploy.check_lease_args(text, interval), deploy.take_lease(text, text, text, interval),
    deploy.give_up_lease(text, text),
    deploy.acquire_deploy_lease(text, text, interval), deploy.renew_deploy_lease(text, interval),
    deploy.release_deploy_lease(text), deploy.try_watcher_leadership(text, interval),
    deploy.release_watcher_leadership(text)
FROM PUBLIC;

-- What the watcher reads, a reader (a monitoring role, a dashboard) may read too: the same rows it could SELECT.
GRANT EXECUTE ON FUNCTION deploy.watch_view(), deploy.claimable_markers(text), deploy.held_markers(text),
    deploy.marker_context(bigint), deploy.list_markers(boolean, integer), deploy.pending_count(text)
TO deploy_reader, deploy_admin;
-- Leading and holding the deploy lease are an administrator's (deploy.take_lease and deploy.give_up_lease are granted
-- to nobody: the functions above call them as the owner).
GRANT EXECUTE ON FUNCTION deploy.acquire_deploy_lease(text, text, interval), deploy.renew_deploy_lease(text, interval),
    deploy.release_deploy_lease(text), deploy.try_watcher_leadership(text, interval),
    deploy.release_watcher_leadership(text)
TO deploy_admin;
