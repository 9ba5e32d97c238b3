// Prometheus text metrics and /status.json on a loopback address (cpp-httplib), served from a thread of its own.
// The main loop publishes snapshots; the server never touches the watcher's state directly.
#pragma once
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

    // publish: the new snapshot's texts move in; the arguments get the previous snapshot's strings back, so that a
    // caller that publishes megabytes every second reuses the same buffers.
    void publish(std::string& metrics_text, std::string& status_json);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    std::thread thread_;
    int port_ = 0;
    std::mutex mutex_;
    std::string metrics_;
    std::string status_;
};

// escape_label: a Prometheus label value (backslash, quote, newline escaped).
std::string escape_label(const std::string& v);
// append_label: escape_label(v) appended to out.
void append_label(std::string& out, const std::string& v);

}  // namespace pgdeploy::watch
