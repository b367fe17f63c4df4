/* upgrade: poolsrv's hand-over to a new process (SIGUSR2) without closing
 * its listeners; see upgrade.h. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "poolsrv/error.h"
#include "upgrade.h"

/* The variable that names the descriptor a new process reports on. */
#define UPGRADE_ENV "POOLSRV_UPGRADE_FD"

extern char **environ;

static char exe_path[PATH_MAX];
static char **args;
static int ready_fd = -1; /* set in a process started by a hand-over */

void upgrade_init(char **argv)
{
    args = argv;
    ssize_t n = readlink("/proc/self/exe", exe_path, sizeof exe_path - 1);
    exe_path[n > 0 ? n : 0] = '\0';
    const char *v = getenv(UPGRADE_ENV);
    if (v != NULL) {
        char *end;
        long fd = strtol(v, &end, 10);
        /* Only a descriptor that is open: a stale variable names nothing. */
        if (*end == '\0' && fd > 2 && fd < INT_MAX && fcntl((int)fd, F_SETFD, FD_CLOEXEC) == 0)
            ready_fd = (int)fd;
        unsetenv(UPGRADE_ENV);
    }
}

void upgrade_ready(void)
{
    if (ready_fd < 0)
        return;
    static const char msg[] = "READY\n";
    ssize_t w;
    do
        w = write(ready_fd, msg, sizeof msg - 1);
    while (w < 0 && errno == EINTR);
    close(ready_fd);
    ready_fd = -1;
}

/* Writes n in decimal at out (room for 20 digits and the NUL); between
 * fork and exec, where snprintf is not safe. */
static void put_decimal(char *out, unsigned long n)
{
    char tmp[24];
    int i = 0;
    do {
        tmp[i++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    while (i > 0)
        *out++ = tmp[--i];
    *out = '\0';
}

/* The new process, between fork and exec (async-signal-safe calls only):
 * the listeners at 3 (and 4) as socket activation has them, the readiness
 * pipe after them, nothing else open beyond, the signal mask cleared. */
static void child_exec(int data_fd, int admin_fd, int pipe_w, int first_free, char **envp,
                       char *pid_at)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigaction(SIGPIPE, &dfl, NULL);
    /* Copied above every descriptor in play first, so that placing one at
     * 3 cannot overwrite another still to be placed. */
    int d = fcntl(data_fd, F_DUPFD, first_free);
    int a = admin_fd >= 0 ? fcntl(admin_fd, F_DUPFD, first_free) : -1;
    int w = fcntl(pipe_w, F_DUPFD, first_free);
    if (d < 0 || (admin_fd >= 0 && a < 0) || w < 0)
        _exit(126);
    int next = 3;
    if (dup2(d, next++) < 0 || (a >= 0 && dup2(a, next++) < 0) || dup2(w, next++) < 0)
        _exit(126);
    (void)syscall(SYS_close_range, (unsigned)next, ~0U, 0U);
    put_decimal(pid_at, (unsigned long)getpid());
    execve(exe_path, args, envp);
    _exit(127);
}

/* Whether name=value in an environment entry is one a hand-over sets. */
static bool replaced_var(const char *entry)
{
    static const char *const names[] = {"LISTEN_PID=", "LISTEN_FDS=", "LISTEN_FDNAMES=",
                                        UPGRADE_ENV "="};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strncmp(entry, names[i], strlen(names[i])) == 0)
            return true;
    return false;
}

/* Waits up to ms for pid to end; true with its status when it did. */
static bool wait_exit(pid_t pid, int ms, int *status)
{
    for (int i = 0; i <= ms / 5; i++) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid || (r < 0 && errno != EINTR))
            return true;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return false;
}

/* The new process did not say it was ready: it is stopped (if still
 * running) and reaped, and err says how it ended. */
static void give_up(pid_t pid, const char *why, char *err, size_t errlen)
{
    int status = 0;
    bool ended = wait_exit(pid, 2000, &status);
    if (!ended) {
        kill(pid, SIGKILL);
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
    }
    if (!ended)
        snprintf(err, errlen, "pid %d %s; killed", (int)pid, why);
    else if (WIFEXITED(status))
        snprintf(err, errlen, "pid %d %s: exit status %d", (int)pid, why, WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(err, errlen, "pid %d %s: killed by signal %d", (int)pid, why, WTERMSIG(status));
    else
        snprintf(err, errlen, "pid %d %s", (int)pid, why);
}

/* Reads what the new process says on its pipe within timeout_ms: true
 * when it said READY; *timed_out when it said nothing in time (its end of
 * the pipe closing first, an exit or a failed exec, is not a timeout). */
static bool wait_ready(int fd, int timeout_ms, bool *timed_out)
{
    char buf[16];
    ssize_t got = -1;
    *timed_out = true;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long spent = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
        if (spent >= timeout_ms)
            break;
        int r = poll(&p, 1, (int)(timeout_ms - spent));
        if (r < 0 && errno == EINTR)
            continue;
        if (r > 0) {
            *timed_out = false;
            do
                got = read(fd, buf, sizeof buf);
            while (got < 0 && errno == EINTR);
        }
        break;
    }
    return got >= 5 && memcmp(buf, "READY", 5) == 0;
}

/* The new process's environment: this one's, with the socket activation
 * variables set for nfds listeners (LISTEN_PID's digits are written by the
 * child: e_pid) and the readiness descriptor named. NULL when out of
 * memory; free() it (the strings are not copies). */
static char **child_env(int nfds, char **e_pid)
{
    static char e_fds[32], e_ready[48], pid_var[48] = "LISTEN_PID=";
    snprintf(e_fds, sizeof e_fds, "LISTEN_FDS=%d", nfds);
    snprintf(e_ready, sizeof e_ready, "%s=%d", UPGRADE_ENV, 3 + nfds);
    const char *e_names = nfds == 2 ? "LISTEN_FDNAMES=data:admin" : "LISTEN_FDNAMES=data";
    size_t n = 0;
    while (environ[n] != NULL)
        n++;
    char **envp = calloc(n + 5, sizeof *envp);
    if (envp == NULL)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!replaced_var(environ[i]))
            envp[k++] = environ[i];
    envp[k++] = e_fds;
    envp[k++] = (char *)e_names;
    envp[k++] = e_ready;
    envp[k++] = pid_var;
    envp[k] = NULL;
    *e_pid = pid_var;
    return envp;
}

pid_t upgrade_start(int data_fd, int admin_fd, int timeout_ms, char *err, size_t errlen)
{
    if (exe_path[0] == '\0' || args == NULL) {
        snprintf(err, errlen, "the program's own path is unknown (/proc/self/exe)");
        return -1;
    }
    if (data_fd < 0) {
        snprintf(err, errlen, "no listener to pass");
        return -1;
    }
    int nfds = admin_fd >= 0 ? 2 : 1;
    char *e_pid = NULL;
    char **envp = child_env(nfds, &e_pid);
    int pipefd[2];
    if (envp == NULL || pipe2(pipefd, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "%s", envp == NULL ? "out of memory" : ps_strerror(-errno));
        free(envp);
        return -1;
    }
    int first_free = 3 + nfds + 1;
    int fds[] = {data_fd, admin_fd, pipefd[0], pipefd[1]};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
        if (fds[i] >= first_free)
            first_free = fds[i] + 1;

    pid_t pid = fork();
    if (pid == 0)
        child_exec(data_fd, admin_fd, pipefd[1], first_free, envp, e_pid + strlen("LISTEN_PID="));
    int fork_errno = errno;
    free(envp);
    close(pipefd[1]);
    if (pid < 0) {
        close(pipefd[0]);
        snprintf(err, errlen, "fork: %s", ps_strerror(-fork_errno));
        return -1;
    }
    /* Ready: the new process writes a line once it serves. */
    bool timed_out;
    bool ready = wait_ready(pipefd[0], timeout_ms, &timed_out);
    close(pipefd[0]);
    if (ready)
        return pid;
    if (timed_out) {
        kill(pid, SIGTERM);
        give_up(pid, "was not ready in time", err, errlen);
    } else {
        give_up(pid, "ended before it was ready", err, errlen);
    }
    return -1;
}
