-- pg_deploy install script, part 20: the C++ engine's SQL-callable functions (extension/src/pg/*.cpp).
-- All are SECURITY INVOKER: migration SQL runs with the caller's rights. The C code pins search_path for its own
-- queries and leaves the caller's search_path to the migration SQL, so no SET clause here.
-- Nothing is granted to PUBLIC; reader functions go to deploy_reader, the rest to deploy_admin.

CREATE FUNCTION deploy.version_key(version text)
RETURNS text
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'pgdeploy_version_key';
REVOKE ALL ON FUNCTION deploy.version_key(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deploy.version_key(text) TO deploy_reader, deploy_admin;

CREATE FUNCTION deploy.register(version text, name text, up_sql text, down_sql text DEFAULT NULL,
                                verify_sql text DEFAULT NULL, transactional boolean DEFAULT NULL,
                                reversibility text DEFAULT NULL, replace boolean DEFAULT false)
RETURNS text
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'pgdeploy_register';
REVOKE ALL ON FUNCTION deploy.register(text, text, text, text, text, boolean, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deploy.register(text, text, text, text, text, boolean, text, boolean) TO deploy_admin;

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
