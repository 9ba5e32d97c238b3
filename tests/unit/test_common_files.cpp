// common/files: the state file's writer. A planted symlink is never followed (at the temporary name or at the
// destination), the mode is exact whatever the umask, and a reader never sees half a file.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <system_error>

#include "common/files.hpp"

namespace fs = std::filesystem;
using namespace pgdeploy::common;

namespace {

struct TempDir {
    fs::path path;
    TempDir() {
        std::random_device rd;
        path = fs::temp_directory_path() / ("pgdeploy-files-" + std::to_string(getpid()) + "-" + std::to_string(rd()));
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

std::string slurp(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

mode_t mode_of(const fs::path& p) {
    struct stat st {};
    REQUIRE(lstat(p.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

// With a umask, restored on scope exit.
struct Umask {
    mode_t old;
    explicit Umask(mode_t m) : old(umask(m)) {}
    ~Umask() { umask(old); }
};

}  // namespace

TEST_CASE("AtomicFile writes the whole file with exactly the asked mode, whatever the umask", "[common][files]") {
    TempDir d;
    fs::path target = d.path / "state.json";
    for (mode_t mask : {mode_t(0), mode_t(077), mode_t(0277)}) {
        Umask u(mask);
        AtomicFile f(target.string(), 0640);
        f.write("{\"a\": ");
        f.write("1}\n");
        f.commit();
        INFO("umask " << std::oct << mask);
        CHECK(mode_of(target) == 0640);
        CHECK(slurp(target) == "{\"a\": 1}\n");
    }
    // Nothing else is left in the directory: the temporary file became the target.
    CHECK(std::distance(fs::directory_iterator(d.path), fs::directory_iterator()) == 1);
}

TEST_CASE("AtomicFile replaces a symlink at the destination instead of writing through it", "[common][files]") {
    TempDir d;
    fs::path victim = d.path / "victim";
    std::ofstream(victim) << "precious\n";
    fs::path target = d.path / "state.json";
    fs::create_symlink(victim, target);
    AtomicFile f(target.string(), 0600);
    f.write("new\n");
    f.commit();
    CHECK(slurp(victim) == "precious\n");
    CHECK_FALSE(fs::is_symlink(target));
    CHECK(slurp(target) == "new\n");
    CHECK(mode_of(target) == 0600);
}

TEST_CASE("create_exclusive never opens a planted symlink or an existing file", "[common][files]") {
    TempDir d;
    fs::path victim = d.path / "victim";
    std::ofstream(victim) << "precious\n";
    fs::path planted = d.path / ".state.json.AAAAAAAAAAAA";
    fs::create_symlink(victim, planted);
    errno = 0;
    CHECK(create_exclusive(planted.string(), 0640) == -1);
    CHECK(errno == EEXIST);
    fs::path dangling = d.path / "dangling";
    fs::create_symlink(d.path / "does-not-exist", dangling);
    CHECK(create_exclusive(dangling.string(), 0640) == -1);
    CHECK_FALSE(fs::exists(d.path / "does-not-exist"));  // not created through the link
    CHECK(create_exclusive(victim.string(), 0640) == -1);
    CHECK(slurp(victim) == "precious\n");
    int fd = create_exclusive((d.path / "fresh").string(), 0640);
    CHECK(fd >= 0);
    close(fd);
}

TEST_CASE("AtomicFile's temporary names are unpredictable and cleaned up", "[common][files]") {
    TempDir d;
    fs::path target = d.path / "state.json";
    std::string first, second;
    {
        AtomicFile a(target.string(), 0640);
        AtomicFile b(target.string(), 0640);
        first = a.temp_path();
        second = b.temp_path();
        CHECK(fs::exists(first));
        CHECK(first != second);
        CHECK(fs::path(first).filename().string().find(std::to_string(getpid())) == std::string::npos);
        CHECK(fs::path(first).parent_path() == d.path);  // same directory: rename is atomic
    }
    // Destroyed without commit: gone, and the target was never created.
    CHECK_FALSE(fs::exists(first));
    CHECK_FALSE(fs::exists(second));
    CHECK_FALSE(fs::exists(target));
}

TEST_CASE("AtomicFile reports a directory it cannot write to", "[common][files]") {
    CHECK_THROWS_AS(AtomicFile("/nonexistent-dir/pgdeploy/state.json", 0640), std::system_error);
}
