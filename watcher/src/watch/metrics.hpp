// Prometheus text metrics and /status.json on a loopback address (cpp-httplib), served from a thread of its own.
// The server never touches the watcher's state directly: a request asks the main loop for a fresh snapshot (wake_fd
// becomes readable, wanted() says so) and waits for it to be published, a second at most; then it serves the newest
// snapshot there is. So the documents (megabytes at thousands of checks) are built when someone reads them, not every
// second.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

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

    // wake_fd: readable while a request waits for a snapshot (for the main loop's poll); -1 when not started.
    int wake_fd() const { return wake_fd_; }
    // wanted: a request waits for a snapshot; the caller should build one and publish() it.
    bool wanted();

    // publish: the new snapshot's texts move in (the arguments get the previous snapshot's strings back), and the
    // requests waiting for it are answered.
    void publish(std::string& metrics_text, std::string& status_json);

private:
    std::string serve(bool metrics);

    struct Impl;
    std::unique_ptr<Impl> impl_;
    std::thread thread_;
    int port_ = 0;
    int wake_fd_ = -1;
    std::mutex mutex_;
    std::condition_variable published_;
    std::uint64_t generation_ = 0;  // snapshots published so far
    bool wanted_ = false;
    bool stopping_ = false;
    std::string metrics_;
    std::string status_;
};

// escape_label: a Prometheus label value (backslash, quote, newline escaped).
std::string escape_label(const std::string& v);
// append_label: escape_label(v) appended to out.
void append_label(std::string& out, const std::string& v);

}  // namespace pgdeploy::watch
