#include "watch/process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "common/conninfo.hpp"

extern char** environ;

namespace pgdeploy::watch {

namespace {

Millis mono_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

}  // namespace

namespace {

// Child is a started program: its pid (the leader of its own process group) and the read end of its output pipe.
struct Child {
    pid_t pid = -1;
    int out_fd = -1;
    Millis start = 0;
};

/*
 * spawn_child forks and execs argv with exactly env. Everything the child needs (argv, envp) is built before fork():
 * the watcher has threads (HTTP checks, metrics), and between fork and exec a child may only call async-signal-safe
 * functions. The child gets its own process group so that a timeout kills the hook and anything it started, not only
 * the first process; its stdout and stderr share one pipe. On failure res.error says why and the pid is -1.
 */
Child spawn_child(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                  ProcessResult& res) {
    std::vector<char*> cargv;
    for (const auto& a : argv)
        cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);

    std::vector<std::string> envs;
    envs.reserve(env.size());
    for (const auto& [k, v] : env)
        envs.push_back(k + "=" + v);
    std::vector<char*> cenv;
    for (auto& e : envs)
        cenv.push_back(e.data());
    cenv.push_back(nullptr);

    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
        res.error = std::string("pipe: ") + std::strerror(errno);
        return {};
    }
    // A second pipe tells the parent whether execvp worked (closed by exec on success, errno written on failure).
    int status_pipe[2];
    if (pipe2(status_pipe, O_CLOEXEC) != 0) {
        res.error = std::string("pipe: ") + std::strerror(errno);
        close(out[0]);
        close(out[1]);
        return {};
    }
    Millis start = mono_ms();
    pid_t pid = fork();
    if (pid < 0) {
        res.error = std::string("fork: ") + std::strerror(errno);
        close(out[0]);
        close(out[1]);
        close(status_pipe[0]);
        close(status_pipe[1]);
        return {};
    }
    if (pid == 0) {
        setpgid(0, 0);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(out[1], 1);
        dup2(out[1], 2);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        // execvp searches the PATH of environ: the program is found where its own environment says.
        environ = cenv.data();
        execvp(cargv[0], cargv.data());
        int err = errno;
        ssize_t ignored = write(status_pipe[1], &err, sizeof err);
        (void)ignored;
        _exit(127);
    }
    setpgid(pid, pid);  // also from the parent: no race with an early kill
    close(out[1]);
    close(status_pipe[1]);

    int exec_errno = 0;
    ssize_t n = read(status_pipe[0], &exec_errno, sizeof exec_errno);
    close(status_pipe[0]);
    if (n == static_cast<ssize_t>(sizeof exec_errno)) {
        waitpid(pid, nullptr, 0);
        close(out[0]);
        res.error = "cannot run \"" + argv[0] + "\": " + std::strerror(exec_errno);
        return {};
    }
    res.started = true;
    fcntl(out[0], F_SETFL, fcntl(out[0], F_GETFL) | O_NONBLOCK);
    return Child{pid, out[0], start};
}

// kill_and_reap ends the child's whole process group and waits for the child.
void kill_and_reap(pid_t pid, int& status) {
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
}

// read_available appends what the pipe holds now, keeping at most max_output bytes; true at end of file.
bool read_available(int fd, std::size_t max_output, ProcessResult& res) {
    char buf[4096];
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r > 0) {
            std::size_t room = res.output.size() < max_output ? max_output - res.output.size() : 0;
            res.output.append(buf, std::min<std::size_t>(room, static_cast<std::size_t>(r)));
            if (static_cast<std::size_t>(r) > room)
                res.truncated = true;
        } else if (r == 0) {
            return true;
        } else {
            return false;  // EAGAIN
        }
    }
}

/*
 * supervise reads the child's output until it has exited and closed the pipe, its timeout passes (the group is
 * killed, res.timed_out) or tick() says stop (killed, *interrupted). Returns the wait status.
 */
int supervise(const Child& c, Millis timeout, std::size_t max_output, const std::function<bool()>& tick,
              ProcessResult& res, bool& interrupted) {
    bool eof = false;
    int status = 0;
    bool reaped = false;
    Millis next_tick = c.start + 100;
    for (;;) {
        if (!reaped && waitpid(c.pid, &status, WNOHANG) == c.pid)
            reaped = true;
        if (reaped && eof)
            break;
        Millis now = mono_ms();
        if (!reaped && now - c.start >= timeout) {
            res.timed_out = true;
            kill_and_reap(c.pid, status);
            break;
        }
        if (tick && now >= next_tick) {
            next_tick = now + 100;
            if (!tick()) {
                interrupted = true;
                kill_and_reap(c.pid, status);
                break;
            }
        }
        if (eof) {
            // Output closed (or a grandchild holds it open no more): just wait for the exit.
            usleep(10 * 1000);
            continue;
        }
        struct pollfd pfd = {c.out_fd, POLLIN, 0};
        int pr = poll(&pfd, 1, 50);
        if (pr > 0)
            eof = read_available(c.out_fd, max_output, res);
        // A child that exited while a grandchild keeps the pipe open must not hang us: stop reading once reaped.
        if (reaped && !eof && pr == 0)
            break;
    }
    return status;
}

}  // namespace

/*
 * run_process runs a hook, an alert command or a command check: spawn it with exactly env, supervise it (output up
 * to max_output, timeout, tick), then kill whatever it left in its process group and scrub its output.
 */
ProcessResult run_process(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                          Millis timeout, std::size_t max_output, const std::function<bool()>& tick) {
    ProcessResult res;
    if (argv.empty() || argv[0].empty()) {
        res.error = "empty argv";
        return res;
    }
    Child child = spawn_child(argv, env, res);
    if (child.pid < 0)
        return res;
    bool interrupted = false;
    int status = supervise(child, timeout, max_output, tick, res, interrupted);
    close(child.out_fd);
    // Whatever the child left running in its group goes too.
    kill(-child.pid, SIGKILL);
    res.duration_ms = static_cast<double>(mono_ms() - child.start);
    if (interrupted)
        res.error = "interrupted";
    // Scrubbed here, before anyone cuts it: the output reaches logs, check details and events.
    res.output = common::scrub(sanitize_utf8(res.output));
    if (WIFEXITED(status))
        res.exit_code = WEXITSTATUS(status);
    else if (WIFSIGNALED(status))
        res.signal = WTERMSIG(status);
    return res;
}

std::string sanitize_utf8(const std::string& s) {
    std::string out;
    out.reserve(s.size());
    std::size_t i = 0;
    while (i < s.size()) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
        bool ok = len > 0 && i + len <= s.size();
        for (std::size_t k = 1; ok && k < len; ++k)
            ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
        if (ok && len == 2 && c < 0xC2)
            ok = false;  // overlong
        if (ok && len >= 3) {
            unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
            if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 >= 0xA0) ||  // overlong, surrogates
                (c == 0xF0 && c1 < 0x90) || c > 0xF4 || (c == 0xF4 && c1 >= 0x90))
                ok = false;
        }
        if (ok) {
            out.append(s, i, len);
            i += len;
        } else {
            out += '?';
            ++i;
        }
    }
    return out;
}

std::string describe(const ProcessResult& r, bool with_output) {
    if (!r.started)
        return r.error;
    std::string s;
    if (r.timed_out)
        s = "killed after " + std::to_string(static_cast<long>(r.duration_ms)) + " ms (timeout)";
    else if (!r.error.empty())
        s = r.error;
    else if (r.signal)
        s = "killed by signal " + std::to_string(r.signal);
    else
        s = "exit " + std::to_string(r.exit_code);
    if (!with_output)
        return sanitize_utf8(s);
    std::string first = r.output.substr(0, r.output.find('\n'));
    if (first.size() > 200)
        first = first.substr(0, 200) + "...";
    if (!first.empty())
        s += ": " + first;
    return sanitize_utf8(s);
}

}  // namespace pgdeploy::watch
