// Migration file loader: native, Sqitch and Flyway layouts (see loader.hpp).
#include "loader/loader.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "common/exit_codes.hpp"
#include "common/limits.hpp"
#include "loader/directives.hpp"
#include "loader/version.hpp"

namespace fs = std::filesystem;

namespace pgdeploy::loader {

namespace {

// blank_as_none: a verify script with nothing in it is no verification (the extension refuses a blank one).
std::optional<std::string> blank_as_none(std::string text) {
    if (trim(text).empty())
        return std::nullopt;
    return text;
}

[[noreturn]] void fail(const std::string& message) {
    throw UsageError(message);
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/*
 * FileReader
 *		Reads the files of one migration directory. Unreadable files are a usage error naming the file and the
 *OS reason, never a crash or a silently skipped migration. Unless symlinks may be followed, a file must resolve inside
 *the directory: the check looks at the file actually opened (/proc/self/fd), not at its name, so a symlink swapped in
 *between a check and the open is caught too.
 */
class FileReader {
public:
    FileReader(const fs::path& dir, const LoadOptions& options) : follow_(options.follow_symlinks) {
        std::error_code ec;
        fs::path root = fs::canonical(dir, ec);
        if (ec)
            fail(dir.string() + ": cannot resolve: " + ec.message());
        root_ = root.string();
        if (root_.empty() || root_.back() != '/')
            root_ += '/';
    }

    std::string read(const fs::path& p) const {
        int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
            fail(p.string() + ": cannot read: " + std::strerror(errno));
        std::unique_ptr<int, void (*)(int*)> closer(&fd, [](int* f) { ::close(*f); });
        struct stat st {};
        if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
            fail(p.string() + ": not a readable regular file (broken symlink, FIFO or device?)");
        if (!follow_)
            check_inside(fd, p);
        std::string out;
        char buf[65536];
        for (;;) {
            ssize_t n = ::read(fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                fail(p.string() + ": cannot read: " + std::strerror(errno));
            if (n == 0)
                break;
            out.append(buf, static_cast<size_t>(n));
        }
        return out;
    }

    std::string read_sql(const fs::path& p) const { return check_sql_text(read(p), p.string()); }

private:
    void check_inside(int fd, const fs::path& p) const {
        std::string real;
        char buf[PATH_MAX];
        std::string proc = "/proc/self/fd/" + std::to_string(fd);
        ssize_t n = ::readlink(proc.c_str(), buf, sizeof buf);
        if (n > 0 && static_cast<size_t>(n) < sizeof buf) {
            real.assign(buf, static_cast<size_t>(n));
        } else {
            std::error_code ec;  // no /proc (a chroot): resolve the name instead
            real = fs::canonical(p, ec).string();
            if (ec)
                fail(p.string() + ": cannot resolve: " + ec.message());
        }
        if (real.compare(0, root_.size(), root_) != 0)
            fail(p.string() + ": is a symlink to " + real + ", outside the migration directory " +
                 root_.substr(0, root_.size() - 1) + "; refused (pgdeploy load --follow-symlinks reads it)");
    }

    std::string root_;  // the directory, resolved, with a trailing '/'
    bool follow_;
};

// present: something is at p, even a dangling symlink (which the reader then refuses instead of skipping it).
bool present(const fs::path& p) {
    std::error_code ec;
    return fs::exists(fs::symlink_status(p, ec));
}

// sort_and_check_versions: natural order, and two spellings of one version ("1", "01") are refused (PD008 later).
void sort_and_check_versions(std::vector<Migration>& ms, const std::string& dir) {
    std::stable_sort(ms.begin(), ms.end(),
                     [](const Migration& a, const Migration& b) { return compare_versions(a.version, b.version) < 0; });
    for (size_t i = 1; i < ms.size(); ++i)
        if (compare_versions(ms[i - 1].version, ms[i].version) == 0)
            fail(dir + ": two migrations with the same version: " + ms[i - 1].up_path + " and " + ms[i].up_path);
}

/*
 * apply_up_directives
 *		Directives live in the up script, except `transaction`, which the down script may give for itself (how
 *		its revert runs: the ledger keeps down_transactional). Anything else in a down or verify script would
 *		suggest a per-script setting that the ledger does not have.
 */
void apply_up_directives(Migration& m) {
    Directives d = parse_directives(m.up_sql, m.up_path);
    m.transactional = d.transactional;
    if (d.lock_timeout_ms)
        m.lock_timeout = std::to_string(*d.lock_timeout_ms) + "ms";
    m.reversibility = d.reversibility;
    if (m.down_sql) {
        Directives dd = parse_directives(*m.down_sql, m.down_path);
        if (dd.line_of_reversible)
            fail(m.down_path + ":" + std::to_string(dd.line_of_reversible) +
                 ": pg_deploy directives belong in the up script (" + m.up_path + ")");
        if (dd.lock_timeout_ms)
            fail(m.down_path + ": lock_timeout belongs in the up script (" + m.up_path +
                 "): it applies to the migration and to its revert");
        m.down_transactional = dd.transactional;
    }
    if (m.verify_sql) {
        Directives dv = parse_directives(*m.verify_sql, m.verify_path);
        if (dv.line_of_first)
            fail(m.verify_path + ":" + std::to_string(dv.line_of_first) +
                 ": pg_deploy directives belong in the up script (" + m.up_path + ")");
    }
    if (m.reversibility && *m.reversibility != "irreversible" && !m.down_sql)
        fail(m.up_path + ":" + std::to_string(d.line_of_first) + ": declares reversible=" + *m.reversibility +
             " but there is no down script");
}

std::vector<fs::path> list_files(const fs::path& dir) {
    std::vector<fs::path> out;
    std::error_code ec;
    fs::directory_iterator it(dir, ec);
    if (ec)
        fail(dir.string() + ": cannot read directory: " + ec.message());
    for (; it != fs::directory_iterator(); it.increment(ec)) {
        if (ec)
            fail(dir.string() + ": cannot read directory: " + ec.message());
        std::string name = it->path().filename().string();
        if (name.empty() || name[0] == '.')
            continue;
        std::error_code ec2;
        if (it->is_regular_file(ec2)) {
            out.push_back(it->path());
            continue;
        }
        if (it->is_directory(ec2))
            continue;
        // A .sql name that is not a readable regular file (a broken symlink, a FIFO that would block a read, a
        // device) is refused rather than skipped: skipping it would silently drop a migration.
        if (ends_with(name, ".sql"))
            fail(it->path().string() + ": not a readable regular file (broken symlink, FIFO or device?)");
    }
    std::sort(out.begin(), out.end());
    return out;
}

// ---- native ----------------------------------------------------------------------------------------------------

LoadedDirectory load_native(const fs::path& dir, const std::vector<fs::path>& files, const FileReader& reader) {
    struct Parts {
        std::optional<fs::path> up, down, verify;
        std::string name;
    };
    std::map<std::string, Parts> by_version;
    for (const auto& p : files) {
        std::string fname = p.filename().string();
        if (!ends_with(fname, ".sql"))
            continue;  // README.md and friends
        auto n = parse_native_name(fname);
        if (!n)
            fail(p.string() +
                 ": cannot parse a version from the file name (expected <version>_<name>.up.sql, "
                 ".down.sql or .verify.sql)");
        if (!is_valid_version(n->version))
            fail(p.string() + ": invalid version \"" + n->version +
                 "\" (1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit)");
        Parts& parts = by_version[n->version];
        if (!parts.name.empty() && parts.name != n->name)
            fail(p.string() + ": version " + n->version + " is used by two different names (\"" + parts.name +
                 "\" and \"" + n->name + "\")");
        parts.name = n->name;
        std::optional<fs::path>& slot = n->kind == FileKind::kUp     ? parts.up
                                        : n->kind == FileKind::kDown ? parts.down
                                                                     : parts.verify;
        if (slot)
            fail(p.string() + ": two files with the same version " + n->version + " (" + slot->string() + ")");
        slot = p;
    }
    LoadedDirectory out{"native", {}};
    for (auto& [version, parts] : by_version) {
        if (!parts.up) {
            const fs::path& other = parts.down ? *parts.down : *parts.verify;
            fail(other.string() + ": has no matching up script (" + version + "_" + parts.name + ".up.sql)");
        }
        Migration m;
        m.version = version;
        m.name = parts.name;
        m.up_path = parts.up->string();
        m.up_sql = reader.read_sql(*parts.up);
        if (parts.down) {
            m.down_path = parts.down->string();
            m.down_sql = reader.read_sql(*parts.down);
        }
        if (parts.verify) {
            m.verify_path = parts.verify->string();
            m.verify_sql = blank_as_none(reader.read_sql(*parts.verify));
        }
        apply_up_directives(m);
        out.migrations.push_back(std::move(m));
    }
    sort_and_check_versions(out.migrations, dir.string());
    return out;
}

// ---- flyway ----------------------------------------------------------------------------------------------------

LoadedDirectory load_flyway(const fs::path& dir, const std::vector<fs::path>& files, const FileReader& reader) {
    struct Parts {
        std::optional<fs::path> up, undo;
        std::string name;
    };
    std::map<std::string, Parts> by_version;
    for (const auto& p : files) {
        std::string fname = p.filename().string();
        if (!ends_with(fname, ".sql"))
            continue;
        auto n = parse_flyway_name(fname);
        if (!n)
            fail(p.string() +
                 ": not a Flyway migration name (expected V<version>__<name>.sql or U<version>__<name>.sql)");
        if (!is_valid_version(n->version))
            fail(p.string() + ": invalid version \"" + n->version + "\"");
        Parts& parts = by_version[n->version];
        std::optional<fs::path>& slot = n->undo ? parts.undo : parts.up;
        if (slot)
            fail(p.string() + ": two files with the same version " + n->version + " (" + slot->string() + ")");
        if (!n->undo || parts.name.empty())
            parts.name = n->name;
        slot = p;
    }
    LoadedDirectory out{"flyway", {}};
    for (auto& [version, parts] : by_version) {
        if (!parts.up)
            fail(parts.undo->string() + ": undo migration without a V" + version + "__*.sql");
        Migration m;
        m.version = version;
        m.name = parts.name;
        m.up_path = parts.up->string();
        m.up_sql = reader.read_sql(*parts.up);
        if (parts.undo) {
            m.down_path = parts.undo->string();
            m.down_sql = reader.read_sql(*parts.undo);
        }
        apply_up_directives(m);
        out.migrations.push_back(std::move(m));
    }
    sort_and_check_versions(out.migrations, dir.string());
    return out;
}

// ---- sqitch ----------------------------------------------------------------------------------------------------

LoadedDirectory load_sqitch(const fs::path& dir, const FileReader& reader) {
    fs::path plan_path = dir / "sqitch.plan";
    SqitchPlan plan = parse_sqitch_plan(reader.read_sql(plan_path), plan_path.string());
    if (plan.changes.empty())
        fail(plan_path.string() + ": the plan has no changes");
    size_t width = std::max<size_t>(4, std::to_string(plan.changes.size()).size());
    LoadedDirectory out{"sqitch", {}};
    int position = 0;
    for (const auto& c : plan.changes) {
        ++position;
        std::string file = c.rework_tag.empty() ? c.name + ".sql" : c.name + "@" + c.rework_tag + ".sql";
        Migration m;
        std::string v = std::to_string(position);
        m.version = std::string(width - v.size(), '0') + v;
        m.name = c.name;
        fs::path up = dir / "deploy" / file, down = dir / "revert" / file, verify = dir / "verify" / file;
        if (!present(up))
            fail(plan_path.string() + ":" + std::to_string(c.line) + ": change " + c.name + " has no deploy script " +
                 up.string());
        m.up_path = up.string();
        m.up_sql = strip_sqitch_transaction(reader.read_sql(up));
        if (present(down)) {
            m.down_path = down.string();
            m.down_sql = strip_sqitch_transaction(reader.read_sql(down));
        }
        if (present(verify)) {
            m.verify_path = verify.string();
            m.verify_sql = blank_as_none(strip_sqitch_transaction(reader.read_sql(verify)));
        }
        apply_up_directives(m);
        out.migrations.push_back(std::move(m));
    }
    return out;
}

bool is_date_time(const std::string& s) {
    // 2013-12-31T23:59:59Z
    if (s.size() != 20)
        return false;
    for (size_t i = 0; i < s.size(); ++i) {
        char c = s[i];
        bool ok = (i == 4 || i == 7)     ? c == '-'
                  : i == 10              ? c == 'T'
                  : (i == 13 || i == 16) ? c == ':'
                  : i == 19              ? c == 'Z'
                                         : std::isdigit(static_cast<unsigned char>(c));
        if (!ok)
            return false;
    }
    return true;
}

// Sqitch names: no whitespace, none of the plan's syntax characters, not starting with punctuation.
bool is_sqitch_name(const std::string& s) {
    if (s.empty() || std::ispunct(static_cast<unsigned char>(s[0])))
        return false;
    for (char c : s)
        if (std::isspace(static_cast<unsigned char>(c)) || c == '[' || c == ']' || c == '#' || c == '@' || c == ':' ||
            c == '%' || static_cast<unsigned char>(c) < 0x20)
            return false;
    return s.find("..") == std::string::npos;
}

// check_names: the extension stores at most kMaxNameChars characters of a name (22001); say so before connecting.
LoadedDirectory check_names(LoadedDirectory loaded) {
    for (const auto& m : loaded.migrations)
        if (common::utf8_chars(m.name) > common::kMaxNameChars)
            fail(m.up_path + ": the migration name is " + std::to_string(common::utf8_chars(m.name)) +
                 " characters long; at most " + std::to_string(common::kMaxNameChars) + " are allowed");
    return loaded;
}

}  // namespace

// ---- exposed pieces --------------------------------------------------------------------------------------------

/*
 * check_sql_text
 *		PostgreSQL text cannot hold NUL bytes and the server rejects invalid UTF-8 (in a UTF8 database); finding
 *		it here names the file and line instead of failing halfway through a registration.
 */
std::string check_sql_text(const std::string& bytes, const std::string& path) {
    std::string text = bytes;
    if (text.size() >= 3 && text.compare(0, 3, "\xEF\xBB\xBF") == 0)
        text.erase(0, 3);
    int line = 1;
    for (size_t i = 0; i < text.size();) {
        unsigned char c = static_cast<unsigned char>(text[i]);
        if (c == 0)
            fail(path + ":" + std::to_string(line) + ": contains a NUL byte (not a text file)");
        if (c == '\n')
            ++line;
        size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
        bool ok = len != 0 && i + len <= text.size();
        for (size_t k = 1; ok && k < len; ++k)
            ok = (static_cast<unsigned char>(text[i + k]) & 0xC0) == 0x80;
        if (ok && len > 1) {
            // Reject overlong forms, surrogates and code points past U+10FFFF.
            unsigned cp = len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
            for (size_t k = 1; k < len; ++k)
                cp = (cp << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
            ok = !((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
                   (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF);
        }
        if (!ok)
            fail(path + ":" + std::to_string(line) + ": not valid UTF-8 (byte offset " + std::to_string(i) + ")");
        i += len;
    }
    // An empty file is kept: an empty up or down script is a deliberate no-op migration (the extension registers
    // it with a notice); an empty verify script is no verification (blank_as_none).
    return text;
}

std::optional<NativeName> parse_native_name(const std::string& f) {
    FileKind kind;
    size_t suffix;
    if (ends_with(f, ".up.sql")) {
        kind = FileKind::kUp;
        suffix = 7;
    } else if (ends_with(f, ".down.sql")) {
        kind = FileKind::kDown;
        suffix = 9;
    } else if (ends_with(f, ".verify.sql")) {
        kind = FileKind::kVerify;
        suffix = 11;
    } else {
        return std::nullopt;
    }
    std::string stem = f.substr(0, f.size() - suffix);
    size_t us = stem.find('_');
    if (us == std::string::npos || us == 0 || us + 1 >= stem.size())
        return std::nullopt;
    return NativeName{stem.substr(0, us), stem.substr(us + 1), kind};
}

std::optional<FlywayName> parse_flyway_name(const std::string& f) {
    if (!ends_with(f, ".sql") || f.size() < 5)
        return std::nullopt;
    size_t sep = f.find("__");
    if (sep == std::string::npos)
        return std::nullopt;
    char prefix = f[0];
    if (prefix == 'R' && sep == 1)
        fail(f + ": repeatable Flyway migrations (R__) are not supported: pg_deploy migrations have versions");
    if (prefix == 'B' && sep > 1)
        fail(f + ": Flyway baseline migrations (B<version>__) are not supported: use pgdeploy baseline");
    if (prefix != 'V' && prefix != 'U')
        return std::nullopt;
    std::string raw = f.substr(1, sep - 1), name = f.substr(sep + 2, f.size() - 4 - (sep + 2));
    if (raw.empty() || name.empty())
        fail(f + ": a Flyway name needs a version and a description (V1__name.sql)");
    std::string version;
    bool part_has_digit = false;
    for (char c : raw) {
        if (std::isdigit(static_cast<unsigned char>(c))) {
            version += c;
            part_has_digit = true;
        } else if ((c == '.' || c == '_') && part_has_digit) {
            version += '.';
            part_has_digit = false;
        } else {
            fail(f + ": Flyway version \"" + raw + "\" is not made of numbers separated by . or _");
        }
    }
    if (!part_has_digit)
        fail(f + ": Flyway version \"" + raw + "\" is not made of numbers separated by . or _");
    return FlywayName{version, name, prefix == 'U'};
}

/*
 * parse_sqitch_plan
 *		Sqitch's plan format, line by line: `%key=value` pragmas, `name [deps] 2013-12-31T23:59:59Z Planner Name
 *		<email> # note` changes, `@tag timestamp planner <email> # note` tags, `#` comments. A change listed a
 *		second time (a rework) needs a tag in between; the earlier instance's scripts are then name@tag.sql.
 */
SqitchPlan parse_sqitch_plan(const std::string& text, const std::string& path) {
    SqitchPlan plan;
    std::map<std::string, size_t> last_index;          // change name → index of its latest instance
    std::vector<std::pair<size_t, std::string>> tags;  // (changes before the tag, tag name)
    std::istringstream in(text);
    std::string raw;
    int line_no = 0;
    auto bad = [&](const std::string& msg) { fail(path + ":" + std::to_string(line_no) + ": " + msg); };
    while (std::getline(in, raw)) {
        ++line_no;
        if (!raw.empty() && raw.back() == '\r')
            raw.pop_back();
        std::string line = trim(raw);
        if (line.empty() || line[0] == '#')
            continue;
        if (line[0] == '%') {
            size_t eq = line.find('=');
            if (eq == std::string::npos)
                bad("pragma without '=': " + line);
            std::string key = trim(line.substr(1, eq - 1)), value = trim(line.substr(eq + 1));
            if (key == "project")
                plan.project = value;
            if (key == "syntax-version" && value.compare(0, 2, "1.") != 0)
                bad("unsupported sqitch plan syntax-version " + value);
            continue;
        }
        // Split off the note.
        std::string note;
        size_t hash = line.find(" #");
        if (hash != std::string::npos) {
            note = trim(line.substr(hash + 2));
            line = trim(line.substr(0, hash));
        }
        bool is_tag = line[0] == '@';
        if (line[0] == '-')
            bad("changes marked for revert in the plan (-name) are not supported");
        if (line[0] == '+')
            line = trim(line.substr(1));
        size_t sp = line.find_first_of(" \t");
        if (sp == std::string::npos)
            bad("missing timestamp and planner after \"" + line + "\"");
        std::string name = line.substr(is_tag ? 1 : 0, sp - (is_tag ? 1 : 0));
        std::string rest = trim(line.substr(sp));
        std::vector<std::string> requires_;
        if (!is_tag && !rest.empty() && rest[0] == '[') {
            size_t close = rest.find(']');
            if (close == std::string::npos)
                bad("unterminated dependency list '['");
            std::istringstream deps(rest.substr(1, close - 1));
            std::string d;
            while (deps >> d)
                requires_.push_back(d);
            rest = trim(rest.substr(close + 1));
        }
        size_t sp2 = rest.find_first_of(" \t");
        std::string stamp = rest.substr(0, sp2);
        if (!is_date_time(stamp))
            bad("expected a timestamp like 2013-12-31T23:59:59Z, found \"" + stamp + "\"");
        std::string planner = sp2 == std::string::npos ? "" : trim(rest.substr(sp2));
        if (planner.empty() || planner.back() != '>' || planner.find('<') == std::string::npos)
            bad("expected the planner as Name <email> after the timestamp");
        if (!is_sqitch_name(name))
            bad("invalid " + std::string(is_tag ? "tag" : "change") + " name \"" + name + "\"");
        if (is_tag) {
            if (plan.changes.empty())
                bad("tag @" + name + " before any change");
            for (const auto& t : tags)
                if (t.second == name)
                    bad("duplicate tag @" + name);
            tags.emplace_back(plan.changes.size(), name);
            continue;
        }
        auto prev = last_index.find(name);
        if (prev != last_index.end()) {
            // A rework: a tag must separate the two instances; the earlier one uses the first tag after it.
            std::string tag;
            for (const auto& t : tags)
                if (t.first > prev->second) {
                    tag = t.second;
                    break;
                }
            if (tag.empty())
                bad("change " + name + " is listed twice without a tag in between");
            plan.changes[prev->second].rework_tag = tag;
        }
        last_index[name] = plan.changes.size();
        plan.changes.push_back(SqitchChange{name, requires_, note, "", line_no});
    }
    return plan;
}

std::string strip_sqitch_transaction(const std::string& sql) {
    std::vector<std::string> lines;
    std::istringstream in(sql);
    std::string l;
    while (std::getline(in, l))
        lines.push_back(l);
    auto is_comment_or_blank = [](const std::string& s) {
        std::string t = trim(s);
        return t.empty() || t.compare(0, 2, "--") == 0;
    };
    auto upper = [](std::string s) {
        s = trim(s);
        for (auto& c : s)
            c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        return s;
    };
    size_t first = 0;
    while (first < lines.size() && is_comment_or_blank(lines[first]))
        ++first;
    size_t last = lines.size();
    while (last > 0 && is_comment_or_blank(lines[last - 1]))
        --last;
    if (first >= lines.size() || last == 0 || last - 1 <= first)
        return sql;
    std::string b = upper(lines[first]), e = upper(lines[last - 1]);
    if ((b == "BEGIN;" || b == "BEGIN TRANSACTION;" || b == "START TRANSACTION;") &&
        (e == "COMMIT;" || e == "ROLLBACK;" || e == "END;")) {
        lines[first] = "-- (BEGIN; removed by pgdeploy load)";
        lines[last - 1] = "-- (" + trim(lines[last - 1]) + " removed by pgdeploy load)";
        std::string out;
        for (const auto& x : lines)
            out += x + "\n";
        return out;
    }
    return sql;
}

// ---- the entry point -------------------------------------------------------------------------------------------

/*
 * load_directory
 *		Layout detection: sqitch.plan wins; otherwise the .sql names decide, and a directory that mixes native
 *		and Flyway names is refused rather than guessed at.
 */
LoadedDirectory load_directory(const std::string& dir_arg, const LoadOptions& options) {
    fs::path dir(dir_arg);
    std::error_code ec;
    if (!fs::exists(dir, ec))
        fail(dir_arg + ": no such directory");
    if (!fs::is_directory(dir, ec))
        fail(dir_arg + ": not a directory");
    FileReader reader(dir, options);
    if (present(dir / "sqitch.plan"))
        return check_names(load_sqitch(dir, reader));
    std::vector<fs::path> files = list_files(dir);
    bool native = false, flyway = false;
    for (const auto& p : files) {
        std::string f = p.filename().string();
        if (!ends_with(f, ".sql"))
            continue;
        if (parse_native_name(f))
            native = true;
        else if (f.find("__") != std::string::npos && (f[0] == 'V' || f[0] == 'U' || f[0] == 'R' || f[0] == 'B'))
            flyway = true;
        else
            fail(p.string() +
                 ": cannot parse a version from the file name (expected <version>_<name>.up.sql, "
                 ".down.sql, .verify.sql, or Flyway's V<version>__<name>.sql)");
    }
    if (native && flyway)
        fail(dir_arg + ": mixes native (<version>_<name>.up.sql) and Flyway (V<version>__<name>.sql) files");
    if (!native && !flyway)
        fail(dir_arg + ": no migration files found");
    return check_names(flyway ? load_flyway(dir, files, reader) : load_native(dir, files, reader));
}

}  // namespace pgdeploy::loader
