#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "poolsrv/log.h"
#include "support.h"

int64_t t_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint16_t t_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    uint16_t port = 0;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

int t_connect(uint16_t port)
{
    return t_connect_rcvbuf(port, 0);
}

int t_connect_rcvbuf(uint16_t port, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (rcvbuf > 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static int wait_in(int fd, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - t_now_ms();
        if (left < 0)
            left = 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, (int)left);
        if (n > 0)
            return 0;
        if (n == 0)
            return -ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
    }
}

bool t_readable(int fd, int timeout_ms)
{
    return wait_in(fd, t_now_ms() + timeout_ms) == 0;
}

ssize_t t_read_line(int fd, char *buf, size_t cap, int timeout_ms)
{
    int64_t deadline = t_now_ms() + timeout_ms;
    size_t n = 0;
    while (n + 1 < cap) {
        int rc = wait_in(fd, deadline);
        if (rc < 0)
            return rc;
        char ch;
        ssize_t r = recv(fd, &ch, 1, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            break;
        buf[n++] = ch;
        if (ch == '\n')
            break;
    }
    buf[n] = '\0';
    return (ssize_t)n;
}

int t_read_exact(int fd, void *buf, size_t len, int timeout_ms)
{
    int64_t deadline = t_now_ms() + timeout_ms;
    size_t got = 0;
    while (got < len) {
        int rc = wait_in(fd, deadline);
        if (rc < 0)
            return rc;
        ssize_t r = recv(fd, (char *)buf + got, len - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return -EPIPE;
        got += (size_t)r;
    }
    return 0;
}

ssize_t t_wait_eof(int fd, int timeout_ms)
{
    int64_t deadline = t_now_ms() + timeout_ms;
    ssize_t total = 0;
    char buf[4096];
    for (;;) {
        int rc = wait_in(fd, deadline);
        if (rc < 0)
            return rc;
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r == 0)
            return total;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ECONNRESET)
                return total;
            return -errno;
        }
        total += r;
    }
}

int t_write_all(int fd, const void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t w = send(fd, (const char *)buf + done, len - done, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        done += (size_t)w;
    }
    return 0;
}

int t_send_str(int fd, const char *s)
{
    return t_write_all(fd, s, strlen(s));
}

ssize_t t_admin(uint16_t port, const char *cmd, char *buf, size_t cap)
{
    int fd = t_connect(port);
    if (fd < 0)
        return fd;
    char req[512];
    snprintf(req, sizeof req, "%s\r\n", cmd);
    int rc = t_send_str(fd, req);
    size_t n = 0;
    buf[0] = '\0';
    while (rc == 0) {
        ssize_t r = t_read_line(fd, buf + n, cap - n, 5000);
        if (r <= 0) {
            rc = r == 0 ? -EPIPE : (int)r;
            break;
        }
        const char *line = buf + n;
        n += (size_t)r;
        if (strcmp(line, "END\r\n") == 0 || strncmp(line, "ERROR", 5) == 0)
            break;
        if (n + 1 >= cap) {
            rc = -ENOBUFS;
            break;
        }
    }
    close(fd);
    return rc < 0 ? rc : (ssize_t)n;
}

/* Sends request to the admin port and reads until the server closes (or,
 * with one_line, one line). Returns the bytes read or a negative code. */
ssize_t t_admin_raw(uint16_t port, const char *request, bool one_line, char *buf, size_t cap)
{
    int fd = t_connect(port);
    if (fd < 0)
        return fd;
    ssize_t n = t_send_str(fd, request);
    if (n == 0 && one_line) {
        n = t_read_line(fd, buf, cap, 5000);
    } else if (n == 0) {
        size_t got = 0;
        while (got + 1 < cap && t_readable(fd, 5000)) {
            ssize_t r = recv(fd, buf + got, cap - 1 - got, 0);
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        buf[got] = '\0';
        n = (ssize_t)got;
    }
    close(fd);
    return n;
}

long long t_stat(const char *reply, const char *name)
{
    char key[128];
    snprintf(key, sizeof key, "STAT %s ", name);
    const char *p = reply;
    while ((p = strstr(p, key)) != NULL) {
        if (p == reply || p[-1] == '\n')
            return strtoll(p + strlen(key), NULL, 10);
        p++;
    }
    return -1;
}

ps_dispatch_mode t_dispatch = PS_DISPATCH_CONNECTION;

bool t_set_dispatch(const char *name)
{
    static const ps_dispatch_mode modes[] = {PS_DISPATCH_CONNECTION, PS_DISPATCH_EVENT,
                                             PS_DISPATCH_THREAD};
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        if (strcmp(name, ps_dispatch_name(modes[i])) == 0) {
            t_dispatch = modes[i];
            return true;
        }
    }
    return false;
}

void t_config(ps_config *cfg)
{
    ps_config_defaults(cfg);
    cfg->dispatch = t_dispatch;
    snprintf(cfg->bind, sizeof cfg->bind, "127.0.0.1");
    snprintf(cfg->admin_bind, sizeof cfg->admin_bind, "127.0.0.1");
    cfg->port = 0;
    cfg->admin_port = 0;
    cfg->log_level = PS_LOG_ERROR;
    ps_log_set_level(PS_LOG_ERROR);
}

ps_server *t_start_echo(const ps_config *cfg)
{
    return t_start(cfg, &ps_echo_handler);
}

ps_server *t_start(const ps_config *cfg, const ps_handler *handler)
{
    ps_server *srv = NULL;
    if (ps_server_create(&srv, cfg, handler, (void *)cfg->greeting, NULL, 0) != 0)
        return NULL;
    char err[256];
    if (ps_server_start(srv, err, sizeof err) != 0) {
        fprintf(stderr, "server start: %s\n", err);
        ps_server_destroy(srv);
        return NULL;
    }
    return srv;
}

int t_connect_greeted(uint16_t port, int timeout_ms)
{
    int fd = t_connect(port);
    if (fd < 0)
        return fd;
    char line[256];
    ssize_t r = t_read_line(fd, line, sizeof line, timeout_ms);
    if (r <= 0 || strcmp(line, "Welcome to my server\r\n") != 0) {
        close(fd);
        return r < 0 ? (int)r : -EPROTO;
    }
    return fd;
}

/* ---- running the poolsrv program ---- */

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

void t_proc_drain(t_proc *p)
{
    for (;;) {
        if (p->log_len + 1 >= sizeof p->log)
            return;
        ssize_t r = read(p->err_fd, p->log + p->log_len, sizeof p->log - 1 - p->log_len);
        if (r <= 0) {
            if (r < 0 && errno == EINTR)
                continue;
            break;
        }
        p->log_len += (size_t)r;
        p->log[p->log_len] = '\0';
    }
}

static uint16_t port_after(const char *log, const char *marker)
{
    const char *s = strstr(log, marker);
    if (s == NULL)
        return 0;
    s += strlen(marker);
    const char *nl = strchr(s, ' ');
    const char *end = strchr(s, '\n');
    if (end == NULL)
        return 0;
    if (nl == NULL || nl > end)
        nl = end;
    const char *colon = NULL;
    for (const char *q = s; q < nl; q++)
        if (*q == ':')
            colon = q;
    return colon ? (uint16_t)strtoul(colon + 1, NULL, 10) : 0;
}

int t_wait_exit(int pid, int timeout_ms)
{
    int64_t deadline = t_now_ms() + timeout_ms;
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            if (WIFEXITED(status))
                return WEXITSTATUS(status);
            return 128 + WTERMSIG(status);
        }
        if (r < 0 && errno != EINTR)
            return -errno;
        if (t_now_ms() >= deadline)
            return -ETIMEDOUT;
        usleep(5 * 1000);
    }
}

int t_proc_start(t_proc *p, char *const argv[], unsigned long nofile, bool want_admin,
                 int timeout_ms)
{
    t_child_opts o = {.nofile = nofile};
    return t_proc_start_with(p, argv, &o, want_admin, timeout_ms);
}

int t_proc_start_with(t_proc *p, char *const argv[], const t_child_opts *o, bool want_admin,
                      int timeout_ms)
{
    memset(p, 0, sizeof *p);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        return -e;
    }
    if (pid == 0) {
        dup2(fds[1], STDERR_FILENO);
        if (o->nofile > 0) {
            struct rlimit rl = {.rlim_cur = o->nofile, .rlim_max = o->nofile};
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        if (o->nproc > 0) {
            struct rlimit rl = {.rlim_cur = o->nproc, .rlim_max = o->nproc};
            if (setrlimit(RLIMIT_NPROC, &rl) < 0)
                _exit(126);
        }
        if (o->uid > 0 && (setgroups(0, NULL) < 0 || setgid(o->uid) < 0 || setuid(o->uid) < 0))
            _exit(126);
        for (size_t i = 0; o->env != NULL && o->env[i] != NULL; i++)
            putenv((char *)o->env[i]);
        if (o->nlisten > 0) {
            /* Above every fd in use first, then down to 3, 4, ... */
            int moved[8];
            for (int i = 0; i < o->nlisten && i < 8; i++)
                moved[i] = fcntl(o->listen_fds[i], F_DUPFD, 100);
            for (int i = 0; i < o->nlisten && i < 8; i++) {
                if (moved[i] < 0 || dup2(moved[i], 3 + i) < 0)
                    _exit(126);
                close(moved[i]);
            }
            char num[32];
            snprintf(num, sizeof num, "%d", (int)getpid());
            setenv("LISTEN_PID", num, 1);
            snprintf(num, sizeof num, "%d", o->nlisten);
            setenv("LISTEN_FDS", num, 1);
            if (o->listen_names != NULL)
                setenv("LISTEN_FDNAMES", o->listen_names, 1);
        }
        /* A test that fails leaves no server behind (after setuid, which
         * clears it): ctest would wait for its output to close. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    p->pid = pid;
    p->err_fd = fds[0];
    if (o->no_wait)
        return 0;
    int64_t deadline = t_now_ms() + timeout_ms;
    while (t_now_ms() < deadline) {
        t_proc_drain(p);
        p->port = port_after(p->log, "listening on ");
        p->admin_port = port_after(p->log, "admin on ");
        if (p->port != 0 && (!want_admin || p->admin_port != 0))
            return 0;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            t_proc_drain(p);
            close(p->err_fd);
            p->pid = 0;
            return -ECHILD;
        }
        struct pollfd pf = {.fd = p->err_fd, .events = POLLIN};
        poll(&pf, 1, 50);
    }
    t_proc_stop(p, SIGKILL, 1000);
    return -ETIMEDOUT;
}

bool t_proc_wait_log(t_proc *p, const char *needle, int timeout_ms)
{
    int64_t deadline = t_now_ms() + timeout_ms;
    for (;;) {
        t_proc_drain(p);
        if (strstr(p->log, needle) != NULL)
            return true;
        int64_t left = deadline - t_now_ms();
        if (left <= 0)
            return false;
        struct pollfd pf = {.fd = p->err_fd, .events = POLLIN};
        poll(&pf, 1, left > 50 ? 50 : (int)left);
    }
}

const char *t_proc_wait_log_nth(t_proc *p, const char *needle, int n, int timeout_ms)
{
    int64_t deadline = t_now_ms() + timeout_ms;
    for (;;) {
        t_proc_drain(p);
        const char *at = p->log;
        int seen = 0;
        while ((at = strstr(at, needle)) != NULL) {
            if (++seen == n)
                return at;
            at += strlen(needle);
        }
        if (t_now_ms() >= deadline)
            return NULL;
        t_readable(p->err_fd, 50);
    }
}

int t_proc_stop(t_proc *p, int sig, int timeout_ms)
{
    if (p->pid <= 0)
        return -ECHILD;
    kill(p->pid, sig);
    int rc = t_wait_exit(p->pid, timeout_ms);
    if (rc == -ETIMEDOUT) {
        kill(p->pid, SIGKILL);
        t_wait_exit(p->pid, 5000);
    }
    t_proc_drain(p);
    close(p->err_fd);
    p->pid = 0;
    return rc;
}

int t_run(char *const argv[], char *out, size_t cap, int timeout_ms)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        dup2(fds[1], STDERR_FILENO);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    size_t n = 0;
    int64_t deadline = t_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - t_now_ms();
        struct pollfd pf = {.fd = fds[0], .events = POLLIN};
        if (left <= 0 || poll(&pf, 1, (int)left) <= 0)
            break;
        ssize_t r = read(fds[0], out + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        if (n + 1 >= cap)
            break;
    }
    out[n] = '\0';
    close(fds[0]);
    int rc = t_wait_exit(pid, (int)(deadline > t_now_ms() ? deadline - t_now_ms() : 0) + 100);
    if (rc == -ETIMEDOUT) {
        kill(pid, SIGKILL);
        t_wait_exit(pid, 5000);
    }
    return rc;
}

/* ---- probes for the fault tests ---- */

#include <dirent.h>

long t_proc_status_kb(int pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    long kb = -1;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, field, n) == 0 && line[n] == ':') {
            kb = strtol(line + n + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

long t_proc_rss_kb(int pid)
{
    return t_proc_status_kb(pid, "VmRSS");
}

int t_proc_fd_count(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

long long t_proc_cpu_ticks(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    char *ok = fgets(buf, sizeof buf, f);
    fclose(f);
    const char *s = ok ? strrchr(buf, ')') : NULL;
    unsigned long long ut, st;
    /* After "(comm)": state, then fields 4..13, then utime and stime. */
    if (s == NULL ||
        sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (long long)(ut + st);
}

int t_connect_nb(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

const char *t_log_problem(const char *log, const char *allow)
{
    for (const char *line = log; *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char buf[1024];
        size_t n = len < sizeof buf - 1 ? len : sizeof buf - 1;
        memcpy(buf, line, n);
        buf[n] = '\0';
        /* A log line is "TIMESTAMP LEVEL message". */
        const char *sp = strchr(buf, ' ');
        bool error_level = sp != NULL && strncmp(sp + 1, "ERROR ", 6) == 0;
        if (strstr(buf, "Sanitizer") != NULL || strstr(buf, "runtime error") != NULL ||
            (error_level && (allow == NULL || strstr(buf, allow) == NULL)))
            return line;
        line += len + (end ? 1 : 0);
    }
    return NULL;
}

uint64_t t_fnv1a64(uint64_t h, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* ---- a client loop (tests/test_restart.c, tests/test_haproxy.c) ---- */

#include <pthread.h>
#include <stdatomic.h>

typedef struct t_looper {
    pthread_t thread;
    int id;
    struct t_loop *loop;
} t_looper;

struct t_loop {
    uint16_t port;
    int session_ms;
    int nthreads;
    atomic_bool stop;
    /* Summed over the threads; each outcome one relaxed add, so that the
     * test thread may read them while the loop runs. */
    atomic_long attempts, ok, refused, reset, early_eof, wrong, timeouts, other;
    atomic_llong worst_ms;
    pthread_mutex_t lock; /* guards problem */
    char problem[160];
    t_looper threads[16];
};

static void loop_problem(struct t_loop *l, long attempt, const char *step, ssize_t rc,
                         const char *got)
{
    atomic_long *c = rc == -ECONNREFUSED                ? &l->refused
                     : rc == -ECONNRESET || rc == -EPIPE ? &l->reset
                     : rc == 0                           ? &l->early_eof
                     : rc == -ETIMEDOUT                  ? &l->timeouts
                     : rc > 0                            ? &l->wrong
                                                         : &l->other;
    pthread_mutex_lock(&l->lock);
    if (l->problem[0] == '\0')
        snprintf(l->problem, sizeof l->problem, "attempt %ld, %s: %s%.60s", attempt, step,
                 rc > 0 ? "got " : rc == 0 ? "end of stream" : strerror((int)-rc),
                 rc > 0 ? got : "");
    pthread_mutex_unlock(&l->lock);
    atomic_fetch_add(c, 1); /* after the text: a reader that sees the count sees why */
}

/* One session: connect, greeting, a line and its echo, "exit", the close. */
static void loop_session(struct t_loop *l, int id, long attempt)
{
    atomic_fetch_add(&l->attempts, 1);
    int64_t t0 = t_now_ms();
    int fd = t_connect(l->port);
    if (fd < 0) {
        loop_problem(l, attempt, "connect", fd, NULL);
        return;
    }
    char buf[256], line[64];
    ssize_t n = t_read_line(fd, buf, sizeof buf, l->session_ms);
    bool ok = n > 0 && strcmp(buf, "Welcome to my server\r\n") == 0;
    const char *step = "greeting";
    if (ok) {
        step = "echo";
        snprintf(line, sizeof line, "client %d session %ld\r\n", id, attempt);
        int w = t_send_str(fd, line);
        n = w < 0 ? w : t_read_line(fd, buf, sizeof buf, l->session_ms);
        ok = n > 0 && strcmp(buf, line) == 0;
    }
    if (ok) {
        step = "close";
        int w = t_send_str(fd, "exit\r\n");
        n = w < 0 ? w : t_wait_eof(fd, l->session_ms);
        ok = n >= 0;
        if (!ok && n == 0)
            n = -EPIPE;
    }
    close(fd);
    if (!ok) {
        loop_problem(l, attempt, step, n, buf);
        return;
    }
    long long ms = t_now_ms() - t0;
    long long worst = atomic_load(&l->worst_ms);
    while (ms > worst && !atomic_compare_exchange_weak(&l->worst_ms, &worst, ms))
        ;
    atomic_fetch_add(&l->ok, 1);
}

static void *looper_main(void *arg)
{
    t_looper *t = arg;
    int64_t end = t_now_ms() + 240000; /* bounded whatever the test does */
    for (long attempt = 1; !atomic_load(&t->loop->stop) && t_now_ms() < end && attempt < 1000000;
         attempt++)
        loop_session(t->loop, t->id, attempt);
    return NULL;
}

t_loop *t_loop_start(uint16_t port, int threads, int session_ms)
{
    struct t_loop *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    l->port = port;
    l->session_ms = session_ms;
    pthread_mutex_init(&l->lock, NULL);
    if (threads > 16)
        threads = 16;
    for (int i = 0; i < threads; i++) {
        l->threads[i].id = i;
        l->threads[i].loop = l;
        if (pthread_create(&l->threads[i].thread, NULL, looper_main, &l->threads[i]) != 0)
            break;
        l->nthreads++;
    }
    return l;
}

void t_loop_read(t_loop *l, t_loop_stats *s)
{
    s->attempts = atomic_load(&l->attempts);
    s->ok = atomic_load(&l->ok);
    s->refused = atomic_load(&l->refused);
    s->reset = atomic_load(&l->reset);
    s->early_eof = atomic_load(&l->early_eof);
    s->wrong = atomic_load(&l->wrong);
    s->timeouts = atomic_load(&l->timeouts);
    s->other = atomic_load(&l->other);
    s->worst_ms = atomic_load(&l->worst_ms);
    pthread_mutex_lock(&l->lock);
    memcpy(s->problem, l->problem, sizeof s->problem);
    pthread_mutex_unlock(&l->lock);
}

long t_loop_failed(const t_loop_stats *s)
{
    return s->refused + s->reset + s->early_eof + s->wrong + s->timeouts + s->other;
}

bool t_loop_wait_served(t_loop *l, long more, int timeout_ms)
{
    long want = atomic_load(&l->ok) + more;
    int64_t deadline = t_now_ms() + timeout_ms;
    while (atomic_load(&l->ok) < want) {
        if (t_now_ms() >= deadline)
            return false;
        usleep(2000);
    }
    return true;
}

void t_loop_stop(t_loop *l, t_loop_stats *s)
{
    atomic_store(&l->stop, true);
    for (int i = 0; i < l->nthreads; i++)
        pthread_join(l->threads[i].thread, NULL);
    t_loop_read(l, s);
    pthread_mutex_destroy(&l->lock);
    free(l);
}
