// Length limits and the helpers that keep values inside them (see limits.hpp).
#include "common/limits.hpp"

#include <cstring>

namespace pgdeploy::common {

using nlohmann::json;

namespace {

// Strings longer than this are the first thing fit_json shortens: a long message or program output is rarely the
// part of an event a reader needs whole.
constexpr std::size_t kLongStringChars = 1000;

std::string compact(const json& doc) {
    return doc.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::size_t shorten_strings(json& doc) {
    if (doc.is_string()) {
        auto& s = doc.get_ref<std::string&>();
        if (utf8_chars(s) <= kLongStringChars)
            return 0;
        s = truncate_chars(s, kLongStringChars);
        return 1;
    }
    std::size_t n = 0;
    if (doc.is_structured())
        for (auto& v : doc)
            n += shorten_strings(v);
    return n;
}

// largest_member: the key of the member with the longest text, other than "truncated" and members already null.
std::string largest_member(const json& doc) {
    std::string best;
    std::size_t best_size = 0;
    for (auto it = doc.begin(); it != doc.end(); ++it) {
        if (it.key() == "truncated" || it->is_null())
            continue;
        std::size_t size = json_text_size(*it);
        if (size > best_size) {
            best = it.key();
            best_size = size;
        }
    }
    return best;
}

// halve: drops the second half of an array's elements or an object's members; returns how many went.
std::size_t halve(json& v) {
    std::size_t drop = v.size() / 2;
    for (std::size_t i = 0; i < drop; ++i) {
        if (v.is_array())
            v.erase(v.size() - 1);
        else
            v.erase(std::prev(v.end()));
    }
    return drop;
}

}  // namespace

std::size_t utf8_chars(const std::string& s) {
    std::size_t n = 0;
    for (unsigned char c : s)
        if ((c & 0xC0) != 0x80)
            ++n;
    return n;
}

std::string truncate_chars(const std::string& s, std::size_t max_chars) {
    if (utf8_chars(s) <= max_chars)
        return s;
    std::size_t marker = std::strlen(kTruncatedMarker);
    std::size_t keep = max_chars > marker ? max_chars - marker : 0;
    std::size_t end = 0, chars = 0;
    while (end < s.size()) {
        if ((static_cast<unsigned char>(s[end]) & 0xC0) != 0x80) {
            if (chars == keep)
                break;
            ++chars;
        }
        ++end;
    }
    return s.substr(0, end) + kTruncatedMarker;
}

std::size_t json_text_size(const json& doc) {
    std::string text = compact(doc);
    std::size_t separators = 0;
    bool in_string = false;
    for (std::size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (in_string) {
            if (c == '\\')
                ++i;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == ',' || c == ':') {
            ++separators;
        }
    }
    return text.size() + separators;
}

/*
 * fit_json
 *		The watcher's events and rollback requests must be accepted by the extension whatever happened: a
 *rollback decision naming thousands of failing checks must still become a marker. Cutting the largest member in halves
 *keeps as much of every member as fits and ends after a few dozen rounds at most.
 */
bool fit_json(json& doc, std::size_t max_bytes) {
    if (json_text_size(doc) <= max_bytes)
        return false;
    if (!doc.is_object()) {
        doc = json{{"truncated", "value"}};
        return true;
    }
    doc["truncated"] = json::object();
    if (std::size_t n = shorten_strings(doc))
        doc["truncated"]["long_strings"] = n;
    while (json_text_size(doc) > max_bytes) {
        std::string key = largest_member(doc);
        if (key.empty()) {
            doc = json{{"truncated", "all"}};
            break;
        }
        json& v = doc[key];
        json& note = doc["truncated"][key];
        if (v.is_structured() && v.size() > 1) {
            std::size_t dropped = halve(v) + (note.is_number() ? note.get<std::size_t>() : 0);
            note = dropped;
        } else {
            v = nullptr;
            note = "value";
        }
    }
    return true;
}

}  // namespace pgdeploy::common
