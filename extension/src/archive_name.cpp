// pg_deploy: the name of an archive table (see archive_name.hpp). Pure C++ (no postgres.h).
#include "pg_deploy/archive_name.hpp"

#include <cstdio>

namespace pgdeploy {

namespace {

// fnv1a is a small stable hash: the same long name gets the same archive name on every platform and release.
uint32_t fnv1a(std::string_view s) {
    uint32_t h = 2166136261u;
    for (unsigned char c : s) {
        h ^= c;
        h *= 16777619u;
    }
    return h;
}

}  // namespace

std::string archive_table_name(int64_t deployment_id, std::string_view table, std::string_view column, int attempt,
                               const ClipLength& clip) {
    std::string whole = std::to_string(deployment_id) + "_" + std::string(table);
    if (!column.empty())
        whole += "_" + std::string(column);
    std::string suffix;
    if (whole.size() > kMaxIdentifierBytes) {
        char hash[16];
        std::snprintf(hash, sizeof hash, "_%08x", static_cast<unsigned>(fnv1a(whole)));
        suffix = hash;
    }
    if (attempt > 1)
        suffix += "_" + std::to_string(attempt);
    if (suffix.empty())
        return whole;
    std::size_t keep = clip(whole, kMaxIdentifierBytes - suffix.size());
    return whole.substr(0, keep) + suffix;
}

}  // namespace pgdeploy
