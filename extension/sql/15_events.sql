-- pg_deploy install script, part 15: the audit log writer.

-- deploy.log_event is the only writer of deploy.events: it appends one row in the caller's transaction and sends a
-- compact NOTIFY so watchers can LISTEN instead of polling. The payload never carries SQL bodies or details (the
-- 8000-byte NOTIFY limit, and secrets that might sit in them); listeners read the row by id.
CREATE FUNCTION deploy.log_event(kind text, deployment_id bigint DEFAULT NULL, version text DEFAULT NULL,
                                 marker_id bigint DEFAULT NULL, details jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    new_id bigint;
BEGIN
    IF kind IS NULL OR kind = '' THEN
        RAISE EXCEPTION 'event kind must not be empty' USING ERRCODE = '22004';
    END IF;
    INSERT INTO deploy.events (kind, deployment_id, version, marker_id, details)
    VALUES (kind, deployment_id, version, marker_id, coalesce(details, '{}'))
    RETURNING id INTO new_id;
    PERFORM pg_notify('pg_deploy', json_build_object('id', new_id, 'kind', kind, 'deployment_id', deployment_id,
                                                     'version', version, 'marker_id', marker_id)::text);
    RETURN new_id;
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
