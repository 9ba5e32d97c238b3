-- pg_deploy install script, part 60: CALL deploy.run(), the resumable deploy.
--
-- deploy.up() is all or nothing: a long release killed at migration 90 of 100 redoes all 90. deploy.run() applies
-- the same pending migrations one at a time, each through deploy.up(target => that version) so the apply code, the
-- ledger rows and the events are exactly up()'s, and COMMITs after each one together with a checkpoint row. A
-- killed session or a crashed server loses at most the migration in flight; running deploy.run() (or deploy.up())
-- again resumes at the next unfinished one. Each migration is its own deployment (kind 'up'); the deployments of one
-- run share metadata {"run_id": ...}, and the checkpoint rows (step 0 = "the whole migration") link them.
--
-- The procedure itself carries no SET clause, because PostgreSQL forbids COMMIT in a procedure that has one; it only
-- loops and commits, and all of its queries run in the helpers below, which pin search_path.

-- deploy.run_begin validates the arguments once and starts the run's state document.
CREATE FUNCTION deploy.run_begin(target text, app_version text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF target IS NOT NULL THEN
        PERFORM deploy.check_version_arg(target, 'target');
        IF NOT EXISTS (SELECT 1 FROM deploy.migrations m WHERE m.version = target) THEN
            RAISE EXCEPTION 'unknown target version %', target USING ERRCODE = 'P0002';
        END IF;
    END IF;
    RETURN jsonb_build_object(
        'schema_version', 1, 'operation', 'run', 'ok', true, 'continue', true,
        'run_id', format('run-%s-%s', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYYMMDD"T"HH24MISS.US'),
                         pg_backend_pid()),
        'target', target, 'app_version', app_version, 'steps', 0,
        'version_before', deploy.current_version(), 'version_after', NULL,
        'applied', '[]'::jsonb, 'failed', NULL, 'awaiting_nontransactional', NULL,
        'started_at', clock_timestamp());
END
$fn$;

-- deploy.run_step applies the next pending migration (up to target) through deploy.up() and records its checkpoint.
-- It returns the run's state with "continue" telling the procedure whether to go on after committing.
CREATE FUNCTION deploy.run_step(state jsonb)
RETURNS jsonb
LANGUAGE plpgsql
-- No SET search_path: this function runs user SQL (migration, down or verify scripts), which must see the
-- caller's search_path. Its own references are schema-qualified; it is SECURITY INVOKER, so a caller's path can only
-- mislead the caller.
AS $fn$
DECLARE
    target        text := state->>'target';
    target_key    text;
    current_key   text;
    out_of_order  boolean := coalesce(nullif(current_setting('pg_deploy.allow_out_of_order', true), ''),
                                      'off')::boolean;
    next_row      record;
    step_no       integer := (state->>'steps')::integer + 1;
    started       timestamptz := clock_timestamp();
    outcome       jsonb;
    new_checkpoint bigint;
BEGIN
    IF target IS NOT NULL THEN
        SELECT m.sort_key INTO target_key FROM deploy.migrations m WHERE m.version = target;
    END IF;
    SELECT a.sort_key INTO current_key FROM deploy.applied a ORDER BY a.sort_key DESC LIMIT 1;

    SELECT m.version, m.name, m.transactional INTO next_row
    FROM deploy.migrations m
    WHERE (current_key IS NULL OR m.sort_key > current_key OR out_of_order)
      AND (target_key IS NULL OR m.sort_key <= target_key)
      AND NOT EXISTS (SELECT 1 FROM deploy.applied a WHERE a.version = m.version)
    ORDER BY m.sort_key
    LIMIT 1;

    IF NOT FOUND THEN
        RETURN state || jsonb_build_object('continue', false);
    END IF;
    IF next_row.version = state->>'last_version' THEN
        -- deploy.up() returned success without applying it: stop rather than loop.
        RETURN state || jsonb_build_object('continue', false, 'ok', false,
                                           'failed', jsonb_build_object('version', next_row.version,
                                               'name', next_row.name, 'sqlstate', '55000',
                                               'message', 'deploy.up() did not apply this migration'));
    END IF;
    IF NOT next_row.transactional THEN
        RETURN state || jsonb_build_object('continue', false,
            'awaiting_nontransactional', jsonb_build_object('version', next_row.version, 'name', next_row.name,
                'hint', 'non-transactional migrations run at top level: pgdeploy up (or deploy.next_step() '
                        'from psql), then CALL deploy.run() again'));
    END IF;

    outcome := deploy.up(target => next_row.version, app_version => state->>'app_version',
                         metadata => jsonb_build_object('run_id', state->>'run_id', 'run_step', step_no));

    IF coalesce((outcome->>'ok')::boolean, false)
       AND NOT coalesce(jsonb_path_exists(outcome, '$.applied[*] ? (@.version == $v)',
                                          jsonb_build_object('v', next_row.version)), false) THEN
        -- up() succeeded without applying it (nothing pending in its view: someone else applied it meanwhile, or
        -- it is waiting for non-transactional steps): the run is over; say what up() said.
        RETURN state || jsonb_build_object('continue', false,
                                           'awaiting_nontransactional', outcome->'awaiting_nontransactional');
    END IF;
    IF coalesce((outcome->>'ok')::boolean, false) THEN
        INSERT INTO deploy.checkpoints (deployment_id, version, step, statement, state, holder, started_at,
                                        finished_at, attempts)
        VALUES ((outcome->>'deployment_id')::bigint, next_row.version, 0,
                format('deploy.up(target => %L)', next_row.version), 'done', state->>'run_id', started,
                clock_timestamp(), 1)
        RETURNING id INTO new_checkpoint;
        PERFORM deploy.log_event('checkpoint_done', (outcome->>'deployment_id')::bigint, next_row.version, NULL,
                                 jsonb_build_object('run_id', state->>'run_id', 'run_step', step_no,
                                                    'checkpoint_id', new_checkpoint));
        RETURN state || jsonb_build_object(
            'steps', step_no, 'last_version', next_row.version,
            'applied', (state->'applied') || jsonb_build_array(jsonb_build_object(
                'version', next_row.version, 'name', next_row.name,
                'deployment_id', outcome->'deployment_id',
                'duration_ms', round((extract(epoch FROM clock_timestamp() - started) * 1000)::numeric, 3))));
    END IF;

    -- deploy.up() recorded the failed deployment (and warned); add the failed checkpoint so the run's trail is whole.
    IF jsonb_typeof(outcome->'deployment_id') = 'number' THEN
        INSERT INTO deploy.checkpoints (deployment_id, version, step, statement, state, holder, started_at,
                                        finished_at, attempts, error)
        VALUES ((outcome->>'deployment_id')::bigint, next_row.version, 0,
                format('deploy.up(target => %L)', next_row.version), 'failed', state->>'run_id', started,
                clock_timestamp(), 1, outcome->'failed')
        RETURNING id INTO new_checkpoint;
        PERFORM deploy.log_event('checkpoint_failed', (outcome->>'deployment_id')::bigint, next_row.version, NULL,
                                 jsonb_build_object('run_id', state->>'run_id', 'run_step', step_no,
                                                    'checkpoint_id', new_checkpoint,
                                                    'sqlstate', outcome->'failed'->'sqlstate'));
    END IF;
    RETURN state || jsonb_build_object('continue', false, 'ok', false, 'steps', step_no,
                                       'last_version', next_row.version,
                                       'failed', coalesce(outcome->'failed', jsonb_build_object(
                                           'version', next_row.version, 'message', 'deploy.up() failed')),
                                       'failed_deployment_id', outcome->'deployment_id');
END
$fn$;

-- deploy.run_finish turns the run's state into the result document.
CREATE FUNCTION deploy.run_finish(state jsonb)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT (state - 'continue' - 'last_version' - 'steps' - 'started_at')
           || jsonb_build_object('version_after', deploy.current_version(),
                                 'duration_ms', round((extract(epoch FROM clock_timestamp()
                                                               - (state->>'started_at')::timestamptz)
                                                       * 1000)::numeric, 3))
$fn$;

-- deploy.run: see the top of this file. Must be CALLed outside an explicit transaction block (it commits).
CREATE PROCEDURE deploy.run(target text DEFAULT NULL, app_version text DEFAULT NULL, INOUT result jsonb DEFAULT NULL)
LANGUAGE plpgsql
AS $fn$
BEGIN
    result := deploy.run_begin(target, app_version);
    LOOP
        result := deploy.run_step(result);
        COMMIT;
        EXIT WHEN NOT pg_catalog.jsonb_extract_path_text(result, 'continue')::boolean;
    END LOOP;
    result := deploy.run_finish(result);
END
$fn$;
