#include "watch/metrics.hpp"

#include <httplib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
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
 * rollback hook running) or hung does not answer within the second; the newest snapshot there is is served then.
 */
std::shared_ptr<const std::string> MetricsServer::serve(Document d) {
    std::unique_lock<std::mutex> lock(mutex_);
    int i = d == kMetrics ? 0 : 1;
    std::uint64_t seen = generation_[i];
    if (!stopping_) {
        if (wanted_ == 0) {
            std::uint64_t one = 1;
            if (write(wake_fd_, &one, sizeof one) < 0) {
                // The counter cannot overflow at one write per wait; nothing to do if it did.
            }
        }
        wanted_ |= d;
    }
    published_.wait_for(lock, std::chrono::seconds(1), [&] { return generation_[i] != seen || stopping_; });
    return snapshot_[i];
}

unsigned MetricsServer::wanted() {
    std::lock_guard<std::mutex> g(mutex_);
    if (wanted_ == 0)
        return 0;
    std::uint64_t count = 0;
    if (read(wake_fd_, &count, sizeof count) < 0) {
        // EAGAIN: read already.
    }
    return wanted_;
}

namespace {

// respond: the snapshot itself is the body (no copy of megabytes per request); the response holds it until sent.
void respond(httplib::Response& res, std::shared_ptr<const std::string> doc, const char* type) {
    std::size_t size = doc->size();
    res.set_content_provider(size, type,
                             [doc = std::move(doc)](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
                                 sink.write(doc->data() + offset, std::min(length, doc->size() - offset));
                                 return true;
                             });
}

}  // namespace

bool MetricsServer::start(const std::string& host, int port, std::string& error) {
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) {
        error = std::string("cannot create an eventfd: ") + std::strerror(errno);
        return false;
    }
    impl_->server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        static const auto empty = std::make_shared<const std::string>();
        auto doc = serve(kMetrics);
        respond(res, doc ? doc : empty, "text/plain; version=0.0.4; charset=utf-8");
    });
    impl_->server.Get("/status.json", [this](const httplib::Request&, httplib::Response& res) {
        static const auto none = std::make_shared<const std::string>("{}");
        auto doc = serve(kStatus);
        respond(res, doc && !doc->empty() ? doc : none, "application/json");
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

void MetricsServer::publish(Document d, std::string text) {
    auto doc = std::make_shared<const std::string>(std::move(text));
    {
        std::lock_guard<std::mutex> g(mutex_);
        int i = d == kMetrics ? 0 : 1;
        snapshot_[i].swap(doc);
        ++generation_[i];
        wanted_ &= ~static_cast<unsigned>(d);
    }
    published_.notify_all();
    // doc, the previous snapshot, is freed here unless a response still sends it
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
