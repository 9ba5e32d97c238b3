// Prometheus text metrics and /status.json on a loopback address (cpp-httplib), served from a thread of its own.
// The server never touches the watcher's state directly: a request asks the main loop for a fresh snapshot (wake_fd
// becomes readable, wanted() says so) and waits for it to be published, a second at most; then it serves the newest
// snapshot there is. So the documents (megabytes at thousands of checks) are built when someone reads them, not every
// second.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "watch/decision.hpp"

namespace pgdeploy::watch {

class MetricsServer {
public:
    MetricsServer();
    ~MetricsServer();
    MetricsServer(const MetricsServer&) = delete;
    MetricsServer& operator=(const MetricsServer&) = delete;

    // start: binds host:port (port 0 picks one; bound_port() tells which). Returns false with error set.
    bool start(const std::string& host, int port, std::string& error);
    void stop();
    int bound_port() const { return port_; }

    // The two documents served.
    enum Document : unsigned { kMetrics = 1, kStatus = 2 };

    // wake_fd: readable while a request waits for a snapshot (for the main loop's poll); -1 when not started.
    int wake_fd() const { return wake_fd_; }
    // wanted: the documents (a bit set of Document) that requests wait for; the caller should build them and
    // publish() each.
    unsigned wanted();

    // publish: the new snapshot of one document; the requests waiting for it are answered.
    void publish(Document d, std::string text);

private:
    std::shared_ptr<const std::string> serve(Document d);

    struct Impl;
    std::unique_ptr<Impl> impl_;
    std::thread thread_;
    int port_ = 0;
    int wake_fd_ = -1;
    std::mutex mutex_;
    std::condition_variable published_;
    unsigned wanted_ = 0;
    bool stopping_ = false;
    // By document (index d - 1): snapshots published so far, and the newest (null before the first). Shared with
    // the responses that are still being sent, so that a document of megabytes is never copied for a request.
    std::uint64_t generation_[2] = {0, 0};
    std::shared_ptr<const std::string> snapshot_[2];
};

// What the Prometheus text says about one watcher at one moment (the daemon's state, borrowed).
struct MetricsSnapshot {
    const DecisionEngine& engine;                  // the checks' trackers and the deployment in view
    Millis now = 0;                                // monotonic, for the error-rate windows
    const std::map<std::string, long>& rollbacks;  // by result (ExecResult's words, recovered, unrecovered)
    const std::map<DecisionKind, long>& decisions;
    bool leader = false;
    bool database_up = false;
    int pending_migrations = -1;  // -1: not known yet (no gauge)
    bool frozen = false;          // no writable primary: decisions frozen (watch/freeze.hpp)
    long freezes = 0;             // freezes since start
    Millis frozen_ms_total = 0;   // time frozen since start, the current freeze included
};

// prometheus_text: the /metrics document (docs/pgdeploy.md, "Metrics").
std::string prometheus_text(const MetricsSnapshot& s);

// escape_label: a Prometheus label value (backslash, quote, newline escaped).
std::string escape_label(const std::string& v);
// append_label: escape_label(v) appended to out.
void append_label(std::string& out, const std::string& v);

}  // namespace pgdeploy::watch
