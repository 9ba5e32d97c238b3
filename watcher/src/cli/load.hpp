// Registration of loaded migration files through deploy.register, shared by `pgdeploy load` and `pgdeploy up --dir`.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "common/connection.hpp"
#include "loader/loader.hpp"

namespace pgdeploy::cli {

struct RegisterReport {
    nlohmann::json doc;  // {"directory","layout","new","unchanged","updated","refused","migrations":[...]}
    int exit_code = 0;   // 0, 6 (drift) or 2 (a file the extension refused)
};

// register_all: registers every migration inside the caller's open transaction, each under a savepoint so every
// refusal is reported (not only the first). The caller commits on exit_code 0 and rolls back otherwise.
RegisterReport register_all(common::Connection& conn, const loader::LoadedDirectory& loaded, const std::string& dir);

// print_register_report: the human table of a report (stdout).
void print_register_report(const RegisterReport& report, bool dry_run);

}  // namespace pgdeploy::cli
