// pg_deploy: lock-safe batches (pg_deploy/pg/lock_retry.hpp has the contract).
#include "pg_deploy/pg/lock_retry.hpp"

#include <algorithm>
#include <csignal>
#include <sstream>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/lock_backoff.hpp"
#include "pg_deploy/pg/settings.hpp"
#include "pg_deploy/pg/sqltext.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
#include "common/pg_prng.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "utils/wait_event.h"
}

namespace pgdeploy {

namespace {

/*
 * The lock probe. PostgreSQL forgets which lock a statement waited for as soon as lock_timeout ends the wait, so a
 * periodic timer (our own USER_TIMEOUT, a few times per lock timeout) copies the lock this backend is waiting for out
 * of its own PGPROC. It runs in the SIGALRM handler: it only reads this backend's wait fields (the lock object stays
 * in shared memory while we are queued on it) and writes plain statics.
 */
TimeoutId probe_timeout = MAX_TIMEOUTS;  // registered on first use
volatile sig_atomic_t probe_seen = 0;
LOCKTAG probe_tag;
LOCKMODE probe_mode = NoLock;
int applied_timeout_ms = 0;  // the lock timeout of the newest with_lock_timeout body

void lock_probe_handler() {
    PGPROC* proc = MyProc;
    if (proc == nullptr || proc->waitLock == nullptr)
        return;
    probe_tag = proc->waitLock->tag;
    probe_mode = proc->waitLockMode;
    probe_seen = 1;
}

// LockProbe runs the probe while it lives.
class LockProbe {
public:
    explicit LockProbe(int timeout_ms) {
        int every = std::max(10, timeout_ms / 5);
        pg_guard([&] {
            if (probe_timeout == MAX_TIMEOUTS)
                probe_timeout = RegisterTimeout(USER_TIMEOUT, lock_probe_handler);
            probe_seen = 0;
            enable_timeout_every(probe_timeout, TimestampTzPlusMilliseconds(GetCurrentTimestamp(), every), every);
        });
    }
    ~LockProbe() {
        try {
            pg_guard([] { disable_timeout(probe_timeout, false); });
        } catch (...) {
        }
    }
    LockProbe(const LockProbe&) = delete;
    LockProbe& operator=(const LockProbe&) = delete;
};

// The lock the probe saw last, as pg_locks shows it: the columns that identify the locked object.
struct ProbedLock {
    std::string type, mode;
    Param database, relation, page, tuple, transactionid, virtualxid, classid, objid, objsubid;
};

std::optional<ProbedLock> probed_lock() {
    if (!probe_seen)
        return std::nullopt;
    const LOCKTAG tag = probe_tag;
    ProbedLock l;
    const char* mode = nullptr;
    // The lock methods are DEFAULT_LOCKMETHOD and USER_LOCKMETHOD; GetLockmodeName only asserts it.
    bool known = (tag.locktag_lockmethodid == DEFAULT_LOCKMETHOD || tag.locktag_lockmethodid == USER_LOCKMETHOD) &&
                 probe_mode > NoLock && probe_mode <= MaxLockMode;
    if (known)
        pg_guard([&] { mode = GetLockmodeName(tag.locktag_lockmethodid, probe_mode); });
    l.mode = mode ? mode : "?";
    l.type = tag.locktag_type <= LOCKTAG_LAST_TYPE ? LockTagTypeNames[tag.locktag_type] : "?";
    switch (static_cast<LockTagType>(tag.locktag_type)) {
        case LOCKTAG_TUPLE:
            l.tuple = p_int8(tag.locktag_field4);
            [[fallthrough]];
        case LOCKTAG_PAGE:
            l.page = p_int8(tag.locktag_field3);
            [[fallthrough]];
        case LOCKTAG_RELATION:
        case LOCKTAG_RELATION_EXTEND:
            l.database = p_int8(tag.locktag_field1);
            l.relation = p_int8(tag.locktag_field2);
            break;
        case LOCKTAG_TRANSACTION:
            l.transactionid = p_text(std::to_string(tag.locktag_field1));
            break;
        case LOCKTAG_VIRTUALTRANSACTION:
            l.virtualxid = p_text(std::to_string(tag.locktag_field1) + "/" + std::to_string(tag.locktag_field2));
            break;
        default:
            l.database = p_int8(tag.locktag_field1);
            l.classid = p_int8(tag.locktag_field2);
            l.objid = p_int8(tag.locktag_field3);
            l.objsubid = p_int8(tag.locktag_field4);
            break;
    }
    return l;
}

// The locked object in words: a relation by its qualified name, a transaction by its id.
std::string object_name(const ProbedLock& l) {
    if (l.relation.kind != Param::Kind::Null) {
        Rows r = run_query("SELECT $1::oid::regclass::text", {INT8OID}, {l.relation});
        std::string rel = r.front()[0].value_or("?");
        if (l.tuple.kind != Param::Kind::Null)
            return "row (" + std::to_string(l.page.integer) + "," + std::to_string(l.tuple.integer) + ") of " + rel;
        return rel;
    }
    if (l.transactionid.kind != Param::Kind::Null)
        return l.transactionid.text;
    if (l.virtualxid.kind != Param::Kind::Null)
        return l.virtualxid.text;
    return std::to_string(l.objid.integer);
}

/*
 * blocker is the oldest other session holding a granted lock on the object we waited for, with what the caller may
 * see of it: pid, application_name and user are public in pg_stat_activity; state and the transaction's age only
 * for callers allowed to see that session's activity (caller_may_see_activity, PostgreSQL's own rule).
 */
Json blocker(const ProbedLock& l) {
    Rows r = run_query(
        "SELECT l.pid, a.application_name, a.usename::text, a.state, "
        "(EXTRACT(EPOCH FROM pg_catalog.clock_timestamp() - a.xact_start) * 1000)::bigint, a.usesysid::bigint, "
        "l.mode FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.granted AND l.pid <> pg_catalog.pg_backend_pid() AND l.locktype = $1 "
        "AND l.database::bigint IS NOT DISTINCT FROM $2 AND l.relation::bigint IS NOT DISTINCT FROM $3 "
        "AND l.page::bigint IS NOT DISTINCT FROM $4 AND l.tuple::bigint IS NOT DISTINCT FROM $5 "
        "AND l.transactionid::text IS NOT DISTINCT FROM $6 AND l.virtualxid IS NOT DISTINCT FROM $7 "
        "AND l.classid::bigint IS NOT DISTINCT FROM $8 AND l.objid::bigint IS NOT DISTINCT FROM $9 "
        "AND l.objsubid::bigint IS NOT DISTINCT FROM $10 ORDER BY a.xact_start NULLS LAST, l.pid LIMIT 1",
        {TEXTOID, INT8OID, INT8OID, INT8OID, INT8OID, TEXTOID, TEXTOID, INT8OID, INT8OID, INT8OID},
        {p_text(l.type), l.database, l.relation, l.page, l.tuple, l.transactionid, l.virtualxid, l.classid, l.objid,
         l.objsubid});
    if (r.empty())
        return nullptr;
    const Row& b = r.front();
    bool visible = caller_may_see_activity(GetUserId(), b[5] ? static_cast<Oid>(cell_int8(b[5])) : InvalidOid);
    return Json{{"pid", cell_int8(b[0])},
                {"application_name", cell_json(b[1])},
                {"user", cell_json(b[2])},
                {"state", visible ? cell_json(b[3]) : Json(nullptr)},
                {"xact_age_ms", visible && b[4] ? Json(cell_int8(b[4])) : Json(nullptr)},
                {"mode", cell_json(b[6])}};
}

std::string seconds(int64_t ms) {
    std::ostringstream out;
    out.precision(1);
    out << std::fixed << static_cast<double>(ms) / 1000.0 << " s";
    return out.str();
}

// "pid 1234 (application_name "app", user "app", state "idle in transaction", transaction open 3.2 s)"
std::string blocker_text(const Json& b) {
    if (b.is_null())
        return "a session that has let go since";
    auto str = [](const Json& v) { return v.is_string() ? v.get<std::string>() : std::string("?"); };
    std::string out = "pid " + std::to_string(b["pid"].get<int64_t>()) + " (application_name \"" +
                      str(b["application_name"]) + "\", user \"" + str(b["user"]) + "\"";
    if (b["state"].is_string())
        out += ", state \"" + b["state"].get<std::string>() + "\"";
    if (b["xact_age_ms"].is_number())
        out += ", transaction open " + seconds(b["xact_age_ms"].get<int64_t>());
    return out + ")";
}

std::string lock_text(const Json& lock) {
    if (lock.is_null())
        return "a lock";
    return lock["mode"].get<std::string>() + " on " + lock["type"].get<std::string>() + " " +
           lock["object"].get<std::string>();
}

int next_backoff_ms(int attempt) {
    double draw = 0;
    pg_guard([&] { draw = pg_prng_double(&pg_global_prng_state); });
    return lock_retry_backoff_ms(attempt, draw);
}

}  // namespace

// sleep_ms waits on the latch, so a cancel or a terminate ends the wait (and the call) at once.
void sleep_ms(int ms) {
    pg_guard([&] {
        TimestampTz end = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);
        for (;;) {
            CHECK_FOR_INTERRUPTS();
            long left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), end);
            if (left <= 0)
                break;
            (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, left, PG_WAIT_EXTENSION);
            ResetLatch(MyLatch);
        }
    });
}

int effective_lock_timeout_ms(const std::optional<int>& migration_ms) {
    return migration_ms.value_or(lock_timeout_ms);
}

Json top_level_lock_policy(const std::string& statement, const std::optional<int>& migration_ms) {
    bool refuses_transaction = false;
    for (const SqlStatement& st : parse_sql(statement, "step"))
        refuses_transaction = refuses_transaction || !st.non_transactional.empty();
    int ms = effective_lock_timeout_ms(migration_ms);
    return Json{{"lock_timeout_ms", refuses_transaction || ms <= 0 ? Json(nullptr) : Json(ms)},
                {"lock_retry", Json{{"attempts", lock_attempts}, {"time_ms", lock_retry_time_ms}}}};
}

void with_lock_timeout(int ms, const std::function<void()>& body) {
    applied_timeout_ms = ms;
    if (ms <= 0) {
        body();
        return;
    }
    std::string value = std::to_string(ms) + "ms";
    int nest = 0;
    pg_guard([&] {
        nest = NewGUCNestLevel();
        (void)set_config_option("lock_timeout", value.c_str(), PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0,
                                false);
    });
    {
        LockProbe probe(ms);
        body();
    }
    pg_guard([&] { AtEOXact_GUC(true, nest); });
}

LockRetry::LockRetry(const char* operation, EventLog& events, std::optional<int64_t> deployment_id)
    : operation_(operation), events_(events), deployment_id_(deployment_id), started_us_(now_us()) {}

bool LockRetry::decide(const std::optional<SqlFailure>& failure) {
    retry_pending_ = false;
    if (!failure || failure->sqlstate != sqlstate::lock_not_available || applied_timeout_ms <= 0)
        return false;
    timeout_ms_ = applied_timeout_ms;
    if (attempt_ >= lock_attempts)
        return false;
    backoff_ms_ = next_backoff_ms(attempt_);
    if (!lock_retry_allowed(attempt_, lock_attempts, ms_since(started_us_), backoff_ms_, lock_retry_time_ms))
        return false;
    retry_pending_ = true;
    return true;
}

Json LockRetry::describe_wait(const std::string& version, const std::string& name) const {
    std::optional<ProbedLock> lock = probed_lock();
    Json lock_json = nullptr, holder = nullptr;
    if (lock) {
        lock_json = Json{{"type", lock->type}, {"object", object_name(*lock)}, {"mode", lock->mode}};
        holder = blocker(*lock);
    }
    return Json{{"attempt", attempt_}, {"version", version},       {"name", name},         {"lock", lock_json},
                {"blocker", holder},   {"waited_ms", timeout_ms_}, {"backoff_ms", nullptr}};
}

bool LockRetry::after_rollback(std::optional<SqlFailure>& failure, const std::string& version,
                               const std::string& name) {
    std::string what = std::string(operation_) + " of migration " + version + " (" + name + ")";
    if (retry_pending_) {
        retry_pending_ = false;
        Json entry = describe_wait(version, name);
        entry["backoff_ms"] = backoff_ms_;
        retries_.push_back(entry);
        pg_notice("lock retry " + std::to_string(attempt_) + "/" + std::to_string(lock_attempts) + ": " + what +
                  " waited " + std::to_string(timeout_ms_) + " ms for " + lock_text(entry["lock"]) + "; blocked by " +
                  blocker_text(entry["blocker"]) + "; next attempt in " + std::to_string(backoff_ms_) + " ms");
        if (deployment_id_)
            events_.log("lock_retry", deployment_id_, version, std::nullopt, entry);
        sleep_ms(backoff_ms_);
        ++attempt_;
        return true;
    }
    if (!failure || failure->sqlstate != sqlstate::lock_not_available || timeout_ms_ <= 0)
        return false;
    Json entry = describe_wait(version, name);
    entry["gave_up"] = true;
    retries_.push_back(entry);
    std::string original = failure->message;
    failure->message = "could not take " + lock_text(entry["lock"]) + " within " + std::to_string(timeout_ms_) +
                       " ms in " + std::to_string(attempt_) + " attempt(s) over " +
                       seconds(static_cast<int64_t>(ms_since(started_us_))) + ": blocked by " +
                       blocker_text(entry["blocker"]);
    failure->detail = original + "; the budget is pg_deploy.lock_attempts = " + std::to_string(lock_attempts) +
                      " and pg_deploy.lock_retry_time = " + std::to_string(lock_retry_time_ms) + " ms";
    failure->hint =
        "The batch was rolled back. End the blocking transaction (or SELECT pg_terminate_backend(pid)) and run it "
        "again, or raise pg_deploy.lock_attempts / pg_deploy.lock_retry_time.";
    return false;
}

}  // namespace pgdeploy
