// Password scrubbing for conninfo strings, URIs and free text (see conninfo.hpp).
#include "common/conninfo.hpp"

#include <cctype>
#include <cstdlib>

namespace pgdeploy::common {

namespace {

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

/*
 * scrub_keyword_values
 *		Replaces the value after every `password` keyword (conninfo `password = value`, quoted or not, and URI
 *		query `password=value`) with ***. Works on free text too: the keyword must stand alone as a word.
 */
std::string scrub_keyword_values(const std::string& in) {
    std::string out;
    out.reserve(in.size());
    size_t i = 0;
    while (i < in.size()) {
        if (ieq_at(in, i, "password") && (i == 0 || !is_word_char(in[i - 1])) &&
            (i + 8 >= in.size() || !is_word_char(in[i + 8]))) {
            size_t j = i + 8;
            while (j < in.size() && (in[j] == ' ' || in[j] == '\t'))
                ++j;
            if (j < in.size() && in[j] == '=') {
                ++j;
                while (j < in.size() && (in[j] == ' ' || in[j] == '\t'))
                    ++j;
                // Skip the value: quoted with backslash escapes, or up to whitespace / URI separators.
                size_t end = j;
                if (end < in.size() && in[end] == '\'') {
                    ++end;
                    while (end < in.size() && in[end] != '\'') {
                        if (in[end] == '\\' && end + 1 < in.size())
                            ++end;
                        ++end;
                    }
                    if (end < in.size())
                        ++end;
                } else {
                    while (end < in.size() && !std::isspace(static_cast<unsigned char>(in[end])) && in[end] != '&' &&
                           in[end] != '"' && in[end] != ',')
                        ++end;
                }
                out += "password=***";
                i = end;
                continue;
            }
        }
        out += in[i++];
    }
    return out;
}

/*
 * scrub_uri_userinfo
 *		postgres://user:secret@host → postgres://user:***@host, for every URI in the text. The userinfo ends at
 *		the last '@' before the next '/', '?' or whitespace (a password may itself contain '@' when not
 *		percent-encoded, libpq accepts that).
 */
std::string scrub_uri_userinfo(const std::string& in) {
    std::string out;
    size_t i = 0;
    while (i < in.size()) {
        size_t scheme_len = 0;
        if (ieq_at(in, i, "postgresql://"))
            scheme_len = 13;
        else if (ieq_at(in, i, "postgres://"))
            scheme_len = 11;
        if (scheme_len == 0) {
            out += in[i++];
            continue;
        }
        size_t start = i + scheme_len;
        size_t stop = start;
        while (stop < in.size() && in[stop] != '/' && in[stop] != '?' &&
               !std::isspace(static_cast<unsigned char>(in[stop])))
            ++stop;
        size_t at = in.rfind('@', stop == 0 ? 0 : stop - 1);
        out.append(in, i, scheme_len);
        if (at != std::string::npos && at >= start && at < stop) {
            size_t colon = in.find(':', start);
            if (colon != std::string::npos && colon < at) {
                out.append(in, start, colon - start);
                out += ":***";
                out.append(in, at, stop - at);
            } else {
                out.append(in, start, stop - start);
            }
        } else {
            out.append(in, start, stop - start);
        }
        i = stop;
    }
    return out;
}

}  // namespace

std::string scrub_conninfo(const std::string& conninfo) {
    return scrub_secrets(conninfo);
}

std::string scrub_secrets(const std::string& text, const std::string& secret) {
    std::string out = scrub_keyword_values(scrub_uri_userinfo(text));
    // A known secret (PGPASSWORD, a password from a DSN) is removed wherever it appears verbatim. Very short
    // values would blank out ordinary words, so only values of 3+ characters are searched for.
    if (secret.size() >= 3) {
        size_t pos = 0;
        while ((pos = out.find(secret, pos)) != std::string::npos) {
            out.replace(pos, secret.size(), "***");
            pos += 3;
        }
    }
    return out;
}

}  // namespace pgdeploy::common
