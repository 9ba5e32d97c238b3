// pgdeploy: the command-line front end of pg_deploy and the host of its watcher. All the work happens in
// cli/dispatch.cpp (and watch/ for `watch`/`once`); this file only hands over argv.
#include "cli/commands.hpp"

int main(int argc, char** argv) {
    return pgdeploy::cli::main_dispatch(argc, argv);
}
