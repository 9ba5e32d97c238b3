// pg_deploy: migration versions — validation and the natural sort key. Pure C++ (no postgres.h).
#include "pg_deploy/version.hpp"

#include <cstdio>

#include "pg_deploy/errors.hpp"

namespace pgdeploy {

namespace {

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}
bool is_alpha(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

std::string printable(std::string_view s) {
    std::string out;
    for (unsigned char c : s) {
        if (c < 0x20 || c == 0x7f) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        } else {
            out += static_cast<char>(c);
        }
    }
    return out;
}

}  // namespace

/*
 * version_problem checks the contract's version syntax: 1-64 characters of [A-Za-z0-9._-], starting with a letter
 * or digit. The message names the first thing wrong, so a user fixing a file name sees what to change.
 */
std::optional<std::string> version_problem(std::string_view v) {
    if (v.empty())
        return std::string("version must not be empty");
    for (std::size_t i = 0; i < v.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(v[i]);
        if (c < 0x20 || c == 0x7f) {
            char buf[96];
            std::snprintf(buf, sizeof buf, "version contains a control character (byte 0x%02x at position %zu)", c,
                          i + 1);
            return std::string(buf);
        }
    }
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (v[i] == ' ')
            return "version \"" + printable(v) + "\" contains whitespace";
    }
    if (v.size() > kMaxVersionLength) {
        return "version is too long (" + std::to_string(v.size()) + " characters, at most " +
               std::to_string(kMaxVersionLength) + ")";
    }
    for (std::size_t i = 0; i < v.size(); ++i) {
        char c = v[i];
        if (!(is_digit(c) || is_alpha(c) || c == '.' || c == '_' || c == '-')) {
            std::size_t len = 1;  // the whole UTF-8 character
            while (i + len < v.size() && (static_cast<unsigned char>(v[i + len]) & 0xC0) == 0x80)
                ++len;
            return "version \"" + printable(v) + "\" contains \"" + printable(v.substr(i, len)) +
                   "\": only letters, digits, '.', '_' and '-' are allowed";
        }
    }
    if (!is_digit(v[0]) && !is_alpha(v[0])) {
        return "version \"" + printable(v) + "\" must start with a letter or a digit";
    }
    return std::nullopt;
}

/*
 * version_key encodes each digit run as two length digits followed by the run without leading zeros, so that a
 * bytewise comparison compares numbers by magnitude. The length digits are ASCII digits: a number sorts after
 * '-' and '.' and before every letter ("digits before letters"), like the plain characters around it.
 */
std::string version_key(std::string_view v) {
    std::string key;
    key.reserve(v.size() * 2 + 4);
    std::size_t i = 0;
    while (i < v.size()) {
        if (!is_digit(v[i])) {
            key += v[i++];
            continue;
        }
        std::size_t start = i;
        while (i < v.size() && is_digit(v[i]))
            ++i;
        std::size_t first = start;
        while (first + 1 < i && v[first] == '0')
            ++first;                  // keep one digit for "0", "000"
        std::size_t len = i - first;  // <= 64: two decimal digits suffice
        key += static_cast<char>('0' + len / 10);
        key += static_cast<char>('0' + len % 10);
        key.append(v.substr(first, len));
    }
    return key;
}

void check_version(std::string_view version, std::string_view what) {
    if (auto problem = version_problem(version)) {
        std::string msg = *problem;
        if (what != "version")
            msg = std::string(what) + ": " + msg;
        throw DeployError(sqlstate::invalid_parameter, msg, {},
                          "A version is 1-64 characters from [A-Za-z0-9._-], starting with a letter or a digit.");
    }
}

}  // namespace pgdeploy
