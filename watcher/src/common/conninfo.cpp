// Secret scrubbing for conninfo strings, URLs, free text and JSON (see conninfo.hpp).
#include "common/conninfo.hpp"

#include <libpq-fe.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace pgdeploy::common {

namespace {

constexpr std::size_t kMinSecretLength = 3;

bool ieq_at(const std::string& s, size_t pos, const char* word) {
    for (size_t i = 0; word[i] != '\0'; ++i) {
        if (pos + i >= s.size())
            return false;
        if (std::tolower(static_cast<unsigned char>(s[pos + i])) != word[i])
            return false;
    }
    return true;
}

bool is_word_char(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
}

bool is_blank(char c) {
    return c == ' ' || c == '\t';
}

size_t skip_blanks(const std::string& s, size_t i) {
    while (i < s.size() && is_blank(s[i]))
        ++i;
    return i;
}

// end_of_value: where the value starting at i ends: a quoted value ('...' or "...", backslash escapes) ends after
// its closing quote; a bare one at whitespace or a separator of the surrounding syntax (URI query, JSON, lists).
size_t end_of_value(const std::string& in, size_t i) {
    if (i < in.size() && (in[i] == '\'' || in[i] == '"')) {
        char q = in[i++];
        while (i < in.size() && in[i] != q) {
            if (in[i] == '\\' && i + 1 < in.size())
                ++i;
            ++i;
        }
        return i < in.size() ? i + 1 : i;
    }
    static const std::string kStops = "&\",;})]";
    while (i < in.size() && !std::isspace(static_cast<unsigned char>(in[i])) && kStops.find(in[i]) == std::string::npos)
        ++i;
    return i;
}

/*
 * scrub_keyword_values
 *		Replaces the value of every key whose name ends in "password" (password, sslpassword, PGPASSWORD,
 *		DB_PASSWORD, ...) followed by `=` or `:` (optionally after the key's closing quote, as in JSON) with
 ****, keeping the key, the separator and the value's quotes. "password authentication failed" has no separator and
 *stays as it is.
 */
std::string scrub_keyword_values(const std::string& in) {
    std::string out;
    out.reserve(in.size());
    size_t i = 0;
    while (i < in.size()) {
        if (ieq_at(in, i, "password") && (i + 8 >= in.size() || !is_word_char(in[i + 8]))) {
            size_t k = i + 8;
            if (k < in.size() && (in[k] == '"' || in[k] == '\''))
                ++k;  // the closing quote of a quoted key: "password": "x"
            k = skip_blanks(in, k);
            if (k < in.size() && (in[k] == '=' || in[k] == ':')) {
                size_t start = skip_blanks(in, k + 1);
                size_t end = end_of_value(in, start);
                if (end > start) {
                    out.append(in, i, start - i);
                    bool quoted = in[start] == '\'' || in[start] == '"';
                    if (quoted)
                        out += in[start];
                    out += "***";
                    if (quoted)
                        out += in[start];
                    i = end;
                    continue;
                }
            }
        }
        out += in[i++];
    }
    return out;
}

// url_authority_end: the end of a URL's authority part (user info and hosts) that starts at `start`.
size_t url_authority_end(const std::string& in, size_t start) {
    static const std::string kStops = "/?#\"'<>";
    size_t stop = start;
    while (stop < in.size() && kStops.find(in[stop]) == std::string::npos &&
           !std::isspace(static_cast<unsigned char>(in[stop])))
        ++stop;
    return stop;
}

/*
 * scrub_url_userinfo
 *		scheme://user:secret@host → scheme://user:***@host for every URL in the text, whatever the scheme
 *		(postgresql://, http:// of a check, redis:// in a hook's output). The user info ends at the last '@' of
 *the authority (a password may itself contain '@' when not percent-encoded; libpq accepts that).
 */
std::string scrub_url_userinfo(const std::string& in) {
    std::string out;
    out.reserve(in.size());
    size_t i = 0;
    while (i < in.size()) {
        if (in.compare(i, 3, "://") != 0 || i == 0 || !std::isalnum(static_cast<unsigned char>(in[i - 1]))) {
            out += in[i++];
            continue;
        }
        size_t start = i + 3;
        size_t stop = url_authority_end(in, start);
        out.append("://");
        size_t at = stop > start ? in.rfind('@', stop - 1) : std::string::npos;
        size_t colon = in.find(':', start);
        if (at != std::string::npos && at >= start && colon < at) {
            out.append(in, start, colon - start);
            out += ":***";
            out.append(in, at, stop - at);
        } else {
            out.append(in, start, stop - start);
        }
        i = stop;
    }
    return out;
}

void replace_all(std::string& text, const std::string& secret) {
    if (secret.size() < kMinSecretLength)
        return;
    size_t pos = 0;
    while ((pos = text.find(secret, pos)) != std::string::npos) {
        text.replace(pos, secret.size(), "***");
        pos += 3;
    }
}

// The registry: longest first, so that a secret containing another is replaced whole.
std::mutex g_mutex;
std::vector<std::string> g_secrets;
std::once_flag g_environment_once;

bool is_dsn_key(const std::string& piece, const std::string& dsn) {
    if (piece.empty() || !std::all_of(piece.begin(), piece.end(), is_word_char))
        return false;
    for (size_t pos = dsn.find(piece); pos != std::string::npos; pos = dsn.find(piece, pos + 1)) {
        bool starts_word = pos == 0 || !is_word_char(dsn[pos - 1]);
        size_t after = skip_blanks(dsn, pos + piece.size());
        if (starts_word && after < dsn.size() && dsn[after] == '=')
            return true;
    }
    return false;
}

}  // namespace

std::string scrub_conninfo(const std::string& conninfo) {
    return scrub_secrets(conninfo);
}

std::string scrub_secrets(const std::string& text, const std::string& secret) {
    std::string out = scrub_keyword_values(scrub_url_userinfo(text));
    replace_all(out, secret);
    return out;
}

void register_secret(const std::string& secret) {
    if (secret.size() < kMinSecretLength)
        return;
    std::lock_guard<std::mutex> guard(g_mutex);
    if (std::find(g_secrets.begin(), g_secrets.end(), secret) != g_secrets.end())
        return;
    g_secrets.push_back(secret);
    std::stable_sort(g_secrets.begin(), g_secrets.end(),
                     [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
}

bool register_dsn_secrets(const std::string& dsn) {
    if (dsn.empty())
        return true;
    char* err = nullptr;
    PQconninfoOption* parsed = PQconninfoParse(dsn.c_str(), &err);
    PQfreemem(err);
    if (!parsed)
        return false;
    for (PQconninfoOption* o = parsed; o->keyword; ++o) {
        std::string key = o->keyword;
        if (o->val && key.size() >= 8 && key.compare(key.size() - 8, 8, "password") == 0)
            register_secret(o->val);  // password, sslpassword
    }
    PQconninfoFree(parsed);
    return true;
}

void register_environment_secrets() {
    if (const char* pw = std::getenv("PGPASSWORD"))
        register_secret(pw);
}

std::string scrub(const std::string& text) {
    std::call_once(g_environment_once, register_environment_secrets);
    std::string out = scrub_secrets(text);
    std::lock_guard<std::mutex> guard(g_mutex);
    for (const auto& s : g_secrets)
        replace_all(out, s);
    return out;
}

void scrub_json(nlohmann::json& doc) {
    if (doc.is_string()) {
        auto& s = doc.get_ref<std::string&>();
        s = scrub(s);
    } else if (doc.is_structured()) {
        for (auto& v : doc)
            scrub_json(v);
    }
}

std::string scrub_unparsable_dsn_error(const std::string& message, const std::string& dsn) {
    std::string out;
    size_t i = 0;
    while (i < message.size()) {
        size_t open = message.find('"', i);
        size_t close = open == std::string::npos ? std::string::npos : message.find('"', open + 1);
        if (close == std::string::npos) {
            out.append(message, i, std::string::npos);
            break;
        }
        std::string piece = message.substr(open + 1, close - open - 1);
        out.append(message, i, open + 1 - i);
        out += piece.size() <= 1 || is_dsn_key(piece, dsn) ? piece : "***";
        out += '"';
        i = close + 1;
    }
    return scrub(out);
}

}  // namespace pgdeploy::common
