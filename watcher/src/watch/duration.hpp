// Durations in the watcher's configuration: "500ms", "30s", "10m", "1h", "1d" (and combinations such as "1m30s").
// Times inside the watcher are plain milliseconds (int64) so that the decision engine can take time as an input.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

namespace pgdeploy::watch {

using Millis = std::int64_t;

// parse_duration returns the duration in milliseconds, or nullopt when the text is not a duration.
std::optional<Millis> parse_duration(const std::string& text);

// format_duration renders milliseconds the way the config spells them ("1500ms", "30s", "10m").
std::string format_duration(Millis ms);

}  // namespace pgdeploy::watch
