// `pgdeploy watch`: the long-running watcher (main loop, leadership, LISTEN, systemd notifications, reload).
#pragma once
#include <string>

#include "watch/config.hpp"

namespace pgdeploy::watch {

// run_daemon runs until SIGTERM/SIGINT; returns the process exit code (0 on a clean stop, 2 when the metrics
// address cannot be bound at start-up). Takes the configuration over (no copy kept by the caller).
int run_daemon(const std::string& config_path, WatchConfig cfg);

// Wall-clock and monotonic milliseconds; the engine runs on the monotonic clock.
Millis monotonic_ms();

}  // namespace pgdeploy::watch
