// pg_deploy: splitting and classifying migration SQL with PostgreSQL's raw parser (no catalog access, so it is
// safe at registration time, before any object the migration refers to exists).
#include "pg_deploy/pg/sqltext.hpp"

#include "pg_deploy/errors.hpp"
#include "pg_deploy/pg/boundary.hpp"

namespace pgdeploy {

namespace {

std::string trim(const std::string& s) {
    std::size_t b = 0, e = s.size();
    while (b < e && (s[b] == ' ' || s[b] == '\t' || s[b] == '\n' || s[b] == '\r' || s[b] == '\f'))
        ++b;
    while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\n' || s[e - 1] == '\r' || s[e - 1] == '\f' ||
                     s[e - 1] == ';'))
        --e;
    return s.substr(b, e - b);
}

// line_of_char converts a 1-based character position (what the parser reports) into a line number.
int line_of_char(const std::string& sql, int char_pos) {
    int line = 1, chars = 0;
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

int line_of_byte(const std::string& sql, std::size_t byte_pos) {
    int line = 1;
    for (std::size_t i = 0; i < byte_pos && i < sql.size(); ++i)
        if (sql[i] == '\n')
            ++line;
    return line;
}

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
                        ci.table_schema = s->relation->schemaname;
                    ci.table_name = s->relation->relname;
                    out.concurrent_index = ci;
                }
            }
            break;
        }
        case T_DropStmt: {
            DropStmt* s = reinterpret_cast<DropStmt*>(stmt);
            if (s->concurrent)
                out.non_transactional = "DROP INDEX CONCURRENTLY";
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
            if (has_option(s->params, "concurrently"))
                out.non_transactional = "REINDEX CONCURRENTLY";
            else if (s->kind == REINDEX_OBJECT_SYSTEM || s->kind == REINDEX_OBJECT_DATABASE)
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

}  // namespace

/*
 * parse_sql runs raw_parser over the whole script. Statement boundaries come from the parser (stmt_location and
 * stmt_len), so semicolons inside strings, dollar quotes and comments are never mistaken for separators.
 */
std::vector<SqlStatement> parse_sql(const std::string& sql, const std::string& what) {
    List* parsed = nullptr;
    const char* source = sql.c_str();
    try {
        pg_guard([&] { parsed = raw_parser(source, RAW_PARSE_DEFAULT); });
    } catch (const PgError& e) {
        ErrorData* data = e.data();
        int pos = data->cursorpos;
        std::string where = pos > 0 ? " at line " + std::to_string(line_of_char(sql, pos)) : std::string();
        throw DeployError(e.sqlstate(), "syntax error in " + what + where + ": " + e.what(),
                          pos > 0 ? "character " + std::to_string(pos) + " of " + what : std::string(),
                          "pg_deploy parses migration SQL at registration so that a typo is refused before any "
                          "deployment starts.");
    }
    std::vector<SqlStatement> out;
    ListCell* lc;
    foreach (lc, parsed) {
        RawStmt* raw = static_cast<RawStmt*>(lfirst(lc));
        SqlStatement st;
        std::size_t loc = raw->stmt_location < 0 ? 0 : static_cast<std::size_t>(raw->stmt_location);
        std::size_t len = raw->stmt_len == 0 ? std::string::npos : static_cast<std::size_t>(raw->stmt_len);
        std::string piece = sql.substr(loc, len);
        std::size_t lead = piece.find_first_not_of(" \t\r\n\f");
        st.line = line_of_byte(sql, loc + (lead == std::string::npos ? 0 : lead));
        st.text = trim(piece);
        classify(raw->stmt, st);
        out.push_back(std::move(st));
    }
    return out;
}

}  // namespace pgdeploy
