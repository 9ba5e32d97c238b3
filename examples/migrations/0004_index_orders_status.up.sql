-- pg_deploy: transaction=off
-- Release v2: an index built without blocking writes. CREATE INDEX CONCURRENTLY cannot run inside a transaction, so
-- this migration is non-transactional: pgdeploy runs its statement at top level and records a checkpoint for it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_status_idx ON shop.orders (status);
