// spdlog set-up: a stderr sink that scrubs secrets and writes plain text or JSON lines (see logging.hpp).
#include "common/logging.hpp"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>

#include "common/conninfo.hpp"
#include "common/exit_codes.hpp"

namespace pgdeploy::common {

std::string iso_utc(std::chrono::system_clock::time_point tp) {
    auto secs = std::chrono::time_point_cast<std::chrono::seconds>(tp);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(tp - secs).count();
    std::time_t t = std::chrono::system_clock::to_time_t(tp);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
    return buf;
}

namespace {

/*
 * ScrubbingStderrSink
 *		The only sink pgdeploy logs to. Formatting happens here rather than in a pattern so that JSON lines are
 *		real JSON (escaped by nlohmann_json) and so that scrubbing sees the final message text.
 */
class ScrubbingStderrSink : public spdlog::sinks::base_sink<std::mutex> {
public:
    explicit ScrubbingStderrSink(LogFormat format) : format_(format) {}

protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        std::string text = scrub(std::string(msg.payload.data(), msg.payload.size()));
        std::string level(spdlog::level::to_string_view(msg.level).data(),
                          spdlog::level::to_string_view(msg.level).size());
        std::string line;
        if (format_ == LogFormat::kJson) {
            nlohmann::json j = {{"ts", iso_utc(msg.time)},
                                {"level", level},
                                {"logger", std::string(msg.logger_name.data(), msg.logger_name.size())},
                                {"msg", text}};
            line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
        } else {
            line = iso_utc(msg.time) + " " + level + " " + text + "\n";
        }
        std::fwrite(line.data(), 1, line.size(), stderr);
    }
    void flush_() override { std::fflush(stderr); }

private:
    LogFormat format_;
};

}  // namespace

LogFormat parse_log_format(const std::string& value) {
    if (value == "plain" || value == "text")
        return LogFormat::kPlain;
    if (value == "json")
        return LogFormat::kJson;
    throw UsageError("--log-format must be plain or json, not \"" + value + "\"");
}

void setup_logging(const LogOptions& options) {
    register_environment_secrets();
    register_secret(options.secret);
    auto sink = std::make_shared<ScrubbingStderrSink>(options.format);
    auto logger = std::make_shared<spdlog::logger>("pgdeploy", sink);
    logger->set_level(options.verbose ? spdlog::level::debug
                      : options.quiet ? spdlog::level::warn
                                      : spdlog::level::info);
    logger->flush_on(spdlog::level::trace);
    spdlog::set_default_logger(logger);
}

}  // namespace pgdeploy::common
