// Output helpers (see output.hpp).
#include "common/output.hpp"

#include <cstdio>
#include <iostream>

#include "common/connection.hpp"
#include "common/conninfo.hpp"

namespace pgdeploy::common {

void print_json(const nlohmann::json& doc) {
    nlohmann::json scrubbed = doc;
    scrub_json(scrubbed);
    std::cout << scrubbed.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
}

nlohmann::json error_document(const std::string& command, const Failure& failure) {
    nlohmann::json error;
    if (const auto* db = dynamic_cast<const DbError*>(&failure)) {
        error = db->to_json();
    } else {
        error = {
            {"sqlstate", failure.sqlstate().empty() ? nlohmann::json(nullptr) : nlohmann::json(failure.sqlstate())},
            {"message", failure.what()}};
    }
    nlohmann::json doc = {{"schema_version", kJsonSchemaVersion}, {"ok", false}};
    if (!command.empty())
        doc["command"] = command;
    doc["error"] = error;
    doc["exit_code"] = failure.exit_code();
    return doc;
}

std::string cell(const nlohmann::json& value) {
    if (value.is_null())
        return "-";
    if (value.is_string())
        return scrub(value.get<std::string>());
    if (value.is_boolean())
        return value.get<bool>() ? "yes" : "no";
    return scrub(value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

namespace {

size_t display_width(const std::string& s) {
    size_t n = 0;
    for (unsigned char c : s)
        if ((c & 0xC0) != 0x80)
            ++n;
    return n;
}

}  // namespace

std::string render_table(const std::vector<std::string>& headers, const std::vector<std::vector<std::string>>& rows) {
    std::vector<size_t> width(headers.size());
    for (size_t c = 0; c < headers.size(); ++c)
        width[c] = display_width(headers[c]);
    for (const auto& row : rows)
        for (size_t c = 0; c < headers.size() && c < row.size(); ++c)
            width[c] = std::max(width[c], display_width(row[c]));
    auto line = [&](const std::vector<std::string>& row) {
        std::string out;
        for (size_t c = 0; c < headers.size(); ++c) {
            std::string v = c < row.size() ? row[c] : "";
            // One line per row: embedded newlines would break the alignment.
            for (auto& ch : v)
                if (ch == '\n' || ch == '\r' || ch == '\t')
                    ch = ' ';
            out += v;
            if (c + 1 < headers.size())
                out += std::string(width[c] - display_width(v) + 2, ' ');
        }
        while (!out.empty() && out.back() == ' ')
            out.pop_back();
        return out + "\n";
    };
    std::string out = line(headers);
    std::vector<std::string> rule;
    for (size_t w : width)
        rule.emplace_back(w, '-');
    out += line(rule);
    for (const auto& row : rows)
        out += line(row);
    return out;
}

std::string format_ms(double ms) {
    char buf[32];
    if (ms < 1000)
        std::snprintf(buf, sizeof buf, "%.0f ms", ms);
    else
        std::snprintf(buf, sizeof buf, "%.2f s", ms / 1000.0);
    return buf;
}

}  // namespace pgdeploy::common
