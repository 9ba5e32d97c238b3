// pg_deploy: the deploy lock — one deploy operation at a time per database (docs/architecture.md, "Locks"). The one
// implementation: the engine's operations call acquire_deploy_lock(); deploy.baseline, deploy.execute_rollback and
// deploy.acquire_deploy_lease take it through deploy.wait_for_deploy_lock(), and deploy.status() names the holder
// through deploy.deploy_lock_holder(). The lock is transaction-scoped; what must outlive a transaction (a client
// running statements at top level) is the deploy lease (deploy.leases), which the lock's wait honours.
#include <algorithm>
#include <optional>
#include <string>

#include "pg_deploy/pg/lock_retry.hpp"

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

bool try_lock_now() {
    bool got = false;
    pg_guard([&] {
        got = DatumGetBool(DirectFunctionCall2(pg_try_advisory_xact_lock_int4, Int32GetDatum(kLockClassKey),
                                               Int32GetDatum(kDeployLockKey)));
    });
    return got;
}

/*
 * wait_for_lock waits in the lock manager itself (pg_advisory_xact_lock under a local lock_timeout) rather than
 * polling: the waiter shows in pg_locks as waiting, deadlock detection and isolation tests see it, and it wakes the
 * moment the holder commits. The wait runs in a subtransaction so a timeout can be caught and explained; on success
 * the subtransaction is released and the lock passes to the enclosing transaction.
 */
bool wait_for_lock(int wait_ms) {
    bool acquired = false;
    try {
        in_subtransaction([&] {
            std::string timeout = std::to_string(wait_ms) + "ms";
            const char* value = timeout.c_str();
            pg_guard([&] {
                int nest = NewGUCNestLevel();
                (void)set_config_option("lock_timeout", value, PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0,
                                        false);
                DirectFunctionCall2(pg_advisory_xact_lock_int4, Int32GetDatum(kLockClassKey),
                                    Int32GetDatum(kDeployLockKey));
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
    std::optional<std::string> lease_holder = opt_text_arg(fcinfo, 1);
    {
        SpiSession spi;
        acquire_deploy_lock(operation.c_str(), lease_holder);
        spi.finish();
    }
    PG_RETURN_VOID();
}

// A live deploy lease of another holder than the caller's (deploy.leases).
struct ForeignLease {
    std::string holder, operation, expires_at, application_name;
    int64_t expires_in_ms = 0;
};

std::optional<ForeignLease> foreign_lease(const std::optional<std::string>& lease_holder) {
    Rows r = run_query(
        "SELECT l.holder, coalesce(l.operation, ''), l.expires_at::text, coalesce(l.application_name, ''), "
        "(extract(epoch FROM l.expires_at - pg_catalog.clock_timestamp()) * 1000)::bigint "
        "FROM deploy.leases l WHERE l.name = 'deploy' AND l.expires_at >= pg_catalog.clock_timestamp() "
        "AND l.holder IS DISTINCT FROM $1",
        {TEXTOID}, {lease_holder ? p_text(*lease_holder) : Param{}});
    if (r.empty())
        return std::nullopt;
    const Row& l = r.front();
    return ForeignLease{l[0].value_or(""), l[1].value_or(""), l[2].value_or(""), l[3].value_or(""),
                        l[4] ? cell_int8(l[4]) : 0};
}

DeployError lease_held(const char* operation, const ForeignLease& lease, int waited_ms) {
    return DeployError(sqlstate::lock_not_available,
                       std::string("deploy lease is held by \"") + lease.holder + "\"" +
                           (lease.operation.empty() ? "" : " (" + lease.operation + ")") + ": " + operation +
                           " gave up after pg_deploy.lock_wait",
                       "The holder runs statements at top level (application_name \"" + lease.application_name +
                           "\"); its lease expires at " + lease.expires_at + " unless renewed; waited " +
                           std::to_string(waited_ms) + " ms",
                       "Wait for the other deploy operation to finish. A holder that died blocks nobody once its "
                       "lease expires; deploy.status() shows the lease.");
}

int elapsed_ms_since(int64_t started_us) {
    int64_t now = 0;
    pg_guard([&] { now = GetCurrentTimestamp(); });
    return static_cast<int>((now - started_us) / 1000);
}

// wait_for_foreign_lease polls (every 100 ms) while another holder's live lease exists, for at most
// pg_deploy.lock_wait; then 55P03 naming it. Polls outside the deploy lock, which the holder needs for each step.
void wait_for_foreign_lease(const char* operation, const std::optional<std::string>& lease_holder, int64_t started_us) {
    while (std::optional<ForeignLease> lease = foreign_lease(lease_holder)) {
        int waited = elapsed_ms_since(started_us);
        if (waited >= lock_wait_ms)
            throw lease_held(operation, *lease, waited);
        sleep_ms(std::min<int>({100, lock_wait_ms - waited, static_cast<int>(lease->expires_in_ms) + 1}));
    }
}

// take_deploy_lock: the transaction-scoped lock, waiting at most wait_ms; then 55P03 naming the session that holds it.
void take_deploy_lock(const char* operation, int wait_ms) {
    if (try_lock_now())
        return;
    if (wait_ms > 0 && wait_for_lock(wait_ms))
        return;

    std::optional<LockHolder> holder = lock_holder();
    std::string waited = std::to_string(wait_ms) + " ms";
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

void acquire_deploy_lock(const char* operation, const std::optional<std::string>& lease_holder) {
    // The ledger must be read after the lock is taken. Under REPEATABLE READ or SERIALIZABLE the snapshot predates
    // the lock, so a deploy committed meanwhile would be invisible and could be applied twice: refuse.
    if (IsolationUsesXactSnapshot()) {
        throw DeployError(sqlstate::invalid_transaction_state,
                          std::string(operation) + " must run at READ COMMITTED isolation",
                          "A transaction snapshot taken before the deploy lock would not see a deploy that committed "
                          "while this one waited.",
                          "Run it in its own transaction, or SET TRANSACTION ISOLATION LEVEL READ COMMITTED.");
    }
    int64_t started_us = 0;
    pg_guard([&] { started_us = GetCurrentTimestamp(); });
    wait_for_foreign_lease(operation, lease_holder, started_us);
    take_deploy_lock(operation, std::max(0, lock_wait_ms - elapsed_ms_since(started_us)));
    // A lease taken between the wait and the lock (its transaction committed before we got the lock) keeps us out.
    if (std::optional<ForeignLease> lease = foreign_lease(lease_holder))
        throw lease_held(operation, *lease, 0);
}

void acquire_deploy_lock_for_step(const char* operation) {
    take_deploy_lock(operation, lock_wait_ms);
}

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_deploy_lock_holder, pgdeploy::deploy_lock_holder_impl)
PGDEPLOY_SQL_FUNCTION(pgdeploy_wait_for_deploy_lock, pgdeploy::wait_for_deploy_lock_impl)
