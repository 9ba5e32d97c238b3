#include "watch/metrics.hpp"

#include <httplib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <utility>

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

namespace {

// The Prometheus text under construction: one family at a time, HELP and TYPE first.
class PromText {
public:
    void family(const char* name, const char* type, const char* help) {
        out_ += "# HELP ";
        out_ += name;
        out_ += ' ';
        out_ += help;
        out_ += "\n# TYPE ";
        out_ += name;
        out_ += ' ';
        out_ += type;
        out_ += '\n';
    }
    // sample: name{label="value",...} v. Labels are pairs; values are escaped.
    void sample(const char* name, std::initializer_list<std::pair<const char*, std::string>> labels, long v) {
        open(name, labels);
        out_ += std::to_string(v);
        out_ += '\n';
    }
    void sample(const char* name, std::initializer_list<std::pair<const char*, std::string>> labels, double v) {
        open(name, labels);
        char buf[32];
        std::snprintf(buf, sizeof buf, "%g", v);  // what an ostream writes for a double by default
        out_ += buf;
        out_ += '\n';
    }
    std::string take() { return std::move(out_); }

private:
    void open(const char* name, std::initializer_list<std::pair<const char*, std::string>> labels) {
        out_ += name;
        if (labels.size() > 0) {
            const char* sep = "{";
            for (const auto& [label, value] : labels) {
                out_ += sep;
                out_ += label;
                out_ += "=\"";
                append_label(out_, value);
                out_ += '"';
                sep = ",";
            }
            out_ += '}';
        }
        out_ += ' ';
    }

    std::string out_;
};

void check_families(PromText& p, const MetricsSnapshot& s) {
    const auto& trackers = s.engine.trackers();
    p.family("pgdeploy_watch_check_state", "gauge", "Check state: 0 ok, 1 warning, 2 failing.");
    for (const auto& [name, t] : trackers)
        p.sample("pgdeploy_watch_check_state",
                 {{"check", name},
                  {"type", to_string(t.config().type)},
                  {"critical", t.config().critical ? "true" : "false"}},
                 static_cast<long>(t.state()));
    p.family("pgdeploy_watch_check_up", "gauge", "Last result of the check: 1 ok, 0 not ok.");
    for (const auto& [name, t] : trackers)
        if (t.last())
            p.sample("pgdeploy_watch_check_up", {{"check", name}}, t.last()->status == CheckStatus::ok ? 1L : 0L);
    p.family("pgdeploy_watch_check_latency_seconds", "gauge", "Duration of the check's last run.");
    for (const auto& [name, t] : trackers)
        if (t.last())
            p.sample("pgdeploy_watch_check_latency_seconds", {{"check", name}}, t.last()->latency_ms / 1000.0);
    p.family("pgdeploy_watch_check_error_rate", "gauge", "Critical results / all results in the error-rate window.");
    for (const auto& [name, t] : trackers)
        p.sample("pgdeploy_watch_check_error_rate", {{"check", name}}, t.error_rate(s.now));
}

void watcher_families(PromText& p, const MetricsSnapshot& s) {
    p.family("pgdeploy_watch_rollbacks_total", "counter", "Rollbacks performed by this watcher, by result.");
    for (const char* r : {"done", "failed", "needs_attention", "interrupted", "recovered", "unrecovered"}) {
        auto it = s.rollbacks.find(r);
        p.sample("pgdeploy_watch_rollbacks_total", {{"result", r}}, it == s.rollbacks.end() ? 0L : it->second);
    }
    p.family("pgdeploy_watch_decisions_total", "counter", "Decisions other than none, by kind.");
    for (DecisionKind k :
         {DecisionKind::rollback, DecisionKind::would_rollback, DecisionKind::freeze, DecisionKind::suppressed}) {
        auto it = s.decisions.find(k);
        p.sample("pgdeploy_watch_decisions_total", {{"kind", to_string(k)}}, it == s.decisions.end() ? 0L : it->second);
    }
    p.family("pgdeploy_watch_leader", "gauge", "1 while this watcher holds the leadership lease.");
    p.sample("pgdeploy_watch_leader", {}, s.leader ? 1L : 0L);
    p.family("pgdeploy_watch_frozen", "gauge", "1 while decisions are frozen: no writable primary.");
    p.sample("pgdeploy_watch_frozen", {}, s.frozen ? 1L : 0L);
    p.family("pgdeploy_watch_freezes_total", "counter", "Freezes (no writable primary) since the watcher started.");
    p.sample("pgdeploy_watch_freezes_total", {}, s.freezes);
    p.family("pgdeploy_watch_frozen_seconds_total", "counter", "Seconds spent frozen since the watcher started.");
    p.sample("pgdeploy_watch_frozen_seconds_total", {}, static_cast<double>(s.frozen_ms_total) / 1000.0);
    p.family("pgdeploy_watch_database_up", "gauge", "1 when the watcher's database connection is up.");
    p.sample("pgdeploy_watch_database_up", {}, s.database_up ? 1L : 0L);
    if (s.pending_migrations >= 0) {
        p.family("pgdeploy_watch_pending_migrations", "gauge", "Registered migrations not applied.");
        p.sample("pgdeploy_watch_pending_migrations", {}, static_cast<long>(s.pending_migrations));
    }
    const auto& v = s.engine.deployment();
    if (v.id != 0) {
        p.family("pgdeploy_watch_deployment_id", "gauge", "The newest up deployment.");
        p.sample("pgdeploy_watch_deployment_id", {{"state", v.state}}, static_cast<long>(v.id));
    }
}

}  // namespace

std::string prometheus_text(const MetricsSnapshot& s) {
    PromText p;
    check_families(p, s);
    watcher_families(p, s);
    return p.take();
}

}  // namespace pgdeploy::watch
