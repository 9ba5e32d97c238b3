// http_stub: the local HTTP endpoints the watcher benchmarks check (cpp-httplib, 127.0.0.1 only).
//
//   http_stub --port-file FILE [--lifetime SECONDS] [--events FILE]
//
// Routes:
//   GET /h/<anything>   200 "ok": the load endpoints (1,000 or 5,000 checks point here)
//   GET /app            200 "ok" while healthy, 503 once /control/fail was called: the release that turns bad
//   GET /control/fail   switch /app to failing;  GET /control/ok  back to healthy
//   GET /stats          {"requests":N,"app_requests":N}
// With --events, every /app response is appended as "<unix ms> <status>" so the benchmark knows, from the server's
// side, when the third failing check (the threshold) was answered.
//
// The server binds an ephemeral port, writes it to --port-file, and stops by itself after --lifetime seconds
// (default 600) or when its standard input reaches EOF (the benchmark that started it went away).
#include <httplib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>

namespace {

long long unix_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

}  // namespace

int main(int argc, char** argv) {
    std::string port_file;
    std::string events_file;
    int lifetime = 600;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--port-file" && i + 1 < argc)
            port_file = argv[++i];
        else if (a == "--events" && i + 1 < argc)
            events_file = argv[++i];
        else if (a == "--lifetime" && i + 1 < argc)
            lifetime = std::atoi(argv[++i]);
        else {
            std::fprintf(stderr, "usage: http_stub --port-file FILE [--lifetime SECONDS] [--events FILE]\n");
            return 2;
        }
    }
    if (port_file.empty()) {
        std::fprintf(stderr, "http_stub: --port-file is required\n");
        return 2;
    }

    httplib::Server server;
    std::atomic<long long> requests{0};
    std::atomic<long long> app_requests{0};
    std::atomic<bool> failing{false};
    std::mutex events_mutex;
    std::ofstream events;
    if (!events_file.empty())
        events.open(events_file, std::ios::app);

    // Debian's cpp-httplib is a compiled library that listens with a backlog of 5: a thousand checks that connect at
    // once would see SYNs dropped and retried after a second, which would time the stub, not the watcher. Linux lets
    // listen() be called again on a listening socket to raise the backlog; remember the socket to do that.
    int listen_fd = -1;
    server.set_socket_options([&listen_fd](int sock) {
        int yes = 1;
        setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
        listen_fd = sock;
    });
    server.set_keep_alive_max_count(100);
    // Like production servers (nginx: tcp_nodelay on): cpp-httplib writes a response's headers and body separately,
    // and without TCP_NODELAY a kept-alive client waits 40 ms (Nagle against its delayed ACK) for every body.
    server.set_tcp_nodelay(true);

    server.Get(R"(/h/.*)", [&](const httplib::Request&, httplib::Response& res) {
        ++requests;
        res.set_content("ok", "text/plain");
    });
    server.Get("/app", [&](const httplib::Request&, httplib::Response& res) {
        ++requests;
        ++app_requests;
        int status = failing.load() ? 503 : 200;
        res.status = status;
        res.set_content(status == 200 ? "ok" : "unhealthy", "text/plain");
        if (events.is_open()) {
            std::lock_guard<std::mutex> lock(events_mutex);
            events << unix_ms() << " " << status << "\n";
            events.flush();
        }
    });
    server.Get("/control/fail", [&](const httplib::Request&, httplib::Response& res) {
        failing.store(true);
        res.set_content(std::to_string(unix_ms()), "text/plain");
    });
    server.Get("/control/ok", [&](const httplib::Request&, httplib::Response& res) {
        failing.store(false);
        res.set_content(std::to_string(unix_ms()), "text/plain");
    });
    server.Get("/stats", [&](const httplib::Request&, httplib::Response& res) {
        res.set_content("{\"requests\":" + std::to_string(requests.load()) +
                            ",\"app_requests\":" + std::to_string(app_requests.load()) + "}",
                        "application/json");
    });

    int port = server.bind_to_any_port("127.0.0.1");
    if (port <= 0) {
        std::fprintf(stderr, "http_stub: cannot bind 127.0.0.1\n");
        return 1;
    }
    if (listen_fd >= 0)
        ::listen(listen_fd, 4096);
    {
        std::ofstream pf(port_file + ".tmp");
        pf << port << "\n";
    }
    std::rename((port_file + ".tmp").c_str(), port_file.c_str());

    // Bounded: stop after the lifetime, or as soon as stdin closes (the parent died or is done).
    std::atomic<bool> parent_gone{false};
    std::thread([&parent_gone] {
        char buf[256];
        while (read(0, buf, sizeof buf) > 0) {
        }
        parent_gone.store(true);
    }).detach();
    std::thread stopper([&server, &parent_gone, lifetime] {
        auto until = std::chrono::steady_clock::now() + std::chrono::seconds(lifetime);
        while (std::chrono::steady_clock::now() < until && !parent_gone.load())
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        server.stop();
    });
    server.listen_after_bind();
    stopper.join();
    return 0;
}
