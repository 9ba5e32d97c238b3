#include "watch/freeze.hpp"

#include <chrono>

#include "common/logging.hpp"

namespace pgdeploy::watch {

using nlohmann::json;

namespace {

std::string iso_of(Millis wall) {
    return common::iso_utc(std::chrono::system_clock::time_point(std::chrono::milliseconds(wall)));
}

}  // namespace

const char* to_string(FreezeReason r) {
    switch (r) {
        case FreezeReason::unreachable:
            return "database_unreachable";
        case FreezeReason::lost:
            return "connection_lost";
        case FreezeReason::standby:
            return "standby";
    }
    return "database_unreachable";
}

bool database_unavailable(const std::string& sqlstate) {
    if (sqlstate.size() != 5)
        return false;
    return sqlstate.compare(0, 2, "08") == 0  // connection exception
           || sqlstate == "57P01"             // admin_shutdown
           || sqlstate == "57P02"             // crash_shutdown
           || sqlstate == "57P03"             // cannot_connect_now (starting up, shutting down, in recovery)
           || sqlstate == "25006";            // read_only_sql_transaction: a standby
}

FreezeReason freeze_reason_for(const std::string& sqlstate, FreezeReason otherwise) {
    return sqlstate == "25006" ? FreezeReason::standby : otherwise;
}

json FreezeRecord::to_json() const {
    return {{"reason", to_string(reason)},    {"detail", detail},           {"started_at", iso_of(started_wall)},
            {"ended_at", iso_of(ended_wall)}, {"duration_ms", duration_ms}, {"was_leader", was_leader}};
}

bool FreezeState::enter(FreezeReason reason, const std::string& detail, bool was_leader, Millis mono, Millis wall) {
    if (frozen_) {
        current_.detail = detail;
        current_.was_leader = current_.was_leader || was_leader;
        return false;
    }
    frozen_ = true;
    ++freezes_;
    since_mono_ = mono;
    current_ = FreezeRecord{};
    current_.reason = reason;
    current_.detail = detail;
    current_.started_wall = wall;
    current_.was_leader = was_leader;
    return true;
}

std::optional<FreezeRecord> FreezeState::thaw(Millis mono, Millis wall) {
    if (!frozen_)
        return std::nullopt;
    frozen_ = false;
    current_.duration_ms = mono - since_mono_;
    current_.ended_wall = wall;
    total_ms_ += current_.duration_ms;
    if (pending_.size() >= kMaxPending) {
        pending_.pop_front();
        ++dropped_;
    }
    pending_.push_back(current_);
    return current_;
}

json FreezeState::to_json(Millis mono) const {
    return {{"since", frozen_ ? json(iso_of(current_.started_wall)) : json(nullptr)},
            {"reason", frozen_ ? json(to_string(current_.reason)) : json(nullptr)},
            {"detail", frozen_ ? json(current_.detail) : json(nullptr)},
            {"duration_ms", frozen_ ? json(duration(mono)) : json(nullptr)},
            {"freezes", freezes_},
            {"frozen_ms_total", frozen_ms_total(mono)},
            {"unrecorded", pending_.size()}};
}

}  // namespace pgdeploy::watch
