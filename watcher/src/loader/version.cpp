// Version validity and natural order (see version.hpp): the extension's own rules (extension/src/version.cpp, pure
// C++ compiled into pgdeploy too), so the loader can never order or accept versions differently from the server.
#include "loader/version.hpp"

#include "pg_deploy/version.hpp"

namespace pgdeploy::loader {

bool is_valid_version(const std::string& v) {
    return !pgdeploy::version_problem(v).has_value();
}

int compare_versions(const std::string& a, const std::string& b) {
    int c = pgdeploy::version_key(a).compare(pgdeploy::version_key(b));
    return c < 0 ? -1 : (c > 0 ? 1 : 0);
}

}  // namespace pgdeploy::loader
