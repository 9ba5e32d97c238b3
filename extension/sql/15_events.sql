-- pg_deploy install script, part 15: the audit log writer.

-- deploy.log_event (and its bulk form log_events, below) are the only writers of deploy.events: it appends one row in
-- the caller's transaction and sends a compact NOTIFY so watchers can LISTEN instead of polling. The payload never
-- carries SQL bodies or details (the 8000-byte NOTIFY limit, and secrets that might sit in them); listeners read the
-- row by id. It is SECURITY DEFINER because deploy_admin cannot write deploy.events itself: the actor
-- (deploy.acting_role()) and the time (clock_timestamp()) are set here and cannot be chosen by the caller.
-- private_details is stored where deploy_reader cannot read it (hook output, error detail and context).
CREATE FUNCTION deploy.log_event(kind text, deployment_id bigint DEFAULT NULL, version text DEFAULT NULL,
                                 marker_id bigint DEFAULT NULL, details jsonb DEFAULT '{}',
                                 private_details jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    new_id bigint;
BEGIN
    IF kind IS NULL OR kind = '' THEN
        RAISE EXCEPTION 'event kind must not be NULL or empty' USING ERRCODE = CASE WHEN kind IS NULL THEN '22004' ELSE '22023' END;
    END IF;
    PERFORM deploy.check_input_length('kind', kind);
    PERFORM deploy.check_input_length('details', details::text);
    PERFORM deploy.check_input_length('details', private_details::text);
    INSERT INTO deploy.events (kind, deployment_id, version, marker_id, details, private_details)
    VALUES (kind, deployment_id, version, marker_id, coalesce(details, '{}'), private_details)
    RETURNING id INTO new_id;
    PERFORM pg_notify('pg_deploy', json_build_object('id', new_id, 'kind', kind, 'deployment_id', deployment_id,
                                                     'version', version, 'marker_id', marker_id)::text);
    RETURN new_id;
END
$fn$;

-- deploy.log_events appends one event of the same kind per element of `versions`, with the time it happened (`ats`)
-- and its details (`details`, the same length), in array order: the engine's bulk form of log_event, so a deployment
-- of 1,000 migrations writes its migration_applied events in one statement. It sends ONE NOTIFY for the batch (a
-- NOTIFY is a wake-up; listeners read the rows): the payload of its last event plus "count". Returns the count.
-- It takes the events' times from the engine, so it is granted to nobody: only the engine, which runs its own
-- statements as the extension's owner, calls it.
CREATE FUNCTION deploy.log_events(kind text, deployment_id bigint, versions text[], ats timestamptz[],
                                  details jsonb[])
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    n bigint;
    last_id bigint;
    last_version text;
BEGIN
    IF kind IS NULL OR kind = '' THEN
        RAISE EXCEPTION 'event kind must not be NULL or empty' USING ERRCODE = CASE WHEN kind IS NULL THEN '22004' ELSE '22023' END;
    END IF;
    IF cardinality(versions) IS DISTINCT FROM cardinality(ats)
       OR cardinality(versions) IS DISTINCT FROM cardinality(details) THEN
        RAISE EXCEPTION 'versions, ats and details must have the same length' USING ERRCODE = '22023';
    END IF;
    WITH written AS (
        INSERT INTO deploy.events (at, kind, deployment_id, version, details)
        SELECT coalesce(e.at, clock_timestamp()), log_events.kind, log_events.deployment_id, e.version,
               coalesce(e.details, '{}')
        FROM ROWS FROM (unnest(versions), unnest(ats), unnest(details)) WITH ORDINALITY AS e(version, at, details, ord)
        ORDER BY e.ord
        RETURNING id, version
    )
    SELECT count(*), max(w.id), (array_agg(w.version ORDER BY w.id DESC))[1] INTO n, last_id, last_version
    FROM written w;
    IF n > 0 THEN
        PERFORM pg_notify('pg_deploy', json_build_object('id', last_id, 'kind', kind, 'deployment_id', deployment_id,
                                                         'version', last_version, 'marker_id', NULL,
                                                         'count', n)::text);
    END IF;
    RETURN n;
END
$fn$;

-- The audit log is append-only: updates and deletes are refused for everyone, the owner included
-- (DROP EXTENSION still removes the table).
CREATE FUNCTION deploy.events_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'deploy.events is append-only: % refused', TG_OP USING ERRCODE = '42501';
END
$fn$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON deploy.events
    FOR EACH ROW EXECUTE FUNCTION deploy.events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON deploy.events
    FOR EACH STATEMENT EXECUTE FUNCTION deploy.events_append_only();

-- What readers may see of an error, and what they may not. Error detail and context quote values from the SQL that
-- failed (a secret in an INSERT, a row that violated a constraint), and a hook's output may print anything: those
-- keys are kept apart, in columns only deploy_admin reads (deployments.error_private,
-- rollback_markers.last_error_private, events.private_details). The one list of private keys is here.
CREATE FUNCTION deploy.private_error(failure jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT nullif(jsonb_strip_nulls(jsonb_build_object('detail', failure -> 'detail', 'context', failure -> 'context',
                                                       'output', failure -> 'output')),
                  '{}'::jsonb)
$fn$;

CREATE FUNCTION deploy.public_error(failure jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT failure - ARRAY['detail', 'context', 'output']
$fn$;
