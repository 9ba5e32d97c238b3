// pg_deploy: the archive that keeps what a lossy revert drops (see include/pg_deploy/pg/archiver.hpp).
#include "pg_deploy/pg/archiver.hpp"

#include <vector>

#include "pg_deploy/pg/archive_name.hpp"
#include "pg_deploy/pg/settings.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
}

namespace pgdeploy {

namespace {

std::string quoted_identifier(const std::string& ident) {
    const char* in = ident.c_str();
    const char* out = nullptr;
    pg_guard([&] { out = quote_identifier(in); });
    return std::string(out);
}

}  // namespace

void Archiver::run_statement_by_statement(const std::string& down_sql) {
    std::vector<SqlStatement> stmts = parse_sql(down_sql, "down_sql of migration " + version_);
    for (const SqlStatement& st : stmts) {
        for (const DropTarget& d : st.drops)
            archive(d);
        run_user_sql(st.text);
    }
}

// archive copies one dropped table or column, if it exists and is a table (resolved as the down SQL will resolve it,
// on the caller's path), and records the copy; it is kept for pg_deploy.rollback_window.
void Archiver::archive(const DropTarget& d) {
    Oid relid = relation_on_callers_path(d.schema, d.table);
    if (relid == InvalidOid)
        return;
    Rows rel = run_query(
        "SELECT c.oid::bigint, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), "
        "c.relname FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = $1::oid AND c.relkind IN ('r', 'p')",
        {INT8OID}, {p_int8(static_cast<int64_t>(relid))});
    if (rel.empty())
        return;  // DROP ... IF EXISTS of a missing table, or not a table
    int64_t oid = cell_int8(rel.front()[0]);
    std::string qualified = *rel.front()[1];
    std::string relname = *rel.front()[2];
    std::string object_name = qualified;  // each part quoted: "a.b"."c" and a."b.c" stay apart
    std::string select;
    if (d.is_column) {
        Rows col = run_query(
            "SELECT pg_catalog.quote_ident(attname) FROM pg_catalog.pg_attribute "
            "WHERE attrelid = $1::oid AND attname = $2 AND attnum > 0 AND NOT attisdropped",
            {INT8OID, TEXTOID}, {p_int8(oid), p_text(d.column)});
        if (col.empty())
            return;
        Rows pk = run_query(
            "SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum) "
            "FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[]) "
            "WHERE i.indrelid = $1::oid AND i.indisprimary AND a.attname <> $2",
            {INT8OID, TEXTOID}, {p_int8(oid), p_text(d.column)});
        std::string keys = pk.front()[0].value_or("");
        select = keys.empty() ? "SELECT * FROM " + qualified
                              : "SELECT " + keys + ", " + *col.front()[0] + " FROM " + qualified;
        object_name += "." + *col.front()[0];
    } else {
        select = "SELECT * FROM " + qualified;
    }
    std::string table = free_archive_table(deployment_id_, relname, d.is_column ? d.column : "");
    std::string archive_table = "deploy_archive." + quoted_identifier(table);
    run_user_sql("CREATE TABLE " + archive_table + " AS " + select);
    Rows count = run_query(("SELECT count(*) FROM " + archive_table).c_str());
    int64_t rows = cell_int8(count.front()[0]);
    run_query(
        "INSERT INTO deploy.archived (deployment_id, version, object_type, object_name, archive_table, "
        "row_count, expires_at) VALUES ($1, $2, $3, $4, $5, $6, "
        "pg_catalog.now() + pg_catalog.make_interval(secs => $7))",
        {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID, FLOAT8OID},
        {p_int8(deployment_id_), p_text(version_), p_text(std::string(d.is_column ? "column" : "table")),
         p_text(object_name), p_text(archive_table), p_int8(rows), p_float8(static_cast<double>(rollback_window_s))});
    Json entry{{"object_type", d.is_column ? "column" : "table"},
               {"object_name", object_name},
               {"archive_table", archive_table},
               {"row_count", rows}};
    events_.log("data_archived", deployment_id_, version_, std::nullopt, entry);
    archived_.push_back(entry);
}

}  // namespace pgdeploy
