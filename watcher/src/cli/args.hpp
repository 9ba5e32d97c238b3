// A small, strict command-line parser over getopt_long: exact long names only (no abbreviations, so adding an
// option never changes what an old script meant), each option at most once, values required where declared,
// a fixed range of positional arguments. Every problem is a UsageError (exit 2) with a one-line message.
#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/exit_codes.hpp"
#include "common/lock_safety.hpp"

namespace pgdeploy::cli {

// ArgumentError: a usage error in the command line itself (as opposed to bad files or config); run_command prints
// the sub-command's usage after it.
class ArgumentError : public UsageError {
public:
    using UsageError::UsageError;
};

struct OptionSpec {
    std::string long_name;  // without the leading "--"
    char short_name = 0;    // 0 = none
    bool takes_value = false;
    std::string value_name;  // for the usage text, e.g. "DIR"
    std::string help;
};

struct CommandSpec {
    std::string name;                 // "up", "markers", ...
    std::string synopsis;             // after "pgdeploy NAME", e.g. "[--dir DIR] [--target V]"
    std::string summary;              // one line
    std::vector<OptionSpec> options;  // command options; the global ones are added by parse_args
    size_t min_positionals = 0;
    size_t max_positionals = 0;
    std::string positional_names;  // for messages, e.g. "DIR"
};

struct ParsedArgs {
    std::map<std::string, std::string> values;  // long name → value ("" for flags)
    std::vector<std::string> positionals;

    bool has(const std::string& name) const { return values.count(name) != 0; }
    std::optional<std::string> get(const std::string& name) const {
        auto it = values.find(name);
        if (it == values.end())
            return std::nullopt;
        return it->second;
    }
};

// global_options: --dsn, --json, --log-format, --wait-primary, -v/--verbose, -q/--quiet, -h/--help (accepted by every
// command).
const std::vector<OptionSpec>& global_options();

// parse_args: args exclude "pgdeploy COMMAND". Throws UsageError.
ParsedArgs parse_args(const CommandSpec& spec, const std::vector<std::string>& args);

// usage_text: "usage: pgdeploy NAME SYNOPSIS\n  summary\n\noptions:\n ..." for --help and after usage errors.
std::string usage_text(const CommandSpec& spec);

// usage_line: the first line of usage_text and a pointer to --help, printed after usage errors.
std::string usage_line(const CommandSpec& spec);

// reject_together: UsageError "--a and --b cannot be used together" when both are present.
void reject_together(const ParsedArgs& args, const std::string& a, const std::string& b);

// parse_positive_int: "--steps" style values: digits only, 1..max; UsageError naming the option otherwise.
long parse_positive_int(const std::string& option, const std::string& value, long max = 1000000);

// check_version_arg: a --target/--to/--through value must be a valid version (loader/version.hpp); ArgumentError
// otherwise, so a typo is a usage error (2) before anything is sent.
void check_version_arg(const std::string& option, const std::optional<std::string>& value);

// check_length_arg: an option's value must have at most max_chars characters (common/limits.hpp: the extension's own
// limits); ArgumentError (exit 2) naming the option and the limit otherwise, before anything is sent.
void check_length_arg(const ParsedArgs& args, const std::string& option, std::size_t max_chars);

// parse_duration_ms: "10s", "500ms", "2min", "1h", or bare seconds "10"; UsageError otherwise.
long long parse_duration_ms(const std::string& option, const std::string& value);

// with_lock_retry_options: options plus --lock-timeout, --lock-attempts and --lock-retry-time (up, down, rollback).
std::vector<OptionSpec> with_lock_retry_options(std::vector<OptionSpec> options);

// lock_flags: --lock-wait, --lock-timeout, --lock-attempts and --lock-retry-time as the session settings they ask
// for (common::apply_lock_safety); ArgumentError (exit 2) naming the option for a bad value, before anything is
// sent. Options a command does not have are simply absent.
common::LockSafety lock_flags(const ParsedArgs& args);

}  // namespace pgdeploy::cli
