// pg_deploy: the deploy lock (advisory, transaction-scoped, bounded wait).
#include <string>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/boundary.hpp"
#include "pg_deploy/pg/settings.hpp"
#include "pg_deploy/pg/spi.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
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
        if (e.sqlstate() != "55P03")
            throw;  // a cancel or anything else is not ours to explain
    }
    return acquired;
}

}  // namespace

void acquire_deploy_lock(const char* operation) {
    // The ledger must be read after the lock is taken. Under REPEATABLE READ or SERIALIZABLE the snapshot predates
    // the lock, so a deploy committed meanwhile would be invisible and could be applied twice: refuse.
    if (IsolationUsesXactSnapshot()) {
        throw DeployError("25000", std::string(operation) + " must run at READ COMMITTED isolation",
                          "A transaction snapshot taken before the deploy lock would not see a deploy that committed "
                          "while this one waited.",
                          "Run it in its own transaction, or SET TRANSACTION ISOLATION LEVEL READ COMMITTED.");
    }
    if (try_lock_now())
        return;
    if (lock_wait_ms > 0 && wait_for_lock(lock_wait_ms))
        return;

    Rows holder = run_query(
        "SELECT l.pid, a.application_name, coalesce(a.xact_start, a.backend_start)::text, a.usename::text "
        "FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.classid = $1::oid AND l.objid = $2::oid AND l.objsubid = 2 "
        "AND l.granted AND l.database = (SELECT oid FROM pg_catalog.pg_database "
        "WHERE datname = pg_catalog.current_database()) LIMIT 1",
        {INT8OID, INT8OID}, {p_int8(kLockClassKey), p_int8(kDeployLockKey)});
    std::string waited = std::to_string(lock_wait_ms) + " ms";
    if (holder.empty()) {
        throw DeployError(sqlstate::lock_not_available,
                          std::string("could not take the deploy lock for ") + operation +
                              " within pg_deploy.lock_wait (" + waited + "); it has just been released",
                          {}, "Retry the operation.");
    }
    const Row& h = holder.front();
    std::string app = h[1].value_or("");
    throw DeployError(sqlstate::lock_not_available,
                      std::string("deploy lock is held by another session (application_name \"") + app +
                          "\"): " + operation + " gave up after pg_deploy.lock_wait",
                      "holder pid " + h[0].value_or("?") + ", user " + h[3].value_or("?") + ", since " +
                          h[2].value_or("?") + "; waited " + waited,
                      "Wait for the other deploy operation to finish, or raise pg_deploy.lock_wait.");
}

}  // namespace pgdeploy
