// Running a configured program: argv + execvp, never a shell, with a timeout that kills its whole process group.
// Used by `command` checks and by the app rollback hook.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "watch/duration.hpp"

namespace pgdeploy::watch {

struct ProcessResult {
    bool started = false;  // false: fork/exec failed (error says why)
    bool timed_out = false;
    int exit_code = -1;  // valid when exited normally
    int signal = 0;      // the signal that ended it, if any
    std::string output;  // stdout+stderr, truncated to max_output bytes, scrubbed (common::scrub)
    bool truncated = false;
    std::string error;
    double duration_ms = 0;
};

// run_process runs argv with exactly the environment `env` (nothing is inherited: watch/hook_env.hpp builds it),
// stdin from /dev/null.
// `tick` (may be empty) is called about every 100 ms while waiting: the daemon keeps its watchdog fed and can
// ask to stop (return false: the process is killed and the result says timed_out=false, error="interrupted").
ProcessResult run_process(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                          Millis timeout, std::size_t max_output, const std::function<bool()>& tick = {});

// sanitize_utf8: the text with every byte that is not part of a valid UTF-8 sequence replaced by '?'. Output of
// programs and truncated strings end up in JSON (events, status, --json), which must be valid UTF-8.
std::string sanitize_utf8(const std::string& s);

// describe renders a result for logs and events: "exit 0", "exit 2: <first line>", "killed after 5s (timeout)".
// Without with_output, the program's output is left out ("exit 2"): for text that readers of the ledger see.
std::string describe(const ProcessResult& r, bool with_output = true);

}  // namespace pgdeploy::watch
