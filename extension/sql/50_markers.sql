-- pg_deploy install script, part 50: rollback eligibility and rollback markers.
--
-- A marker is a durable request to undo one deployment: whoever notices a bad release records it, and
-- whoever runs rollbacks (a watcher, `pgdeploy once` from a timer, a DBA in psql) claims it with a lease and executes
-- it. States: pending -> in_progress (claimed, lease) -> done | failed (claimable again) -> ... -> needs_attention
-- (after pg_deploy.max_rollback_attempts, or at once when retrying cannot help); only deploy.resolve_marker closes a
-- marker that needs attention. Every transition writes one event.

-- Rollback eligibility has one implementation, the engine's (extension/src/pg/eligibility.cpp decides with
-- extension/src/rollback_rules.cpp); deploy.rollback() refuses with it and deploy.execute_rollback() checks it.
-- deploy.newest_revertible_deployment is the default target of deploy.rollback(), request_rollback and
-- rollback_eligibility: the newest 'up' deployment that finished (succeeded or failed) and still has migrations
-- applied.
CREATE FUNCTION deploy.newest_revertible_deployment()
RETURNS bigint
LANGUAGE c STABLE
AS 'MODULE_PATHNAME', 'pgdeploy_newest_revertible_deployment';

-- deploy.rollback_eligibility answers "may this deployment be rolled back now, and if not, why?" before anyone tries
-- (the watcher asks it before deciding). Reasons carry a code, a message and whether force overrides them (the
-- window and irreversible migrations can be forced; a later deployment that builds on this one cannot: revert that
-- one first).
CREATE FUNCTION deploy.rollback_eligibility(deployment_id bigint DEFAULT NULL)
RETURNS jsonb
LANGUAGE c STABLE
AS 'MODULE_PATHNAME', 'pgdeploy_rollback_eligibility';

-- deploy.request_rollback records the wish to undo a deployment. Asking twice while a marker is open returns the
-- open one (the partial unique index rollback_markers_open_idx makes that hold under concurrency too), so two
-- watchers that notice the same bad release produce one rollback.
CREATE FUNCTION deploy.request_rollback(reason text, deployment_id bigint DEFAULT NULL, details jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    target_id  bigint := request_rollback.deployment_id;
    extra      jsonb := coalesce(details, '{}');
    d          record;
    new_id     bigint;
BEGIN
    IF reason IS NULL OR btrim(reason) = '' THEN
        -- NULL is 22004 and empty text 22023, as everywhere in pg_deploy.
        RAISE EXCEPTION 'reason must not be NULL or empty' USING ERRCODE = CASE WHEN reason IS NULL THEN '22004' ELSE '22023' END,
            HINT = 'Say why: it is kept with the marker and in the events.';
    END IF;
    IF jsonb_typeof(extra) <> 'object' THEN
        RAISE EXCEPTION 'details must be a JSON object, not %', jsonb_typeof(extra) USING ERRCODE = '22023';
    END IF;
    PERFORM deploy.check_input_length('reason', reason);
    PERFORM deploy.check_input_length('details', extra::text);
    IF target_id IS NULL THEN
        target_id := deploy.newest_revertible_deployment();
        IF target_id IS NULL THEN
            RAISE EXCEPTION 'no deployment to roll back: no finished up deployment has migrations applied'
                USING ERRCODE = 'P0002';
        END IF;
    END IF;

    -- Lock the deployment row: a concurrent rollback that marks it rolled_back is ordered before or after us.
    SELECT dd.id, dd.kind, dd.state, dd.version_before, dd.rolled_back_by
    INTO d FROM deploy.deployments dd WHERE dd.id = target_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown deployment %', target_id USING ERRCODE = 'P0002';
    END IF;
    IF d.state = 'rolled_back' THEN
        RAISE EXCEPTION 'deployment % is already rolled back (by deployment %)', d.id,
                        coalesce(d.rolled_back_by::text, '?')
            USING ERRCODE = 'PD007';
    END IF;
    IF d.kind <> 'up' THEN
        RAISE EXCEPTION 'deployment % is a %: only up deployments can be rolled back', d.id, d.kind
            USING ERRCODE = '55000';
    END IF;

    -- The open marker, if any (checked first so a repeated request does not burn a marker id; the ON CONFLICT
    -- below covers two requests racing past this check).
    SELECT k.id INTO new_id FROM deploy.rollback_markers k
    WHERE k.deployment_id = d.id AND deploy.marker_is_open(k.state);
    IF FOUND THEN
        RETURN new_id;
    END IF;

    INSERT INTO deploy.rollback_markers AS k (deployment_id, target_version, reason, details)
    VALUES (d.id, d.version_before, reason, extra)
    ON CONFLICT (deployment_id) WHERE deploy.marker_is_open(state)
    DO NOTHING
    RETURNING k.id INTO new_id;

    IF new_id IS NULL THEN
        SELECT k.id INTO new_id FROM deploy.rollback_markers k
        WHERE k.deployment_id = d.id AND deploy.marker_is_open(k.state);
        RETURN new_id;
    END IF;

    PERFORM deploy.log_event('marker_requested', d.id, NULL, new_id,
                             jsonb_build_object('reason', reason, 'target_version', d.version_before,
                                                'details', extra));
    RETURN new_id;
END
$fn$;

-- deploy.claim_marker hands one claimable marker to one caller with a lease. FOR UPDATE SKIP LOCKED makes two
-- watchers claiming at the same moment take different markers (or one of them none) instead of queueing behind
-- each other; an in_progress marker whose lease ran out (its holder died) is claimable again. Each claim counts
-- as one attempt. A holder re-claiming its own live marker only renews the lease.
CREATE FUNCTION deploy.claim_marker(holder text, lease interval DEFAULT '5 min', marker_id bigint DEFAULT NULL)
RETURNS SETOF deploy.rollback_markers
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    now_ts     timestamptz := clock_timestamp();
    m          deploy.rollback_markers;
    claimed    deploy.rollback_markers;
    renewing   boolean;
BEGIN
    IF holder IS NULL OR btrim(holder) = '' THEN
        RAISE EXCEPTION 'holder must not be NULL or empty' USING ERRCODE = CASE WHEN holder IS NULL THEN '22004' ELSE '22023' END;
    END IF;
    PERFORM deploy.check_input_length('holder', holder);
    IF lease IS NULL THEN
        RAISE EXCEPTION 'lease must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF lease <= interval '0' THEN
        RAISE EXCEPTION 'lease must be positive, not %', lease USING ERRCODE = '22023';
    END IF;

    IF claim_marker.marker_id IS NULL THEN
        SELECT * INTO m FROM deploy.rollback_markers k
        WHERE k.state IN ('pending', 'failed') OR (k.state = 'in_progress' AND k.lease_until < now_ts)
        ORDER BY k.id
        LIMIT 1
        FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;
        END IF;
    ELSE
        SELECT * INTO m FROM deploy.rollback_markers k WHERE k.id = claim_marker.marker_id FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'unknown marker %', claim_marker.marker_id USING ERRCODE = 'P0002';
        END IF;
        -- Waiting for the row lock may have taken a while: judge the lease by the time we got it.
        now_ts := clock_timestamp();
        IF m.state = 'done' THEN
            RAISE EXCEPTION 'marker % is already done', m.id USING ERRCODE = 'PD007';
        ELSIF m.state = 'needs_attention' THEN
            RAISE EXCEPTION 'marker % needs attention and cannot be claimed', m.id USING ERRCODE = 'PD007',
                HINT = 'Close it with deploy.resolve_marker() once the cause is understood.';
        ELSIF m.state = 'in_progress' AND m.lease_until >= now_ts AND m.holder IS DISTINCT FROM claim_marker.holder THEN
            RAISE EXCEPTION 'marker % is claimed by % under a live lease', m.id, m.holder
                USING ERRCODE = 'PD007', DETAIL = format('The lease ends at %s.', m.lease_until),
                      HINT = 'Wait for the lease to expire, or let its holder finish.';
        END IF;
    END IF;

    renewing := m.state = 'in_progress' AND m.lease_until >= now_ts AND m.holder = claim_marker.holder;

    UPDATE deploy.rollback_markers k
    SET state = 'in_progress', holder = claim_marker.holder, lease_until = now_ts + lease,
        attempts = k.attempts + CASE WHEN renewing THEN 0 ELSE 1 END, updated_at = now_ts
    WHERE k.id = m.id
    RETURNING * INTO claimed;

    IF NOT renewing THEN
        PERFORM deploy.log_event('marker_claimed', claimed.deployment_id, NULL, claimed.id,
                                 jsonb_build_object('holder', claimed.holder, 'lease_until', claimed.lease_until,
                                                    'attempt', claimed.attempts, 'previous_state', m.state,
                                                    'previous_holder', m.holder));
    END IF;
    RETURN NEXT claimed;
END
$fn$;

-- deploy.renew_lease extends the lease of a marker its holder is still working on (a long revert). It is not a state
-- transition, so it writes no event: a watcher renewing every minute would otherwise flood the audit log.
CREATE FUNCTION deploy.renew_lease(marker_id bigint, holder text, lease interval DEFAULT '5 min')
RETURNS timestamptz
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    m        deploy.rollback_markers;
    new_end  timestamptz;
BEGIN
    IF renew_lease.marker_id IS NULL OR holder IS NULL OR lease IS NULL THEN
        RAISE EXCEPTION 'marker_id, holder and lease must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF lease <= interval '0' THEN
        RAISE EXCEPTION 'lease must be positive, not %', lease USING ERRCODE = '22023';
    END IF;
    SELECT * INTO m FROM deploy.rollback_markers k WHERE k.id = renew_lease.marker_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown marker %', renew_lease.marker_id USING ERRCODE = 'P0002';
    END IF;
    IF m.state <> 'in_progress' OR m.holder IS DISTINCT FROM renew_lease.holder THEN
        RAISE EXCEPTION 'marker % is not held by % (state %, holder %)', m.id, renew_lease.holder, m.state,
                        coalesce(m.holder, 'none')
            USING ERRCODE = 'PD007', HINT = 'Claim it again with deploy.claim_marker().';
    END IF;
    new_end := clock_timestamp() + lease;
    UPDATE deploy.rollback_markers k SET lease_until = new_end, updated_at = clock_timestamp() WHERE k.id = m.id;
    RETURN new_end;
END
$fn$;

-- deploy.finish_marker_attempt records the outcome of one execution attempt. Kept apart from execute_rollback so
-- every failing path (refusal, error, ok:false result) ends the same way: the failure is kept, the lease released,
-- and the marker becomes failed (claimable again) or needs_attention (attempts used up, or retrying cannot help).
CREATE FUNCTION deploy.finish_marker_attempt(marker deploy.rollback_markers, failure jsonb, retryable boolean)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    max_attempts  integer := current_setting('pg_deploy.max_rollback_attempts')::integer;
    new_state     text;
BEGIN
    new_state := CASE WHEN retryable AND marker.attempts < max_attempts THEN 'failed' ELSE 'needs_attention' END;
    UPDATE deploy.rollback_markers k
    SET state = new_state, last_error = deploy.public_error(failure), last_error_private = deploy.private_error(failure),
        lease_until = NULL, updated_at = clock_timestamp()
    WHERE k.id = marker.id;
    PERFORM deploy.log_event(CASE new_state WHEN 'failed' THEN 'marker_failed' ELSE 'marker_needs_attention' END,
                             marker.deployment_id, NULL, marker.id,
                             jsonb_build_object('attempt', marker.attempts, 'max_attempts', max_attempts,
                                                'retryable', retryable, 'error', deploy.public_error(failure)),
                             deploy.private_error(failure));
    RAISE WARNING 'rollback marker % failed (attempt %/%): %', marker.id, marker.attempts, max_attempts,
                  coalesce(failure->>'message', failure::text)
        USING DETAIL = CASE new_state WHEN 'failed' THEN 'The marker can be claimed and executed again.'
                                      ELSE 'The marker needs attention: close it with deploy.resolve_marker().' END;
    RETURN new_state;
END
$fn$;

-- deploy.fail_marker_attempt(marker_id, holder, failure) is how a watcher records an attempt that failed outside the
-- database (its app hook failed, or the revert was refused before it could record anything): the same ending as a
-- failed revert, through finish_marker_attempt. Only the marker's current holder may end its attempt; for anybody
-- else, or a marker that is no longer in progress, nothing is recorded and the result is NULL. SECURITY DEFINER for
-- deploy_admin, which cannot write the markers itself; the failure is the caller's report (its "detail", "context"
-- and "output" are kept where readers cannot see them).
CREATE FUNCTION deploy.fail_marker_attempt(marker_id bigint, holder text, failure jsonb)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    m  deploy.rollback_markers;
BEGIN
    IF fail_marker_attempt.marker_id IS NULL OR holder IS NULL OR failure IS NULL THEN
        RAISE EXCEPTION 'marker_id, holder and failure must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF jsonb_typeof(failure) <> 'object' THEN
        RAISE EXCEPTION 'failure must be a JSON object, not %', jsonb_typeof(failure) USING ERRCODE = '22023';
    END IF;
    PERFORM deploy.check_input_length('holder', holder);
    PERFORM deploy.check_input_length('details', failure::text);
    SELECT * INTO m FROM deploy.rollback_markers k
    WHERE k.id = fail_marker_attempt.marker_id AND k.state = 'in_progress' AND k.holder = fail_marker_attempt.holder
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN deploy.finish_marker_attempt(m, failure, true);
END
$fn$;

-- deploy.execute_rollback(marker_id, holder, force) performs a marker: it reverts the marker's deployment through
-- deploy.rollback() (the same revert code as a manual rollback) and records the outcome on the marker. It is
-- idempotent: a done marker is a no-op, a marker whose deployment is already rolled back is closed as done, and a
-- half-reverted deployment is continued by deploy.rollback (it reverts what is still applied, or resumes the running
-- rollback that waits for the steps of a non-transactional down SQL). When the revert stops at such steps, the marker
-- stays in_progress under the holder's lease ("awaiting_nontransactional" in the result): the holder runs them and
-- executes the marker again. A failing revert does
-- not raise: the marker's failed state, attempt count and error must persist, so the result says ok:false and a
-- WARNING tells psql users.
--
-- It is C (extension/src/pg/markers.cpp) so that the down SQL runs with the caller's rights and search_path while
-- every statement of its own runs pinned: it calls the two steps below as the extension's owner, checks the
-- deployment with the engine's rollback rule between them (a refusal is recorded, not reverted), and calls
-- deploy.rollback() as the caller. The steps are granted to nobody.

-- deploy.execute_rollback_begin checks, locks and claims the marker, and decides whether anything is left to do. It
-- returns {"result": ...} when the call is over (done already, deployment already rolled back), otherwise the plan:
-- {"marker_id", "deployment_id", "reason", "force"}, to which the engine adds "refusal" (the failure to record) and
-- "retryable" when the deployment may not be rolled back.
CREATE FUNCTION deploy.execute_rollback_begin(marker_id bigint, holder text, force boolean)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    now_ts       timestamptz;
    m            deploy.rollback_markers;
    d            record;
    who          text := coalesce(holder, session_user || '@pid' || pg_backend_pid());
BEGIN
    IF execute_rollback_begin.marker_id IS NULL THEN
        RAISE EXCEPTION 'marker_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF force IS NULL THEN
        RAISE EXCEPTION 'force must not be NULL' USING ERRCODE = '22004';
    END IF;
    PERFORM deploy.check_input_length('holder', holder);
    PERFORM deploy.wait_for_deploy_lock('deploy.execute_rollback()', who);

    SELECT * INTO m FROM deploy.rollback_markers k WHERE k.id = execute_rollback_begin.marker_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown marker %', execute_rollback_begin.marker_id USING ERRCODE = 'P0002';
    END IF;
    now_ts := clock_timestamp();

    IF m.state = 'done' THEN
        RETURN jsonb_build_object('result', jsonb_build_object(
            'schema_version', 1, 'operation', 'execute_rollback', 'ok', true,
            'already_done', true, 'marker_id', m.id, 'deployment_id', m.deployment_id,
            'state', m.state, 'resolution', m.resolution, 'attempts', m.attempts,
            'rollback', NULL, 'error', NULL));
    ELSIF m.state = 'needs_attention' THEN
        RAISE EXCEPTION 'marker % needs attention after % attempts and is not executed again', m.id, m.attempts
            USING ERRCODE = 'PD007', DETAIL = coalesce(m.last_error->>'message', ''),
                  HINT = 'Fix the cause, then close it with deploy.resolve_marker() (and request a new rollback).';
    ELSIF m.state = 'in_progress' AND m.lease_until >= now_ts AND m.holder IS DISTINCT FROM who THEN
        RAISE EXCEPTION 'marker % is claimed by % under a live lease', m.id, m.holder
            USING ERRCODE = 'PD007', DETAIL = format('The lease ends at %s.', m.lease_until),
                  HINT = 'Let its holder finish, or wait for the lease to expire.';
    END IF;

    -- Not already ours: executing is claiming (one attempt), so a psql user need not claim first. Ours under a live
    -- lease (its revert stopped at non-transactional steps, which we ran): the same attempt goes on.
    IF NOT (m.state = 'in_progress' AND m.lease_until >= now_ts AND m.holder = who) THEN
        SELECT * INTO m FROM deploy.claim_marker(who, marker_id => m.id);  -- claim_marker's default lease
    END IF;

    SELECT dd.id, dd.state, dd.rolled_back_by INTO d FROM deploy.deployments dd WHERE dd.id = m.deployment_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'marker % refers to deployment % which no longer exists', m.id, m.deployment_id
            USING ERRCODE = 'P0002',
                  HINT = format('Close the marker with deploy.resolve_marker(%s, ''abandoned'', ...).', m.id);
    END IF;

    -- A rollback of it that is still running (it waits for the steps of a down SQL) is not done yet, even when
    -- nothing of it is applied any more: deploy.rollback() resumes and finishes it.
    IF d.state = 'rolled_back'
       OR (d.state <> 'running' AND NOT EXISTS (SELECT 1 FROM deploy.applied a WHERE a.deployment_id = d.id)
           AND NOT EXISTS (SELECT 1 FROM deploy.deployments r
                           WHERE r.kind = 'rollback' AND r.state = 'running' AND r.reverts = d.id)) THEN
        -- Someone (a DBA, another watcher before a crash) already undid it: the request is fulfilled.
        UPDATE deploy.rollback_markers k
        SET state = 'done', resolution = CASE WHEN d.state = 'rolled_back' THEN 'already_rolled_back'
                                              ELSE 'nothing_applied' END,
            resolved_by = deploy.acting_role(), lease_until = NULL, updated_at = clock_timestamp()
        WHERE k.id = m.id
        RETURNING * INTO m;
        PERFORM deploy.log_event('marker_done', m.deployment_id, NULL, m.id,
                                 jsonb_build_object('resolution', m.resolution, 'rolled_back_by', d.rolled_back_by,
                                                    'attempt', m.attempts));
        RETURN jsonb_build_object('result', jsonb_build_object(
            'schema_version', 1, 'operation', 'execute_rollback', 'ok', true,
            'already_done', false, 'already_rolled_back', true, 'marker_id', m.id,
            'deployment_id', m.deployment_id, 'state', m.state, 'resolution', m.resolution,
            'attempts', m.attempts, 'rollback', NULL, 'error', NULL));
    END IF;

    RETURN jsonb_build_object('marker_id', m.id, 'deployment_id', d.id, 'reason', m.reason, 'force', force);
END
$fn$;

-- deploy.execute_rollback_end records the outcome of the attempt that execute_rollback_begin planned: `outcome` is
-- what deploy.rollback() returned (NULL when it raised or did not run), `raised` the error it raised (NULL if none).
CREATE FUNCTION deploy.execute_rollback_end(plan jsonb, outcome jsonb, raised jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    m            deploy.rollback_markers;
    failure      jsonb;
    retryable    boolean := true;
    final_state  text;
BEGIN
    SELECT * INTO m FROM deploy.rollback_markers k WHERE k.id = (plan->>'marker_id')::bigint FOR UPDATE;
    IF jsonb_typeof(plan->'refusal') = 'object' THEN
        failure := plan->'refusal' || jsonb_build_object('at', clock_timestamp());
        retryable := (plan->>'retryable')::boolean;
    ELSIF raised IS NOT NULL THEN
        failure := raised || jsonb_build_object('at', clock_timestamp());
        -- Refusals that a retry cannot fix go straight to needs_attention.
        retryable := raised->>'sqlstate' NOT IN ('PD001', 'PD002', 'PD006', '55000', 'P0002', '22023', '22004',
                                                 '22001', '42501');
    ELSIF coalesce((outcome->>'ok')::boolean, false) IS NOT TRUE THEN
        failure := coalesce(outcome->'failed', outcome->'error', '{}'::jsonb)
                 || jsonb_build_object('message', coalesce(outcome->'failed'->>'message', outcome->'error'->>'message',
                                                           'deploy.rollback returned ok:false'),
                                       'at', clock_timestamp());
        -- Stored down SQL that no longer matches its checksum is never run: retrying cannot help.
        retryable := coalesce(failure->>'sqlstate', '') <> 'PD001';
    END IF;

    IF failure IS NULL AND outcome->>'state' = 'running' THEN
        -- The revert stopped at the steps of a non-transactional down SQL: the marker stays in progress under its
        -- holder's lease while the holder runs them at top level (renewing the lease), then executes the marker
        -- again to finish. A holder that dies lets the lease expire: the next one resumes the same revert.
        PERFORM deploy.log_event('marker_awaiting_steps', m.deployment_id, NULL, m.id,
                                 jsonb_build_object('attempt', m.attempts, 'holder', m.holder,
                                                    'lease_until', m.lease_until,
                                                    'rollback_deployment_id', outcome->'deployment_id',
                                                    'version', outcome->'awaiting_nontransactional'->'version'));
        RETURN jsonb_build_object('schema_version', 1, 'operation', 'execute_rollback', 'ok', true,
                                  'already_done', false, 'marker_id', m.id, 'deployment_id', m.deployment_id,
                                  'state', m.state, 'resolution', NULL, 'attempts', m.attempts, 'rollback', outcome,
                                  'error', NULL, 'awaiting_nontransactional', outcome->'awaiting_nontransactional',
                                  'holder', m.holder, 'lease_until', m.lease_until);
    END IF;

    IF failure IS NULL THEN
        UPDATE deploy.rollback_markers k
        SET state = 'done', resolution = 'rolled_back', resolved_by = deploy.acting_role(), last_error = NULL,
            last_error_private = NULL, lease_until = NULL, updated_at = clock_timestamp()
        WHERE k.id = m.id
        RETURNING * INTO m;
        PERFORM deploy.log_event('marker_done', m.deployment_id, NULL, m.id,
                                 jsonb_build_object('resolution', 'rolled_back', 'attempt', m.attempts,
                                                    'rollback_deployment_id', outcome->'deployment_id'));
        final_state := 'done';
    ELSE
        final_state := deploy.finish_marker_attempt(m, failure, retryable);
    END IF;

    RETURN jsonb_build_object('schema_version', 1, 'operation', 'execute_rollback', 'ok', failure IS NULL,
                              'already_done', false, 'marker_id', m.id, 'deployment_id', m.deployment_id,
                              'state', final_state, 'resolution', CASE WHEN failure IS NULL THEN 'rolled_back' END,
                              'attempts', m.attempts, 'rollback', outcome, 'error', failure,
                              'awaiting_nontransactional', NULL);
END
$fn$;

CREATE FUNCTION deploy.execute_rollback(marker_id bigint, holder text DEFAULT NULL, force boolean DEFAULT false)
RETURNS jsonb
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pgdeploy_execute_rollback';

-- deploy.resolve_marker is the manual way out for a marker that automation cannot finish: a DBA reverted by hand
-- ('done') or decided not to roll back ('abandoned'). The marker's state becomes done either way (it is closed);
-- the resolution and the note say which, and who decided.
CREATE FUNCTION deploy.resolve_marker(marker_id bigint, resolution text, note text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    m       deploy.rollback_markers;
    now_ts  timestamptz;
BEGIN
    IF resolve_marker.marker_id IS NULL OR resolve_marker.resolution IS NULL THEN
        RAISE EXCEPTION 'marker_id and resolution must not be NULL' USING ERRCODE = '22004';
    END IF;
    PERFORM deploy.check_input_length('note', note);
    IF resolve_marker.resolution NOT IN ('done', 'abandoned') THEN
        RAISE EXCEPTION 'resolution must be ''done'' or ''abandoned'', not %', quote_literal(resolve_marker.resolution)
            USING ERRCODE = '22023';
    END IF;
    SELECT * INTO m FROM deploy.rollback_markers k WHERE k.id = resolve_marker.marker_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown marker %', resolve_marker.marker_id USING ERRCODE = 'P0002';
    END IF;
    now_ts := clock_timestamp();
    IF m.state = 'done' THEN
        RAISE EXCEPTION 'marker % is already done (%)', m.id, coalesce(m.resolution, 'no resolution')
            USING ERRCODE = 'PD007';
    ELSIF m.state = 'in_progress' AND m.lease_until >= now_ts THEN
        RAISE EXCEPTION 'marker % is being executed by % under a live lease', m.id, m.holder
            USING ERRCODE = 'PD007', DETAIL = format('The lease ends at %s.', m.lease_until),
                  HINT = 'Wait for the holder to finish or for its lease to expire.';
    END IF;

    UPDATE deploy.rollback_markers k
    SET state = 'done', resolution = resolve_marker.resolution, resolved_by = deploy.acting_role(), lease_until = NULL,
        details = k.details || jsonb_build_object('resolution_note', note, 'resolved_from', m.state),
        updated_at = now_ts
    WHERE k.id = m.id
    RETURNING * INTO m;
    PERFORM deploy.log_event('marker_resolved', m.deployment_id, NULL, m.id,
                             jsonb_build_object('resolution', m.resolution, 'note', note,
                                                'resolved_from', m.details->>'resolved_from'));
    RETURN jsonb_build_object('schema_version', 1, 'operation', 'resolve_marker', 'ok', true, 'marker_id', m.id,
                              'deployment_id', m.deployment_id, 'state', m.state, 'resolution', m.resolution,
                              'note', note, 'resolved_by', m.resolved_by);
END
$fn$;
