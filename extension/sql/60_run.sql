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
-- loops and commits, calls the helpers below schema-qualified with arguments of their exact types, and uses no
-- operator, so nothing on the caller's search_path can stand in for anything it calls.

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

-- deploy.run_step applies the next pending migration (up to target) through deploy.up() and records its checkpoint
-- (extension/src/pg/run.cpp: up() runs as the caller, the checkpoint is written as the extension's owner). It returns
-- the run's state with "continue" telling the procedure whether to go on after committing.
CREATE FUNCTION deploy.run_step(state jsonb)
RETURNS jsonb
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pgdeploy_run_step';

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
