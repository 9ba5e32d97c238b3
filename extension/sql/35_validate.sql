-- pg_deploy install script, part 35: consistency checks of the ledger (validate) and of the schema (verify).

-- deploy.validate compares the ledger with the catalog: an applied migration whose registered SQL changed since
-- (checksum drift), an applied migration that is no longer registered (its files were removed), and a registered
-- migration older than the newest applied one that was never applied (a merge that landed late). It reads only
-- the columns a deploy_reader may see, so readers and monitoring can run it.
CREATE FUNCTION deploy.validate()
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH newest AS (
        SELECT a.version, a.sort_key FROM deploy.applied a ORDER BY a.sort_key DESC LIMIT 1
    ), problems AS (
        SELECT a.sort_key, 1 AS rank,
               jsonb_build_object('kind', 'checksum_drift', 'version', a.version, 'name', a.name,
                                  'applied_checksum', a.checksum, 'registered_checksum', m.checksum) AS problem
        FROM deploy.applied a JOIN deploy.migrations m ON m.version = a.version
        WHERE a.checksum <> m.checksum
        UNION ALL
        SELECT a.sort_key, 2,
               jsonb_build_object('kind', 'applied_unregistered', 'version', a.version, 'name', a.name,
                                  'deployment_id', a.deployment_id)
        FROM deploy.applied a
        WHERE NOT EXISTS (SELECT 1 FROM deploy.migrations m WHERE m.version = a.version)
        UNION ALL
        SELECT m.sort_key, 3,
               jsonb_build_object('kind', 'out_of_order_pending', 'version', m.version, 'name', m.name,
                                  'current_version', n.version)
        FROM deploy.migrations m CROSS JOIN newest n
        WHERE m.sort_key < n.sort_key
          AND NOT EXISTS (SELECT 1 FROM deploy.applied a WHERE a.version = m.version)
        UNION ALL
        SELECT NULL, 4,
               jsonb_build_object('kind', 'applied_count_mismatch', 'counted', c.n, 'recorded', s.n)
        FROM (SELECT coalesce((SELECT applied_count FROM deploy.ledger_stats), 0) AS n) s,
             (SELECT count(*) AS n FROM deploy.applied) c
        WHERE s.n <> c.n
    )
    SELECT jsonb_build_object(
        'schema_version', 1,
        'ok', NOT EXISTS (SELECT 1 FROM problems),
        'problems', coalesce((SELECT jsonb_agg(p.problem ORDER BY p.sort_key, p.rank) FROM problems p), '[]'))
$fn$;

-- deploy.verify runs the verify SQL of applied migrations against the live schema and undoes whatever it did: each
-- script runs in a subtransaction that is always rolled back, by raising a private SQLSTATE after a success. A
-- verify script passes when it raises no error (write checks as "SELECT 1/count(*) ..." or a DO block that raises).
-- The session's statement_timeout bounds the whole call (PostgreSQL arms that timer per top-level statement, so a
-- per-script limit cannot be set from PL/pgSQL).
CREATE FUNCTION deploy.verify(version text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
-- No SET search_path: this function runs user SQL (migration, down or verify scripts), which must see the
-- caller's search_path. Its own references are schema-qualified; it is SECURITY INVOKER, so a caller's path can only
-- mislead the caller.
AS $fn$
DECLARE
    only_version  text := version;
    target        record;
    results       jsonb := '[]';
    failures      integer := 0;
    checked       integer := 0;
    started       timestamptz;
    elapsed_ms    double precision;
    err_state     text;
    err_message   text;
    err_detail    text;
BEGIN
    IF only_version IS NOT NULL THEN
        PERFORM deploy.check_version_arg(only_version, 'version');
        IF NOT EXISTS (SELECT 1 FROM deploy.applied a WHERE a.version = only_version) THEN
            RAISE EXCEPTION 'migration % is not applied', only_version
                USING ERRCODE = 'P0002', HINT = 'deploy.verify() checks applied migrations only.';
        END IF;
    END IF;

    FOR target IN
        SELECT a.version, a.name, m.verify_sql, m.version IS NOT NULL AS registered
        FROM deploy.applied a LEFT JOIN deploy.migrations m ON m.version = a.version
        WHERE only_version IS NULL OR a.version = only_version
        ORDER BY a.sort_key
    LOOP
        IF target.verify_sql IS NULL OR btrim(target.verify_sql) = '' THEN
            results := results || jsonb_build_object('version', target.version, 'name', target.name,
                                                     'ok', NULL, 'skipped', true,
                                                     'reason', CASE WHEN target.registered THEN 'no verify SQL'
                                                                    ELSE 'no longer registered' END);
            CONTINUE;
        END IF;
        checked := checked + 1;
        started := clock_timestamp();
        err_state := NULL;
        BEGIN
            EXECUTE target.verify_sql;
            -- Success: undo the script's effects by leaving the subtransaction in error.
            RAISE EXCEPTION 'pg_deploy verify rollback' USING ERRCODE = 'PDV99';
        EXCEPTION
            WHEN SQLSTATE 'PDV99' THEN
                NULL;
            WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT,
                                        err_detail = PG_EXCEPTION_DETAIL;
        END;
        elapsed_ms := round((extract(epoch FROM clock_timestamp() - started) * 1000)::numeric, 3);
        IF err_state IS NULL THEN
            results := results || jsonb_build_object('version', target.version, 'name', target.name, 'ok', true,
                                                     'skipped', false, 'duration_ms', elapsed_ms);
        ELSE
            failures := failures + 1;
            results := results || jsonb_build_object('version', target.version, 'name', target.name, 'ok', false,
                                                     'skipped', false, 'sqlstate', err_state,
                                                     'message', err_message, 'detail', nullif(err_detail, ''),
                                                     'duration_ms', elapsed_ms);
            RAISE WARNING 'verify of migration % failed: % (SQLSTATE %)', target.version, err_message, err_state;
        END IF;
    END LOOP;

    RETURN jsonb_build_object('schema_version', 1, 'operation', 'verify', 'ok', failures = 0,
                              'checked', checked, 'failed', failures, 'results', results);
END
$fn$;
