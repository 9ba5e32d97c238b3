// Entry points of the watcher sub-commands, called by main.cpp's dispatch.
#pragma once
#include <string>
#include <vector>

namespace pgdeploy::watch {

// `pgdeploy watch [--config FILE] [--check-config] [--status] [--json] ...`; args exclude "pgdeploy watch".
int run_watch(const std::vector<std::string>& args);

// `pgdeploy once [--config FILE] [--json]`: one cycle for a systemd timer; args exclude "pgdeploy once".
int run_once(const std::vector<std::string>& args);

}  // namespace pgdeploy::watch
