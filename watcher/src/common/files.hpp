// Writing a file that others read, in a directory others may write to (the watcher's state file).
#pragma once
#include <sys/types.h>

#include <string>
#include <string_view>

namespace pgdeploy::common {

// create_exclusive: creates path for writing with O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, so an existing file or a
// symlink planted at that name is never opened, and gives it exactly `mode` whatever the umask. Returns the
// descriptor, or -1 with errno set.
int create_exclusive(const std::string& path, mode_t mode);

/*
 * AtomicFile
 *		Replaces `path` as a whole: the content goes to a new file next to it with an unpredictable name
 *		(".NAME.XXXXXXXXXXXX", created by create_exclusive), is fsynced, then renamed over path. rename(2)
 *		replaces a symlink at path instead of following it, and a reader sees the old or the new file, never a
 *		part. Destroyed without commit(), the temporary file is removed. Errors throw std::system_error naming
 *		the file.
 */
class AtomicFile {
public:
    AtomicFile(std::string path, mode_t mode);
    ~AtomicFile();
    AtomicFile(const AtomicFile&) = delete;
    AtomicFile& operator=(const AtomicFile&) = delete;

    void write(std::string_view data);
    void commit();
    const std::string& temp_path() const { return temp_; }

private:
    std::string path_;
    std::string temp_;
    int fd_ = -1;
};

}  // namespace pgdeploy::common
