/* poolsrv: the line echo server over the poolsrv library. */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "poolsrv/config.h"
#include "poolsrv/log.h"
#include "poolsrv/module.h"
#include "poolsrv/server.h"
#include "poolsrv/version.h"
#include "service.h"
#include "upgrade.h"

static void usage(FILE *f)
{
    char dir[4096];
    if (ps_module_dir(dir, sizeof dir) != 0)
        snprintf(dir, sizeof dir, "(too long to show)");
    fprintf(f,
            "usage: poolsrv [-c FILE] [-o SECTION.KEY=VALUE]... [-t]\n"
            "signals: TERM, INT stop (also cutting a drain short); QUIT drains, then stops;\n"
            "         HUP reloads;\n"
            "         USR2 hands the listeners over to a new poolsrv, then drains\n"
            "  -c FILE   configuration file (INI); without it, built-in defaults\n"
            "  -o S.K=V  override one key, e.g. -o pool.workers=4 (repeatable)\n"
            "  -t        check the configuration and exit (0 when valid)\n"
            "  -V        print the version and exit\n"
            "  -h        this help\n"
            "handler modules: [handler] module = PATH loads that file; a NAME without a\n"
            "  slash (module = kv) loads NAME.so from the module directory,\n"
            "  %s\n"
            "  (environment: " PS_MODULE_DIR_ENV " names another)\n",
            dir);
}

/* Descriptors beyond max_connections: listeners, admin clients, logs. */
#define PS_SPARE_FDS 64

static void raise_fd_limit(const ps_config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)cfg->max_connections + PS_SPARE_FDS)
        ps_log_warn("open file limit %llu is below max_connections %u + %d: "
                    "accepts will pause when descriptors run out",
                    (unsigned long long)rl.rlim_cur, cfg->max_connections, PS_SPARE_FDS);
}

/*
 * glibc gives a thread that meets a locked arena an arena of its own, up to
 * 8 per CPU, and keeps up to 128 KiB free at the end of each after a free;
 * pages touched there stay resident. With 25 workers the resident size so
 * creeps up, round after round of clients, towards a bound of several MiB,
 * though nothing leaks (valgrind: every block freed). One arena per CPU
 * keeps it flat (bench/memory_rounds). A program, not the library, sets
 * this: malloc's tuning belongs to whoever owns the process.
 */
static void tune_malloc(void)
{
    /* An operator's own setting wins. */
    const char *tunables = getenv("GLIBC_TUNABLES");
    if (getenv("MALLOC_ARENA_MAX") != NULL ||
        (tunables != NULL && strstr(tunables, "arena_max") != NULL))
        return;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    mallopt(M_ARENA_MAX, cpus > 0 && cpus < 64 ? (int)cpus : 64);
}

/* Where the configuration comes from: the -c file and the -o overrides
 * (pointers into argv), kept for a reload. */
static const char *config_path;
static const char **overrides;
static int noverrides;
/* limits.drain_delay as last loaded (a reload may change it). */
static unsigned drain_delay;

/* The configuration: defaults, the file, the overrides, validated. */
static int load_config(ps_config *cfg, char *err, size_t errlen)
{
    ps_config_defaults(cfg);
    int rc = 0;
    if (config_path != NULL)
        rc = ps_config_load_file(cfg, config_path, err, errlen);
    for (int i = 0; rc == 0 && i < noverrides; i++)
        rc = ps_config_override(cfg, overrides[i], err, errlen);
    if (rc == 0)
        rc = ps_config_validate(cfg, err, errlen);
    return rc;
}

/* The handler's part of a reload: the module's own reload. */
static int reload_module(const ps_config *next, void *arg, char *err, size_t errlen)
{
    return ps_module_reload(arg, next, err, errlen);
}

/* SIGHUP: reads the configuration again and applies what can change while
 * running (ps_server_reload); a broken one changes nothing. */
static void reload(ps_server *srv)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    svc_notify("RELOADING=1\nMONOTONIC_USEC=%llu",
               (unsigned long long)now.tv_sec * 1000000ULL + (unsigned long long)now.tv_nsec / 1000);
    static ps_config next; /* large: not on the stack */
    char err[512];
    if (load_config(&next, err, sizeof err) != 0) {
        ps_server_reload(srv, NULL, NULL, 0); /* counted before it is logged */
        ps_log_error("reload: %s; the running configuration stays", err);
    } else if (ps_server_reload(srv, &next, err, sizeof err) != 0) {
        ps_log_error("reload: %s; the running configuration stays", err);
    } else {
        drain_delay = next.drain_delay;
    }
    svc_notify("READY=1");
}

/* How long a new process started by SIGUSR2 may take to be ready. */
#define HANDOVER_READY_MS 30000

/* SIGUSR2: a new poolsrv (the program as it is on disk now) takes the
 * listeners; true once it serves, and this one is to drain and exit. A
 * failure changes nothing here. */
static bool hand_over(ps_server *srv)
{
    ps_log_always("SIGUSR2: starting a new poolsrv with this one's listeners");
    char err[256];
    pid_t pid = upgrade_start(ps_server_listen_fd(srv), ps_server_admin_listen_fd(srv),
                              HANDOVER_READY_MS, err, sizeof err);
    if (pid < 0) {
        ps_log_error("hand-over failed: %s; this process goes on serving", err);
        return false;
    }
    ps_log_always("hand-over: pid %d serves from now on", (int)pid);
    /* The manager's main process is now the new one (NotifyAccess=main
     * takes its notifications from then on). */
    svc_notify("MAINPID=%d\nSTATUS=handed over to pid %d", (int)pid, (int)pid);
    return true;
}

/* drain_delay: before a stop, `ready` says NOT READY and `agent` drain
 * while the server goes on serving, so that a load balancer sends new
 * clients elsewhere first. SIGINT (or the stop signal again) cuts it short.
 * Returns the signal that did, or 0. */
static int announce_stop(ps_server *srv, const sigset_t *signals)
{
    svc_notify("STOPPING=1\nSTATUS=draining for %u s", drain_delay);
    ps_server_announce_stop(srv);
    ps_log_always("drain_delay: serving %u s more before the stop", drain_delay);
    struct timespec end, now;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += (time_t)drain_delay;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long left_ns = (long long)(end.tv_sec - now.tv_sec) * 1000000000LL + (end.tv_nsec - now.tv_nsec);
        if (left_ns <= 0)
            return 0;
        struct timespec ts = {.tv_sec = (time_t)(left_ns / 1000000000LL), .tv_nsec = (long)(left_ns % 1000000000LL)};
        int sig = sigtimedwait(signals, NULL, &ts);
        if (sig == SIGINT || sig == SIGTERM || sig == SIGQUIT) {
            ps_log_always("drain_delay cut short by %s", sig == SIGINT ? "SIGINT" : sig == SIGQUIT ? "SIGQUIT" : "SIGTERM");
            return sig;
        }
    }
}

/* The command line into config_path and overrides (kept for a reload).
 * Returns -1 to go on, or the exit status (-h, -V, a usage error). */
static int parse_args(int argc, char **argv, bool *check_only)
{
    /* Overrides apply after the file, whatever their position. */
    overrides = calloc((size_t)argc, sizeof *overrides);
    if (overrides == NULL)
        return 1;
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "c:o:thV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': config_path = optarg; break;
        case 'o': overrides[noverrides++] = optarg; break;
        case 't': *check_only = true; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("poolsrv %s\n", ps_version()); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "poolsrv: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    return -1;
}

/* Signals are taken by sigwait in this thread only: blocked before any
 * thread starts so every thread inherits the mask. A parent may have left
 * one ignored (a shell's background job leaves SIGINT so): an ignored
 * signal is discarded, and sigwait would never see it. */
static void take_signals(sigset_t *set)
{
    static const int taken[] = {SIGINT, SIGTERM, SIGQUIT /* drain, then stop */,
                                SIGHUP /* reload */, SIGUSR2 /* hand over */};
    sigemptyset(set);
    for (size_t i = 0; i < sizeof taken / sizeof taken[0]; i++) {
        signal(taken[i], SIG_DFL);
        sigaddset(set, taken[i]);
    }
    pthread_sigmask(SIG_BLOCK, set, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* Until a stop signal or a hand-over: reloads and hand-overs as they come,
 * the watchdog at half its interval and a status line every few seconds
 * for a service manager. Returns the signal that ended it. */
static int run(ps_server *srv, const sigset_t *signals, bool *handed_over)
{
    uint64_t watchdog_us = svc_watchdog_usec();
    uint64_t tick_us = watchdog_us > 0 ? watchdog_us / 2 : 5000000;
    if (tick_us > 5000000)
        tick_us = 5000000;
    int sig = -1;
    while (sig != SIGINT && sig != SIGTERM && sig != SIGQUIT && !*handed_over) {
        struct timespec ts = {.tv_sec = (time_t)(tick_us / 1000000),
                              .tv_nsec = (long)(tick_us % 1000000) * 1000};
        sig = sigtimedwait(signals, NULL, &ts);
        if (sig == SIGHUP)
            reload(srv);
        if (sig == SIGUSR2)
            *handed_over = hand_over(srv);
        if (sig >= 0)
            continue;
        ps_server_stats st;
        ps_server_get_stats(srv, &st);
        ps_pool_stats ps;
        ps_server_get_pool_stats(srv, &ps);
        if (watchdog_us > 0 && ps_server_healthy(srv))
            svc_notify("WATCHDOG=1");
        svc_notify("STATUS=%llu connections, %llu busy workers",
                   (unsigned long long)st.curr_connections, (unsigned long long)ps.busy_threads);
    }
    return sig;
}

/* The signal thread while the main thread waits in a drain. */
typedef struct drain_watch {
    ps_server *srv;
    const sigset_t *signals;
    atomic_bool done; /* the drain is over: the watcher ends */
} drain_watch;

/* Takes the signals during a drain: SIGINT or SIGTERM, an operator's
 * harsher word after SIGQUIT (nginx's TERM after QUIT), cuts it short, and
 * the ordinary stop follows within its own shutdown_timeout. Others wait
 * for the end (a reload or a hand-over while stopping means nothing). */
static void *watch_drain(void *arg)
{
    drain_watch *w = arg;
    bool cut = false;
    while (!atomic_load(&w->done)) {
        /* A second at most: drain_with_signals also wakes it (SIGUSR2). */
        struct timespec ts = {.tv_sec = 1, .tv_nsec = 0};
        int sig = sigtimedwait(w->signals, NULL, &ts);
        if (!cut && (sig == SIGINT || sig == SIGTERM) && !atomic_load(&w->done)) {
            cut = true;
            svc_notify("STATUS=drain cut short by %s", sig == SIGINT ? "SIGINT" : "SIGTERM");
            ps_log_always("%s during the drain: stopping now",
                          sig == SIGINT ? "SIGINT" : "SIGTERM");
            ps_server_drain_cut(w->srv);
        }
    }
    return NULL;
}

/* ps_server_drain, with a thread of its own taking the signals meanwhile:
 * this one waits in the drain, and every thread keeps them blocked. */
static void drain_with_signals(ps_server *srv, const sigset_t *signals)
{
    drain_watch w = {.srv = srv, .signals = signals};
    pthread_t watcher;
    int rc = pthread_create(&watcher, NULL, watch_drain, &w);
    if (rc != 0)
        ps_log_warn("drain: no thread for signals (%s): SIGTERM will not cut it short",
                    strerror(rc));
    ps_server_drain(srv);
    if (rc != 0)
        return;
    atomic_store(&w.done, true);
    /* Wakes its sigtimedwait; once it has ended, the signal goes nowhere
     * (its id stays valid until the join). */
    pthread_kill(watcher, SIGUSR2);
    pthread_join(watcher, NULL);
}

/* The end: drain_delay, then a drain (SIGQUIT, after a hand-over) or not,
 * then the stop. SIGINT or SIGTERM during drain_delay or the drain stops
 * at once. */
static void finish(ps_server *srv, int sig, bool handed_over, const sigset_t *signals)
{
    int cut = 0;
    if ((sig == SIGTERM || sig == SIGQUIT) && drain_delay > 0)
        cut = announce_stop(srv, signals);
    bool drain = (handed_over || sig == SIGQUIT) && cut != SIGINT && cut != SIGTERM;
    if (handed_over) {
        ps_log_always("stopping after the hand-over%s", drain ? ": draining first" : "");
        ps_server_handed_over(srv); /* the new process answers probes */
    } else {
        svc_notify("STOPPING=1");
        ps_log_always("stopping on %s%s",
                      sig == SIGINT ? "SIGINT" : sig == SIGQUIT ? "SIGQUIT" : "SIGTERM",
                      drain ? ": draining first" : "");
    }
    if (drain)
        drain_with_signals(srv, signals);
    ps_server_destroy(srv);
}

/* Creates and starts the server for cfg and mod, on the sockets a service
 * manager passed when it did. The exit status on failure, else 0 with
 * *out set. */
static int start_server(ps_server **out, const ps_config *cfg, ps_module_instance *mod)
{
    char err[512];
    int data_fd, admin_fd;
    int inherited = svc_listen_fds(&data_fd, &admin_fd, err, sizeof err);
    if (inherited < 0) {
        fprintf(stderr, "poolsrv: %s\n", err);
        return 2;
    }
    ps_server *srv = NULL;
    if (ps_server_create(&srv, cfg, ps_module_handler(mod), ps_module_ud(mod), err,
                         sizeof err) != 0) {
        fprintf(stderr, "poolsrv: %s\n", err);
        return 1;
    }
    if (inherited > 0)
        ps_server_use_listeners(srv, data_fd, admin_fd);
    ps_server_set_handler_reload(srv, reload_module, mod);
    if (ps_server_start(srv, err, sizeof err) != 0) {
        ps_log_error("%s", err);
        ps_server_destroy(srv);
        return 1;
    }
    if (cfg->handler_module[0] != '\0')
        ps_log_always("handler %s from %s", ps_module_name(mod), ps_module_file(mod));
    svc_notify("READY=1\nSTATUS=serving on port %u", (unsigned)ps_server_port(srv));
    upgrade_ready(); /* to the process that started this one, if one did */
    *out = srv;
    return 0;
}

int main(int argc, char **argv)
{
    upgrade_init(argv);
    tune_malloc();
    bool check_only = false;
    int rc = parse_args(argc, argv, &check_only);
    if (rc >= 0) {
        free(overrides);
        return rc;
    }
    static ps_config cfg; /* large: not on the stack */
    char err[512];
    ps_module_instance *mod = NULL;
    /* The handler, loaded and given its keys before anything is bound. */
    if (load_config(&cfg, err, sizeof err) != 0 ||
        ps_module_open(&cfg, &mod, err, sizeof err) != 0) {
        fprintf(stderr, "poolsrv: %s\n", err);
        free(overrides);
        return 2;
    }
    if (check_only) {
        printf("poolsrv: configuration %s is valid (handler %s)\n",
               config_path ? config_path : "(defaults)", ps_module_name(mod));
        ps_module_close(mod);
        free(overrides);
        return 0;
    }
    ps_log_set_level(cfg.log_level);
    drain_delay = cfg.drain_delay;
    sigset_t signals;
    take_signals(&signals);
    raise_fd_limit(&cfg);
    ps_server *srv = NULL;
    rc = start_server(&srv, &cfg, mod);
    if (rc == 0) {
        bool handed_over = false;
        int sig = run(srv, &signals, &handed_over);
        finish(srv, sig, handed_over, &signals);
    }
    ps_module_close(mod);
    free(overrides);
    return rc;
}
