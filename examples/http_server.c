/*
 * A small threaded HTTP/1.1 server run under lame-duck coordination by liblameduck.
 *
 *   http_server [--host 127.0.0.1] [--port 8080] [--listen ADDRESS] [--period MS] [--drain MS]
 *               [--pid-file PATH] [--upgrade-timeout MS]
 *
 * The listening socket comes from ld_listen: inherited from systemd socket activation
 * (LISTEN_FDS), Server::Starter (SERVER_STARTER_PORT) or the previous generation when there
 * is one, fresh otherwise.
 *
 * SIGINT/SIGTERM: lame-duck, then exit. SIGHUP: zero-downtime upgrade: the program is started
 * again with the listening socket, and once the new process is ready this one lame-ducks.
 *
 * Routes: GET /             hello
 *         GET /sleep?ms=N   answers after N ms (a slow request to watch lame-duck with)
 *         GET /health       200 while the port is served (READY, UPGRADING, or HANDING_OVER to a
 *                           new process), 503 otherwise; the body is the state
 *
 * serve    reports ready (ld_context_ready), accepts until shutdown wakes it, then closes
 *          the listening socket (new connections are refused from then on).
 * shutdown drains the listener (ld_listen_drain: no new connections, but every one already
 *          waiting in its queue is accepted and answered, not reset; a listener shared with
 *          other processes is left to them), stops accepting, answers requests already sent
 *          (with "Connection: close"), closes idle keep-alive connections after a short grace,
 *          and waits for the connections to finish until the deadline (then
 *          LD_DEADLINE_EXCEEDED).
 * close    shuts every remaining connection down at once.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lameduck.h"

#define MAX_CONNS 1024
#define IDLE_GRACE_MS 1000

typedef struct {
    int listen_fd;
    int wake[2]; /* shutdown writes here to end the accept loop */
    pthread_mutex_t mu;
    pthread_cond_t changed;
    int active; /* connection threads alive */
    int draining, closing;
    int accepting; /* serve's accept loop runs: a connection it just accepted is not counted yet */
    int conns[MAX_CONNS];
    ld_runner *runner;
} demo;

typedef struct {
    demo *d;
    int fd;
    int slot;
} conn;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void abs_time_in(struct timespec *ts, int64_t ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

static void send_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n <= 0) return;
        buf += n;
        len -= (size_t)n;
    }
}

/* One write per response: a header write followed by a body write would wait out the client's
 * delayed ACK (Nagle), 40 ms per request on a kept-alive connection. */
static void respond(int fd, int status, const char *reason, const char *body, int keep_alive) {
    char out[1024];
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: %s\r\n\r\n%s",
                     status, reason, strlen(body), keep_alive ? "keep-alive" : "close", body);
    send_all(fd, out, n < (int)sizeof out ? (size_t)n : sizeof out - 1);
}

/* Waits up to `ms` unless close is called; returns 1 when the wait was cut short by close. */
static int sleep_unless_closed(demo *d, int64_t ms) {
    struct timespec until;
    abs_time_in(&until, ms);
    pthread_mutex_lock(&d->mu);
    int rc = 0;
    while (!d->closing && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&d->changed, &d->mu, &until);
    int closed = d->closing;
    pthread_mutex_unlock(&d->mu);
    return closed;
}

/* Waits for the next request's bytes. Returns 0 when the connection should end instead:
 * close was called, or lame-duck began and the connection stayed idle for the grace. */
static int wait_for_request(demo *d, int fd) {
    int64_t idle_since = now_ms();
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 50) != 0) return 1; /* data, EOF or error: let read() tell */
        pthread_mutex_lock(&d->mu);
        int closing = d->closing, draining = d->draining;
        pthread_mutex_unlock(&d->mu);
        if (closing) return 0;
        if (draining && now_ms() - idle_since >= IDLE_GRACE_MS) return 0;
    }
}

static void handle(demo *d, int fd, const char *path, int keep_alive) {
    char body[256];
    if (strncmp(path, "/sleep", 6) == 0) {
        const char *q = strstr(path, "ms=");
        long ms = q ? strtol(q + 3, NULL, 10) : 1000;
        if (ms < 0 || ms > 600000) ms = 1000;
        fprintf(stderr, "demo: request GET %s\n", path);
        if (sleep_unless_closed(d, ms)) return; /* close hook: drop it */
        snprintf(body, sizeof body, "slept %ld ms\n", ms);
        respond(fd, 200, "OK", body, keep_alive);
    } else if (strcmp(path, "/health") == 0) {
        ld_state s = ld_runner_state(d->runner);
        snprintf(body, sizeof body, "%s\n", ld_state_str(s));
        int serving = s == LD_STATE_READY || s == LD_STATE_UPGRADING || s == LD_STATE_HANDING_OVER;
        respond(fd, serving ? 200 : 503, serving ? "OK" : "Service Unavailable", body, keep_alive);
    } else {
        snprintf(body, sizeof body, "hello from lameduck (pid %d)\n", (int)getpid());
        respond(fd, 200, "OK", body, keep_alive);
    }
}

static void *conn_main(void *arg) {
    conn *c = arg;
    demo *d = c->d;
    char buf[8192];
    size_t used = 0;
    for (;;) {
        if (used == 0 && !wait_for_request(d, c->fd)) break;
        ssize_t n = recv(c->fd, buf + used, sizeof buf - 1 - used, 0);
        if (n <= 0) break;
        used += (size_t)n;
        buf[used] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end == NULL) {
            if (used >= sizeof buf - 1) break; /* header too large */
            continue;
        }
        char method[16] = "", path[1024] = "", version[16] = "";
        if (sscanf(buf, "%15s %1023s %15s", method, path, version) != 3) break;
        pthread_mutex_lock(&d->mu);
        int draining = d->draining;
        pthread_mutex_unlock(&d->mu);
        /* A request already sent is always answered; in lame-duck with "Connection: close". */
        int keep_alive = strcmp(version, "HTTP/1.1") == 0 && strcasestr(buf, "connection: close") == NULL && !draining;
        handle(d, c->fd, path, keep_alive);
        if (!keep_alive) break;
        size_t consumed = (size_t)(end + 4 - buf);
        memmove(buf, buf + consumed, used - consumed);
        used -= consumed;
    }
    pthread_mutex_lock(&d->mu);
    d->conns[c->slot] = -1;
    close(c->fd);
    d->active--;
    pthread_cond_broadcast(&d->changed);
    pthread_mutex_unlock(&d->mu);
    free(c);
    return NULL;
}

static int demo_serve(void *ud, const ld_context *ctx) {
    demo *d = ud;
    pthread_mutex_lock(&d->mu);
    d->accepting = 1;
    pthread_mutex_unlock(&d->mu);
    ld_context_ready(ctx); /* the socket is bound and listening since main: ready */

    for (;;) {
        struct pollfd p[2] = {{d->listen_fd, POLLIN, 0}, {d->wake[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (p[1].revents) break; /* shutdown: stop accepting */
        int fd = accept4(d->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) continue; /* EAGAIN: another generation took it */
        pthread_mutex_lock(&d->mu);
        int slot = -1;
        for (int i = 0; i < MAX_CONNS && slot < 0; i++)
            if (d->conns[i] < 0) slot = i;
        if (slot < 0 || d->closing) {
            pthread_mutex_unlock(&d->mu);
            close(fd);
            continue;
        }
        d->conns[slot] = fd;
        d->active++;
        pthread_mutex_unlock(&d->mu);
        conn *c = malloc(sizeof *c);
        c->d = d;
        c->fd = fd;
        c->slot = slot;
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, conn_main, c) != 0) {
            pthread_mutex_lock(&d->mu);
            d->conns[slot] = -1;
            d->active--;
            pthread_mutex_unlock(&d->mu);
            close(fd);
            free(c);
        }
        pthread_attr_destroy(&attr);
    }
    close(d->listen_fd);
    /* Before shutdown can see accepting = 0 and return: so this line always comes before the
     * library's "Completed lame-duck mode" (README shows the two in this order). */
    fprintf(stderr, "demo: stopped accepting new connections\n");
    pthread_mutex_lock(&d->mu);
    d->accepting = 0;
    pthread_cond_broadcast(&d->changed);
    pthread_mutex_unlock(&d->mu);
    return 0;
}

static int demo_shutdown(void *ud, const ld_context *ctx) {
    demo *d = ud;
    pthread_mutex_lock(&d->mu);
    d->draining = 1;
    pthread_cond_broadcast(&d->changed);
    int accepting = d->accepting;
    pthread_mutex_unlock(&d->mu);
    /* Closing a listener resets the connections waiting in its queue: clients whose connect
     * already succeeded, often with a request sent. So first let serve's accept loop take every
     * one of them while no new ones join (only when serve runs: nobody else would accept).
     * A close during the drain (a repeated signal) makes serve close the listener, which ends
     * the drain with an error: expected then, so not reported. */
    if (accepting) {
        ld_error *err = NULL;
        ld_status rc = ld_listen_drain(d->listen_fd, ld_context_remaining_ms(ctx), &err);
        pthread_mutex_lock(&d->mu);
        int closing = d->closing;
        pthread_mutex_unlock(&d->mu);
        if (rc != LD_OK && !closing) fprintf(stderr, "demo: draining the listener: %s\n", ld_error_message(err));
        ld_error_free(err);
    }
    char byte = 1;
    if (write(d->wake[1], &byte, 1) < 0) return errno;
    pthread_mutex_lock(&d->mu);
    /* Wait for the accept loop to end first: a connection it accepted just now is counted only
     * a moment later, and would otherwise be answered after the run ended (or not at all). */
    while (d->accepting || d->active > 0) {
        int64_t left = ld_context_remaining_ms(ctx);
        if (left == 0) break;
        struct timespec until;
        abs_time_in(&until, left);
        pthread_cond_timedwait(&d->changed, &d->mu, &until);
    }
    int remaining = d->active;
    pthread_mutex_unlock(&d->mu);
    if (remaining > 0) {
        fprintf(stderr, "demo: %d connection(s) still open at the deadline\n", remaining);
        return LD_DEADLINE_EXCEEDED;
    }
    return 0;
}

static int demo_close(void *ud) {
    demo *d = ud;
    pthread_mutex_lock(&d->mu);
    d->closing = 1;
    for (int i = 0; i < MAX_CONNS; i++)
        if (d->conns[i] >= 0) shutdown(d->conns[i], SHUT_RDWR);
    pthread_cond_broadcast(&d->changed);
    pthread_mutex_unlock(&d->mu);
    char byte = 1;
    if (write(d->wake[1], &byte, 1) < 0) return errno; /* in case serve is still accepting */
    return 0;
}

/* Logs every state change, so people (and the tests) can see when the server is ready. */
static void demo_state(void *ud, ld_state old_state, ld_state new_state) {
    (void)ud;
    (void)old_state;
    fprintf(stderr, "demo: state %s\n", ld_state_str(new_state));
}

static long arg_number(const char *flag, const char *value) {
    char *end = NULL;
    long n = value ? strtol(value, &end, 10) : -1;
    if (value == NULL || *end != '\0' || n < 0) {
        fprintf(stderr, "demo: %s needs a non-negative number\n", flag);
        exit(2);
    }
    return n;
}

/* Prints where we listen, for people and for the tests. */
static void announce(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[INET6_ADDRSTRLEN] = "?";
    const char *origin = ld_listen_is_inherited(fd) ? " (inherited)" : "";
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        printf("listening on http://%s:%d%s\n", host, ntohs(a->sin_port), origin);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        printf("listening on http://[%s]:%d%s\n", host, ntohs(a->sin6_port), origin);
    } else {
        printf("listening on a unix socket%s\n", origin);
    }
    fflush(stdout);
}

int main(int argc, char **argv) {
    static demo d;
    const char *host = "127.0.0.1", *listen_address = NULL, *pid_file = NULL;
    long port = 8080, period_ms = 3000, drain_ms = 0, upgrade_timeout_ms = 60000, listen_timeout_ms = 10000, upgrade_confirm_ms = 1000;
    for (int i = 1; i < argc; i++) {
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--host") == 0 && value) host = argv[++i];
        else if (strcmp(argv[i], "--listen") == 0 && value) listen_address = argv[++i];
        else if (strcmp(argv[i], "--port") == 0) port = arg_number(argv[i], value), i++;
        else if (strcmp(argv[i], "--period") == 0) period_ms = arg_number(argv[i], value), i++;
        else if (strcmp(argv[i], "--drain") == 0) drain_ms = arg_number(argv[i], value), i++;
        else if (strcmp(argv[i], "--pid-file") == 0 && value) pid_file = argv[++i];
        else if (strcmp(argv[i], "--upgrade-timeout") == 0) upgrade_timeout_ms = arg_number(argv[i], value), i++;
        else if (strcmp(argv[i], "--listen-timeout") == 0) listen_timeout_ms = arg_number(argv[i], value), i++;
        else if (strcmp(argv[i], "--upgrade-confirm") == 0) upgrade_confirm_ms = arg_number(argv[i], value), i++;
        else {
            fprintf(stderr,
                    "usage: %s [--host H] [--port N] [--listen ADDRESS] [--period MS] [--drain MS]"
                    " [--pid-file PATH] [--upgrade-timeout MS] [--listen-timeout MS] [--upgrade-confirm MS]\n",
                    argv[0]);
            return 2;
        }
    }
    char address[512];
    if (listen_address == NULL) {
        snprintf(address, sizeof address, "%s:%ld", host, port);
        listen_address = address;
    }
    ld_error *listen_err = NULL;
    if (ld_listen(listen_address, NULL, &d.listen_fd, &listen_err) != LD_OK) {
        fprintf(stderr, "demo: cannot listen on %s: %s\n", listen_address, ld_error_message(listen_err));
        ld_error_free(listen_err);
        return 1;
    }
    announce(d.listen_fd);
    /* Non-blocking, so that serve's accept after poll never blocks: a listener shared with
     * another generation (during an upgrade) wakes both processes' poll for one connection,
     * and the one that loses the race would otherwise sit in accept until the next one,
     * deaf to shutdown's wake-up. */
    int listen_flags = fcntl(d.listen_fd, F_GETFL);
    if (listen_flags < 0 || fcntl(d.listen_fd, F_SETFL, listen_flags | O_NONBLOCK) < 0) {
        perror("demo: fcntl O_NONBLOCK on the listener");
        return 1;
    }
    /* Asked again at shutdown: a socket a previous generation handed over becomes ours alone
     * once that generation has exited. */
    fprintf(stderr, "demo: the listener is %s\n", ld_listen_should_drain(d.listen_fd) ? "ours alone" : "shared with other processes");
    for (int i = 0; i < MAX_CONNS; i++) d.conns[i] = -1;
    pthread_mutex_init(&d.mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d.changed, &ca);
    if (pipe2(d.wake, O_CLOEXEC) != 0) return 1;

    ld_error *err = NULL;
    ld_server *server = NULL;
    ld_options *options = ld_options_new();
    if (ld_options_set_period_ms(options, (uint64_t)period_ms) != LD_OK ||
        ld_options_set_drain_delay_ms(options, (uint64_t)drain_ms) != LD_OK ||
        ld_options_set_upgrade_timeout_ms(options, (uint64_t)upgrade_timeout_ms) != LD_OK ||
        ld_options_set_listen_timeout_ms(options, (uint64_t)listen_timeout_ms) != LD_OK ||
        ld_options_set_upgrade_confirm_ms(options, (uint64_t)upgrade_confirm_ms) != LD_OK ||
        ld_options_set_pid_file(options, pid_file) != LD_OK) {
        /* ld_runner_new below reports which value is wrong */
    }
    ld_options_set_explicit_ready(options, true);
    ld_options_set_state_observer(options, demo_state, NULL);
    ld_status rc = ld_server_new(demo_serve, demo_shutdown, demo_close, &d, NULL, &server, &err);
    if (rc == LD_OK) rc = ld_runner_new(server, options, &d.runner, &err);
    ld_options_free(options);
    if (rc == LD_OK) rc = ld_runner_run(d.runner, &err);
    if (rc != LD_OK) fprintf(stderr, "demo: run ended: %s: %s\n", ld_status_str(rc), ld_error_message(err));
    else fprintf(stderr, "demo: run ended cleanly\n");
    ld_error_free(err);

    /* After close, connection threads end promptly; give them a moment before exiting. */
    pthread_mutex_lock(&d.mu);
    struct timespec until;
    abs_time_in(&until, 2000);
    while (d.active > 0 && pthread_cond_timedwait(&d.changed, &d.mu, &until) != ETIMEDOUT) {}
    pthread_mutex_unlock(&d.mu);
    ld_runner_free(d.runner);
    ld_server_free(server);
    close(d.wake[0]);
    close(d.wake[1]);
    return rc == LD_OK ? 0 : 1;
}
