-- pg_deploy install script, part 20: the C++ engine's SQL-callable functions (extension/src/pg/*.cpp).
-- All are SECURITY INVOKER: migration SQL runs with the caller's rights and search_path. The C code runs its own
-- queries as the extension's owner with name resolution pinned to pg_catalog (extension/src/pg/spi.cpp), so no SET
-- clause here.
-- Nothing is granted to PUBLIC; reader functions go to deploy_reader, the rest to deploy_admin.

CREATE FUNCTION deploy.version_key(version text)
RETURNS text
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'pgdeploy_version_key';
REVOKE ALL ON FUNCTION deploy.version_key(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deploy.version_key(text) TO deploy_reader, deploy_admin;

-- The checksum of stored SQL (hex SHA-256; the engine's own definition, extension/src/pg/engine.cpp).
CREATE FUNCTION deploy.checksum(body text)
RETURNS text
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'pgdeploy_checksum';
REVOKE ALL ON FUNCTION deploy.checksum(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deploy.checksum(text) TO deploy_reader, deploy_admin;

CREATE FUNCTION deploy.register(version text, name text, up_sql text, down_sql text DEFAULT NULL,
                                verify_sql text DEFAULT NULL, transactional boolean DEFAULT NULL,
                                reversibility text DEFAULT NULL, replace boolean DEFAULT false,
                                lock_timeout text DEFAULT NULL, down_transactional boolean DEFAULT NULL)
RETURNS text
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pgdeploy_register';
REVOKE ALL ON FUNCTION deploy.register(text, text, text, text, text, boolean, text, boolean, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deploy.register(text, text, text, text, text, boolean, text, boolean, text, boolean)
    TO deploy_admin;

CREATE FUNCTION deploy.unregister(version text)
RETURNS boolean
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pgdeploy_unregister';
REVOKE ALL ON FUNCTION deploy.unregister(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deploy.unregister(text) TO deploy_admin;

CREATE FUNCTION deploy.up(target text DEFAULT NULL, dry_run boolean DEFAULT false, app_version text DEFAULT NULL,
                          atomic boolean DEFAULT true, metadata jsonb DEFAULT '{}')
RETURNS jsonb
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pgdeploy_up';
REVOKE ALL ON FUNCTION deploy.up(text, boolean, text, boolean, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deploy.up(text, boolean, text, boolean, jsonb) TO deploy_admin;

CREATE FUNCTION deploy.down(steps integer DEFAULT 1, to_version text DEFAULT NULL, force boolean DEFAULT false,
                            dry_run boolean DEFAULT false, app_version text DEFAULT NULL)
RETURNS jsonb
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pgdeploy_down';
REVOKE ALL ON FUNCTION deploy.down(integer, text, boolean, boolean, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deploy.down(integer, text, boolean, boolean, text) TO deploy_admin;

CREATE FUNCTION deploy.rollback(deployment_id bigint DEFAULT NULL, force boolean DEFAULT false,
                                reason text DEFAULT NULL, dry_run boolean DEFAULT false)
RETURNS jsonb
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pgdeploy_rollback';
REVOKE ALL ON FUNCTION deploy.rollback(bigint, boolean, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deploy.rollback(bigint, boolean, text, boolean) TO deploy_admin;

CREATE FUNCTION deploy.next_step(deployment_id bigint DEFAULT NULL, holder text DEFAULT NULL)
RETURNS jsonb
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pgdeploy_next_step';
REVOKE ALL ON FUNCTION deploy.next_step(bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deploy.next_step(bigint, text) TO deploy_admin;

CREATE FUNCTION deploy.step_done(step_id bigint)
RETURNS jsonb
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pgdeploy_step_done';
REVOKE ALL ON FUNCTION deploy.step_done(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deploy.step_done(bigint) TO deploy_admin;

CREATE FUNCTION deploy.step_failed(step_id bigint, sqlstate text, message text)
RETURNS jsonb
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pgdeploy_step_failed';
REVOKE ALL ON FUNCTION deploy.step_failed(bigint, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deploy.step_failed(bigint, text, text) TO deploy_admin;

-- Lossy reverts copy what their down SQL drops into this schema first (deploy.archived lists the copies). It
-- holds application data: deploy_admin only (readers see the list in deploy.archived, not the data).
CREATE SCHEMA deploy_archive;
REVOKE ALL ON SCHEMA deploy_archive FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA deploy_archive TO deploy_admin;

-- deploy.ledger_changed keeps deploy.ledger_stats exact under every writer (the engine, deploy.baseline, manual DML,
-- a restore's COPY): one statement-level trigger per event, the inserted/deleted rows read from transition tables.
--   deploy.applied  INSERT:   applied_count + rows; order_generation + 1 if a registered migration older than the
--                             newest inserted row, and newer than the newest row applied before, stays unapplied;
--                   DELETE:   applied_count - rows; order_generation + 1 if a deleted row is registered and older
--                             than the newest row still applied (a hole: reverting the newest rows makes none);
--                   UPDATE OF version, sort_key: order_generation + 1;  TRUNCATE: applied_count = 0.
--   deploy.migrations INSERT: order_generation + 1 if an inserted row is older than the newest applied one and not
--                             applied itself;  UPDATE OF version, sort_key: order_generation + 1.
-- Each check reads only the rows of the statement and index probes: O(rows changed), not O(ledger).
CREATE FUNCTION deploy.ledger_changed()
RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'pgdeploy_ledger_changed';
REVOKE ALL ON FUNCTION deploy.ledger_changed() FROM PUBLIC;

CREATE TRIGGER applied_inserted AFTER INSERT ON deploy.applied
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION deploy.ledger_changed();
CREATE TRIGGER applied_deleted AFTER DELETE ON deploy.applied
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION deploy.ledger_changed();
CREATE TRIGGER applied_rekeyed AFTER UPDATE OF version, sort_key ON deploy.applied
    FOR EACH STATEMENT EXECUTE FUNCTION deploy.ledger_changed();
CREATE TRIGGER applied_truncated AFTER TRUNCATE ON deploy.applied
    FOR EACH STATEMENT EXECUTE FUNCTION deploy.ledger_changed();
CREATE TRIGGER migrations_inserted AFTER INSERT ON deploy.migrations
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION deploy.ledger_changed();
CREATE TRIGGER migrations_rekeyed AFTER UPDATE OF version, sort_key ON deploy.migrations
    FOR EACH STATEMENT EXECUTE FUNCTION deploy.ledger_changed();
