// pg_deploy: statement boundaries of a SQL script (pure C++). The rules follow PostgreSQL 15's scanner, scan.l;
// the names in the comments ({space}, xqs, ...) are its own.
#include "pg_deploy/sql_split.hpp"

#include <algorithm>
#include <string_view>

namespace pgdeploy {

namespace {

constexpr std::size_t npos = std::string_view::npos;

// {space}: PostgreSQL 15 has no \v here (16 added it).
bool is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}
bool is_horiz_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\f';
}
bool is_newline(unsigned char c) {
    return c == '\n' || c == '\r';
}
// {ident_start}: ASCII letters, underscore and every byte of a multibyte character.
bool is_ident_start(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}
// {dolq_cont}
bool is_dolq_cont(unsigned char c) {
    return is_ident_start(c) || (c >= '0' && c <= '9');
}
// {ident_cont}: a '$' inside a word belongs to it (a$b$ is one identifier, not a dollar quote).
bool is_ident_cont(unsigned char c) {
    return is_dolq_cont(c) || c == '$';
}

bool iequals(std::string_view word, std::string_view keyword) {
    if (word.size() != keyword.size())
        return false;
    for (std::size_t i = 0; i < word.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(word[i]);
        if (c >= 'A' && c <= 'Z')
            c = static_cast<unsigned char>(c - 'A' + 'a');
        if (c != static_cast<unsigned char>(keyword[i]))
            return false;
    }
    return true;
}

bool is_routine(std::string_view word) {
    return iequals(word, "function") || iequals(word, "procedure");
}

/*
 * Splitter scans the script once. Literals and comments are skipped whole; between them it tracks what decides
 * whether a semicolon ends the statement: the parenthesis depth, and inside CREATE [OR REPLACE] FUNCTION or
 * PROCEDURE the BEGIN ATOMIC ... END bodies with the CASE ... END expressions they hold (the heuristic of psql's
 * psqlscan.l, narrowed to BEGIN followed by ATOMIC).
 */
class Splitter {
public:
    Splitter(std::string_view sql, const SplitOptions& options) : s_(sql), n_(sql.size()), options_(options) {}

    void run(const SpanSink& on_statement) {
        std::size_t begin = 0;
        while (pos_ < n_) {
            tick(pos_);
            unsigned char c = static_cast<unsigned char>(s_[pos_]);
            if (c == '-' && at(pos_ + 1) == '-') {
                skip_line_comment();
            } else if (c == '/' && at(pos_ + 1) == '*') {
                skip_block_comment();
            } else if (is_space(c) || (c == ';' && !started_)) {
                ++pos_;
            } else if (c == ';' && parens_ == 0 && body_depth_ == 0) {
                ++pos_;
                on_statement(SqlSpan{begin, pos_, code_});
                begin = pos_;
                start_statement();
            } else {
                token(c);
            }
        }
        tick(n_ > 0 ? n_ - 1 : 0);
        if (begin < n_)
            on_statement(SqlSpan{begin, n_, code_});
    }

private:
    static constexpr int kNotRoutine = -1;
    static constexpr int kRoutine = 4;  // header_ after CREATE [OR REPLACE] FUNCTION|PROCEDURE

    char at(std::size_t i) const { return i < n_ ? s_[i] : '\0'; }

    // tick calls check_interrupts once for every stride boundary the scan has reached (a jump over a long dollar
    // delimiter may pass several at once), so the calls number at least size / stride.
    void tick(std::size_t position) {
        while (position >= next_check_) {
            next_check_ += std::max<std::size_t>(options_.interrupt_stride, 1);
            if (options_.check_interrupts)
                options_.check_interrupts();
        }
    }

    void start_statement() {
        started_ = false;
        code_ = 0;
        parens_ = 0;
        body_depth_ = 0;
        header_ = 0;
        after_begin_ = false;
    }

    // token handles one token that is not a comment, a blank or a statement-ending semicolon.
    void token(unsigned char c) {
        bool was_begin = after_begin_;
        after_begin_ = false;
        started_ = true;
        std::size_t start = pos_;
        if (is_ident_start(c)) {
            word(was_begin);
            return;
        }
        not_a_header_word();
        switch (c) {
            case '\'':
                skip_string(!options_.standard_conforming_strings, true);
                return;
            case '"':
                skip_quoted_identifier();
                code_ += pos_ - start;
                return;
            case '$':
                if (!skip_dollar_quote()) {
                    ++pos_;  // a parameter ($1) or a lone '$'
                    ++code_;
                }
                return;
            case '(':
                ++parens_;
                break;
            case ')':
                if (parens_ > 0)
                    --parens_;
                break;
            default:
                break;
        }
        ++pos_;
        ++code_;
    }

    // word reads an identifier or keyword, or the prefix of a string: E'', B'', X'', N'', U&'' and U&"".
    void word(bool was_begin) {
        std::size_t start = pos_++;
        while (pos_ < n_ && is_ident_cont(static_cast<unsigned char>(s_[pos_]))) {
            tick(pos_);
            ++pos_;
        }
        std::string_view w = s_.substr(start, pos_ - start);
        code_ += w.size();
        if (literal_prefix(w))
            return;
        keyword(w, was_begin);
    }

    // literal_prefix skips the literal that the one-letter word w opens, if it opens one.
    bool literal_prefix(std::string_view w) {
        if (w.size() != 1)
            return false;
        if (at(pos_) == '\'') {
            switch (w[0]) {
                case 'e':
                case 'E':
                    not_a_header_word();
                    skip_string(true, true);
                    return true;
                case 'b':
                case 'B':
                case 'x':
                case 'X':
                    not_a_header_word();
                    skip_string(false, false);  // xb, xh: no escapes at all, '' ends the literal
                    return true;
                case 'n':
                case 'N':
                    not_a_header_word();
                    skip_string(!options_.standard_conforming_strings, true);
                    return true;
                default:
                    return false;
            }
        }
        if ((w[0] == 'u' || w[0] == 'U') && at(pos_) == '&' && (at(pos_ + 1) == '\'' || at(pos_ + 1) == '"')) {
            not_a_header_word();
            ++pos_;
            if (s_[pos_] == '\'')
                skip_string(false, true);
            else
                skip_quoted_identifier();
            return true;
        }
        return false;
    }

    // not_a_header_word: a token other than a word ends the search for CREATE [OR REPLACE] FUNCTION|PROCEDURE.
    void not_a_header_word() {
        if (header_ != kRoutine)
            header_ = kNotRoutine;
    }

    void keyword(std::string_view w, bool was_begin) {
        switch (header_) {
            case 0:
                header_ = iequals(w, "create") ? 1 : kNotRoutine;
                return;
            case 1:
                header_ = iequals(w, "or") ? 2 : is_routine(w) ? kRoutine : kNotRoutine;
                return;
            case 2:
                header_ = iequals(w, "replace") ? 3 : kNotRoutine;
                return;
            case 3:
                header_ = is_routine(w) ? kRoutine : kNotRoutine;
                return;
            case kRoutine:
                break;
            default:
                return;
        }
        bool opens = (was_begin && parens_ == 0 && iequals(w, "atomic")) || (body_depth_ > 0 && iequals(w, "case"));
        if (opens)
            ++body_depth_;
        else if (body_depth_ > 0 && iequals(w, "end"))
            --body_depth_;
        after_begin_ = iequals(w, "begin");
    }

    void skip_line_comment() {
        pos_ += 2;
        while (pos_ < n_ && !is_newline(static_cast<unsigned char>(s_[pos_]))) {
            tick(pos_);
            ++pos_;
        }
    }

    // Comments nest: every /* opens one more level (xcstart), every */ closes one (xcstop).
    void skip_block_comment() {
        pos_ += 2;
        std::size_t depth = 1;
        while (pos_ < n_) {
            tick(pos_);
            if (s_[pos_] == '/' && at(pos_ + 1) == '*') {
                ++depth;
                pos_ += 2;
            } else if (s_[pos_] == '*' && at(pos_ + 1) == '/') {
                pos_ += 2;
                if (--depth == 0)
                    return;
            } else {
                ++pos_;
            }
        }
    }

    /*
     * skip_string skips a quoted literal from its opening quote. backslash: a backslash escapes the next byte (xe).
     * doubled: '' is a quote inside the literal (xq, xe, xus; in xb and xh it ends the literal and a new one starts).
     * A literal continues in the same state after a closing quote that a newline separates from the next quote
     * (xqs, {quotecontinue}).
     */
    void skip_string(bool backslash, bool doubled) {
        ++pos_;
        while (pos_ < n_) {
            tick(pos_);
            char c = s_[pos_];
            if ((backslash && c == '\\') || (c == '\'' && doubled && at(pos_ + 1) == '\'')) {
                pos_ += 2;  // an escaped character, or a doubled quote
            } else if (c == '\'') {
                std::size_t next = continuation_quote(++pos_);
                if (next == npos)
                    return;
                pos_ = next + 1;
            } else {
                ++pos_;
            }
        }
        pos_ = std::min(pos_, n_);
    }

    /*
     * continuation_quote: the position of the quote that continues a literal closed just before `from`, or npos.
     * {quotecontinue} = {quote}{whitespace_with_newline}{quote}: blanks and -- comments, a newline, then blanks and
     * -- comments each ended by a newline.
     */
    std::size_t continuation_quote(std::size_t from) {
        std::size_t k = from;
        while (k < n_) {
            tick(k);
            if (is_horiz_space(static_cast<unsigned char>(s_[k])))
                ++k;
            else if (s_[k] == '-' && at(k + 1) == '-')
                k = line_end(k + 2);
            else
                break;
        }
        if (k >= n_ || !is_newline(static_cast<unsigned char>(s_[k])))
            return npos;
        ++k;
        while (k < n_) {
            tick(k);
            if (is_space(static_cast<unsigned char>(s_[k]))) {
                ++k;
            } else if (s_[k] == '-' && at(k + 1) == '-') {
                k = line_end(k + 2);
                if (k >= n_)
                    return npos;
                ++k;
            } else {
                break;
            }
        }
        return (k < n_ && s_[k] == '\'') ? k : npos;
    }

    std::size_t line_end(std::size_t k) {
        while (k < n_ && !is_newline(static_cast<unsigned char>(s_[k]))) {
            tick(k);
            ++k;
        }
        return k;
    }

    void skip_quoted_identifier() {
        ++pos_;
        while (pos_ < n_) {
            tick(pos_);
            if (s_[pos_] != '"') {
                ++pos_;
            } else if (at(pos_ + 1) == '"') {
                pos_ += 2;
            } else {
                ++pos_;
                return;
            }
        }
    }

    /*
     * skip_dollar_quote skips $tag$ ... $tag$ from the opening '$' ({dolqdelim}); false when no delimiter starts
     * here. The tag holds no '$', so two candidate closings never overlap and the search stays linear.
     */
    bool skip_dollar_quote() {
        std::size_t k = pos_ + 1;
        if (k < n_ && is_ident_start(static_cast<unsigned char>(s_[k]))) {
            while (k < n_ && is_dolq_cont(static_cast<unsigned char>(s_[k]))) {
                tick(k);
                ++k;
            }
        }
        if (k >= n_ || s_[k] != '$')
            return false;
        std::string_view delimiter = s_.substr(pos_, k + 1 - pos_);
        pos_ = k + 1;
        while (pos_ < n_) {
            tick(pos_);
            if (s_[pos_] == '$' && s_.compare(pos_, delimiter.size(), delimiter) == 0) {
                pos_ += delimiter.size();
                return true;
            }
            ++pos_;
        }
        return true;
    }

    std::string_view s_;
    std::size_t n_;
    const SplitOptions& options_;
    std::size_t pos_ = 0;
    std::size_t next_check_ = 0;
    // The statement being read.
    bool started_ = false;  // it has a token (a lone ';' before the first one is a blank)
    std::size_t code_ = 0;  // SqlSpan::code
    std::size_t parens_ = 0;
    std::size_t body_depth_ = 0;  // BEGIN ATOMIC bodies, and the CASE expressions inside them
    int header_ = 0;              // 0..3: how much of CREATE [OR REPLACE] FUNCTION|PROCEDURE was seen
    bool after_begin_ = false;    // the previous token was the word BEGIN
};

}  // namespace

void split_sql(std::string_view sql, const SplitOptions& options, const SpanSink& on_statement) {
    Splitter(sql, options).run(on_statement);
}

std::vector<SqlSpan> split_sql(std::string_view sql, const SplitOptions& options) {
    std::vector<SqlSpan> spans;
    split_sql(sql, options, [&](const SqlSpan& s) { spans.push_back(s); });
    return spans;
}

bool holds_code(std::string_view sql, const SplitOptions& options) {
    bool found = false;
    split_sql(sql, options, [&](const SqlSpan& s) {
        // A span's code is its bytes outside comments, blanks and quotes, its ending semicolon included.
        std::size_t last = sql.substr(s.begin, s.size()).find_last_not_of(" \t\r\n\f");
        bool ends_with_semicolon = last != std::string_view::npos && sql[s.begin + last] == ';';
        if (s.code > (ends_with_semicolon ? 1U : 0U))
            found = true;
    });
    return found;
}

void for_each_batch(std::string_view sql, std::size_t target, const SplitOptions& options, const SpanSink& on_batch,
                    const SpanSink& on_statement) {
    SqlSpan batch;
    bool open = false;
    split_sql(sql, options, [&](const SqlSpan& s) {
        if (on_statement)
            on_statement(s);
        if (!open) {
            batch = s;
            open = true;
        } else {
            batch.end = s.end;
            batch.code += s.code;
        }
        if (batch.size() >= target) {
            open = false;
            on_batch(batch);
        }
    });
    if (open)
        on_batch(batch);
}

}  // namespace pgdeploy
