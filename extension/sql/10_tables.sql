-- pg_deploy install script, part 10: the ledger's tables.

-- Roles are cluster-wide and outlive the extension: create them only when missing, so CREATE EXTENSION works in a
-- second database of the same cluster and again after DROP EXTENSION.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'deploy_reader') THEN
        CREATE ROLE deploy_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'deploy_admin') THEN
        CREATE ROLE deploy_admin NOLOGIN;
    END IF;
    IF NOT pg_catalog.pg_has_role('deploy_admin', 'deploy_reader', 'MEMBER') THEN
        GRANT deploy_reader TO deploy_admin;
    END IF;
END
$roles$;

REVOKE ALL ON SCHEMA deploy FROM PUBLIC;
GRANT USAGE ON SCHEMA deploy TO deploy_reader, deploy_admin;

-- The actor recorded on every ledger row: the role the session acts as (extension/src/pg/roles.cpp). Not
-- current_user, which is the extension's owner wherever the engine or a SECURITY DEFINER function writes.
CREATE FUNCTION deploy.acting_role()
RETURNS name
LANGUAGE c STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'pgdeploy_acting_role';

-- The one table of input length limits (extension/src/pg/limits.cpp; docs/sql-reference.md, "Limits"): raises 22001
-- naming the argument and its limit when value is longer. NULL passes.
CREATE FUNCTION deploy.check_input_length(argument text, value text)
RETURNS void
LANGUAGE c IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'pgdeploy_check_input_length';

-- The catalog of known migrations. up/down/verify SQL are what the files said at registration time.
CREATE TABLE deploy.migrations (
    version        text        PRIMARY KEY,
    sort_key       text        COLLATE "C" NOT NULL UNIQUE,   -- deploy.version_key(version): natural order
    name           text        NOT NULL,
    up_sql         text        NOT NULL,
    down_sql       text,                                     -- NULL: irreversible
    verify_sql     text,
    checksum       text        NOT NULL,                     -- hex sha256 of up_sql
    down_checksum  text,                                     -- hex sha256 of down_sql (NULL with it)
    verify_checksum text,                                    -- hex sha256 of verify_sql (NULL with it)
    transactional  boolean     NOT NULL DEFAULT true,
    lock_timeout_ms integer    CHECK (lock_timeout_ms >= 0),    -- its lock_timeout directive; NULL: the setting's
    down_transactional boolean NOT NULL DEFAULT true,        -- false: down_sql runs statement by statement at top level
    reversibility  text        NOT NULL DEFAULT 'reversible'
                   CHECK (reversibility IN ('reversible', 'lossy', 'irreversible')),
    registered_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    registered_by  name        NOT NULL DEFAULT deploy.acting_role(),
    CHECK (reversibility = 'irreversible' OR down_sql IS NOT NULL),
    CHECK ((down_sql IS NULL) = (down_checksum IS NULL)),
    CHECK ((verify_sql IS NULL) = (verify_checksum IS NULL))
);

-- One row per operation that changes the schema version or the app version: up, down, rollback, baseline.
CREATE TABLE deploy.deployments (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text        NOT NULL DEFAULT 'up' CHECK (kind IN ('up', 'down', 'rollback', 'baseline')),
    app_version     text,
    state           text        NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'succeeded', 'failed', 'rolled_back')),
    started_at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    finished_at     timestamptz,
    started_by      name        NOT NULL DEFAULT deploy.acting_role(),
    version_before  text,
    version_after   text,
    reverts         bigint,      -- kind = rollback: the deployment it undid (no FK: keeps pg_dump simple)
    rolled_back_by  bigint,      -- state = rolled_back: the rollback deployment that did it
    error           jsonb,          -- {"version","name","sqlstate","message"}: what readers may see
    error_private   jsonb,          -- {"detail","hint","context"}: may quote values from the SQL; admins only
    metadata        jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX deployments_state_idx ON deploy.deployments (state, id);

-- What is applied now. A row is deleted when its migration is reverted (the events keep the history).
-- down_sql is copied here at apply time: a rollback never depends on files a code revert removed.
CREATE TABLE deploy.applied (
    version        text             PRIMARY KEY,
    sort_key       text             COLLATE "C" NOT NULL UNIQUE,
    name           text             NOT NULL,
    checksum       text             NOT NULL,
    down_sql       text,
    down_checksum  text,            -- hex sha256 of down_sql at apply time: a drifted body is never run
    reversibility  text             NOT NULL,
    transactional  boolean          NOT NULL DEFAULT true,
    lock_timeout_ms integer,        -- copied from the migration: its revert waits as long for a lock
    down_transactional boolean      NOT NULL DEFAULT true,   -- copied with down_sql: how a revert runs it
    deployment_id  bigint           NOT NULL REFERENCES deploy.deployments (id),
    applied_at     timestamptz      NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    applied_by     name             NOT NULL DEFAULT deploy.acting_role(),
    duration_ms    double precision NOT NULL DEFAULT 0,
    baseline       boolean          NOT NULL DEFAULT false,
    CHECK ((down_sql IS NULL) = (down_checksum IS NULL))
);
CREATE INDEX applied_deployment_idx ON deploy.applied (deployment_id);

-- Checkpoints: one row per statement of a non-transactional migration (and per migration of CALL deploy.run),
-- so an interrupted deployment resumes at the first step that is not done. A step runs its migration's up SQL when
-- its deployment is an up deployment and its down SQL when the deployment is a down or rollback (a revert): the
-- deployment's kind says which, in one place (extension/src/pg/steps.cpp).
CREATE TABLE deploy.checkpoints (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    deployment_id  bigint      NOT NULL REFERENCES deploy.deployments (id),
    version        text        NOT NULL,
    step           integer     NOT NULL,
    statement      text        NOT NULL,
    state          text        NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'running', 'done', 'failed')),
    holder         text,
    started_at     timestamptz,
    finished_at    timestamptz,
    attempts       integer     NOT NULL DEFAULT 0,
    error          jsonb,
    UNIQUE (deployment_id, version, step)
);

-- Rollback markers: a durable request to undo a deployment, executed by whoever claims it (50_markers.sql).
CREATE TABLE deploy.rollback_markers (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    deployment_id   bigint      NOT NULL REFERENCES deploy.deployments (id),
    target_version  text,                -- schema version to return to (the deployment's version_before)
    reason          text        NOT NULL,
    details         jsonb       NOT NULL DEFAULT '{}',
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'in_progress', 'done', 'failed', 'needs_attention')),
    requested_by    name        NOT NULL DEFAULT deploy.acting_role(),
    requested_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    holder          text,
    lease_until     timestamptz,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      jsonb,          -- {"sqlstate","message",...}: what readers may see
    last_error_private jsonb,       -- detail, hint, context of last_error: admins only
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    resolved_by     name,
    resolution      text
);
-- deploy.marker_is_open says whether a marker in this state is still open (pending, in_progress, failed,
-- needs_attention): the one list, kept by the engine (extension/src/pg/markers.cpp). Every query about open markers
-- and the index below use it, so the index's predicate and ON CONFLICT's always agree.
CREATE FUNCTION deploy.marker_is_open(state text)
RETURNS boolean
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'pgdeploy_marker_is_open';

-- At most one open marker per deployment: requesting twice returns the open one.
CREATE UNIQUE INDEX rollback_markers_open_idx ON deploy.rollback_markers (deployment_id)
    WHERE deploy.marker_is_open(state);
CREATE INDEX rollback_markers_state_idx ON deploy.rollback_markers (state, id);

-- Data that a lossy down script dropped, kept for the rollback window.
CREATE TABLE deploy.archived (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    deployment_id  bigint      REFERENCES deploy.deployments (id),
    version        text        NOT NULL,
    object_type    text        NOT NULL,      -- 'table' | 'column'
    object_name    text        NOT NULL,      -- as it was: schema.table or schema.table.column
    archive_table  text        NOT NULL,      -- deploy_archive.<name>
    row_count      bigint,
    archived_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    expires_at     timestamptz
);

-- Append-only audit log. Every state change writes one row in the same transaction and sends NOTIFY pg_deploy.
CREATE TABLE deploy.events (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    kind           text        NOT NULL,
    deployment_id  bigint,
    version        text,
    marker_id      bigint,
    actor          name        NOT NULL DEFAULT deploy.acting_role(),
    details        jsonb       NOT NULL DEFAULT '{}',
    private_details jsonb       -- what readers must not see: error detail and context, hook output (admins only)
);
CREATE INDEX events_deployment_idx ON deploy.events (deployment_id) WHERE deployment_id IS NOT NULL;
CREATE INDEX events_marker_idx ON deploy.events (marker_id) WHERE marker_id IS NOT NULL;

-- Leases: what must outlive one transaction. Nothing pg_deploy relies on lives in a server session (behind PgBouncer
-- in transaction mode each transaction may run on another server connection, and a session lock stays behind on a
-- pooled one). A lease is a row: its holder renews it while working, and anyone may take it over once it expires, so
-- a dead holder blocks nobody for longer than its ttl.
--   deploy          held by a client while it runs non-transactional statements at top level (deploy.next_step);
--                   every deploy operation of another holder waits for it (pg_deploy.lock_wait), then fails 55P03.
--   watcher_leader  the watcher that decides and acts; the others watch.
CREATE TABLE deploy.leases (
    name              text        PRIMARY KEY CHECK (name IN ('deploy', 'watcher_leader')),
    holder            text        NOT NULL,
    operation         text,
    acquired_at       timestamptz NOT NULL,
    renewed_at        timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    pid               integer,    -- the server process of the last renewal (informational: it changes behind a pooler)
    application_name  text
);

-- pg_dump keeps the history (the tables are extension members, so it would skip their rows otherwise).
SELECT pg_catalog.pg_extension_config_dump('deploy.migrations', '');
SELECT pg_catalog.pg_extension_config_dump('deploy.deployments', '');
SELECT pg_catalog.pg_extension_config_dump('deploy.applied', '');
SELECT pg_catalog.pg_extension_config_dump('deploy.checkpoints', '');
SELECT pg_catalog.pg_extension_config_dump('deploy.rollback_markers', '');
SELECT pg_catalog.pg_extension_config_dump('deploy.archived', '');
SELECT pg_catalog.pg_extension_config_dump('deploy.events', '');
SELECT pg_catalog.pg_extension_config_dump('deploy.deployments_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('deploy.checkpoints_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('deploy.rollback_markers_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('deploy.archived_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('deploy.events_id_seq', '');

-- Counters kept by the triggers on deploy.applied and deploy.migrations (part 20), for every writer alike: the
-- engine, deploy.baseline, manual DML, a pg_restore's COPY.
--   applied_count     the number of applied migrations, so deploy.status() answers in constant time with a ledger
--                     of 100,000 rows (an exact count(*) costs over 2 ms there);
--   order_generation  bumped by any change that may leave a registered, unapplied migration older than the newest
--                     applied one (an out-of-order pending migration);
--   order_checked     the generation at which deploy.up() last proved there is none (NULL: never), so up() runs
--                     that anti-join of the whole catalog against the whole ledger (30 ms at 100,000 rows) only after
--                     such a change, not on every call.
-- The row is made here and its data is not dumped: a pg_restore recreates the extension (this row: 0 applied, never
-- checked) and then copies deploy.applied, whose trigger counts the rows it brings. Restored with
-- --disable-triggers, the count stays 0 until corrected; deploy.validate() reports the mismatch.
CREATE TABLE deploy.ledger_stats (
    only_row          boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    applied_count     bigint  NOT NULL DEFAULT 0,
    order_generation  bigint  NOT NULL DEFAULT 0,
    order_checked     bigint
);
INSERT INTO deploy.ledger_stats DEFAULT VALUES;
