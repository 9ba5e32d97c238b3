// The environment of the programs the watcher starts (watch/hook_env): built from scratch, so the watcher's
// PGPASSWORD and anything not allowed never reach a hook; long PGDEPLOY_* values are cut so exec never fails with
// E2BIG.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <string>

#include "common/limits.hpp"
#include "watch/config.hpp"
#include "watch/executor.hpp"
#include "watch/hook_env.hpp"
#include "watch/process.hpp"

using namespace pgdeploy::watch;

namespace {

// Sets a variable for one test and restores the old value.
struct ScopedEnv {
    std::string name;
    std::string old;
    bool had;
    ScopedEnv(const std::string& n, const std::string& v) : name(n) {
        const char* o = std::getenv(n.c_str());
        had = o != nullptr;
        if (had)
            old = o;
        setenv(n.c_str(), v.c_str(), 1);
    }
    ~ScopedEnv() {
        if (had)
            setenv(name.c_str(), old.c_str(), 1);
        else
            unsetenv(name.c_str());
    }
};

}  // namespace

TEST_CASE("child_environment: the minimal set, no PGPASSWORD, nothing else inherited", "[watch][hook_env]") {
    ScopedEnv pw("PGPASSWORD", "hook-env-secret");
    ScopedEnv other("SOME_TOKEN", "t0ken");
    ScopedEnv home("HOME", "/home/watcher");
    ScopedEnv lang("LANG", "C.UTF-8");
    ScopedEnv notify("NOTIFY_SOCKET", "/run/systemd/notify");
    Environment env = child_environment(HookEnvironmentConfig{});
    CHECK(env.at("PATH") == kDefaultHookPath);
    CHECK(env.at("HOME") == "/home/watcher");
    CHECK(env.at("LANG") == "C.UTF-8");
    CHECK(env.count("PGPASSWORD") == 0);
    CHECK(env.count("SOME_TOKEN") == 0);
    CHECK(env.count("NOTIFY_SOCKET") == 0);
    for (const auto& [k, v] : env)
        CHECK(v.find("hook-env-secret") == std::string::npos);
}

TEST_CASE("child_environment: pass copies what the watcher has, set wins over the minimal set", "[watch][hook_env]") {
    ScopedEnv kube("KUBECONFIG", "/etc/kube/config");
    unsetenv("PGDEPLOY_TEST_UNSET_VAR");
    HookEnvironmentConfig cfg;
    cfg.pass = {"KUBECONFIG", "PGDEPLOY_TEST_UNSET_VAR"};
    cfg.set = {{"PATH", "/opt/app/bin:/usr/bin:/bin"}, {"DEPLOY_ENV", "prod"}};
    Environment env = child_environment(cfg, {{"PGDEPLOY_MARKER_ID", "7"}});
    CHECK(env.at("KUBECONFIG") == "/etc/kube/config");
    CHECK(env.count("PGDEPLOY_TEST_UNSET_VAR") == 0);  // not set in the watcher: not set at all
    CHECK(env.at("PATH") == "/opt/app/bin:/usr/bin:/bin");
    CHECK(env.at("DEPLOY_ENV") == "prod");
    CHECK(env.at("PGDEPLOY_MARKER_ID") == "7");
}

TEST_CASE("child_environment: contract values are scrubbed and bounded", "[watch][hook_env]") {
    Environment env =
        child_environment({}, {{"PGDEPLOY_REASON", std::string(200000, 'r')},
                               {"PGDEPLOY_ALERT_MESSAGE", "cannot connect: postgresql://app:leak3d@db/app"}});
    CHECK(pgdeploy::common::utf8_chars(env.at("PGDEPLOY_REASON")) == kMaxHookValueChars);
    CHECK(env.at("PGDEPLOY_REASON").find(pgdeploy::common::kTruncatedMarker) != std::string::npos);
    CHECK(env.at("PGDEPLOY_ALERT_MESSAGE") == "cannot connect: postgresql://app:***@db/app");
}

TEST_CASE("a 200 kB reason does not keep the hook from starting (no E2BIG)", "[watch][hook_env][process]") {
    MarkerInfo m;
    m.id = 1;
    m.deployment_id = 2;
    m.reason = std::string(std::size_t{200} * 1024, 'x');
    // Unbounded, one 200 kB string is over the kernel's 128 KiB per string: exec fails with E2BIG.
    auto raw = run_process({"/bin/true"}, {{"PGDEPLOY_REASON", m.reason}}, 5000, 100);
    CHECK_FALSE(raw.started);
    CHECK_THAT(raw.error, Catch::Matchers::Contains("Argument list too long"));
    // Through child_environment the hook runs and sees the cut reason.
    auto r = run_process({"/bin/sh", "-c", "printf %s \"${#PGDEPLOY_REASON}\""},
                         child_environment({}, hook_variables(m, 1, "w1")), 5000, 100);
    REQUIRE(r.started);
    CHECK(r.exit_code == 0);
    CHECK(r.output == std::to_string(kMaxHookValueChars));
}

TEST_CASE("run_process: the child's environment is exactly the one given", "[watch][process]") {
    ScopedEnv pw("PGPASSWORD", "not-for-children");
    auto r = run_process({"/usr/bin/env"}, {{"ONLY", "this"}}, 5000, 4096);
    REQUIRE(r.started);
    CHECK(r.output == "ONLY=this\n");
    // argv[0] is looked up in the child's own PATH.
    auto found = run_process({"true"}, {{"PATH", "/usr/bin:/bin"}}, 5000, 100);
    CHECK(found.started);
    auto missing = run_process({"true"}, {{"PATH", "/nonexistent"}}, 5000, 100);
    CHECK_FALSE(missing.started);
}

TEST_CASE("hook_env_name_problem names what may not be configured", "[watch][hook_env]") {
    CHECK(hook_env_name_problem("KUBECONFIG").empty());
    CHECK(hook_env_name_problem("_X1").empty());
    CHECK_FALSE(hook_env_name_problem("PGPASSWORD").empty());
    CHECK_FALSE(hook_env_name_problem("PGDEPLOY_ATTEMPT").empty());
    CHECK_FALSE(hook_env_name_problem("WATCHDOG_USEC").empty());
    CHECK_FALSE(hook_env_name_problem("A=B").empty());
    CHECK_FALSE(hook_env_name_problem(std::string(129, 'A')).empty());
}
