// Strict argument parsing over getopt_long (see args.hpp).
#include "cli/args.hpp"

#include <getopt.h>

#include <cctype>
#include <climits>

#include "common/exit_codes.hpp"
#include "common/limits.hpp"
#include "loader/version.hpp"

namespace pgdeploy::cli {

const std::vector<OptionSpec>& global_options() {
    static const std::vector<OptionSpec> opts = {
        {"dsn", 0, true, "DSN", "connection string or URI (default: libpq's PG* variables, service file, .pgpass)"},
        {"json", 0, false, "", "print one JSON document on stdout (schema_version 1)"},
        {"log-format", 0, true, "FMT", "log format on stderr: plain (default) or json"},
        {"wait-primary", 0, true, "DURATION",
         "during a failover, wait this long for a writable primary (read-only commands: for any server); "
         "default 60s or PGDEPLOY_WAIT_PRIMARY, 0 = do not wait"},
        {"verbose", 'v', false, "", "debug logging"},
        {"quiet", 'q', false, "", "warnings and errors only on stderr (no progress lines)"},
        {"help", 'h', false, "", "show this help"},
    };
    return opts;
}

namespace {

std::string display_name(const OptionSpec& o) {
    return o.short_name ? std::string("-") + o.short_name + "/--" + o.long_name : "--" + o.long_name;
}

}  // namespace

/*
 * parse_args
 *		getopt_long in POSIX mode ("+"), resumed after each positional so options and positionals may mix.
 *		getopt_long itself accepts unambiguous abbreviations (--tar for --target); we compare the text the user
 *		typed with the full name and refuse anything else, so scripts keep meaning what they meant.
 */
ParsedArgs parse_args(const CommandSpec& spec, const std::vector<std::string>& args) {
    std::vector<OptionSpec> all = spec.options;
    for (const auto& g : global_options())
        all.push_back(g);

    std::vector<struct option> longopts;
    std::string shortopts = "+:";
    for (size_t i = 0; i < all.size(); ++i) {
        longopts.push_back({all[i].long_name.c_str(), all[i].takes_value ? required_argument : no_argument, nullptr,
                            static_cast<int>(1000 + i)});
        if (all[i].short_name) {
            shortopts += all[i].short_name;
            if (all[i].takes_value)
                shortopts += ':';
        }
    }
    longopts.push_back({nullptr, 0, nullptr, 0});

    std::vector<std::string> storage;
    storage.push_back("pgdeploy " + spec.name);
    for (const auto& a : args)
        storage.push_back(a);
    std::vector<char*> argv;
    for (auto& s : storage)
        argv.push_back(s.data());
    argv.push_back(nullptr);
    int argc = static_cast<int>(storage.size());

    ParsedArgs out;
    auto record = [&](const OptionSpec& o, const char* value) {
        if (out.has(o.long_name))
            throw ArgumentError(display_name(o) + " given more than once");
        out.values[o.long_name] = value ? value : "";
    };

    opterr = 0;
    optind = 0;  // glibc: 0 re-initialises getopt's internal state
    bool first = true;
    bool only_positionals = false;
    while (true) {
        if (only_positionals) {
            while (optind < argc)
                out.positionals.emplace_back(argv[optind++]);
            break;
        }
        int before = first ? 1 : optind;
        first = false;
        int longindex = -1;
        int c = getopt_long(argc, argv.data(), shortopts.c_str(), longopts.data(), &longindex);
        if (c == -1) {
            if (optind < argc) {
                // "--" ends the options; anything else is a positional, and parsing resumes after it.
                if (before < argc && std::string(argv[optind - 1]) == "--" && optind - 1 >= before) {
                    only_positionals = true;
                    continue;
                }
                out.positionals.emplace_back(argv[optind]);
                ++optind;
                continue;
            }
            break;
        }
        if (c == '?') {
            std::string text = optind - 1 < argc && optind >= 1 ? argv[optind - 1] : "";
            if (optopt >= 1000) {
                const OptionSpec& o = all[optopt - 1000];
                throw ArgumentError("option --" + o.long_name + " does not take a value");
            }
            if (optopt != 0)
                throw ArgumentError(std::string("unknown option -") + static_cast<char>(optopt));
            throw ArgumentError("unknown option " + text.substr(0, text.find('=')));
        }
        if (c == ':') {
            if (optopt >= 1000)
                throw ArgumentError("option --" + all[optopt - 1000].long_name + " needs a value");
            for (const auto& o : all)
                if (o.short_name == optopt)
                    throw ArgumentError("option " + display_name(o) + " needs a value");
            throw ArgumentError(std::string("option -") + static_cast<char>(optopt) + " needs a value");
        }
        if (c >= 1000) {
            const OptionSpec& o = all[c - 1000];
            std::string typed = argv[before];
            std::string typed_name =
                typed.substr(2, typed.find('=') == std::string::npos ? std::string::npos : typed.find('=') - 2);
            if (typed.compare(0, 2, "--") != 0 || typed_name != o.long_name)
                throw ArgumentError("unknown option --" + typed_name + " (did you mean --" + o.long_name + "?)");
            record(o, optarg);
            continue;
        }
        bool found = false;
        for (const auto& o : all)
            if (o.short_name && o.short_name == c) {
                record(o, optarg);
                found = true;
                break;
            }
        if (!found)
            throw ArgumentError(std::string("unknown option -") + static_cast<char>(c));
    }
    optind = 0;

    if (out.has("help"))
        return out;
    if (out.positionals.size() < spec.min_positionals)
        throw ArgumentError("missing argument " + spec.positional_names);
    if (out.positionals.size() > spec.max_positionals)
        throw ArgumentError("unexpected argument \"" + out.positionals[spec.max_positionals] + "\"");
    for (const auto& [name, value] : out.values) {
        for (const auto& o : all)
            if (o.long_name == name && o.takes_value && value.empty())
                throw ArgumentError("option --" + name + " needs a non-empty value");
    }
    return out;
}

std::string usage_text(const CommandSpec& spec) {
    std::string out = "usage: pgdeploy " + spec.name + (spec.synopsis.empty() ? "" : " " + spec.synopsis) +
                      " [--dsn DSN] [--json]\n  " + spec.summary + "\n\noptions:\n";
    std::vector<OptionSpec> all = spec.options;
    for (const auto& g : global_options())
        all.push_back(g);
    size_t width = 0;
    std::vector<std::string> left;
    for (const auto& o : all) {
        std::string l = o.short_name ? std::string("-") + o.short_name + ", --" + o.long_name : "    --" + o.long_name;
        if (o.takes_value)
            l += " " + o.value_name;
        width = std::max(width, l.size());
        left.push_back(l);
    }
    for (size_t i = 0; i < all.size(); ++i)
        out += "  " + left[i] + std::string(width - left[i].size() + 2, ' ') + all[i].help + "\n";
    return out;
}

std::string usage_line(const CommandSpec& spec) {
    return "usage: pgdeploy " + spec.name + (spec.synopsis.empty() ? "" : " " + spec.synopsis) +
           " [--dsn DSN] [--json]\n(pgdeploy " + spec.name + " --help lists every option)\n";
}

void reject_together(const ParsedArgs& args, const std::string& a, const std::string& b) {
    if (args.has(a) && args.has(b))
        throw ArgumentError("--" + a + " and --" + b + " cannot be used together");
}

long parse_positive_int(const std::string& option, const std::string& value, long max) {
    if (value.empty() || value.size() > 9)
        throw ArgumentError("--" + option + " needs a positive integer, not \"" + value + "\"");
    for (char c : value)
        if (!std::isdigit(static_cast<unsigned char>(c)))
            throw ArgumentError("--" + option + " needs a positive integer, not \"" + value + "\"");
    long n = std::stol(value);
    if (n < 1 || n > max)
        throw ArgumentError("--" + option + " must be between 1 and " + std::to_string(max) + ", not " + value);
    return n;
}

void check_version_arg(const std::string& option, const std::optional<std::string>& value) {
    if (value && !loader::is_valid_version(*value))
        throw ArgumentError(option + " \"" + *value +
                            "\" is not a valid version (1-64 characters from A-Z a-z 0-9 . _ -, starting with a "
                            "letter or digit)");
}

void check_length_arg(const ParsedArgs& args, const std::string& option, std::size_t max_chars) {
    auto value = args.get(option);
    if (!value)
        return;
    std::size_t chars = common::utf8_chars(*value);
    if (chars > max_chars)
        throw ArgumentError("--" + option + " is " + std::to_string(chars) + " characters long; at most " +
                            std::to_string(max_chars) + " are allowed");
}

long long parse_duration_ms(const std::string& option, const std::string& value) {
    size_t i = 0;
    while (i < value.size() && std::isdigit(static_cast<unsigned char>(value[i])))
        ++i;
    std::string digits = value.substr(0, i), unit = value.substr(i);
    auto bad = [&]() {
        return ArgumentError("--" + option + " needs a duration like 10s, 500ms, 2min or 1h, not \"" + value + "\"");
    };
    if (digits.empty() || digits.size() > 9)
        throw bad();
    long long n = std::stoll(digits);
    if (unit.empty() || unit == "s")
        return n * 1000;
    if (unit == "ms")
        return n;
    if (unit == "min")
        return n * 60000;
    if (unit == "h")
        return n * 3600000;
    throw bad();
}

std::vector<OptionSpec> with_lock_retry_options(std::vector<OptionSpec> options) {
    options.push_back({"lock-timeout", 0, true, "DURATION",
                       "wait at most this long for each lock a migration needs, then retry "
                       "(pg_deploy.lock_timeout, default 500ms; 0 = no limit of pg_deploy's)"});
    options.push_back({"lock-attempts", 0, true, "N",
                       "attempts at a migration whose locks are busy before giving up (pg_deploy.lock_attempts, "
                       "default 30, at most 10000)"});
    options.push_back({"lock-retry-time", 0, true, "DURATION",
                       "give up retrying after this long in all (pg_deploy.lock_retry_time, default 60s; "
                       "0 = no time limit)"});
    return options;
}

namespace {

// lock_duration: a duration option within what the setting holds (an int of milliseconds; 0 is each one's "off").
std::optional<long long> lock_duration(const ParsedArgs& args, const std::string& option) {
    auto value = args.get(option);
    if (!value)
        return std::nullopt;
    long long ms = parse_duration_ms(option, *value);
    if (ms > common::kMaxLockSettingMs)
        throw ArgumentError("--" + option + " must be at most " + std::to_string(common::kMaxLockSettingMs) +
                            "ms (about 24 days), not \"" + *value + "\"");
    return ms;
}

}  // namespace

common::LockSafety lock_flags(const ParsedArgs& args) {
    common::LockSafety s;
    s.lock_wait_ms = lock_duration(args, "lock-wait");
    s.lock_timeout_ms = lock_duration(args, "lock-timeout");
    if (auto n = args.get("lock-attempts"))
        s.lock_attempts = parse_positive_int("lock-attempts", *n, common::kMaxLockAttempts);
    s.lock_retry_time_ms = lock_duration(args, "lock-retry-time");
    return s;
}

}  // namespace pgdeploy::cli
