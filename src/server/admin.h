#ifndef POOLSRV_SERVER_ADMIN_H
#define POOLSRV_SERVER_ADMIN_H

/* The admin listener: its thread, its clients and its commands (admin.c).
 * Private to the library. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "poolsrv/server.h"

/* Starts the thread that serves the admin listener until stop_fd becomes
 * readable (new clients until drain_fd does, when the listeners were handed
 * over: ps_server_handed_over): NULL with -errno in *err
 * when it cannot. Join ends it and frees it; NULL is a no-op. */
typedef struct ps__admin ps__admin;
ps__admin *ps__admin_start(ps_server *srv, int listen_fd, int stop_fd, int drain_fd, int *err);
void ps__admin_join(ps__admin *admin);

/* Writes the reply to one admin command line into buf (NUL-terminated).
 * Returns PS_CONTINUE, or PS_CLOSE for quit. */
int ps__admin_command(ps_server *srv, const char *line, size_t len,
                      char *buf, size_t buflen);

/* One admin client: its framing, replies and backpressure, apart from the
 * listener's poll loop (fuzz_admin drives them over a socket pair). */
typedef struct ps__admin_client ps__admin_client;
ps__admin_client *ps__admin_client_new(int fd, int64_t now_ms);
/* True while a reply waits for the socket to take it (poll for POLLOUT;
 * the client's next commands wait meanwhile). */
bool ps__admin_client_wants_write(const ps__admin_client *ac);
/* On readable: reads, answers every complete command (as far as the reply
 * buffer allows) and writes. False when the client must be closed. */
bool ps__admin_client_read(ps_server *srv, ps__admin_client *ac);
/* On writable: writes, then answers commands held back. False when the
 * client must be closed. */
bool ps__admin_client_flush(ps_server *srv, ps__admin_client *ac);
/* Closes the client's socket (lingering, as a data connection's) and
 * frees it. */
void ps__admin_client_close(ps_server *srv, ps__admin_client *ac);

#endif
