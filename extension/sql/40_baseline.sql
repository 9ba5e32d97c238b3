-- pg_deploy install script, part 40: adopting an existing database.

-- deploy.baseline records that the registered migrations up to and including `through` are already in the schema
-- (a database that existed before pg_deploy, or one restored from elsewhere), without running them. It is one
-- deployment of kind 'baseline' so the history says when and by whom the ledger was started, and it refuses to
-- touch a version that is already applied: a baseline never rewrites what the ledger knows.
CREATE FUNCTION deploy.baseline(through text, app_version text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    through_key     text;
    already         text[];
    before_version  text;
    new_deployment  bigint;
    marked          text[];
    started         timestamptz := clock_timestamp();
BEGIN
    PERFORM deploy.check_version_arg(through, 'through');
    PERFORM deploy.check_input_length('app_version', app_version);
    PERFORM deploy.wait_for_deploy_lock('deploy.baseline()');

    SELECT m.sort_key INTO through_key FROM deploy.migrations m WHERE m.version = through;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown version %: baseline goes through a registered migration', through
            USING ERRCODE = 'P0002', HINT = 'Register the migrations first (deploy.register or pgdeploy load).';
    END IF;

    SELECT array_agg(a.version ORDER BY a.sort_key) INTO already
    FROM deploy.applied a JOIN deploy.migrations m ON m.version = a.version
    WHERE m.sort_key <= through_key;
    IF already IS NOT NULL THEN
        RAISE EXCEPTION 'cannot baseline through %: % already applied', through, array_to_string(already, ', ')
            USING ERRCODE = '55000',
                  HINT = 'A baseline adopts a database whose ledger does not know these migrations yet.';
    END IF;

    before_version := deploy.current_version();

    INSERT INTO deploy.deployments (kind, app_version, state, started_at, finished_at, version_before,
                                    version_after, metadata)
    VALUES ('baseline', app_version, 'running', started, NULL, before_version, NULL,
            jsonb_build_object('through', through))
    RETURNING id INTO new_deployment;
    PERFORM deploy.log_event('deployment_started', new_deployment, NULL, NULL,
                             jsonb_build_object('kind', 'baseline', 'app_version', app_version, 'through', through));

    WITH inserted AS (
        INSERT INTO deploy.applied (version, sort_key, name, checksum, down_sql, down_checksum, reversibility,
                                    transactional, down_transactional, deployment_id, duration_ms, baseline)
        SELECT m.version, m.sort_key, m.name, m.checksum, m.down_sql, m.down_checksum, m.reversibility,
               m.transactional, m.down_transactional, new_deployment, 0, true
        FROM deploy.migrations m
        WHERE m.sort_key <= through_key
        RETURNING version, sort_key
    )
    SELECT array_agg(i.version ORDER BY i.sort_key) INTO marked FROM inserted i;

    PERFORM deploy.log_event('baseline', new_deployment, v.version, NULL,
                             jsonb_build_object('through', through))
    FROM unnest(marked) AS v(version);

    UPDATE deploy.deployments
    SET state = 'succeeded', finished_at = clock_timestamp(), version_after = deploy.current_version()
    WHERE id = new_deployment;
    PERFORM deploy.log_event('deployment_succeeded', new_deployment, NULL, NULL,
                             jsonb_build_object('kind', 'baseline', 'count', cardinality(marked)));

    RETURN jsonb_build_object('schema_version', 1, 'operation', 'baseline', 'ok', true,
                              'deployment_id', new_deployment, 'app_version', app_version,
                              'version_before', before_version, 'version_after', deploy.current_version(),
                              'baselined', to_jsonb(marked), 'count', cardinality(marked),
                              'duration_ms',
                              round((extract(epoch FROM clock_timestamp() - started) * 1000)::numeric, 3));
END
$fn$;
