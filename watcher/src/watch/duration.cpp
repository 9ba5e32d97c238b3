#include "watch/duration.hpp"

#include <cctype>
#include <limits>

namespace pgdeploy::watch {

/*
 * parse_duration
 *
 * One or more <digits><unit> groups, units ms, s, m, h, d. A bare number is refused on purpose: "30" could mean
 * seconds or milliseconds, and a config that guesses wrong rolls back a healthy release or never rolls back at all.
 */
std::optional<Millis> parse_duration(const std::string& text) {
    if (text.empty() || text.size() > 64)
        return std::nullopt;
    Millis total = 0;
    std::size_t i = 0;
    while (i < text.size()) {
        if (!std::isdigit(static_cast<unsigned char>(text[i])))
            return std::nullopt;
        Millis value = 0;
        while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
            if (value > std::numeric_limits<Millis>::max() / 10 - 10)
                return std::nullopt;
            value = value * 10 + (text[i] - '0');
            ++i;
        }
        std::string unit;
        while (i < text.size() && std::isalpha(static_cast<unsigned char>(text[i])))
            unit += text[i++];
        Millis factor;
        if (unit == "ms")
            factor = 1;
        else if (unit == "s")
            factor = 1000;
        else if (unit == "m" || unit == "min")
            factor = 60LL * 1000;
        else if (unit == "h")
            factor = 3600LL * 1000;
        else if (unit == "d")
            factor = 24LL * 3600 * 1000;
        else
            return std::nullopt;
        // Keep well inside int64 so that "now + duration" never overflows.
        if (value > (std::numeric_limits<Millis>::max() / 4) / factor)
            return std::nullopt;
        total += value * factor;
        if (total > std::numeric_limits<Millis>::max() / 4)
            return std::nullopt;
    }
    return total;
}

std::string format_duration(Millis ms) {
    if (ms != 0 && ms % (3600LL * 1000) == 0)
        return std::to_string(ms / (3600LL * 1000)) + "h";
    if (ms != 0 && ms % (60LL * 1000) == 0)
        return std::to_string(ms / (60LL * 1000)) + "m";
    if (ms != 0 && ms % 1000 == 0)
        return std::to_string(ms / 1000) + "s";
    return std::to_string(ms) + "ms";
}

}  // namespace pgdeploy::watch
