// Header directive parser (see directives.hpp).
#include "loader/directives.hpp"

#include "watch/duration.hpp"

#include <cctype>

#include "common/exit_codes.hpp"

namespace pgdeploy::loader {

std::string trim(const std::string& s) {
    size_t b = 0, e = s.size();
    while (b < e && std::isspace(static_cast<unsigned char>(s[b])))
        ++b;
    while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1])))
        --e;
    return s.substr(b, e - b);
}

namespace {

[[noreturn]] void fail(const std::string& path, int line, const std::string& message) {
    throw UsageError(path + ":" + std::to_string(line) + ": " + message);
}

/*
 * apply_directive
 *		One key=value item. Values are strict (on/off, not yes/1/true) so the file reads the same to every
 *		reviewer; a key given twice must agree with itself.
 */
void apply_directive(Directives& d, const std::string& item, const std::string& path, int line) {
    size_t eq = item.find('=');
    if (eq == std::string::npos)
        fail(path, line, "pg_deploy directive \"" + item + "\" is not key=value");
    std::string key = trim(item.substr(0, eq)), value = trim(item.substr(eq + 1));
    if (key == "transaction") {
        bool t;
        if (value == "on")
            t = true;
        else if (value == "off")
            t = false;
        else
            fail(path, line, "transaction must be on or off, not \"" + value + "\"");
        if (d.transactional && *d.transactional != t)
            fail(path, line, "transaction given twice with different values");
        d.transactional = t;
    } else if (key == "reversible") {
        if (value != "reversible" && value != "lossy" && value != "irreversible")
            fail(path, line, "reversible must be reversible, lossy or irreversible, not \"" + value + "\"");
        if (d.reversibility && *d.reversibility != value)
            fail(path, line, "reversible given twice with different values");
        d.reversibility = value;
        if (d.line_of_reversible == 0)
            d.line_of_reversible = line;
    } else if (key == "lock_timeout") {
        std::optional<watch::Millis> ms = watch::parse_duration(value);
        if (!ms)
            fail(path, line, "lock_timeout must be a duration such as 2s or 500ms, not \"" + value + "\"");
        if (d.lock_timeout_ms && *d.lock_timeout_ms != *ms)
            fail(path, line, "lock_timeout given twice with different values");
        d.lock_timeout_ms = *ms;
    } else {
        fail(path, line, "unknown pg_deploy directive \"" + key + "\" (known: transaction, reversible, lock_timeout)");
    }
    if (d.line_of_first == 0)
        d.line_of_first = line;
}

}  // namespace

Directives parse_directives(const std::string& text, const std::string& path) {
    Directives d;
    size_t pos = 0;
    int line_no = 0;
    static const std::string kPrefix = "pg_deploy:";
    while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
        pos = nl == std::string::npos ? text.size() : nl + 1;
        ++line_no;
        std::string t = trim(line);
        if (t.empty())
            continue;
        if (t.compare(0, 2, "--") != 0)
            break;  // the header comment block ends at the first statement line
        std::string body = trim(t.substr(2));
        if (body.compare(0, kPrefix.size(), kPrefix) != 0)
            continue;  // an ordinary comment
        std::string rest = trim(body.substr(kPrefix.size()));
        if (rest.empty())
            fail(path, line_no, "empty pg_deploy directive");
        // Items are separated by commas and/or whitespace: "transaction=off, reversible=lossy".
        std::string item;
        for (size_t i = 0; i <= rest.size(); ++i) {
            char c = i < rest.size() ? rest[i] : ' ';
            if (c == ',' || std::isspace(static_cast<unsigned char>(c))) {
                if (!item.empty())
                    apply_directive(d, item, path, line_no);
                item.clear();
            } else {
                item += c;
            }
        }
    }
    return d;
}

}  // namespace pgdeploy::loader
