// pg_deploy: the deploy lock — one deploy operation at a time per database (docs/architecture.md, "Locks"). The one
// implementation: the engine's operations call acquire_deploy_lock(); deploy.baseline and deploy.execute_rollback take
// it through deploy.wait_for_deploy_lock(), and deploy.status() names the holder through deploy.deploy_lock_holder().
#include <string>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/engine.hpp"
#include "pg_deploy/pg/settings.hpp"

extern "C" {
#include "catalog/pg_authid_d.h"
#include "catalog/pg_type_d.h"
#include "utils/acl.h"
}

namespace pgdeploy {

namespace {

bool try_lock_now(LockScope scope, int key) {
    bool got = false;
    pg_guard([&] {
        PGFunction fn = scope == LockScope::transaction ? pg_try_advisory_xact_lock_int4 : pg_try_advisory_lock_int4;
        got = DatumGetBool(DirectFunctionCall2(fn, Int32GetDatum(kLockClassKey), Int32GetDatum(key)));
    });
    return got;
}

/*
 * wait_for_lock waits in the lock manager itself (pg_advisory_xact_lock under a local lock_timeout) rather than
 * polling: the waiter shows in pg_locks as waiting, deadlock detection and isolation tests see it, and it wakes the
 * moment the holder commits. The wait runs in a subtransaction so a timeout can be caught and explained; on success
 * the subtransaction is released and the lock passes to the enclosing transaction.
 */
bool wait_for_lock(int wait_ms, LockScope scope) {
    bool acquired = false;
    try {
        in_subtransaction([&] {
            std::string timeout = std::to_string(wait_ms) + "ms";
            const char* value = timeout.c_str();
            pg_guard([&] {
                int nest = NewGUCNestLevel();
                (void)set_config_option("lock_timeout", value, PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0,
                                        false);
                DirectFunctionCall2(
                    scope == LockScope::transaction ? pg_advisory_xact_lock_int4 : pg_advisory_lock_int4,
                    Int32GetDatum(kLockClassKey), Int32GetDatum(kDeployLockKey));
                AtEOXact_GUC(true, nest);
            });
        });
        acquired = true;
    } catch (const PgError& e) {
        if (e.sqlstate() != sqlstate::lock_not_available)
            throw;  // a cancel or anything else is not ours to explain
    }
    return acquired;
}

// The session holding the deploy lock, as the engine sees it (pg_stat_activity read with the owner's rights).
struct LockHolder {
    Cell pid, application_name, since, user;
    Oid role = InvalidOid;
    Json document;  // {"pid", "application_name", "since"}: what deploy.status() shows
};

// lock_holder is the session that holds the deploy lock in this database, if any: pg_locks joined to
// pg_stat_activity. "since" is the holder's transaction start (the lock is transaction-scoped, so it was taken at or
// after that).
std::optional<LockHolder> lock_holder() {
    Rows r = run_query(
        "SELECT l.pid, a.application_name, coalesce(a.xact_start, a.backend_start)::text, a.usename::text, "
        "a.usesysid::bigint, pg_catalog.jsonb_build_object('pid', l.pid, 'application_name', a.application_name, "
        "'since', coalesce(a.xact_start, a.backend_start))::text "
        "FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.classid = $1::oid AND l.objid = $2::oid AND l.objsubid = 2 "
        "AND l.granted AND l.database = (SELECT oid FROM pg_catalog.pg_database "
        "WHERE datname = pg_catalog.current_database()) ORDER BY l.pid LIMIT 1",
        {INT8OID, INT8OID}, {p_int8(kLockClassKey), p_int8(kDeployLockKey)});
    if (r.empty())
        return std::nullopt;
    const Row& h = r.front();
    LockHolder holder;
    holder.pid = h[0];
    holder.application_name = h[1];
    holder.since = h[2];
    holder.user = h[3];
    holder.role = h[4] ? static_cast<Oid>(cell_int8(h[4])) : InvalidOid;
    holder.document = Json::parse(h[5].value_or("{}"));
    return holder;
}

/*
 * deploy_lock_holder_impl: deploy.deploy_lock_holder() → {"pid", "application_name", "since"}, or NULL when nobody
 * holds the deploy lock. deploy.status() shows it, because "lock held" alone sends an operator hunting through
 * pg_locks. "since" is NULL for a caller that may not see the holder's activity (caller_may_see_activity).
 */
Datum deploy_lock_holder_impl(FunctionCallInfo fcinfo) {
    Oid caller = GetUserId();
    std::optional<LockHolder> holder;
    {
        SpiSession spi;
        holder = lock_holder();
        spi.finish();
    }
    if (!holder) {
        fcinfo->isnull = true;
        return (Datum)0;
    }
    if (!caller_may_see_activity(caller, holder->role))
        holder->document["since"] = nullptr;
    return json_result(holder->document);
}

// wait_for_deploy_lock_impl: deploy.wait_for_deploy_lock(operation), the deploy lock for the PL/pgSQL operations
// (deploy.baseline, deploy.execute_rollback's first step). Granted to nobody: they call it as the owner.
Datum wait_for_deploy_lock_impl(FunctionCallInfo fcinfo) {
    std::string operation = required_text_arg(fcinfo, 0, "operation");
    {
        SpiSession spi;
        acquire_deploy_lock(operation.c_str());
        spi.finish();
    }
    PG_RETURN_VOID();
}

// hold_deploy_lock_impl: deploy.hold_deploy_lock(operation), the deploy lock at session level for a client that runs
// statements at top level between deploy.next_step() and deploy.step_done(); the same bounded wait and error.
Datum hold_deploy_lock_impl(FunctionCallInfo fcinfo) {
    std::string operation = PG_ARGISNULL(0) ? std::string("pg_deploy") : text_arg(fcinfo, 0);
    {
        SpiSession spi;
        acquire_deploy_lock(operation.c_str(), LockScope::session);
        spi.finish();
    }
    PG_RETURN_VOID();
}

// release_deploy_lock_impl: deploy.release_deploy_lock() gives back what hold_deploy_lock took (false, with
// PostgreSQL's warning, when this session did not hold it).
Datum release_deploy_lock_impl(FunctionCallInfo fcinfo) {
    bool released = false;
    pg_guard([&] {
        released = DatumGetBool(
            DirectFunctionCall2(pg_advisory_unlock_int4, Int32GetDatum(kLockClassKey), Int32GetDatum(kDeployLockKey)));
    });
    PG_RETURN_BOOL(released);
}

// try_watcher_leadership_impl: deploy.try_watcher_leadership(). One watcher leads: its connection holds the
// leadership lock at session level, so leadership ends with that connection and another watcher takes over.
Datum try_watcher_leadership_impl(FunctionCallInfo fcinfo) {
    PG_RETURN_BOOL(try_lock_now(LockScope::session, kLeaderLockKey));
}

}  // namespace

/*
 * caller_may_see_activity is PostgreSQL's own rule for pg_stat_activity (HAS_PGSTAT_PERMISSIONS): a role sees the
 * details of sessions of roles whose privileges it has, or all of them with pg_read_all_stats. The engine reads the
 * view as the extension's owner, so a reader's deploy.status() applies the rule itself and shows no more than the
 * reader could see.
 */
bool caller_may_see_activity(Oid caller, Oid holder_role) {
    bool may = false;
    pg_guard([&] {
        may = has_privs_of_role(caller, ROLE_PG_READ_ALL_STATS) ||
              (OidIsValid(holder_role) && has_privs_of_role(caller, holder_role));
    });
    return may;
}

void acquire_deploy_lock(const char* operation, LockScope scope) {
    // The ledger must be read after the lock is taken. Under REPEATABLE READ or SERIALIZABLE the snapshot predates
    // the lock, so a deploy committed meanwhile would be invisible and could be applied twice: refuse.
    if (IsolationUsesXactSnapshot()) {
        throw DeployError(sqlstate::invalid_transaction_state,
                          std::string(operation) + " must run at READ COMMITTED isolation",
                          "A transaction snapshot taken before the deploy lock would not see a deploy that committed "
                          "while this one waited.",
                          "Run it in its own transaction, or SET TRANSACTION ISOLATION LEVEL READ COMMITTED.");
    }
    if (try_lock_now(scope, kDeployLockKey))
        return;
    if (lock_wait_ms > 0 && wait_for_lock(lock_wait_ms, scope))
        return;

    std::optional<LockHolder> holder = lock_holder();
    std::string waited = std::to_string(lock_wait_ms) + " ms";
    if (!holder) {
        throw DeployError(sqlstate::lock_not_available,
                          std::string("could not take the deploy lock for ") + operation +
                              " within pg_deploy.lock_wait (" + waited + "); it has just been released",
                          {}, "Retry the operation.");
    }
    throw DeployError(sqlstate::lock_not_available,
                      std::string("deploy lock is held by another session (application_name \"") +
                          holder->application_name.value_or("") + "\"): " + operation +
                          " gave up after pg_deploy.lock_wait",
                      "holder pid " + holder->pid.value_or("?") + ", user " + holder->user.value_or("?") + ", since " +
                          holder->since.value_or("?") + "; waited " + waited,
                      "Wait for the other deploy operation to finish, or raise pg_deploy.lock_wait.");
}

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_deploy_lock_holder, pgdeploy::deploy_lock_holder_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_wait_for_deploy_lock, pgdeploy::wait_for_deploy_lock_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_hold_deploy_lock, pgdeploy::hold_deploy_lock_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_release_deploy_lock, pgdeploy::release_deploy_lock_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_try_watcher_leadership, pgdeploy::try_watcher_leadership_impl)
