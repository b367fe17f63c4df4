/* service: what poolsrv speaks to a service manager (systemd's notify and
 * socket activation protocols, without libsystemd); see service.h. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "service.h"

int svc_notify(const char *fmt, ...)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0')
        return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof sa.sun_path)
        return -EINVAL;
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* an abstract socket */
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof msg)
        return -EMSGSIZE;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    int rc = sendto(fd, msg, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&sa, sl) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* A decimal environment variable, or false when unset or not a number. */
static bool env_number(const char *name, unsigned long long *out)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        return false;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *out = n;
    return true;
}

uint64_t svc_watchdog_usec(void)
{
    unsigned long long usec, pid;
    if (!env_number("WATCHDOG_USEC", &usec))
        return 0;
    if (env_number("WATCHDOG_PID", &pid) && pid != (unsigned long long)getpid())
        return 0;
    return usec;
}

int svc_listen_fds(int *data_fd, int *admin_fd, char *err, size_t errlen)
{
    *data_fd = *admin_fd = -1;
    unsigned long long pid, n;
    if (!env_number("LISTEN_PID", &pid) || pid != (unsigned long long)getpid())
        return 0; /* not for this process */
    if (!env_number("LISTEN_FDS", &n) || n < 1 || n > 2) {
        snprintf(err, errlen, "LISTEN_FDS=%s: expected 1 or 2 sockets (data, admin)",
                 getenv("LISTEN_FDS") ? getenv("LISTEN_FDS") : "");
        return -1;
    }
    char names[256] = "";
    const char *env_names = getenv("LISTEN_FDNAMES");
    if (env_names != NULL)
        snprintf(names, sizeof names, "%s", env_names);
    int fd = 3;
    char *save = NULL;
    char *name = env_names != NULL ? strtok_r(names, ":", &save) : NULL;
    for (unsigned long long i = 0; i < n; i++, fd++) {
        const char *what = name != NULL ? name : (i == 0 ? "data" : "admin");
        if (strcmp(what, "data") == 0 && *data_fd < 0) {
            *data_fd = fd;
        } else if (strcmp(what, "admin") == 0 && *admin_fd < 0) {
            *admin_fd = fd;
        } else {
            snprintf(err, errlen, "LISTEN_FDNAMES: socket %llu is named \"%s\"; expected data and "
                     "admin, once each", i + 1, what);
            return -1;
        }
        if (name != NULL)
            name = strtok_r(NULL, ":", &save);
    }
    if (*data_fd < 0) {
        snprintf(err, errlen, "LISTEN_FDNAMES: no socket named data");
        return -1;
    }
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return 1;
}
