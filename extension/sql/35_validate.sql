-- pg_deploy install script, part 35: consistency checks of the ledger (validate) and of the schema (verify).

-- deploy.validate compares the ledger with the catalog: an applied migration whose registered SQL changed since
-- (checksum drift), an applied migration that is no longer registered (its files were removed), and a registered
-- migration older than the newest applied one that was never applied (a merge that landed late). It reads only
-- (a merge that landed late). It also recomputes the checksum of every stored body, up, down and verify SQL in the
-- catalog and down SQL in the ledger, and reports one that no longer matches (stored_sql_drift: the body was changed
-- outside pg_deploy, by a table owner or a tampered restore; down/rollback/verify refuse to run it). It is SECURITY
-- DEFINER so that readers and monitoring can run it: it reads the bodies to hash them but returns only versions,
-- names and checksums.
CREATE FUNCTION deploy.validate()
RETURNS jsonb
LANGUAGE sql STABLE
SECURITY DEFINER
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
        SELECT s.sort_key, 0,
               jsonb_build_object('kind', 'stored_sql_drift', 'version', s.version, 'name', s.name, 'part', s.part,
                                  'stored_in', s.stored_in)
        FROM (SELECT m.sort_key, m.version, m.name, 'up_sql' AS part, 'migrations' AS stored_in
              FROM deploy.migrations m WHERE deploy.checksum(m.up_sql) IS DISTINCT FROM m.checksum
              UNION ALL
              SELECT m.sort_key, m.version, m.name, 'down_sql', 'migrations'
              FROM deploy.migrations m
              WHERE (m.down_sql IS NOT NULL OR m.down_checksum IS NOT NULL)
                AND deploy.checksum(m.down_sql) IS DISTINCT FROM m.down_checksum
              UNION ALL
              SELECT m.sort_key, m.version, m.name, 'verify_sql', 'migrations'
              FROM deploy.migrations m
              WHERE (m.verify_sql IS NOT NULL OR m.verify_checksum IS NOT NULL)
                AND deploy.checksum(m.verify_sql) IS DISTINCT FROM m.verify_checksum
              UNION ALL
              SELECT a.sort_key, a.version, a.name, 'down_sql', 'applied'
              FROM deploy.applied a
              WHERE (a.down_sql IS NOT NULL OR a.down_checksum IS NOT NULL)
                AND deploy.checksum(a.down_sql) IS DISTINCT FROM a.down_checksum) s
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
-- script runs in a subtransaction that is always rolled back (extension/src/pg/verify.cpp). A verify script passes
-- when it raises no error (write checks as "SELECT 1/count(*) ..." or a DO block that raises). Scripts run with the
-- caller's rights and search_path, each under pg_deploy.statement_timeout when set; a script that no longer matches
-- its checksum is not run (PD001).
CREATE FUNCTION deploy.verify(version text DEFAULT NULL)
RETURNS jsonb
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pgdeploy_verify';
