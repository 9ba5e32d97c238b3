-- leases: what outlives a transaction is a row in deploy.leases (holder, expiry), never session state, so it works
-- through PgBouncer in transaction mode and a dead holder blocks nobody past its ttl.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_deploy CASCADE;
CREATE EXTENSION pg_deploy;
RESET client_min_messages;
SET pg_deploy.lock_wait = '200ms';

-- Leadership: taken when free, renewed by its holder, refused to another while live, taken over once expired.
SELECT deploy.try_watcher_leadership('watcher-a', '1 min') AS a_leads,
       deploy.try_watcher_leadership('watcher-a', '1 min') AS a_renews,
       deploy.try_watcher_leadership('watcher-b', '1 min') AS b_leads;
SELECT holder, operation, expires_at > clock_timestamp() + interval '50 s' AS renewed FROM deploy.leases;
UPDATE deploy.leases SET expires_at = clock_timestamp() - interval '1 s' WHERE name = 'watcher_leader';
SELECT deploy.try_watcher_leadership('watcher-b', '1 min') AS b_takes_over,
       deploy.try_watcher_leadership('watcher-a', '1 min') AS a_leads_again;
SELECT kind, details ->> 'lease' AS lease, details ->> 'holder' AS holder,
       details ->> 'previous_holder' AS previous_holder
FROM deploy.events WHERE kind = 'lease_taken_over' ORDER BY id;
SELECT deploy.release_watcher_leadership('watcher-a') AS a_releases,
       deploy.release_watcher_leadership('watcher-b') AS b_releases;
SELECT count(*) AS leases FROM deploy.leases;

-- The deploy lease: its holder may hand out steps; every deploy operation of anyone else waits pg_deploy.lock_wait,
-- then fails with 55P03 naming the holder.
SELECT deploy.acquire_deploy_lease('alice', 'pgdeploy up') - 'acquired_at' - 'expires_at' AS lease;
SELECT deploy.acquire_deploy_lease('alice', 'pgdeploy up') ->> 'acquired' AS renewed_by_taking_again;
SELECT deploy.next_step(holder => 'alice') IS NULL AS alice_may_ask;
\set VERBOSITY terse
SELECT deploy.next_step(holder => 'bob');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.up();
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.acquire_deploy_lease('bob', 'pgdeploy up');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.baseline('1');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT deploy.renew_deploy_lease('alice') AS alice_renews, deploy.renew_deploy_lease('bob') AS bob_renews;
SELECT l -> 'lease' AS lease, l -> 'holder' AS holder, l -> 'expired' AS expired
FROM jsonb_array_elements(deploy.status() -> 'leases') l;
SELECT deploy.release_deploy_lease('alice') AS released, deploy.release_deploy_lease('alice') AS released_again;
SELECT deploy.up() ->> 'ok' AS up_after_release;

-- A holder that died: its expired lease keeps nobody out, and the next holder takes it over.
SELECT deploy.acquire_deploy_lease('carol', 'pgdeploy up', '1 min') ->> 'holder' AS holder;
UPDATE deploy.leases SET expires_at = clock_timestamp() - interval '1 s' WHERE name = 'deploy';
SELECT deploy.up() ->> 'ok' AS up_past_expired_lease;
SELECT deploy.renew_deploy_lease('carol') AS carol_renews_unclaimed;
UPDATE deploy.leases SET expires_at = clock_timestamp() - interval '1 s' WHERE name = 'deploy';
SELECT deploy.acquire_deploy_lease('dave', 'pgdeploy up') -> 'took_over' ->> 'holder' AS took_over_from;
SELECT deploy.renew_deploy_lease('carol') AS carol_renews_lost;
SELECT deploy.release_deploy_lease('dave') AS released;

-- Bad input.
\set VERBOSITY terse
SELECT deploy.acquire_deploy_lease(NULL, 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.acquire_deploy_lease('x', 'x', '0 s');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.acquire_deploy_lease('x', 'x', '2 days');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.try_watcher_leadership(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.try_watcher_leadership('x', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.renew_deploy_lease('x', '-1 s');
\echo :LAST_ERROR_SQLSTATE
SELECT deploy.acquire_deploy_lease(repeat('h', 100000), 'x');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT count(*) AS leases_left FROM deploy.leases;
