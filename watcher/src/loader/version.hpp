// Migration versions on the client side: the same validity rule and natural order as the extension
// (docs/architecture.md, "Versions"), so bad files are refused before anything is sent to the server.
#pragma once
#include <string>

namespace pgdeploy::loader {

// is_valid_version: 1–64 characters from [A-Za-z0-9._-], starting with a letter or digit.
bool is_valid_version(const std::string& version);

// compare_versions: natural order: digit runs compare as numbers ("2" < "10", "1.9" < "1.10"), digits sort before
// letters; returns <0, 0, >0. Two spellings of the same number ("10", "010") compare equal: the extension refuses
// such pairs as ambiguous (PD008), and so does the loader.
int compare_versions(const std::string& a, const std::string& b);

}  // namespace pgdeploy::loader
