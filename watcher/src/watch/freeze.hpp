// The watcher's failover freeze: while it cannot reach a writable primary (connection refused or lost, or connected
// to a read-only standby), its decisions freeze: checks keep running and are reported, but no rollback is decided,
// requested or executed and no marker is claimed (docs/pgdeploy.md, "Failovers and connection poolers"). Pure code:
// time is an argument, so the transitions are tested without a server (tests/unit/test_watch_freeze.cpp).
#pragma once
#include <cstdint>
#include <deque>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "watch/duration.hpp"

namespace pgdeploy::watch {

// Why the watcher is frozen (the "reason" of --status, the metrics and the event).
enum class FreezeReason {
    unreachable,  // no connection could be made (refused, timed out, no primary among the DSN's hosts)
    lost,         // the connection broke, or the server (or a pooler in front of it) ended the session
    standby,      // connected, but to a server in recovery: the ledger cannot be written there
};
const char* to_string(FreezeReason r);

// database_unavailable: a server error that says the database, not the statement, is the problem: the session or the
// server is going away (class 08, 57P01-57P03), or the server is a read-only standby (25006). Through a pooler such as
// PgBouncer a failover shows up this way while the client's own connection stays open.
bool database_unavailable(const std::string& sqlstate);

// freeze_reason_for: standby for a read-only standby's refusal (25006), otherwise the given reason.
FreezeReason freeze_reason_for(const std::string& sqlstate, FreezeReason otherwise);

// A freeze that ended: what the watcher_db_freeze event records once the primary is back.
struct FreezeRecord {
    FreezeReason reason = FreezeReason::unreachable;
    std::string detail;       // the last error seen (scrubbed by the caller)
    Millis started_wall = 0;  // epoch milliseconds
    Millis ended_wall = 0;    // epoch milliseconds
    Millis duration_ms = 0;   // monotonic
    bool was_leader = false;  // it led when the freeze began
    nlohmann::json to_json() const;
};

/*
 * FreezeState: thawed --enter--> frozen --thaw--> thawed (the ended freeze waits in pending() until it is recorded).
 * enter() while frozen keeps the start and the first reason (the last detail is kept); thaw() while thawed does
 * nothing. Times: monotonic milliseconds for durations, wall milliseconds for what people read.
 */
class FreezeState {
public:
    // enter: returns true when this starts a freeze.
    bool enter(FreezeReason reason, const std::string& detail, bool was_leader, Millis mono, Millis wall);
    // thaw: a writable primary is reached; returns the ended freeze (also queued in pending()), nullopt when not
    // frozen.
    std::optional<FreezeRecord> thaw(Millis mono, Millis wall);

    bool frozen() const { return frozen_; }
    FreezeReason reason() const { return current_.reason; }
    Millis since_mono() const { return since_mono_; }
    Millis duration(Millis mono) const { return frozen_ ? mono - since_mono_ : 0; }
    long freezes() const { return freezes_; }
    // frozen_ms_total: all freezes so far, the current one included.
    Millis frozen_ms_total(Millis mono) const { return total_ms_ + duration(mono); }

    // Ended freezes not yet written to the ledger, oldest first (at most kMaxPending; older ones are dropped and
    // counted in dropped()).
    static constexpr std::size_t kMaxPending = 32;
    const std::deque<FreezeRecord>& pending() const { return pending_; }
    void recorded() { pending_.pop_front(); }
    long dropped() const { return dropped_; }

    // to_json: the "freeze" object of the status document (null members when thawed).
    nlohmann::json to_json(Millis mono) const;

private:
    bool frozen_ = false;
    FreezeRecord current_;
    Millis since_mono_ = 0;
    long freezes_ = 0;
    Millis total_ms_ = 0;
    std::deque<FreezeRecord> pending_;
    long dropped_ = 0;
};

}  // namespace pgdeploy::watch
