// pg_deploy: splitting and classifying migration SQL with PostgreSQL's raw parser (no catalog access, so it is
// safe at registration time, before any object the migration refers to exists).
#include "pg_deploy/pg/sqltext.hpp"

#include <algorithm>
#include <utility>

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/boundary.hpp"

namespace pgdeploy {

namespace {

bool is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

// trimmed narrows sql[b, e) to the statement as written: no blanks around it, no final semicolons.
std::pair<std::size_t, std::size_t> trimmed(const std::string& sql, std::size_t b, std::size_t e) {
    while (b < e && is_blank(sql[b]))
        ++b;
    while (e > b && (is_blank(sql[e - 1]) || sql[e - 1] == ';'))
        --e;
    return {b, e};
}

// line_of_char converts a 1-based character position (what the parser reports) into a line number.
int line_of_char(const std::string& sql, std::size_t char_pos) {
    int line = 1;
    std::size_t chars = 0;
    for (std::size_t i = 0; i < sql.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(sql[i]);
        if ((c & 0xC0) == 0x80)
            continue;  // UTF-8 continuation byte
        if (++chars >= char_pos)
            break;
        if (c == '\n')
            ++line;
    }
    return line;
}

// chars_before counts the characters of sql[0, byte), to turn a position in a batch into one in the script.
std::size_t chars_before(const std::string& sql, std::size_t byte) {
    std::size_t chars = 0;
    for (std::size_t i = 0; i < byte && i < sql.size(); ++i)
        if ((static_cast<unsigned char>(sql[i]) & 0xC0) != 0x80)
            ++chars;
    return chars;
}

// LineCounter turns increasing byte offsets into line numbers, reading the script once in all.
class LineCounter {
public:
    explicit LineCounter(const std::string& sql) : sql_(sql) {}
    int line_at(std::size_t byte) {
        byte = std::min(byte, sql_.size());
        if (byte < pos_) {
            pos_ = 0;
            line_ = 1;
        }
        line_ += static_cast<int>(std::count(sql_.begin() + pos_, sql_.begin() + byte, '\n'));
        pos_ = byte;
        return line_;
    }

private:
    const std::string& sql_;
    std::size_t pos_ = 0;
    int line_ = 1;
};

bool has_option(List* options, const char* name) {
    ListCell* lc;
    foreach (lc, options) {
        DefElem* opt = static_cast<DefElem*>(lfirst(lc));
        if (strcmp(opt->defname, name) == 0) {
            if (opt->arg == nullptr)
                return true;
            if (IsA(opt->arg, Boolean))
                return boolVal(opt->arg);
            if (IsA(opt->arg, Integer))
                return intVal(opt->arg) != 0;
            if (IsA(opt->arg, String)) {
                const char* v = strVal(opt->arg);
                return !(strcmp(v, "false") == 0 || strcmp(v, "off") == 0 || strcmp(v, "0") == 0);
            }
            return true;
        }
    }
    return false;
}

// dropped_index: the one index a DROP INDEX CONCURRENTLY names (PostgreSQL allows no more).
std::optional<ConcurrentIndex> dropped_index(const DropStmt* s) {
    if (s->removeType != OBJECT_INDEX || list_length(s->objects) != 1)
        return std::nullopt;
    List* names = static_cast<List*>(linitial(s->objects));
    int n = list_length(names);
    ConcurrentIndex ci;
    ci.action = ConcurrentIndex::Action::drop;
    if (n >= 2)
        ci.schema = strVal(list_nth(names, n - 2));
    ci.index_name = strVal(llast(names));
    return ci;
}

// reindexed: the index or table a REINDEX INDEX|TABLE CONCURRENTLY rebuilds (SCHEMA, DATABASE: none).
std::optional<ConcurrentIndex> reindexed(const ReindexStmt* s) {
    if (s->relation == nullptr || (s->kind != REINDEX_OBJECT_INDEX && s->kind != REINDEX_OBJECT_TABLE))
        return std::nullopt;
    ConcurrentIndex ci;
    if (s->relation->schemaname)
        ci.schema = s->relation->schemaname;
    if (s->kind == REINDEX_OBJECT_INDEX) {
        ci.action = ConcurrentIndex::Action::reindex_index;
        ci.index_name = s->relation->relname;
    } else {
        ci.action = ConcurrentIndex::Action::reindex_table;
        ci.table_name = s->relation->relname;
    }
    return ci;
}

// classify reads the parse tree only (no palloc, no catalog): it cannot raise.
void classify(Node* stmt, SqlStatement& out) {
    switch (nodeTag(stmt)) {
        case T_TransactionStmt:
            out.transaction_control = true;
            break;
        case T_IndexStmt: {
            IndexStmt* s = reinterpret_cast<IndexStmt*>(stmt);
            if (s->concurrent) {
                out.non_transactional = "CREATE INDEX CONCURRENTLY";
                if (s->idxname != nullptr && s->relation != nullptr) {
                    ConcurrentIndex ci;
                    ci.index_name = s->idxname;
                    if (s->relation->schemaname)
                        ci.schema = s->relation->schemaname;
                    ci.table_name = s->relation->relname;
                    out.concurrent_index = ci;
                }
            }
            break;
        }
        case T_DropStmt: {
            DropStmt* s = reinterpret_cast<DropStmt*>(stmt);
            if (s->concurrent) {
                out.non_transactional = "DROP INDEX CONCURRENTLY";
                out.concurrent_index = dropped_index(s);
            }
            if (s->removeType == OBJECT_TABLE) {
                ListCell* lc;
                foreach (lc, s->objects) {
                    List* names = static_cast<List*>(lfirst(lc));
                    DropTarget t;
                    t.cascade = s->behavior == DROP_CASCADE;
                    int n = list_length(names);
                    if (n >= 2)
                        t.schema = strVal(list_nth(names, n - 2));
                    t.table = strVal(llast(names));
                    out.drops.push_back(t);
                }
            }
            break;
        }
        case T_ReindexStmt: {
            ReindexStmt* s = reinterpret_cast<ReindexStmt*>(stmt);
            if (has_option(s->params, "concurrently")) {
                out.non_transactional = "REINDEX CONCURRENTLY";
                out.concurrent_index = reindexed(s);
            } else if (s->kind == REINDEX_OBJECT_SYSTEM || s->kind == REINDEX_OBJECT_DATABASE)
                out.non_transactional = "REINDEX DATABASE/SYSTEM";
            break;
        }
        case T_VacuumStmt:
            if (reinterpret_cast<VacuumStmt*>(stmt)->is_vacuumcmd)
                out.non_transactional = "VACUUM";
            break;
        case T_AlterSystemStmt:
            out.non_transactional = "ALTER SYSTEM";
            break;
        case T_CreatedbStmt:
            out.non_transactional = "CREATE DATABASE";
            break;
        case T_DropdbStmt:
            out.non_transactional = "DROP DATABASE";
            break;
        case T_CreateTableSpaceStmt:
            out.non_transactional = "CREATE TABLESPACE";
            break;
        case T_DropTableSpaceStmt:
            out.non_transactional = "DROP TABLESPACE";
            break;
        case T_ClusterStmt:
            if (reinterpret_cast<ClusterStmt*>(stmt)->relation == nullptr)
                out.non_transactional = "CLUSTER without a table";
            break;
        case T_AlterTableStmt: {
            AlterTableStmt* s = reinterpret_cast<AlterTableStmt*>(stmt);
            ListCell* lc;
            foreach (lc, s->cmds) {
                AlterTableCmd* cmd = static_cast<AlterTableCmd*>(lfirst(lc));
                if (cmd->subtype == AT_DetachPartition && cmd->def != nullptr && IsA(cmd->def, PartitionCmd) &&
                    reinterpret_cast<PartitionCmd*>(cmd->def)->concurrent)
                    out.non_transactional = "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY";
                if (cmd->subtype == AT_DropColumn && s->objtype == OBJECT_TABLE && cmd->name != nullptr &&
                    s->relation != nullptr) {
                    DropTarget t;
                    t.is_column = true;
                    if (s->relation->schemaname)
                        t.schema = s->relation->schemaname;
                    t.table = s->relation->relname;
                    t.column = cmd->name;
                    t.cascade = cmd->behavior == DROP_CASCADE;
                    out.drops.push_back(t);
                }
            }
            break;
        }
        default:
            break;
    }
}

/*
 * ParseMemory holds the parse trees of one batch; it is emptied after each batch, so parsing a 50 MB script never
 * holds more than one batch's trees.
 */
class ParseMemory {
public:
    ParseMemory() {
        MemoryContext created = nullptr;
        pg_guard(
            [&] { created = AllocSetContextCreate(CurrentMemoryContext, "pg_deploy parse", ALLOCSET_DEFAULT_SIZES); });
        context_ = created;
    }
    ~ParseMemory() { MemoryContextDelete(context_); }
    ParseMemory(const ParseMemory&) = delete;
    ParseMemory& operator=(const ParseMemory&) = delete;

    // parse runs raw_parser over text in this context; an error comes back as PgError.
    List* parse(const char* text) {
        List* parsed = nullptr;
        MemoryContext context = context_;
        pg_guard([&] {
            MemoryContext caller = MemoryContextSwitchTo(context);
            parsed = raw_parser(text, RAW_PARSE_DEFAULT);
            MemoryContextSwitchTo(caller);
        });
        return parsed;
    }
    void reset() { MemoryContextReset(context_); }

private:
    MemoryContext context_ = nullptr;
};

DeployError syntax_error(const std::string& sql, std::size_t from, const PgError& e, const std::string& what) {
    ErrorData* data = e.data();
    std::size_t pos = data->cursorpos > 0 ? chars_before(sql, from) + static_cast<std::size_t>(data->cursorpos) : 0;
    std::string where = pos > 0 ? " at line " + std::to_string(line_of_char(sql, pos)) : std::string();
    return DeployError(e.sqlstate(), "syntax error in " + what + where + ": " + e.what(),
                       pos > 0 ? "character " + std::to_string(pos) + " of " + what : std::string(),
                       "pg_deploy parses migration SQL at registration so that a typo is refused before any "
                       "deployment starts.");
}

DeployError statement_too_big(const std::string& sql, const SqlSpan& span, const std::string& what) {
    std::size_t first = sql.find_first_not_of(" \t\r\n\f;", span.begin);
    int line = 1 + static_cast<int>(std::count(sql.begin(), sql.begin() + std::min(first, span.end), '\n'));
    return DeployError(sqlstate::program_limit_exceeded,
                       "the statement at line " + std::to_string(line) + " of " + what + " holds " +
                           std::to_string(span.code) + " bytes of SQL outside string constants and comments, over " +
                           "pg_deploy's limit of " + std::to_string(kMaxStatementCodeBytes) + " bytes (" +
                           std::to_string(kMaxStatementCodeBytes >> 20) + " MB) for one statement",
                       "PostgreSQL's parser cannot be interrupted inside one statement; the limit keeps a cancel "
                       "request answered within a second.",
                       "Split the statement, for example a long VALUES list into several INSERTs.");
}

/*
 * StatementReader parses a script one batch at a time and hands each statement, with its position in the whole
 * script, to a callback. Statement boundaries come from the parser (stmt_location and stmt_len), so semicolons inside
 * strings, dollar quotes and comments are never mistaken for separators; the batches only bound how long one
 * uninterruptible raw_parser call lasts. A batch that does not parse is either a real error or a boundary the
 * splitter got wrong (sql_split.hpp): the rest of the script is then parsed in one call, which reports the error
 * exactly as a parse of the whole script does, or gets the boundaries right.
 */
class StatementReader {
public:
    StatementReader(const std::string& sql, const std::string& what, const StatementSink& sink)
        : sql_(sql), what_(what), sink_(sink), lines_(sql) {}

    void check_size(const SqlSpan& statement) {
        if (!done_ && statement.code > kMaxStatementCodeBytes)
            throw statement_too_big(sql_, statement, what_);
    }

    void read_batch(const SqlSpan& batch) {
        if (done_)
            return;
        check_for_interrupts();
        // raw_parser wants a NUL-terminated string: the last batch is one already, in place.
        std::string copy = batch.end < sql_.size() ? sql_.substr(batch.begin, batch.size()) : std::string();
        const char* text = batch.end < sql_.size() ? copy.c_str() : sql_.c_str() + batch.begin;
        List* parsed = nullptr;
        bool failed = false;
        try {
            parsed = memory_.parse(text);
        } catch (const PgError&) {
            failed = true;
        }
        if (failed) {
            read_rest(batch.begin);
            return;
        }
        check_for_interrupts();  // a cancel that came during a long raw_parser call is answered now
        emit(parsed, batch.begin, batch.end);
        memory_.reset();
    }

private:
    // read_rest parses sql[from, end) in one raw_parser call, after the batch starting at `from` did not parse.
    void read_rest(std::size_t from) {
        done_ = true;
        memory_.reset();
        List* parsed = nullptr;
        try {
            parsed = memory_.parse(sql_.c_str() + from);
        } catch (const PgError& e) {
            throw syntax_error(sql_, from, e, what_);
        }
        emit(parsed, from, sql_.size());
    }

    // emit hands over the statements of sql[from, to) that parsed holds (its locations count from `from`).
    void emit(List* parsed, std::size_t from, std::size_t to) {
        ListCell* lc;
        foreach (lc, parsed) {
            RawStmt* raw = static_cast<RawStmt*>(lfirst(lc));
            std::size_t loc = from + (raw->stmt_location < 0 ? 0 : static_cast<std::size_t>(raw->stmt_location));
            std::size_t len = raw->stmt_len == 0 ? to - loc : static_cast<std::size_t>(raw->stmt_len);
            auto [b, e] = trimmed(sql_, loc, std::min(loc + len, sql_.size()));
            SqlStatement st;
            st.line = lines_.line_at(b);
            st.text = sql_.substr(b, e - b);
            classify(raw->stmt, st);
            sink_(st);
        }
    }

    const std::string& sql_;
    const std::string& what_;
    const StatementSink& sink_;
    LineCounter lines_;
    ParseMemory memory_;
    bool done_ = false;  // the rest of the script was parsed in one piece
};

}  // namespace

void check_for_interrupts() {
    pg_guard([] { CHECK_FOR_INTERRUPTS(); });
}

void check_script_size(const std::string& sql, const std::string& what) {
    if (sql.size() <= kMaxScriptBytes)
        return;
    throw DeployError(sqlstate::program_limit_exceeded,
                      what + " is " + std::to_string(sql.size()) + " bytes, over pg_deploy's limit of " +
                          std::to_string(kMaxScriptBytes) + " bytes (" + std::to_string(kMaxScriptBytes >> 20) +
                          " MB) for one script",
                      {},
                      "Split it into several migrations. Bulk data belongs in COPY from a server file or in a job "
                      "of its own, not in a migration script.");
}

void statement_batches(const std::string& sql, const SpanSink& on_batch, const SpanSink& on_statement) {
    if (sql.size() <= kStatementBatchBytes) {
        on_batch(SqlSpan{0, sql.size(), sql.size()});
        return;
    }
    SplitOptions options;
    options.standard_conforming_strings = standard_conforming_strings;
    options.check_interrupts = check_for_interrupts;
    for_each_batch(sql, kStatementBatchBytes, options, on_batch, on_statement);
}

void for_each_statement(const std::string& sql, const std::string& what, const StatementSink& sink) {
    StatementReader reader(sql, what, sink);
    statement_batches(
        sql, [&](const SqlSpan& batch) { reader.read_batch(batch); },
        [&](const SqlSpan& statement) { reader.check_size(statement); });
}

std::vector<SqlStatement> parse_sql(const std::string& sql, const std::string& what) {
    std::vector<SqlStatement> out;
    for_each_statement(sql, what, [&](const SqlStatement& st) { out.push_back(st); });
    return out;
}

}  // namespace pgdeploy
