// Scaffolding until the watcher lands: both sub-commands report that they are not built yet (usage error, exit 2).
#include "watch/entry.hpp"

#include <iostream>

namespace pgdeploy::watch {

int run_watch(const std::vector<std::string>&) {
    std::cerr << "pgdeploy watch: not available in this build\n";
    return 2;
}

int run_once(const std::vector<std::string>&) {
    std::cerr << "pgdeploy once: not available in this build\n";
    return 2;
}

}  // namespace pgdeploy::watch
