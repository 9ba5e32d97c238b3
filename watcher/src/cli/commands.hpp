// The CLI sub-commands. Each takes its arguments without "pgdeploy COMMAND" and returns the process exit code
// (docs/architecture.md, "pgdeploy exit codes"); none throws.
#pragma once
#include <string>
#include <vector>

#include "cli/args.hpp"
#include "loader/loader.hpp"

namespace pgdeploy::common {
class Connection;
}

namespace pgdeploy::cli {

struct Context;

int main_dispatch(int argc, char** argv);

int cmd_load(const std::vector<std::string>& args);
int cmd_up(const std::vector<std::string>& args);
int cmd_down(const std::vector<std::string>& args);
int cmd_rollback(const std::vector<std::string>& args);
int cmd_baseline(const std::vector<std::string>& args);
int cmd_status(const std::vector<std::string>& args);
int cmd_validate(const std::vector<std::string>& args);
int cmd_verify(const std::vector<std::string>& args);
int cmd_markers(const std::vector<std::string>& args);

// The specs, for --help and the reference docs.
const CommandSpec& load_spec();
const CommandSpec& up_spec();

// load_options: --follow-symlinks of `load` and `up --dir`.
loader::LoadOptions load_options(const Context& ctx);

}  // namespace pgdeploy::cli
