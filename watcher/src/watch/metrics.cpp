#include "watch/metrics.hpp"

#include <httplib.h>

namespace pgdeploy::watch {

struct MetricsServer::Impl {
    httplib::Server server;
};

MetricsServer::MetricsServer() : impl_(std::make_unique<Impl>()) {}

MetricsServer::~MetricsServer() {
    stop();
}

bool MetricsServer::start(const std::string& host, int port, std::string& error) {
    impl_->server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        std::lock_guard<std::mutex> g(mutex_);
        res.set_content(metrics_, "text/plain; version=0.0.4; charset=utf-8");
    });
    impl_->server.Get("/status.json", [this](const httplib::Request&, httplib::Response& res) {
        std::lock_guard<std::mutex> g(mutex_);
        res.set_content(status_.empty() ? "{}" : status_, "application/json");
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
    if (thread_.joinable()) {
        impl_->server.stop();
        thread_.join();
    }
}

void MetricsServer::publish(std::string& metrics_text, std::string& status_json) {
    std::lock_guard<std::mutex> g(mutex_);
    metrics_.swap(metrics_text);
    status_.swap(status_json);
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
