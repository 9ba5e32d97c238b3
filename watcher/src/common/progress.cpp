// Live progress of long operations (see progress.hpp).
#include "common/progress.hpp"

#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "common/lock_safety.hpp"

namespace pgdeploy::common {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// A call shorter than this shows nothing; a plain (non-terminal) line comes at most this often.
constexpr auto kQuietFor = std::chrono::seconds(2);
constexpr auto kPlainEvery = std::chrono::seconds(10);

/*
 * kSampleQuery
 *		One round trip per sample, for the watched backend ($1): its progress rows, the lock it waits for, and
 *the session that holds it (of several, the one whose transaction is oldest: the others usually queue behind it). The
 *monitor's session pins its search_path, so a relation is named with its schema.
 */
constexpr const char* kSampleQuery = R"SQL(
SELECT pg_catalog.json_build_object(
  'create_index', (SELECT pg_catalog.row_to_json(p) FROM pg_catalog.pg_stat_progress_create_index p
                    WHERE p.pid OPERATOR(pg_catalog.=) $1::pg_catalog.int4),
  'cluster', (SELECT pg_catalog.row_to_json(c) FROM pg_catalog.pg_stat_progress_cluster c
               WHERE c.pid OPERATOR(pg_catalog.=) $1::pg_catalog.int4),
  'lock', (SELECT pg_catalog.json_build_object('type', l.locktype, 'mode', l.mode, 'object',
                    CASE WHEN l.relation IS NOT NULL THEN l.relation::pg_catalog.regclass::pg_catalog.text
                         WHEN l.transactionid IS NOT NULL THEN l.transactionid::pg_catalog.text
                         WHEN l.virtualxid IS NOT NULL THEN l.virtualxid
                         ELSE l.objid::pg_catalog.text END)
             FROM pg_catalog.pg_locks l
            WHERE l.pid OPERATOR(pg_catalog.=) $1::pg_catalog.int4 AND NOT l.granted LIMIT 1),
  'blocker', (SELECT pg_catalog.json_build_object('pid', a.pid, 'application_name', a.application_name,
                       'user', a.usename, 'state', a.state, 'xact_age_ms',
                       (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) a.xact_start)
                          OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8)
                FROM pg_catalog.pg_stat_activity a
               WHERE a.pid OPERATOR(pg_catalog.=) ANY (pg_catalog.pg_blocking_pids($1::pg_catalog.int4))
               ORDER BY a.xact_start NULLS LAST LIMIT 1))
)SQL";

std::string elapsed_text(Clock::duration d) {
    double s = std::chrono::duration<double>(d).count();
    char buf[32];
    std::snprintf(buf, sizeof buf, s < 10 ? "%.1f s" : "%.0f s", s);
    return buf;
}

double number(const json& row, const char* key) {
    return row.contains(key) && row[key].is_number() ? row[key].get<double>() : 0;
}

std::string text(const json& row, const char* key) {
    return row.contains(key) && row[key].is_string() ? row[key].get<std::string>() : "";
}

// phase_text: "CREATE INDEX CONCURRENTLY: building index: scanning table 45%".
std::string phase_text(const json& row) {
    std::string out = text(row, "command");
    std::string phase = text(row, "phase");
    if (!phase.empty())
        out += (out.empty() ? "" : ": ") + phase;
    if (auto pct = progress_percent(row)) {
        char buf[16];
        std::snprintf(buf, sizeof buf, " %.0f%%", *pct);
        out += buf;
    }
    return out;
}

// fit_terminal: a status line longer than the terminal would wrap, and "\r" returns only to the start of its last
// row: cut it to the width (in code points; 0 = unknown width, no cut).
std::string fit_terminal(const std::string& text) {
    struct winsize ws {};
    if (ioctl(2, TIOCGWINSZ, &ws) != 0 || ws.ws_col < 2)
        return text;
    std::size_t max = ws.ws_col - 1, chars = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80 && chars++ == max)
            return text.substr(0, i);
    }
    return text;
}

}  // namespace

ProgressOutput::ProgressOutput(Mode mode) : mode_(mode), interactive_(mode == Mode::kStderr && isatty(2) == 1) {}

void ProgressOutput::clear_locked() {
    if (status_shown_)
        std::cerr << "\r\033[K" << std::flush;
    status_shown_ = false;
}

void ProgressOutput::line(const std::string& text) {
    std::lock_guard<std::mutex> lk(mu_);
    if (mode_ == Mode::kSilent)
        return;
    if (mode_ == Mode::kLog) {
        spdlog::info("{}", text);
        return;
    }
    clear_locked();
    std::cerr << text << std::endl;
}

void ProgressOutput::status(const std::string& text) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!interactive_)
        return;
    std::cerr << "\r" << fit_terminal(text) << "\033[K" << std::flush;
    status_shown_ = true;
}

void ProgressOutput::clear_status() {
    std::lock_guard<std::mutex> lk(mu_);
    clear_locked();
}

std::optional<double> progress_percent(const json& row) {
    static const std::pair<const char*, const char*> kPairs[] = {{"blocks_done", "blocks_total"},
                                                                 {"tuples_done", "tuples_total"},
                                                                 {"lockers_done", "lockers_total"},
                                                                 {"partitions_done", "partitions_total"},
                                                                 {"heap_blks_scanned", "heap_blks_total"}};
    if (!row.is_object())
        return std::nullopt;
    for (const auto& [done, total] : kPairs) {
        double t = number(row, total);
        if (t > 0)
            return std::min(100.0, 100.0 * number(row, done) / t);
    }
    return std::nullopt;
}

std::string describe_progress(const json& sample) {
    if (!sample.is_object())
        return "";
    std::string out;
    for (const char* key : {"create_index", "cluster"})
        if (sample.contains(key) && sample[key].is_object())
            out = phase_text(sample[key]);
    if (sample.contains("lock") && sample["lock"].is_object())
        out += (out.empty() ? "" : "; ") + std::string("waiting for ") + describe_lock(sample["lock"]) + " held by " +
               describe_blocker(sample.value("blocker", json()));
    return out;
}

ProgressMonitor::ProgressMonitor(const Connection& main, std::shared_ptr<ProgressOutput> output)
    : settings_(main.sibling_settings("pgdeploy-monitor", 5)), output_(std::move(output)), pid_(main.backend_pid()) {}

ProgressMonitor::~ProgressMonitor() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable())
        thread_.join();
}

ProgressMonitor::Scope ProgressMonitor::watch(const std::string& label, std::chrono::milliseconds poll) {
    {
        std::lock_guard<std::mutex> lk(mu_);
        ++generation_;
        active_ = true;
        label_ = label;
        poll_ = poll;
        since_ = Clock::now();
        last_line_ = {};
        last_wait_ = nullptr;
        if (!thread_.joinable() && !broken_) {
            try {
                thread_ = std::thread([this] { run(); });
            } catch (const std::system_error& e) {
                spdlog::debug("progress monitor: cannot start its thread: {}", e.what());
                broken_ = true;
            }
        }
    }
    cv_.notify_all();
    return Scope(this);
}

void ProgressMonitor::end() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        ++generation_;
        active_ = false;
    }
    cv_.notify_all();
    if (output_)
        output_->clear_status();
}

json ProgressMonitor::last_wait() const {
    std::lock_guard<std::mutex> lk(mu_);
    return last_wait_;
}

/*
 * ProgressMonitor::run
 *		The thread: sleeps until a scope is active, then samples every poll interval until the scope ends. A
 *		sample is taken without holding the lock (the command's thread must never wait for the server on our
 *		account) and reported only if its scope is still the current one.
 */
void ProgressMonitor::run() {
    std::unique_lock<std::mutex> lk(mu_);
    while (!stop_) {
        if (!active_ || broken_) {
            cv_.wait(lk);
            continue;
        }
        std::uint64_t generation = generation_;
        cv_.wait_for(lk, poll_, [&] { return stop_ || generation_ != generation; });
        if (stop_ || generation_ != generation)
            continue;
        lk.unlock();
        json s;
        bool ok = true;
        try {
            s = sample();
        } catch (const std::exception& e) {
            spdlog::debug("progress monitor: {}; no more progress reports", e.what());
            ok = false;
        }
        lk.lock();
        if (!ok) {
            broken_ = true;
            conn_.reset();
        } else if (generation_ == generation && active_) {
            report(s, Clock::now());
        }
    }
}

json ProgressMonitor::sample() {
    if (!conn_) {
        conn_.emplace(Connection::connect_with(settings_));
        // Per sample, transaction-locally: a session SET would stay behind on a pooler's server connection.
        conn_->set_transaction_settings({{"search_path", "pg_catalog, pg_temp"}, {"statement_timeout", "5s"}});
    }
    return conn_->query_json(kSampleQuery, {std::to_string(pid_)});
}

// report: called with mu_ held.
void ProgressMonitor::report(const json& sample, Clock::time_point now) {
    if (sample.is_object() && sample.contains("lock") && sample["lock"].is_object())
        last_wait_ = {{"lock", sample["lock"]}, {"blocker", sample.value("blocker", json())}};
    if (!output_ || output_->silent() || now - since_ < kQuietFor)
        return;
    std::string desc = describe_progress(sample);
    std::string line = label_ + ": running for " + elapsed_text(now - since_) + (desc.empty() ? "" : "; " + desc);
    if (output_->interactive()) {
        output_->status(line);
    } else if (last_line_ == Clock::time_point{} || now - last_line_ >= kPlainEvery) {
        output_->line(line);
        last_line_ = now;
    }
}

}  // namespace pgdeploy::common
