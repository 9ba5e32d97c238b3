#include "watch/metrics.hpp"

#include <httplib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace pgdeploy::watch {

struct MetricsServer::Impl {
    httplib::Server server;
};

MetricsServer::MetricsServer() : impl_(std::make_unique<Impl>()) {}

MetricsServer::~MetricsServer() {
    stop();
    if (wake_fd_ >= 0)
        close(wake_fd_);
}

/*
 * MetricsServer::serve
 *
 * Runs on the server's threads: asks the main loop for a snapshot and waits for it. A main loop that is busy (a
 * rollback hook running) or hung does not answer within the second; the newest snapshot there is is served then, as
 * before this was on demand.
 */
std::string MetricsServer::serve(bool metrics) {
    std::unique_lock<std::mutex> lock(mutex_);
    std::uint64_t seen = generation_;
    if (!wanted_ && !stopping_) {
        wanted_ = true;
        std::uint64_t one = 1;
        if (write(wake_fd_, &one, sizeof one) < 0) {
            // The counter cannot overflow at one write per wait; nothing to do if it did.
        }
    }
    published_.wait_for(lock, std::chrono::seconds(1), [&] { return generation_ != seen || stopping_; });
    if (metrics)
        return metrics_;
    return status_.empty() ? "{}" : status_;
}

bool MetricsServer::wanted() {
    std::lock_guard<std::mutex> g(mutex_);
    if (!wanted_)
        return false;
    std::uint64_t count = 0;
    if (read(wake_fd_, &count, sizeof count) < 0) {
        // EAGAIN: read already.
    }
    return true;
}

bool MetricsServer::start(const std::string& host, int port, std::string& error) {
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) {
        error = std::string("cannot create an eventfd: ") + std::strerror(errno);
        return false;
    }
    impl_->server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(serve(true), "text/plain; version=0.0.4; charset=utf-8");
    });
    impl_->server.Get("/status.json", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(serve(false), "application/json");
    });
    impl_->server.set_read_timeout(5, 0);
    impl_->server.set_write_timeout(5, 0);
    if (port == 0) {
        port_ = impl_->server.bind_to_any_port(host.c_str());
        if (port_ <= 0) {
            error = "cannot listen on " + host + ": bind failed";
            return false;
        }
    } else {
        if (!impl_->server.bind_to_port(host.c_str(), port)) {
            error = "cannot listen on " + host + ":" + std::to_string(port) + " (in use or not permitted)";
            return false;
        }
        port_ = port;
    }
    thread_ = std::thread([this] { impl_->server.listen_after_bind(); });
    return true;
}

void MetricsServer::stop() {
    {
        std::lock_guard<std::mutex> g(mutex_);
        stopping_ = true;
    }
    published_.notify_all();
    if (thread_.joinable()) {
        impl_->server.stop();
        thread_.join();
    }
}

void MetricsServer::publish(std::string& metrics_text, std::string& status_json) {
    {
        std::lock_guard<std::mutex> g(mutex_);
        metrics_.swap(metrics_text);
        status_.swap(status_json);
        ++generation_;
        wanted_ = false;
    }
    published_.notify_all();
}

std::string escape_label(const std::string& v) {
    std::string out;
    append_label(out, v);
    return out;
}

void append_label(std::string& out, const std::string& v) {
    for (char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '"')
            out += "\\\"";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
}

}  // namespace pgdeploy::watch
