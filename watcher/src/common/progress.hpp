// Live progress of long operations (issue 13): where progress lines go (ProgressOutput), and a monitor that watches
// the backend of a running call or statement from a second connection (ProgressMonitor).
//
// While a watched call runs longer than about 2 s, the monitor prints its elapsed time and, where PostgreSQL reports
// it (pg_stat_progress_create_index, pg_stat_progress_cluster), the phase and percentage of the statement, or the
// session it waits for (pg_blocking_pids). On a terminal one status line is rewritten about once a second; otherwise
// a plain line is printed about every 10 s. The monitor never breaks the command: when its connection fails, it
// logs at debug level and watches nothing more.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>

#include "common/connection.hpp"

namespace pgdeploy::common {

/*
 * ProgressOutput
 *		Progress lines on stderr (kStderr), as info log lines (kLog: --log-format json, the watcher), or nowhere
 *		(kSilent: --quiet). Safe to use from the monitor's thread and the command's at once: a line that stays
 *		first clears the status line a terminal may be showing.
 */
class ProgressOutput {
public:
    enum class Mode { kSilent, kStderr, kLog };
    explicit ProgressOutput(Mode mode);

    // line: one line that stays.
    void line(const std::string& text);
    // status: rewrites the transient status line; only on a terminal (interactive()), ignored otherwise.
    void status(const std::string& text);
    // clear_status: removes the status line, if one is shown.
    void clear_status();

    bool interactive() const { return interactive_; }
    bool silent() const { return mode_ == Mode::kSilent; }

private:
    void clear_locked();

    std::mutex mu_;
    Mode mode_;
    bool interactive_;
    bool status_shown_ = false;
};

// describe_progress: "CREATE INDEX CONCURRENTLY: building index: scanning table 45%" or "waiting for ShareLock on
// virtualxid 5/12 held by pid 1234 (...)" from one sample of the monitor (ProgressMonitor::sample's JSON:
// {"create_index", "cluster", "lock", "blocker"}, each null or an object); "" when the sample has nothing to say.
std::string describe_progress(const nlohmann::json& sample);

// progress_percent: the share done of the phase a progress row reports (create_index: blocks, tuples, lockers or
// partitions; cluster: heap blocks), or nullopt when it reports no total.
std::optional<double> progress_percent(const nlohmann::json& row);

/*
 * ProgressMonitor
 *		One per command, for one main connection. watch() returns a scope: while it lives, a background thread
 *		samples the main connection's backend every poll interval (connecting lazily, on the first sample) and
 *		reports as described above. last_wait() keeps the latest lock wait seen in the current or last scope, so
 *		that a statement that ran into lock_timeout can name what it waited for and who held it.
 */
class ProgressMonitor {
public:
    ProgressMonitor(const Connection& main, std::shared_ptr<ProgressOutput> output);
    ~ProgressMonitor();
    ProgressMonitor(const ProgressMonitor&) = delete;
    ProgressMonitor& operator=(const ProgressMonitor&) = delete;

    class Scope {
    public:
        explicit Scope(ProgressMonitor* m) : m_(m) {}
        Scope(Scope&& o) noexcept : m_(o.m_) { o.m_ = nullptr; }
        Scope(const Scope&) = delete;
        Scope& operator=(const Scope&) = delete;
        Scope& operator=(Scope&&) = delete;
        ~Scope() {
            if (m_)
                m_->end();
        }

    private:
        ProgressMonitor* m_;
    };

    // watch: label names the call in the lines ("deploy.up()", "0002_idx step 1"); poll is the sampling interval
    // (shorter for a statement under a lock timeout, so that its blocker is seen before the timeout fires).
    Scope watch(const std::string& label, std::chrono::milliseconds poll = std::chrono::milliseconds(1000));

    // last_wait: {"lock": {...}, "blocker": {...} | null} of the latest sample that found the backend waiting for a
    // lock in the current or last scope; null when none did.
    nlohmann::json last_wait() const;

private:
    void end();
    void run();
    nlohmann::json sample();
    void report(const nlohmann::json& sample, std::chrono::steady_clock::time_point now);

    ConnectSettings settings_;  // of the second connection (a copy: the main one is busy on another thread)
    std::shared_ptr<ProgressOutput> output_;
    int pid_;

    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    bool active_ = false;
    bool broken_ = false;
    std::uint64_t generation_ = 0;
    std::string label_;
    std::chrono::milliseconds poll_{1000};
    std::chrono::steady_clock::time_point since_;
    std::chrono::steady_clock::time_point last_line_;
    nlohmann::json last_wait_;

    std::optional<Connection> conn_;  // the monitor's own connection (used on its thread only)
    std::thread thread_;
};

}  // namespace pgdeploy::common
