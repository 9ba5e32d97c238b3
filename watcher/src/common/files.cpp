// Safe replacement of a file (see files.hpp).
#include "common/files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <random>
#include <system_error>

namespace pgdeploy::common {

namespace {

[[noreturn]] void fail(const std::string& what, const std::string& path) {
    int err = errno;  // before anything below may change it
    throw std::system_error(err, std::generic_category(), what + " " + path);
}

std::string random_suffix() {
    static const char kChars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    std::random_device rd;  // getrandom(2): nobody can guess the next name
    std::uniform_int_distribution<std::size_t> pick(0, sizeof kChars - 2);
    std::string s(12, 'x');
    for (auto& c : s)
        c = kChars[pick(rd)];
    return s;
}

std::string temp_name_for(const std::string& path) {
    auto slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
    std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    return dir + "." + base + "." + random_suffix();
}

}  // namespace

int create_exclusive(const std::string& path, mode_t mode) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    // open() applies the umask; fchmod() does not: the mode is exactly what was asked for.
    if (::fchmod(fd, mode) != 0) {
        int err = errno;
        ::close(fd);
        ::unlink(path.c_str());
        errno = err;
        return -1;
    }
    return fd;
}

AtomicFile::AtomicFile(std::string path, mode_t mode) : path_(std::move(path)) {
    for (int tries = 0; tries < 100 && fd_ < 0; ++tries) {
        temp_ = temp_name_for(path_);
        fd_ = create_exclusive(temp_, mode);
        if (fd_ < 0 && errno != EEXIST)
            fail("cannot create a temporary file for", path_);
    }
    if (fd_ < 0)
        fail("cannot create a temporary file for", path_);
}

AtomicFile::~AtomicFile() {
    if (fd_ >= 0) {
        ::close(fd_);
        ::unlink(temp_.c_str());
    }
}

void AtomicFile::write(std::string_view data) {
    while (!data.empty()) {
        ssize_t n = ::write(fd_, data.data(), data.size());
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail("cannot write", temp_);
        data.remove_prefix(static_cast<std::size_t>(n));
    }
}

void AtomicFile::commit() {
    if (::fsync(fd_) != 0)
        fail("cannot fsync", temp_);
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) {
        ::unlink(temp_.c_str());
        fail("cannot close", temp_);
    }
    if (::rename(temp_.c_str(), path_.c_str()) != 0) {
        int err = errno;
        ::unlink(temp_.c_str());
        errno = err;
        fail("cannot rename the new file to", path_);
    }
}

}  // namespace pgdeploy::common
