-- pg_deploy install script, part 70: views for humans in psql (\x and SELECT * FROM deploy.migration_state).
-- None of them shows SQL bodies, so deploy_reader may read them.

-- deploy.migration_state: one row per version the catalog or the ledger knows, in natural order.
-- checksum_ok is NULL when there is nothing to compare (pending, or applied but no longer registered).
CREATE VIEW deploy.migration_state AS
SELECT coalesce(m.version, a.version)                         AS version,
       CASE WHEN a.version IS NULL THEN 'pending'
            WHEN m.version IS NULL THEN 'applied_unregistered'
            ELSE 'applied' END                                AS state,
       coalesce(m.name, a.name)                               AS name,
       a.applied_at,
       a.deployment_id,
       a.baseline,
       coalesce(a.reversibility, m.reversibility)             AS reversibility,
       coalesce(a.transactional, m.transactional)             AS transactional,
       CASE WHEN a.version IS NOT NULL AND m.version IS NOT NULL
            THEN a.checksum = m.checksum END                  AS checksum_ok,
       m.registered_at,
       coalesce(m.sort_key, a.sort_key)                       AS sort_key
FROM deploy.migrations m
FULL JOIN deploy.applied a ON a.version = m.version
ORDER BY coalesce(m.sort_key, a.sort_key);

-- deploy.deployment_history: newest first, with how many of each deployment's migrations are still applied.
CREATE VIEW deploy.deployment_history AS
SELECT d.id,
       d.kind,
       d.state,
       d.app_version,
       d.version_before,
       d.version_after,
       d.started_at,
       d.finished_at,
       d.finished_at - d.started_at                           AS duration,
       d.started_by,
       (SELECT count(*) FROM deploy.applied a WHERE a.deployment_id = d.id) AS still_applied,
       d.reverts,
       d.rolled_back_by,
       d.error ->> 'version'                                  AS failed_version,
       d.error ->> 'sqlstate'                                 AS failed_sqlstate,
       d.error ->> 'message'                                  AS failed_message,
       d.metadata
FROM deploy.deployments d
ORDER BY d.id DESC;

-- deploy.recent_events: the last 100 events, newest first (the whole log is deploy.events).
CREATE VIEW deploy.recent_events AS
SELECT e.id, e.at, e.kind, e.deployment_id, e.version, e.marker_id, e.actor, e.details
FROM deploy.events e
ORDER BY e.id DESC
LIMIT 100;
