// The SQLSTATE → exit code mapping (docs/architecture.md, "pgdeploy exit codes").
#include "common/exit_codes.hpp"

namespace pgdeploy {

/*
 * exit_code_for_sqlstate
 *		Callers of the extension need the same answer for the same server error, whichever command saw it: a
 *		script that retries on 4 (lock held) must not see 1 from one command and 4 from another.
 */
int exit_code_for_sqlstate(const std::string& sqlstate) {
    if (sqlstate == "55P03")
        return kExitLockHeld;
    if (sqlstate == "PD002")
        return kExitIrreversible;
    if (sqlstate == "PD001")
        return kExitDrift;
    if (sqlstate == "PD006" || sqlstate == "55000")
        return kExitRollbackRefused;
    // read_only_sql_transaction: a standby (or a read-only session) refused a write; waiting or pointing the DSN at
    // the primary helps, fixing the migration does not.
    if (sqlstate == "25006")
        return kExitReadOnly;
    if (sqlstate == "08000" || sqlstate == "08001" || sqlstate == "08003" || sqlstate == "08004" ||
        sqlstate == "08006" || sqlstate == "57P03")
        return kExitConnect;
    return kExitFailed;
}

}  // namespace pgdeploy
