#include "watch/daemon.hpp"

#include <libpq-fe.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string_view>
#include <system_error>
#include <unordered_map>

#include "common/connection.hpp"
#include "common/conninfo.hpp"
#include "common/files.hpp"
#include "common/logging.hpp"
#include "watch/checks.hpp"
#include "watch/decision.hpp"
#include "watch/executor.hpp"
#include "watch/freeze.hpp"
#include "watch/ledger.hpp"
#include "watch/metrics.hpp"

namespace pgdeploy::watch {

using nlohmann::json;

Millis monotonic_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

namespace {

// The state file is for the watcher's user and group (`pgdeploy watch --status` run by an operator in the group).
constexpr mode_t kStateFileMode = 0640;

// Signal handlers only set these flags; the main loop does the work (pgbouncer, pg_auto_failover do the same).
std::atomic<bool> g_stop{false};
std::atomic<bool> g_reload{false};
static_assert(std::atomic<bool>::is_always_lock_free, "signal flags must be lock-free");

extern "C" void on_stop_signal(int) {
    g_stop.store(true);
}
extern "C" void on_reload_signal(int) {
    g_reload.store(true);
}

void install_signal_handlers() {
    struct sigaction sa {};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: a sleeping poll() returns at once
    sa.sa_handler = on_stop_signal;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    sa.sa_handler = on_reload_signal;
    sigaction(SIGHUP, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);
}

std::string iso_now() {
    return common::iso_utc(std::chrono::system_clock::now());
}

Millis wall_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

void apply_log_level(const std::string& level) {
    spdlog::set_level(spdlog::level::from_str(level == "warning" ? "warn" : level));
}

// Transaction: BEGIN now, ROLLBACK unless commit() was called (a DbError on the way out of scope).
class Transaction {
public:
    explicit Transaction(common::Connection& conn) : conn_(conn) { conn_.exec("BEGIN"); }
    ~Transaction() {
        if (!done_) {
            try {
                conn_.exec("ROLLBACK");
            } catch (const std::exception&) {
                // The connection is gone: the server rolled back already.
            }
        }
    }
    void commit() {
        conn_.exec("COMMIT");
        done_ = true;
    }

private:
    common::Connection& conn_;
    bool done_ = false;
};

struct Verification {
    std::int64_t marker_id = 0;
    std::int64_t deployment_id = 0;
    Millis started = 0;
    Millis deadline = 0;
};

class Daemon {
public:
    Daemon(std::string config_path, WatchConfig cfg)
        : config_path_(std::move(config_path)),
          cfg_(std::make_shared<const WatchConfig>(std::move(cfg))),
          engine_(cfg_),
          next_due_(cfg_->checks.size(), 0),
          rng_(std::random_device{}()) {}

    int run();

private:
    void reload();
    void ensure_db(Millis now);
    void drop_db(const std::string& why, FreezeReason reason = FreezeReason::lost);
    bool drop_if_unavailable(const common::DbError& e);
    void enter_freeze(FreezeReason reason, const std::string& detail);
    void thaw();
    void record_freezes();
    void renew_leadership(bool at_connect);
    void release_leadership();
    void refresh_view(Millis now);
    void run_due_checks(Millis now);
    void act(const Decision& d, Millis now);
    void process_markers(Millis now);
    void handle_outcome(const ExecOutcome& o, Millis now);
    void verify_recovery(Millis now);
    void status_document(Millis now, std::string& out, const std::function<void(std::string&)>& flush);
    void write_state_file(Millis now);
    void serve_metrics(unsigned wanted, Millis now);
    void serve_metrics_if_wanted() {
        if (unsigned wanted = metrics_on_ ? metrics_.wanted() : 0)
            serve_metrics(wanted, monotonic_ms());
    }
    void feed_watchdog(Millis now);
    void sleep_until(Millis until);
    bool hook_tick();
    void record_event(const std::string& kind, std::int64_t dep, std::int64_t marker, const json& details);

    std::string config_path_;
    // One copy of the configuration, shared with the engine (whose trackers point into it): at thousands of checks
    // every copy costs megabytes.
    std::shared_ptr<const WatchConfig> cfg_;
    DecisionEngine engine_;
    std::vector<Millis> next_due_;         // by index in cfg_->checks
    std::vector<const CheckConfig*> due_;  // the cycle's checks (kept: no allocation per cycle)
    std::vector<std::size_t> due_index_;
    std::mt19937_64 rng_;
    std::optional<common::Connection> conn_;
    bool leader_ = false;
    Millis lead_until_ = 0;  // monotonic: the lease as this watcher knows it (renewal sent + leader.ttl)
    FreezeState freeze_;
    Millis reconnect_at_ = 0;
    Millis backoff_ = 0;
    Millis next_poll_ = 0;
    bool refresh_ = true;
    Millis watchdog_every_ = 0;
    Millis next_watchdog_ = 0;
    Millis started_ = 0;
    std::optional<Verification> verification_;
    json last_decision_ = nullptr;
    std::map<std::string, long> rollbacks_;    // by result
    std::map<DecisionKind, long> decisions_;   // by kind
    std::map<std::int64_t, Millis> retry_at_;  // marker -> earliest next attempt by this watcher
    int pending_migrations_ = -1;
    MetricsServer metrics_;
    bool metrics_on_ = false;
    std::string state_text_;        // write_state_file()'s buffer, reused
    std::string state_file_error_;  // the last failure to write it ("" when the last write worked)
    Millis next_publish_ = 0;
};

/*
 * Daemon::feed_watchdog
 *
 * WATCHDOG=1 at half of WATCHDOG_USEC, only from the main loop (and the hook's wait loop, which is part of it): a
 * loop that hangs stops feeding, and systemd restarts the watcher.
 */
void Daemon::feed_watchdog(Millis now) {
    if (watchdog_every_ > 0 && now >= next_watchdog_) {
        sd_notify(0, "WATCHDOG=1");
        next_watchdog_ = now + watchdog_every_;
    }
}

bool Daemon::hook_tick() {
    feed_watchdog(monotonic_ms());
    serve_metrics_if_wanted();  // the metrics stay live while a hook runs (the documents touch no database)
    return !g_stop.load();
}

void Daemon::record_event(const std::string& kind, std::int64_t dep, std::int64_t marker, const json& details) {
    if (!conn_)
        return;
    try {
        Ledger(*conn_).log_event(kind, dep, marker, details);
    } catch (const common::DbError& e) {
        if (!drop_if_unavailable(e))
            spdlog::error("cannot record event {}: {}", kind, e.what());
    } catch (const Failure& e) {
        drop_db(e.what());
    }
}

/*
 * Daemon::drop_db
 *
 * The connection is lost or unusable (or leads to a standby): leadership stops here at once, although the lease row
 * may outlive us until it expires (others take over then), and decisions freeze until a writable primary is back.
 */
void Daemon::drop_db(const std::string& why, FreezeReason reason) {
    if (conn_)
        spdlog::warn("database connection lost: {}{}", why, leader_ ? " (no longer acting as leader)" : "");
    enter_freeze(reason, why);
    conn_.reset();
    leader_ = false;
    Millis now = monotonic_ms();
    if (backoff_ == 0)
        backoff_ = cfg_->database.reconnect_min;
    else
        backoff_ = std::min(backoff_ * 2, cfg_->database.reconnect_max);
    // Full jitter in [backoff/2, backoff]: many watchers that lost the same database do not return in lockstep.
    std::uniform_int_distribution<Millis> jitter(backoff_ / 2, backoff_);
    reconnect_at_ = now + jitter(rng_);
}

/*
 * Daemon::drop_if_unavailable
 *
 * A server error that means the database is going away or read-only (through a pooler, a failover looks like this
 * while the pooler's connection stays up): treated as a lost connection. false: an error of the statement itself.
 */
bool Daemon::drop_if_unavailable(const common::DbError& e) {
    if (!database_unavailable(e.sqlstate()))
        return false;
    drop_db(e.what(), freeze_reason_for(e.sqlstate(), FreezeReason::lost));
    return true;
}

/*
 * Daemon::enter_freeze
 *
 * No writable primary: checks go on and are reported, but nothing is decided, requested, claimed or executed, and
 * the checks' failures are held out of the evidence (DecisionEngine::set_frozen), so that a failover never rolls
 * back a healthy release. Logged once per freeze.
 */
void Daemon::enter_freeze(FreezeReason reason, const std::string& detail) {
    if (freeze_.enter(reason, detail, leader_, monotonic_ms(), wall_ms()))
        spdlog::warn(
            "decisions frozen ({}): no writable primary; checks go on, nothing is rolled back until it is "
            "back: {}",
            to_string(reason), detail);
    engine_.set_frozen(true);
}

/*
 * Daemon::thaw
 *
 * A writable primary is back: decisions resume on fresh evidence, and the freeze is recorded in the ledger now that
 * it can be written.
 */
void Daemon::thaw() {
    if (auto ended = freeze_.thaw(monotonic_ms(), wall_ms()))
        spdlog::warn("decisions resume: a writable primary is back after {} ms ({})", ended->duration_ms,
                     to_string(ended->reason));
    engine_.set_frozen(false);
    record_freezes();
}

// record_freezes: the ended freezes not yet in the ledger, oldest first; what cannot be written now stays queued.
void Daemon::record_freezes() {
    while (conn_ && !freeze_.pending().empty()) {
        json details = freeze_.pending().front().to_json();
        details["watcher_id"] = cfg_->watcher_id;
        try {
            Ledger(*conn_).log_event("watcher_db_freeze", 0, 0, details);
        } catch (const common::DbError& e) {
            if (!drop_if_unavailable(e))
                spdlog::error("cannot record the freeze: {}", e.what());
            return;
        }
        freeze_.recorded();
    }
}

/*
 * Daemon::renew_leadership
 *
 * Leadership is a lease (deploy.try_watcher_leadership), not a session lock: through a transaction pooler a session
 * lock would stay behind on whatever server connection ran it. Taken or renewed once per poll; this watcher acts as
 * leader only while its own view of the lease (time of the request + leader.ttl) has not run out, so a watcher
 * that cannot renew stops leading locally before anyone else can take over.
 */
void Daemon::renew_leadership(bool at_connect) {
    if (!conn_ || !cfg_->leader_lock)
        return;
    Millis asked = monotonic_ms();
    bool lead = Ledger(*conn_).try_lead(cfg_->watcher_id, cfg_->leader_ttl);
    if (lead && !leader_) {
        if (at_connect)
            spdlog::info("this watcher (\"{}\") is the leader", cfg_->watcher_id);
        else
            spdlog::warn("this watcher (\"{}\") took over leadership", cfg_->watcher_id);
    } else if (!lead && leader_) {
        spdlog::warn("this watcher (\"{}\") lost leadership: another watcher holds the lease", cfg_->watcher_id);
    }
    leader_ = lead;
    if (lead)
        lead_until_ = asked + cfg_->leader_ttl;
}

// release_leadership: on a clean stop (or a reconnect on reload), so that another watcher leads at its next poll.
void Daemon::release_leadership() {
    if (!conn_ || !leader_)
        return;
    try {
        Ledger(*conn_).release_lead(cfg_->watcher_id);
        spdlog::info("leadership released");
    } catch (const Failure& e) {
        spdlog::warn("cannot release leadership (it expires after {}): {}", format_duration(cfg_->leader_ttl),
                     e.what());
    }
    leader_ = false;
}

/*
 * Daemon::ensure_db
 *
 * One connection carries the ledger queries (and LISTEN pg_deploy when database.listen is on). Nothing on it has
 * to outlive a transaction: leadership is a lease, markers are claimed with leases. A standby is no better than no
 * connection (the ledger cannot be written there; so is a primary with default_transaction_read_only): the watcher
 * stays frozen and tries again, so that a multi-host
 * DSN (target_session_attrs=read-write) finds the new primary. Retries use jittered exponential backoff.
 */
void Daemon::ensure_db(Millis now) {
    if (conn_ || now < reconnect_at_)
        return;
    try {
        common::ConnectOptions opts;
        opts.dsn = cfg_->database.dsn;
        opts.application_name = "pgdeploy-watch";
        opts.connect_timeout_s = 5;
        conn_.emplace(common::Connection::connect(opts));
        Ledger ledger(*conn_);
        if (common::ServerRole role = conn_->server_role(); !role.writable()) {
            drop_db("connected to " + conn_->describe() + ", a " + role.describe() + ": waiting for a primary",
                    FreezeReason::standby);
            return;
        }
        conn_->require_extension();
        if (cfg_->database.listen)
            ledger.listen();
        spdlog::info("connected to {} as watcher \"{}\"", conn_->describe(), cfg_->watcher_id);
        backoff_ = 0;
        refresh_ = true;
        thaw();
        try {
            renew_leadership(true);
        } catch (const common::DbError& e) {
            // Refused (not a lost primary): keep the connection and keep checking; the next poll asks again.
            if (!drop_if_unavailable(e))
                spdlog::error("cannot take the leadership lease: {}", e.what());
        }
    } catch (const common::DbError& e) {
        spdlog::warn("cannot use the database (retrying with backoff): {}", e.what());
        drop_db(e.what(), freeze_reason_for(e.sqlstate(), FreezeReason::unreachable));
    } catch (const Failure& e) {
        // Not a crash and not fatal: the checks go on (a postgres check reports the loss), and we retry.
        // Lost while setting up counts as lost; a refused connection or an unusable database (no pg_deploy, too old)
        // as unreachable.
        bool lost = conn_.has_value() && e.exit_code() == kExitConnect;
        conn_.reset();
        spdlog::warn("cannot connect to the database (retrying with backoff): {}", e.what());
        drop_db(e.what(), lost ? FreezeReason::lost : FreezeReason::unreachable);
    }
}

/*
 * Daemon::refresh_view
 *
 * Once per poll (and at once on a NOTIFY with database.listen): is the server still a primary, the leadership
 * lease, the ledger's view. Polling is the mechanism: a marker requested by `pgdeploy rollback --request` or by SQL
 * is seen here within one poll interval.
 */
void Daemon::refresh_view(Millis now) {
    if (!conn_)
        return;
    Ledger ledger(*conn_);
    if (common::ServerRole role = conn_->server_role(); !role.writable()) {
        drop_db("the server " + conn_->describe() + " is now a " + role.describe(), FreezeReason::standby);
        return;
    }
    record_freezes();
    if (!conn_)
        return;
    renew_leadership(false);
    DeploymentView v = ledger.read_view(now);
    const DeploymentView& old = engine_.deployment();
    if (v.id != old.id || v.state != old.state)
        spdlog::info("deployment {} ({}) is {}", v.id, v.app_version.empty() ? "-" : v.app_version,
                     v.id ? v.state : "absent");
    engine_.observe_deployment(v, now);
    pending_migrations_ = ledger.pending_migrations();
    next_poll_ = now + cfg_->database.poll_interval;
    refresh_ = false;
}

/*
 * Daemon::run_due_checks
 *
 * By index into the configuration's checks, with the results in the same order: at thousands of checks a second,
 * finding each check's due time and tracker by name (std::map walks, string compares) was most of the loop's own CPU.
 */
void Daemon::run_due_checks(Millis now) {
    due_.clear();
    due_index_.clear();
    const auto& checks = cfg_->checks;
    for (std::size_t i = 0; i < checks.size(); ++i)
        if (next_due_[i] <= now) {
            due_.push_back(&checks[i]);
            due_index_.push_back(i);
            next_due_[i] = now + checks[i].interval;
        }
    if (due_.empty())
        return;
    Millis cycle_start = monotonic_ms();
    std::vector<CheckResult> results = run_checks(due_, cfg_->database.dsn, cfg_->hook_environment);
    Millis at = monotonic_ms();
    // Times the running daemon's cycle (bench/ and anyone debugging a slow interval read it).
    spdlog::debug("cycle: {} checks in {} ms", due_.size(), at - cycle_start);
    for (std::size_t k = 0; k < results.size(); ++k) {
        const CheckResult& r = results[k];
        const CheckTracker& t = engine_.tracker(due_index_[k]);
        HealthState before = t.state();
        engine_.record(due_index_[k], r, at);
        spdlog::debug("check {}: {} in {:.1f} ms: {}", r.name, to_string(r.status), r.latency_ms, r.detail);
        if (t.state() != before) {
            auto level = t.state() == HealthState::failing   ? spdlog::level::err
                         : t.state() == HealthState::warning ? spdlog::level::warn
                                                             : spdlog::level::info;
            spdlog::log(level, "check {} is now {} (was {}): {}", r.name, to_string(t.state()), to_string(before),
                        r.detail);
            // Recorded against the release that is live: the current deployment, or after it was rolled back the
            // release it returned to. The rule "never into a release that was itself failing" reads these.
            const auto& view = engine_.deployment();
            std::int64_t live = view.state == "succeeded"                    ? view.id
                                : view.state == "rolled_back" && view.target ? view.target->deployment_id
                                                                             : 0;
            std::string live_app = view.state == "succeeded" ? view.app_version
                                   : view.target             ? view.target->app_version
                                                             : std::string();
            if (leader_ && t.state() == HealthState::failing && t.config().critical && live != 0)
                record_event("watcher_unhealthy", live, 0,
                             {{"check", r.name},
                              {"detail", r.detail},
                              {"watcher_id", cfg_->watcher_id},
                              {"app_version", live_app}});
        }
    }
}

/*
 * Daemon::act
 *
 * Only the leader acts and records; followers evaluate the same rules (so that their --status is meaningful and a
 * take-over continues seamlessly) and log what the leader is expected to do.
 */
void Daemon::act(const Decision& d, Millis now) {
    if (d.fresh) {
        last_decision_ = d.to_json();
        last_decision_["at"] = iso_now();
    }
    if (d.kind == DecisionKind::none) {
        if (d.fresh && d.reason != "healthy" && d.reason != "no_deployment")
            spdlog::debug("decision: {}", d.message);
        return;
    }
    if (!leader_) {
        if (d.fresh)
            spdlog::info("decision (not leader, the leader acts): {}", d.message);
        return;
    }
    json details = d.to_json();
    details["watcher_id"] = cfg_->watcher_id;
    json checks = json::object();
    for (const auto& name : d.triggering_checks)
        checks[name] = engine_.trackers().at(name).to_json(now);
    details["checks"] = checks;

    switch (d.kind) {
        case DecisionKind::suppressed:
            // "Already handled" repeats a decision that is recorded already: log it, do not record it again.
            if (d.fresh && d.reason == "already_handled") {
                spdlog::info("decision: {}", d.message);
            } else if (d.fresh) {
                spdlog::warn("decision: {}", d.message);
                ++decisions_[DecisionKind::suppressed];
                record_event("watcher_decision", d.deployment_id, 0, details);
                if (d.reason == "target_failing" || d.reason == "no_target" || d.reason == "cooldown")
                    send_alert(*cfg_, "not_rolled_back", d.message, d.deployment_id, 0, [this] { return hook_tick(); });
            }
            return;
        case DecisionKind::freeze:
            spdlog::critical("decision: {}", d.message);
            ++decisions_[DecisionKind::freeze];
            try {
                Ledger ledger(*conn_);
                Transaction tx(*conn_);
                ledger.log_event("watcher_decision", d.deployment_id, 0, details);
                ledger.log_event("watcher_frozen", d.deployment_id, 0, details);
                tx.commit();
            } catch (const common::DbError& e) {
                spdlog::error("cannot record the freeze of deployment {}: {}", d.deployment_id, e.what());
            }
            engine_.commit(d, now);
            send_alert(*cfg_, "frozen", d.message, d.deployment_id, 0, [this] { return hook_tick(); });
            return;
        case DecisionKind::would_rollback:
            spdlog::warn("decision: {}", d.message);
            ++decisions_[DecisionKind::would_rollback];
            record_event("watcher_decision", d.deployment_id, 0, details);
            engine_.commit(d, now);
            return;
        case DecisionKind::rollback:
            break;
        case DecisionKind::none:
            return;
    }

    // Re-read the ledger before acting: another watcher or a person may have acted a moment ago.
    try {
        refresh_view(now);
    } catch (const common::DbError& e) {
        if (!drop_if_unavailable(e))
            spdlog::error("cannot re-read the ledger before rolling back: {}", e.what());
        return;
    }
    if (!conn_ || !leader_)
        return;  // the primary went away, or leadership with it: frozen, or another watcher acts
    Decision again = engine_.evaluate(now);
    if (again.kind != DecisionKind::rollback || again.deployment_id != d.deployment_id) {
        spdlog::info("decision changed on re-reading the ledger: {}", again.message);
        return;
    }
    spdlog::critical("decision: {}", d.message);
    ++decisions_[DecisionKind::rollback];
    std::int64_t marker = 0;
    try {
        // The decision and the marker in one transaction: a crash between the two must not leave a decision that
        // says "handled" (never twice) without the marker that performs it.
        Ledger ledger(*conn_);
        Transaction tx(*conn_);
        ledger.log_event("watcher_decision", d.deployment_id, 0, details);
        marker = ledger.request_rollback("watcher " + cfg_->watcher_id + ": " + d.message, d.deployment_id, details);
        tx.commit();
    } catch (const common::DbError& e) {
        if (drop_if_unavailable(e))
            return;  // not refused: the primary went away; decided again on fresh evidence when it is back
        spdlog::error("cannot request the rollback of deployment {}: {}", d.deployment_id, e.what());
        engine_.commit(d, now);  // never loop on a refused request; the event log and logs say why
        return;
    }
    engine_.commit(d, now);
    spdlog::warn("rollback marker {} requested for deployment {}", marker, d.deployment_id);
    RollbackExecutor exec(*cfg_, *conn_, [this] { return hook_tick(); });
    handle_outcome(exec.claim_and_execute(marker), monotonic_ms());
}

void Daemon::handle_outcome(const ExecOutcome& o, Millis now) {
    if (o.result == ExecResult::not_claimed)
        return;
    ++rollbacks_[to_string(o.result)];
    if (o.result == ExecResult::done) {
        if (!verification_ || verification_->marker_id != o.marker_id) {
            verification_ = Verification{o.marker_id, o.deployment_id, now, now + cfg_->decision.health_recovery};
        }
        try {
            refresh_view(now);  // the deployment is rolled_back now: checks start fresh evidence
        } catch (const common::DbError& e) {
            if (!drop_if_unavailable(e))
                spdlog::error("cannot re-read the ledger: {}", e.what());
        }
    } else if (o.result == ExecResult::failed) {
        spdlog::warn("marker {}: attempt failed ({}); retrying after backoff", o.marker_id, o.error);
    } else if (o.result == ExecResult::needs_attention) {
        spdlog::critical("marker {}: needs attention: {}", o.marker_id, o.error);
        send_alert(*cfg_, "needs_attention",
                   "rollback marker " + std::to_string(o.marker_id) + " of deployment " +
                       std::to_string(o.deployment_id) + " needs attention: " + o.error,
                   o.deployment_id, o.marker_id, [this] { return hook_tick(); });
    }
}

/*
 * Daemon::process_markers
 *
 * The ledger's backoff (list_claimable) covers markers in state failed; the in-memory one here also covers a marker
 * that is still ours because an attempt broke off with an error (a ledger query failed mid-way, the primary went
 * away), so that a persistent error is retried with backoff rather than in a tight loop. A marker this watcher still
 * holds (the "own" rows of deploy.claimable_markers, as deploy.held_markers lists them: claimed before a failover or
 * a restart) is resumed by it whether it leads or not: no one else may claim it before its lease expires. Others'
 * markers only by the leader. Never while frozen (there is no primary to claim them on).
 */
void Daemon::process_markers(Millis now) {
    if (!conn_ || freeze_.frozen())
        return;
    auto ready = list_claimable(*conn_, cfg_->watcher_id, cfg_->rollback, true);
    for (const auto& m : ready) {
        if (g_stop.load() || !conn_)
            return;
        if (!m.own && !leader_)
            continue;
        auto it = retry_at_.find(m.id);
        if (it != retry_at_.end() && now < it->second)
            continue;
        spdlog::warn("marker {} ({}{}) is waiting: executing it", m.id, to_string(m.state),
                     m.own ? ", ours from before" : "");
        retry_at_[m.id] = now + retry_delay(cfg_->rollback, std::max(1, m.attempts));
        RollbackExecutor exec(*cfg_, *conn_, [this] { return hook_tick(); });
        ExecOutcome o = exec.claim_and_execute(m.id);
        if (o.result == ExecResult::done || o.result == ExecResult::needs_attention)
            retry_at_.erase(m.id);
        handle_outcome(o, monotonic_ms());
    }
}

void Daemon::verify_recovery(Millis now) {
    if (!verification_)
        return;
    bool fresh_enough = true;
    for (const auto& [name, t] : engine_.trackers())
        if (t.config().critical && t.last_at() < verification_->started)
            fresh_enough = false;
    if (fresh_enough && engine_.all_critical_healthy()) {
        Millis took = now - verification_->started;
        spdlog::warn("health recovered {} ms after rolling back deployment {}", took, verification_->deployment_id);
        ++rollbacks_["recovered"];
        record_event("watcher_rollback_done", verification_->deployment_id, verification_->marker_id,
                     {{"recovered", true}, {"recovery_ms", took}, {"watcher_id", cfg_->watcher_id}});
        verification_.reset();
    } else if (now > verification_->deadline) {
        spdlog::critical("health did not recover within {} after rolling back deployment {}",
                         format_duration(cfg_->decision.health_recovery), verification_->deployment_id);
        ++rollbacks_["unrecovered"];
        send_alert(*cfg_, "unrecovered",
                   "health did not recover within " + format_duration(cfg_->decision.health_recovery) +
                       " after rolling back deployment " + std::to_string(verification_->deployment_id),
                   verification_->deployment_id, verification_->marker_id, [this] { return hook_tick(); });
        record_event("watcher_rollback_unrecovered", verification_->deployment_id, verification_->marker_id,
                     {{"recovered", false},
                      {"health_recovery", format_duration(cfg_->decision.health_recovery)},
                      {"watcher_id", cfg_->watcher_id}});
        verification_.reset();
    }
}

/*
 * Daemon::status_document
 *
 * The state file's document, also served at /status.json. At thousands of checks it is megabytes, so the checks
 * array is written one check at a time (DecisionEngine::checks_json) and spliced into the rest of the document,
 * never one big JSON tree; with flush, it is handed over in pieces of about 64 KB rather than held whole.
 */
void Daemon::status_document(Millis now, std::string& out, const std::function<void(std::string&)>& flush) {
    json status = {{"schema_version", 1},
                   {"watcher_id", cfg_->watcher_id},
                   {"pid", static_cast<long>(getpid())},
                   {"config_file", config_path_},
                   {"leader", leader_},
                   {"leader_ttl_ms", cfg_->leader_ttl},
                   {"connected", conn_.has_value()},
                   {"frozen", freeze_.frozen()},
                   {"freeze", freeze_.to_json(now)},
                   {"dry_run", cfg_->decision.dry_run},
                   {"updated_at", iso_now()},
                   {"updated_at_epoch_ms", wall_ms()},
                   {"stale_after_ms",
                    std::max<Millis>(3 * std::max(shortest_interval(*cfg_), cfg_->database.poll_interval), 10000)},
                   {"uptime_ms", now - started_},
                   {"last_decision", last_decision_},
                   {"rollbacks", rollbacks_},
                   {"pending_migrations", pending_migrations_ < 0 ? json(nullptr) : json(pending_migrations_)}};
    json engine = engine_.summary_json(now);
    status["checks"] = json::array();  // a placeholder: the first key (sorted), replaced by the checks' text below
    status["deployment"] = std::move(engine["deployment"]);
    status["cooldown_remaining_ms"] = engine["cooldown_remaining_ms"];
    status["verification"] = verification_ ? json{{"marker_id", verification_->marker_id},
                                                  {"deployment_id", verification_->deployment_id},
                                                  {"remaining_ms", verification_->deadline - now}}
                                           : json(nullptr);
    std::string rest = status.dump(2, ' ', false, json::error_handler_t::replace);
    static const std::string kHead = "{\n  \"checks\": []";
    if (rest.compare(0, kHead.size(), kHead) != 0)
        throw std::logic_error("status document: \"checks\" is not its first key");
    out.append(kHead, 0, kHead.size() - 2);
    engine_.checks_json(now, out, flush);
    out.append(rest, kHead.size(), std::string::npos);
    out += "\n";
}

/*
 * Daemon::write_state_file
 *
 * For `watch --status`: written as often as the shortest interval (documented), in pieces (status_document with a
 * flush), through common::AtomicFile: a new file with an unpredictable name, mode kStateFileMode whatever the umask,
 * never following a symlink, renamed over the old one. A failure is logged when it starts and when it ends, not
 * four times a second.
 */
void Daemon::write_state_file(Millis now) {
    if (cfg_->state_file.empty())
        return;
    try {
        common::AtomicFile out(cfg_->state_file, kStateFileMode);
        state_text_.clear();
        status_document(now, state_text_, [&out](std::string& part) {
            out.write(part);
            part.clear();
        });
        out.write(state_text_);
        out.commit();
        if (!state_file_error_.empty())
            spdlog::info("state file {} written again", cfg_->state_file);
        state_file_error_.clear();
    } catch (const std::system_error& e) {
        if (e.what() != state_file_error_)
            spdlog::warn("cannot write the state file: {}", e.what());
        state_file_error_ = e.what();
    }
}

/*
 * Daemon::serve_metrics
 *
 * On demand: a request to the metrics server waits for this (MetricsServer::wanted), so that the metrics text and
 * the status document (megabytes at thousands of checks) are built when someone reads them, not every second, and
 * only the one that is asked for.
 */
void Daemon::serve_metrics(unsigned wanted, Millis now) {
    if (wanted & MetricsServer::kStatus) {
        std::string text;
        status_document(now, text, {});
        metrics_.publish(MetricsServer::kStatus, std::move(text));
    }
    if (!(wanted & MetricsServer::kMetrics))
        return;
    metrics_.publish(MetricsServer::kMetrics, prometheus_text({engine_, now, rollbacks_, decisions_, leader_,
                                                               conn_.has_value(), pending_migrations_, freeze_.frozen(),
                                                               freeze_.freezes(), freeze_.frozen_ms_total(now)}));
}

/*
 * Daemon::reload
 *
 * RELOADING=1, parse and validate the new file, swap only if it is entirely valid, READY=1. A bad file on reload is
 * a warning, never a stop: the old configuration keeps watching.
 */
void Daemon::reload() {
    g_reload.store(false);
    sd_notify(0, "RELOADING=1");
    try {
        WatchConfig next = load_config(config_path_);
        ReloadPlan plan = reload_plan(*cfg_, next);
        for (const std::string& key : plan.restart_keys)
            spdlog::warn("{} changed: takes effect at the next restart", key);
        if (next.state_file != cfg_->state_file && !cfg_->state_file.empty())
            std::remove(cfg_->state_file.c_str());
        std::unordered_map<std::string_view, Millis> old_due;
        for (std::size_t i = 0; i < cfg_->checks.size(); ++i)
            old_due.emplace(cfg_->checks[i].name, next_due_[i]);
        std::vector<Millis> due(next.checks.size(), 0);
        for (std::size_t i = 0; i < next.checks.size(); ++i)
            if (auto it = old_due.find(next.checks[i].name); it != old_due.end())
                due[i] = it->second;
        next_due_ = std::move(due);
        if (plan.reconnect)
            release_leadership();  // under the old watcher_id, before the new configuration takes its place
        cfg_ = std::make_shared<const WatchConfig>(std::move(next));
        engine_.reconfigure(cfg_);
        apply_log_level(cfg_->logging.level);
        if (plan.reconnect && conn_) {
            spdlog::info("database settings changed: reconnecting");
            conn_.reset();
            leader_ = false;
            reconnect_at_ = 0;
        }
        spdlog::info("configuration reloaded from {} ({} checks)", config_path_, cfg_->checks.size());
    } catch (const ConfigError& e) {
        spdlog::warn("reload refused, keeping the old configuration: {}", e.what());
    }
    sd_notify(0, "READY=1");
}

void Daemon::sleep_until(Millis until) {
    Millis now = monotonic_ms();
    if (watchdog_every_ > 0)
        until = std::min(until, next_watchdog_);
    until = std::min(until, now + 250);
    for (;;) {
        Millis wait = until - now;
        if (wait <= 0)
            return;
        struct pollfd fds[2] = {{-1, POLLIN, 0}, {-1, POLLIN, 0}};
        if (conn_ && PQsocket(conn_->raw()) >= 0)
            fds[0].fd = PQsocket(conn_->raw());
        if (metrics_on_)
            fds[1].fd = metrics_.wake_fd();             // a metrics request waits for a snapshot
        int pr = poll(fds, 2, static_cast<int>(wait));  // negative fds are ignored
        if (pr <= 0)
            return;  // timed out, or a signal: the loop looks at the flags
        if (fds[1].revents)
            serve_metrics_if_wanted();
        if (fds[0].revents) {
            refresh_ = true;  // something arrived on the connection: a NOTIFY most likely
            return;
        }
        now = monotonic_ms();
    }
}

int Daemon::run() {
    install_signal_handlers();
    // A fixed threshold (glibc raises the default one as large blocks are freed): blocks this large, such as the
    // status document and the metrics text of thousands of checks, are mapped apart and go back to the system when
    // freed instead of staying in the heap after a scrape.
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    init_checks();
    started_ = monotonic_ms();
    if (!cfg_->metrics.listen.empty()) {
        std::string err;
        if (!metrics_.start(cfg_->metrics.host, cfg_->metrics.port, err)) {
            spdlog::critical("metrics: {}", err);
            return kExitUsage;
        }
        metrics_on_ = true;
        spdlog::info("metrics on http://{}:{}/metrics", cfg_->metrics.host, metrics_.bound_port());
    }
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        watchdog_every_ = static_cast<Millis>(usec / 2000);
        if (watchdog_every_ < 1)
            watchdog_every_ = 1;
        spdlog::info("systemd watchdog: WATCHDOG=1 every {} ms", watchdog_every_);
    }
    spdlog::info("pgdeploy watch {} starting: watcher \"{}\", {} checks, config {}", PGDEPLOY_VERSION, cfg_->watcher_id,
                 cfg_->checks.size(), config_path_);
    ensure_db(monotonic_ms());
    sd_notify(0, "READY=1\nSTATUS=watching");

    while (!g_stop.load()) {
        try {
            Millis now = monotonic_ms();
            feed_watchdog(now);
            if (g_reload.load())
                reload();
            ensure_db(now);
            if (leader_ && now >= lead_until_) {
                // Not renewed within leader.ttl (a slow cycle, a hook that ran long): another watcher may lead by
                // now. Stop acting as leader until the next renewal says otherwise.
                spdlog::warn("leadership lease not renewed within {}: no longer acting as leader",
                             format_duration(cfg_->leader_ttl));
                leader_ = false;
                refresh_ = true;
            }
            try {
                // Consuming input also notices a connection that the server closed; with database.listen it
                // collects NOTIFYs too.
                if (conn_ && Ledger(*conn_).drain_notifications() > 0)
                    refresh_ = true;
                if (conn_ && (refresh_ || now >= next_poll_)) {
                    refresh_view(now);
                    process_markers(now);  // pending markers: requested elsewhere, retries after backoff, a take-over
                }
            } catch (const common::DbError& e) {
                if (!drop_if_unavailable(e))
                    spdlog::error("ledger query failed: {}", e.what());
                next_poll_ = now + cfg_->database.poll_interval;
                refresh_ = false;
            } catch (const Failure& e) {
                drop_db(e.what());
            }
            if (g_stop.load())
                break;

            run_due_checks(monotonic_ms());
            now = monotonic_ms();
            feed_watchdog(now);
            try {
                Decision d = engine_.evaluate(now);
                act(d, now);
                verify_recovery(monotonic_ms());
            } catch (const common::DbError& e) {
                if (!drop_if_unavailable(e))
                    spdlog::error("ledger write failed: {}", e.what());
            } catch (const Failure& e) {
                drop_db(e.what());
            }
            now = monotonic_ms();
            serve_metrics_if_wanted();
            if (now >= next_publish_) {
                write_state_file(now);
                // As often as checks run, from 4 times a second to once a second: fresh status, little CPU on
                // watchers with thousands of checks.
                next_publish_ = now + std::clamp<Millis>(shortest_interval(*cfg_), 250, 1000);
            }

            Millis next = now + 250;
            for (Millis due : next_due_)
                next = std::min(next, due);
            if (conn_)
                next = std::min(next, next_poll_);
            else
                next = std::min(next, reconnect_at_);
            sleep_until(next);
        } catch (const std::exception& e) {
            // A bug or an unexpected reply must not end the watcher: log it, pause, go on. (A hung loop is the
            // watchdog's job.)
            spdlog::error("watch loop: unexpected error: {}", e.what());
            struct pollfd none {
                - 1, 0, 0
            };
            poll(&none, 0, 250);
        }
    }

    sd_notify(0, "STOPPING=1");
    spdlog::info("stopping (signal received)");
    metrics_.stop();
    release_leadership();  // at once: another watcher leads at its next poll, not after leader.ttl
    conn_.reset();
    if (!cfg_->state_file.empty())
        std::remove(cfg_->state_file.c_str());
    return kExitOk;
}

}  // namespace

int run_daemon(const std::string& config_path, WatchConfig cfg) {
    g_stop.store(false);
    g_reload.store(false);
    Daemon d(config_path, std::move(cfg));
    return d.run();
}

}  // namespace pgdeploy::watch
