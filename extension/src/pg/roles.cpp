// pg_deploy: who is acting. The ledger records an actor on every row it writes; the engine writes those rows as the
// extension's owner (spi.cpp), and the marker functions are SECURITY DEFINER, so current_user there is the owner,
// not the person: the actor is the role the session acts as (after SET ROLE), which no function call changes.
#include "pg_deploy/pg/boundary.hpp"

namespace pgdeploy {

namespace {

/*
 * acting_role_impl: deploy.acting_role() returns the session's current role at the outer level: the login role, or
 * the role of SET ROLE. SECURITY DEFINER functions and the engine's owner rights do not change it, so a caller cannot
 * make the ledger name anybody else, and the owner's name never stands for the person who called.
 */
Datum acting_role_impl(FunctionCallInfo fcinfo) {
    Datum out = (Datum)0;
    pg_guard([&] {
        const char* role = GetUserNameFromId(GetOuterUserId(), false);
        out = DirectFunctionCall1(namein, CStringGetDatum(role));
    });
    return out;
}

}  // namespace

}  // namespace pgdeploy

PGDEPLOY_SQL_FUNCTION(pgdeploy_acting_role, pgdeploy::acting_role_impl)
