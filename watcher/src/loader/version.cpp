// Version validity and natural order (see version.hpp).
#include "loader/version.hpp"

#include <cctype>

namespace pgdeploy::loader {

namespace {
bool is_digit(char c) {
    return c >= '0' && c <= '9';
}
bool is_alnum(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0;
}
}  // namespace

bool is_valid_version(const std::string& v) {
    if (v.empty() || v.size() > 64 || !is_alnum(v[0]))
        return false;
    for (char c : v)
        if (!(is_alnum(c) || c == '.' || c == '_' || c == '-'))
            return false;
    return true;
}

/*
 * compare_versions
 *		Mirrors deploy.version_key(): a digit run is compared by value (leading zeros dropped, then by length,
 *		then lexically), everything else byte by byte, and a digit sorts before any other character.
 */
int compare_versions(const std::string& a, const std::string& b) {
    size_t i = 0, j = 0;
    while (i < a.size() && j < b.size()) {
        bool da = is_digit(a[i]), db = is_digit(b[j]);
        if (da && db) {
            size_t ie = i, je = j;
            while (ie < a.size() && is_digit(a[ie]))
                ++ie;
            while (je < b.size() && is_digit(b[je]))
                ++je;
            size_t is = i, js = j;
            while (is + 1 < ie && a[is] == '0')
                ++is;
            while (js + 1 < je && b[js] == '0')
                ++js;
            size_t la = ie - is, lb = je - js;
            if (la != lb)
                return la < lb ? -1 : 1;
            int c = a.compare(is, la, b, js, lb);
            if (c != 0)
                return c < 0 ? -1 : 1;
            i = ie;
            j = je;
        } else if (da != db) {
            return da ? -1 : 1;
        } else {
            if (a[i] != b[j])
                return static_cast<unsigned char>(a[i]) < static_cast<unsigned char>(b[j]) ? -1 : 1;
            ++i;
            ++j;
        }
    }
    if (i < a.size())
        return 1;
    if (j < b.size())
        return -1;
    return 0;
}

}  // namespace pgdeploy::loader
