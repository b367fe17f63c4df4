#ifndef POOLSRV_TESTS_SUPPORT_H
#define POOLSRV_TESTS_SUPPORT_H

/* Loopback client helpers for the tests. Every wait is bounded in time;
 * functions return negative values instead of asserting, so they can be
 * used from any thread (cmocka asserts only on the test's own thread). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "poolsrv/config.h"
#include "poolsrv/server.h"

/* Connects to 127.0.0.1:port (blocking socket). Returns fd or -errno. */
int t_connect(uint16_t port);

/* t_connect with SO_RCVBUF set to rcvbuf bytes before the handshake, so
 * the window the client advertises stays small (0: the default). */
int t_connect_rcvbuf(uint16_t port, int rcvbuf);

/* Reads one line (through '\n') into buf, NUL-terminated, waiting at most
 * timeout_ms in all. Returns its length, 0 on EOF before any byte, -ETIMEDOUT,
 * or -errno. Reads byte by byte: nothing past the line is consumed. */
ssize_t t_read_line(int fd, char *buf, size_t cap, int timeout_ms);

/* Reads exactly len bytes. Returns 0, -ETIMEDOUT, -EPIPE on early EOF. */
int t_read_exact(int fd, void *buf, size_t len, int timeout_ms);

/* Waits for end of stream, discarding data. Returns bytes discarded, or
 * -ETIMEDOUT. */
ssize_t t_wait_eof(int fd, int timeout_ms);

/* Writes all of buf. Returns 0 or -errno. */
int t_write_all(int fd, const void *buf, size_t len);
int t_send_str(int fd, const char *s);

/* True when fd has something to read (or EOF) within timeout_ms. */
bool t_readable(int fd, int timeout_ms);

/* Sends one admin command and reads the reply through "END\r\n" or an
 * "ERROR" line into buf. Returns the reply length or a negative code. */
ssize_t t_admin(uint16_t port, const char *cmd, char *buf, size_t cap);

/* Sends request (as is) to the admin port and reads until the server
 * closes, or with one_line one line; NUL-terminated. Returns the bytes
 * read or a negative code. */
ssize_t t_admin_raw(uint16_t port, const char *request, bool one_line, char *buf, size_t cap);
/* The value of "STAT name N" in an admin reply, or -1. */
long long t_stat(const char *reply, const char *name);

/* The dispatch mode t_config uses; test mains set it from argv. */
extern ps_dispatch_mode t_dispatch;

/* Sets t_dispatch from a mode name ("connection", "event", "thread");
 * returns false for anything else. Also raises RLIMIT_NOFILE to its hard
 * limit, for tests with many clients. */
bool t_set_dispatch(const char *name);

/* A config for tests: loopback, port 0, admin on port 0, log level error,
 * dispatch t_dispatch. */
void t_config(ps_config *cfg);

/* Creates and starts an echo server for cfg; returns NULL on failure. */
ps_server *t_start_echo(const ps_config *cfg);

/* The same with another handler, given cfg->greeting as its user pointer. */
ps_server *t_start(const ps_config *cfg, const ps_handler *handler);

/* Connects and reads the greeting line; returns fd or a negative code. */
int t_connect_greeted(uint16_t port, int timeout_ms);

int64_t t_now_ms(void);

/* A loopback port nothing listens on (bound, read back, released). */
uint16_t t_free_port(void);


/* ---- running the poolsrv program ---- */

typedef struct t_proc {
    int pid;
    int err_fd;          /* the child's stderr, read end (non-blocking) */
    uint16_t port;       /* from "listening on HOST:PORT" */
    uint16_t admin_port; /* from "admin on HOST:PORT", 0 if none */
    char log[65536];     /* stderr read so far, NUL-terminated */
    size_t log_len;
} t_proc;

/* Starts argv[0] with stderr piped, optionally with RLIMIT_NOFILE soft and
 * hard set to nofile (0 = unchanged), and waits up to timeout_ms for the
 * "listening on" (and, if want_admin, "admin on") lines. Returns 0 or a
 * negative code; on failure the child is reaped. */
int t_proc_start(t_proc *p, char *const argv[], unsigned long nofile, bool want_admin,
                 int timeout_ms);

/* What t_proc_start_with sets in the child before it runs argv[0]. */
typedef struct t_child_opts {
    unsigned long nofile; /* RLIMIT_NOFILE soft and hard; 0 = unchanged */
    unsigned long nproc;  /* RLIMIT_NPROC, the user's processes and threads; 0 = unchanged */
    unsigned uid;         /* run as this user and group id (needs root); 0 = unchanged */
    const char *const *env; /* "NAME=VALUE" to add, NULL-ended; NULL = none */
    /* Socket activation as a service manager does it: these sockets become
     * fds 3, 4, ... with LISTEN_PID (the child's pid), LISTEN_FDS and, when
     * listen_names is set, LISTEN_FDNAMES. */
    const int *listen_fds;
    int nlisten;
    const char *listen_names;
    /* Return once the child runs, without waiting for its "listening on"
     * line (a launcher that starts poolsrv later). */
    bool no_wait;
} t_child_opts;

/* t_proc_start with more limits (a root process ignores RLIMIT_NPROC: give
 * a uid to make it bind). */
int t_proc_start_with(t_proc *p, char *const argv[], const t_child_opts *o, bool want_admin,
                      int timeout_ms);

/* Appends whatever the child wrote to stderr since the last call. */
void t_proc_drain(t_proc *p);

/* Waits (bounded) until the child's log contains needle. */
bool t_proc_wait_log(t_proc *p, const char *needle, int timeout_ms);

/* Waits (bounded) for the n-th occurrence of needle in the child's log;
 * returns where it starts, or NULL. */
const char *t_proc_wait_log_nth(t_proc *p, const char *needle, int n, int timeout_ms);
/* Waits up to timeout_ms for child pid to exit and reaps it. Returns the
 * exit status (0..255), 128+signal if killed by one, or -ETIMEDOUT. */
int t_wait_exit(int pid, int timeout_ms);
/* Sends sig and waits up to timeout_ms for exit. Returns the exit status
 * (0..255), 128+signal if killed by one, or -ETIMEDOUT (then SIGKILLs). */
int t_proc_stop(t_proc *p, int sig, int timeout_ms);

/* Runs argv to completion (bounded), capturing stdout+stderr into out.
 * Returns the exit status or a negative code. */
int t_run(char *const argv[], char *out, size_t cap, int timeout_ms);

/* ---- a client loop ---- */
/* Threads that run echo sessions against 127.0.0.1:port in a loop until
 * stopped (connect, greeting, a line and its echo, "exit", the close),
 * counting each outcome; bounded to 240 s. */
typedef struct t_loop t_loop;
typedef struct t_loop_stats {
    long attempts, ok;
    long refused;   /* connect: ECONNREFUSED */
    long reset;     /* ECONNRESET or EPIPE at any step */
    long early_eof; /* the stream ended before the reply */
    long wrong;     /* a reply that is not the one due */
    long timeouts;  /* no reply within the session's time */
    long other;
    long long worst_ms; /* connect to close, the longest session that worked */
    char problem[160];  /* the first failure, for the report */
} t_loop_stats;
/* Starts `threads` (at most 16) loopers; NULL on ENOMEM. */
t_loop *t_loop_start(uint16_t port, int threads, int session_ms);
/* The counts so far (any time; the loop goes on). */
void t_loop_read(t_loop *l, t_loop_stats *s);
/* Sessions that failed, whatever the cause. */
long t_loop_failed(const t_loop_stats *s);
/* Waits (bounded) until `more` sessions have succeeded from now on. */
bool t_loop_wait_served(t_loop *l, long more, int timeout_ms);
/* Stops and joins the loopers, frees the loop; the final counts in *s. */
void t_loop_stop(t_loop *l, t_loop_stats *s);

/* ---- probes for the fault tests (tests/test_faults.c) ---- */

/* VmRSS of process pid in KiB, from /proc/PID/status; -1 if unreadable. */
long t_proc_rss_kb(int pid);

/* Any "Name: N kB" field of /proc/PID/status (VmRSS, RssAnon, ...), or -1. */
long t_proc_status_kb(int pid, const char *field);

/* Open descriptors of process pid (entries in /proc/PID/fd); -1 on error. */
int t_proc_fd_count(int pid);

/* User + system CPU time of process pid in clock ticks; -1 on error. */
long long t_proc_cpu_ticks(int pid);

/* Starts a non-blocking connect to 127.0.0.1:port and returns the socket
 * at once (connected or in progress), or -errno. */
int t_connect_nb(uint16_t port);

/* The first line of a server log that is a sanitizer report ("Sanitizer",
 * "runtime error") or an ERROR-level log line not containing `allow`
 * (NULL: no ERROR line allowed); NULL when there is none. Points into log. */
const char *t_log_problem(const char *log, const char *allow);

/* 64-bit FNV-1a over buf, continuing from h (start with T_FNV1A64_INIT). */
#define T_FNV1A64_INIT 0xcbf29ce484222325ULL
uint64_t t_fnv1a64(uint64_t h, const void *buf, size_t len);

#endif
