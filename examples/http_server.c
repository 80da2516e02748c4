/*
 * A small threaded HTTP/1.1 server run under lame-duck coordination by liblameduck.
 *
 *   http_server [--host 127.0.0.1] [--port 8080] [--listen ADDRESS] [--period MS] [--drain MS]
 *               [--pid-file PATH] [--upgrade-timeout MS] [--max-connections N]
 *               [--health ADDRESS] [--drain-quiet MS]
 *
 * The listening socket comes from ld_listen: inherited from systemd socket activation
 * (LISTEN_FDS), Server::Starter (SERVER_STARTER_PORT) or the previous generation when there
 * is one, fresh otherwise.
 *
 * SIGINT/SIGTERM: lame-duck, then exit. SIGHUP: zero-downtime upgrade: the program is started
 * again with the listening socket, and once the new process is ready this one lame-ducks.
 * SIGUSR1/SIGUSR2: raise/lower the connection limit by one (see "The connection gate").
 *
 * Routes: GET /             hello
 *         GET /sleep?ms=N   answers after N ms (a slow request to watch lame-duck with)
 *         GET /health       200 while the port is served (READY, UPGRADING, or HANDING_OVER to a
 *                           new process), 503 otherwise; the body is JSON: the state and the
 *                           gate's counts, {"state":"READY","connections":{"limit":10,
 *                           "admitted":3,"waiting":0,"total":57,"peak":10}} (limit null:
 *                           unlimited; admitted includes this request's own connection)
 *
 * The connection gate (the run's, from liblameduck) admits the connections: serve's accept loop
 * acquires a permit (ld_context_acquire_connection) before each accept(2), and the connection's
 * thread releases it when it closes. While --max-connections N are open the loop does not call
 * accept: new clients complete their handshake and wait in the listen backlog, none is refused.
 * 0 (the default) is unlimited. SIGUSR1 raises the limit by one, SIGUSR2 lowers it by one
 * (never below 1; from unlimited it becomes the number of connections open now, at least 1;
 * SIGUSR1 leaves unlimited as it is); each prints "demo: max connections now N (A admitted,
 * peak P)" on stderr. Lowering closes nothing: no new connection is admitted until fewer than
 * N are open. The signal handler only writes the signal's number to a pipe; a control thread
 * reads it and calls ld_runner_set_max_connections (which takes a lock: not for a handler).
 * An upgrade's new process starts with the --max-connections of the command line.
 * lameduck stays off the request path: one acquire and one release per connection.
 *
 * serve    reports ready (ld_context_ready), accepts through the gate until shutdown wakes it,
 *          then stops the listening socket with ld_listen_shut and closes it. ld_listen_shut
 *          accepts every connection still queued and stops the socket listening at once: new
 *          connections are refused at once from then on (none waits a second for a dropped
 *          SYN's retransmission), and none is reset by the close. The connections it took are
 *          admitted through the gate, in lame-duck only within the limit, as slots free
 *          (ld_context_acquire_queued_connection), and served like the others; those that get
 *          no slot before the deadline (the gate stayed full) are answered 503 and closed. A
 *          listener shared with other processes is left to them: closing our copy loses
 *          nothing. Lame-duck closes the gate to new connections: an accept loop blocked on a
 *          full gate returns at once (LD_GATE_CLOSED).
 * shutdown wakes the accept loop, answers requests already sent (with "Connection: close"),
 *          closes idle keep-alive connections after a short grace (which frees slots for the
 *          queued connections), and returns once the accept loop has ended. The run itself then
 *          waits for the open connections (the gate's permits) until the deadline, and calls
 *          close at the deadline.
 * close    shuts down every connection the gate still lists (ld_runner_open_connections: each
 *          permit is tagged with its descriptor), at once.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lameduck.h"

#define IDLE_GRACE_MS 1000
/* How often an accept loop waiting for a slot in lame-duck looks whether shutdown woke it. */
#define QUEUED_POLL_MS 50

typedef struct {
    int listen_fd;
    int wake[2];    /* shutdown writes here to end the accept loop */
    int control[2]; /* the SIGUSR1/SIGUSR2 handler writes the signal's number here */
    pthread_mutex_t mu;
    pthread_cond_t changed;
    /* Read on every request without the lock (one relaxed load each). */
    atomic_int draining, closing;
    int accepting; /* serve's accept loop runs */
    ld_runner *runner;
} demo;

typedef struct {
    demo *d;
    int fd;
    ld_permit *permit; /* the connection's slot in the gate, given back when it closes */
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
static void respond(int fd, int status, const char *reason, const char *type, const char *body, int keep_alive) {
    char out[1024];
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: %s\r\n\r\n%s",
                     status, reason, type, strlen(body), keep_alive ? "keep-alive" : "close", body);
    send_all(fd, out, n < (int)sizeof out ? (size_t)n : sizeof out - 1);
}

/* Waits up to `ms` unless close is called; returns 1 when the wait was cut short by close. */
static int sleep_unless_closed(demo *d, int64_t ms) {
    struct timespec until;
    abs_time_in(&until, ms);
    pthread_mutex_lock(&d->mu);
    int rc = 0;
    while (!atomic_load(&d->closing) && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&d->changed, &d->mu, &until);
    int closed = atomic_load(&d->closing);
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
        if (atomic_load_explicit(&d->closing, memory_order_relaxed)) return 0;
        if (atomic_load_explicit(&d->draining, memory_order_relaxed) && now_ms() - idle_since >= IDLE_GRACE_MS) return 0;
    }
}

static void handle(demo *d, int fd, const char *path, int keep_alive) {
    char body[512];
    if (strncmp(path, "/sleep", 6) == 0) {
        const char *q = strstr(path, "ms=");
        long ms = q ? strtol(q + 3, NULL, 10) : 1000;
        if (ms < 0 || ms > 600000) ms = 1000;
        fprintf(stderr, "demo: request GET %s\n", path);
        if (sleep_unless_closed(d, ms)) return; /* close hook: drop it */
        snprintf(body, sizeof body, "slept %ld ms\n", ms);
        respond(fd, 200, "OK", "text/plain", body, keep_alive);
    } else if (strcmp(path, "/health") == 0) {
        ld_state s = ld_runner_state(d->runner);
        ld_connection_stats c;
        memset(&c, 0, sizeof c);
        ld_runner_connection_stats(d->runner, &c);
        char limit[32] = "null";
        if (c.limit > 0) snprintf(limit, sizeof limit, "%llu", (unsigned long long)c.limit);
        snprintf(body, sizeof body,
                 "{\"state\":\"%s\",\"connections\":{\"limit\":%s,\"admitted\":%llu,\"waiting\":%llu,"
                 "\"total\":%llu,\"peak\":%llu}}\n",
                 ld_state_str(s), limit, (unsigned long long)c.admitted, (unsigned long long)c.waiting,
                 (unsigned long long)c.total, (unsigned long long)c.peak);
        int serving = s == LD_STATE_READY || s == LD_STATE_UPGRADING || s == LD_STATE_HANDING_OVER;
        respond(fd, serving ? 200 : 503, serving ? "OK" : "Service Unavailable", "application/json", body, keep_alive);
    } else {
        snprintf(body, sizeof body, "hello from lameduck (pid %d)\n", (int)getpid());
        respond(fd, 200, "OK", "text/plain", body, keep_alive);
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
        int draining = atomic_load_explicit(&d->draining, memory_order_relaxed);
        /* A request already sent is always answered; in lame-duck with "Connection: close". */
        int keep_alive = strcmp(version, "HTTP/1.1") == 0 && strcasestr(buf, "connection: close") == NULL && !draining;
        handle(d, c->fd, path, keep_alive);
        if (!keep_alive) break;
        size_t consumed = (size_t)(end + 4 - buf);
        memmove(buf, buf + consumed, used - consumed);
        used -= consumed;
    }
    /* Under the lock that close takes to list and cut the open connections: the permit (and so
     * the descriptor's entry in that list) goes before the descriptor is closed, so close never
     * cuts a number the system has given to another file meanwhile. */
    pthread_mutex_lock(&d->mu);
    ld_permit_release(&c->permit);
    close(c->fd);
    pthread_cond_broadcast(&d->changed);
    pthread_mutex_unlock(&d->mu);
    free(c);
    return NULL;
}

/* True when shutdown has written to the wake pipe (without waiting). */
static int woken(demo *d) {
    struct pollfd p = {d->wake[0], POLLIN, 0};
    return poll(&p, 1, 0) > 0;
}

/* A slot for a connection waiting in the listener's queue. Before lame-duck, the gate admits it
 * once a slot is free (while full, accept is not called: the client waits in the backlog); in
 * lame-duck (*queued_only), within the limit still, but shutdown's wake-up is looked at while
 * waiting: a listener shared with a new process may lose this connection to it. NULL when the
 * loop must end: shutdown woke it, close was called, or the gate failed. */
static ld_permit *admit(demo *d, const ld_context *ctx, int *queued_only) {
    for (;;) {
        ld_permit *permit = NULL;
        ld_error *err = NULL;
        ld_status rc = *queued_only ? ld_context_acquire_queued_connection(ctx, QUEUED_POLL_MS, &permit, &err)
                                    : ld_context_acquire_connection(ctx, -1, &permit, &err);
        ld_error_free(err);
        if (rc == LD_OK) return permit;
        if (rc == LD_GATE_CLOSED && !*queued_only) {
            /* Lame-duck began, possibly while this loop waited on a full gate: from now on only
             * the connections already queued are admitted (shutdown drains the queue). */
            *queued_only = 1;
            fprintf(stderr, "demo: lame-duck: admitting only the connections already queued\n");
            continue;
        }
        if (rc == LD_TIMEOUT && !woken(d)) continue;
        if (rc != LD_TIMEOUT && rc != LD_GATE_CLOSED) fprintf(stderr, "demo: the gate: %s\n", ld_status_str(rc));
        return NULL;
    }
}

/* Answers a connection that cannot be admitted 503 and closes it: refused cleanly, not reset
 * (its request is read first, so the close sends no RST). */
static void refuse(int fd) {
    char buf[8192];
    while (recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
    }
    respond(fd, 503, "Service Unavailable", "text/plain", "shutting down\n", 0);
    shutdown(fd, SHUT_WR);
    close(fd);
}

/* Serves the accepted connection fd, holding permit, on a thread of its own. */
static void start_connection(demo *d, int fd, ld_permit *permit) {
    /* Tagged under the lock close takes: close either lists it or this sees closing. */
    pthread_mutex_lock(&d->mu);
    ld_permit_set_fd(permit, fd);
    if (atomic_load(&d->closing)) shutdown(fd, SHUT_RDWR);
    pthread_mutex_unlock(&d->mu);
    conn *c = malloc(sizeof *c);
    int started = 0;
    if (c != NULL) {
        c->d = d;
        c->fd = fd;
        c->permit = permit;
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        started = pthread_create(&t, &attr, conn_main, c) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!started) {
        pthread_mutex_lock(&d->mu);
        ld_permit_release(&permit);
        close(fd);
        pthread_mutex_unlock(&d->mu);
        free(c);
    }
}

/* The connections ld_listen_shut took from the queue, in order. */
typedef struct {
    int *fds;
    size_t n, cap;
} fd_list;

static void on_queued(void *ud, int fd) {
    fd_list *l = ud;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        int *more = realloc(l->fds, cap * sizeof *more);
        if (more == NULL) {
            refuse(fd);
            return;
        }
        l->fds = more;
        l->cap = cap;
    }
    l->fds[l->n++] = fd;
}

/* The accept loop has ended: stops the listener without resetting or delaying anyone, closes
 * it, then admits what was still queued (within the limit, waiting for slots until the
 * deadline; what gets none is refused with 503). */
static void stop_listening(demo *d, const ld_context *ctx) {
    fd_list queued = {NULL, 0, 0};
    ld_error *err = NULL;
    if (ld_listen_shut(d->listen_fd, on_queued, &queued, &err) != LD_OK)
        fprintf(stderr, "demo: stopping the listener: %s\n", ld_error_message(err));
    ld_error_free(err);
    close(d->listen_fd);
    /* As soon as new connections are refused, and before shutdown can see accepting = 0 and
     * return: so this line always comes before the library's "Completed lame-duck mode" (README
     * shows the two in this order). */
    fprintf(stderr, "demo: stopped accepting new connections\n");
    int refused = 0;
    for (size_t i = 0; i < queued.n; i++) {
        ld_permit *permit = NULL;
        if (ld_context_acquire_queued_connection(ctx, ld_context_remaining_ms(ctx), &permit, NULL) == LD_OK) {
            start_connection(d, queued.fds[i], permit);
        } else {
            refuse(queued.fds[i]);
            refused++;
        }
    }
    free(queued.fds);
    if (refused > 0) fprintf(stderr, "demo: refused %d queued connection(s) with 503\n", refused);
}

static int demo_serve(void *ud, const ld_context *ctx) {
    demo *d = ud;
    pthread_mutex_lock(&d->mu);
    d->accepting = 1;
    pthread_mutex_unlock(&d->mu);
    ld_context_ready(ctx); /* the socket is bound and listening since main: ready */

    int queued_only = 0;
    for (;;) {
        struct pollfd p[2] = {{d->listen_fd, POLLIN, 0}, {d->wake[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (p[1].revents) break; /* shutdown: stop accepting */
        /* A connection is queued: admit it through the gate first, then accept it. */
        ld_permit *permit = admit(d, ctx, &queued_only);
        if (permit == NULL) break;
        int fd = accept4(d->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) { /* EAGAIN: another generation took it */
            ld_permit_release(&permit);
            continue;
        }
        start_connection(d, fd, permit);
    }
    stop_listening(d, ctx);
    pthread_mutex_lock(&d->mu);
    d->accepting = 0;
    pthread_cond_broadcast(&d->changed);
    pthread_mutex_unlock(&d->mu);
    return 0;
}

static int demo_shutdown(void *ud, const ld_context *ctx) {
    demo *d = ud;
    pthread_mutex_lock(&d->mu);
    atomic_store(&d->draining, 1);
    pthread_cond_broadcast(&d->changed);
    pthread_mutex_unlock(&d->mu);
    /* Woken, the accept loop stops the listener at once (ld_listen_shut): no new connection
     * from then on, and the queued ones are served, not reset by the close. */
    char byte = 1;
    if (write(d->wake[1], &byte, 1) < 0) return errno;
    /* Wait for the accept loop to end (it closes the listener, and admits what was queued).
     * The open connections are the run's to wait for: it ends the shutdown phase when the last
     * permit is back, or calls close at the deadline. */
    pthread_mutex_lock(&d->mu);
    while (d->accepting) {
        int64_t left = ld_context_remaining_ms(ctx);
        if (left == 0) break;
        struct timespec until;
        abs_time_in(&until, left);
        pthread_cond_timedwait(&d->changed, &d->mu, &until);
    }
    int accepting_still = d->accepting;
    pthread_mutex_unlock(&d->mu);
    return accepting_still ? LD_DEADLINE_EXCEEDED : 0;
}

static int demo_close(void *ud) {
    demo *d = ud;
    pthread_mutex_lock(&d->mu);
    atomic_store(&d->closing, 1);
    /* Connections release their permits under this lock: the list stays true while we cut. */
    int some[256];
    int *fds = some;
    size_t n = ld_runner_open_connections(d->runner, some, sizeof some / sizeof some[0]);
    if (n > sizeof some / sizeof some[0]) {
        fds = malloc(n * sizeof *fds);
        if (fds != NULL) n = ld_runner_open_connections(d->runner, fds, n);
        else fds = some, n = sizeof some / sizeof some[0];
    }
    for (size_t i = 0; i < n; i++) shutdown(fds[i], SHUT_RDWR);
    if (fds != some) free(fds);
    fprintf(stderr, "demo: close: cut %zu open connection(s)\n", n);
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

/* ---------------------------------------------------------------------------------------- */
/* SIGUSR1/SIGUSR2: the connection limit, changed on the control thread.                   */

static int control_write_fd = -1;

/* Async-signal-safe: only write(2). A signal arriving while the same one is still pending is
 * merged with it by the system: send the next one after the "now N" line. */
static void on_limit_signal(int sig) {
    int saved = errno;
    unsigned char byte = (unsigned char)sig;
    if (write(control_write_fd, &byte, 1) < 0) {
    }
    errno = saved;
}

static void change_limit(demo *d, int sig) {
    ld_connection_stats s;
    memset(&s, 0, sizeof s);
    ld_runner_connection_stats(d->runner, &s);
    uint64_t next;
    if (sig == SIGUSR1) next = s.limit == 0 ? 0 : s.limit + 1;
    else if (s.limit == 0) next = s.admitted > 1 ? s.admitted : 1;
    else next = s.limit > 1 ? s.limit - 1 : 1;
    ld_error *err = NULL;
    int64_t free_before = 0;
    if (ld_runner_set_max_connections(d->runner, next, &free_before, &err) != LD_OK) {
        fprintf(stderr, "demo: cannot change the connection limit: %s\n", ld_error_message(err));
        ld_error_free(err);
        return;
    }
    ld_runner_connection_stats(d->runner, &s);
    char limit[32] = "unlimited";
    if (s.limit > 0) snprintf(limit, sizeof limit, "%llu", (unsigned long long)s.limit);
    fprintf(stderr, "demo: max connections now %s (%llu admitted, peak %llu)\n", limit,
            (unsigned long long)s.admitted, (unsigned long long)s.peak);
}

/* Reads the signal numbers the handler wrote; a 0 byte from main ends it. */
static void *control_main(void *arg) {
    demo *d = arg;
    for (;;) {
        unsigned char sig = 0;
        ssize_t n = read(d->control[0], &sig, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 || sig == 0) return NULL;
        change_limit(d, sig);
    }
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

static void usage(FILE *to, const char *program) {
    fprintf(to,
            "usage: %s [--host H] [--port N] [--listen ADDRESS] [--period MS] [--drain MS]"
            " [--pid-file PATH] [--upgrade-timeout MS] [--listen-timeout MS] [--upgrade-confirm MS]"
            " [--max-connections N] [--health ADDRESS] [--drain-quiet MS]\n"
            "  --max-connections N  at most N connections at once (0, the default: unlimited); the\n"
            "                       others wait in the listen backlog, none is refused\n"
            "  --health ADDRESS     the library's health listener (/ready, /live, /health) on its own\n"
            "                       port, e.g. 127.0.0.1:8081; an upgrade hands it on\n"
            "  --drain-quiet MS     adaptive drain: end the --drain delay early once no connection came\n"
            "                       for MS (and a /ready probe was answered 503); less than --drain\n"
            "signals: SIGINT/SIGTERM lame-duck, then exit; SIGHUP zero-downtime upgrade;\n"
            "         SIGUSR1 raises the connection limit by 1 (unlimited stays unlimited), SIGUSR2\n"
            "         lowers it by 1 (never below 1; from unlimited: to the connections open now);\n"
            "         each prints \"demo: max connections now N\" on stderr\n",
            program);
}

int main(int argc, char **argv) {
    static demo d;
    const char *host = "127.0.0.1", *listen_address = NULL, *pid_file = NULL, *health = NULL;
    long port = 8080, period_ms = 3000, drain_ms = 0, upgrade_timeout_ms = 60000, listen_timeout_ms = 10000, upgrade_confirm_ms = 1000;
    long max_connections = 0, drain_quiet_ms = 0;
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
        else if (strcmp(argv[i], "--max-connections") == 0) max_connections = arg_number(argv[i], value), i++;
        else if (strcmp(argv[i], "--health") == 0 && value) health = argv[++i];
        else if (strcmp(argv[i], "--drain-quiet") == 0) drain_quiet_ms = arg_number(argv[i], value), i++;
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout, argv[0]);
            return 0;
        } else {
            usage(stderr, argv[0]);
            return 2;
        }
    }
    ld_options *options = ld_options_new();
    if (ld_options_set_max_connections(options, (uint64_t)max_connections) != LD_OK) {
        fprintf(stderr, "demo: --max-connections %ld is too large (at most 2147483647; 0: unlimited)\n", max_connections);
        ld_options_free(options);
        return 2;
    }
    if (health != NULL && ld_options_set_health_address(options, health) != LD_OK) {
        fprintf(stderr, "demo: --health %s is not an address to listen on (host:port or a unix socket path)\n", health);
        ld_options_free(options);
        return 2;
    }
    if (ld_options_set_drain_quiet_ms(options, (uint64_t)drain_quiet_ms) != LD_OK) {
        fprintf(stderr, "demo: --drain-quiet %ld is too large (at most 86400000)\n", drain_quiet_ms);
        ld_options_free(options);
        return 2;
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
        ld_options_free(options);
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
    pthread_mutex_init(&d.mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d.changed, &ca);
    if (pipe2(d.wake, O_CLOEXEC) != 0 || pipe2(d.control, O_CLOEXEC) != 0) return 1;
    /* The handler never blocks: a full pipe (a flood of signals) drops the extra ones. */
    fcntl(d.control[1], F_SETFL, fcntl(d.control[1], F_GETFL) | O_NONBLOCK);
    control_write_fd = d.control[1];

    ld_error *err = NULL;
    ld_server *server = NULL;
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
    pthread_t control;
    int control_started = 0;
    if (rc == LD_OK) {
        control_started = pthread_create(&control, NULL, control_main, &d) == 0;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_limit_signal;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGUSR1, &sa, NULL);
        sigaction(SIGUSR2, &sa, NULL);
        rc = ld_runner_run(d.runner, &err);
    }
    if (rc != LD_OK) fprintf(stderr, "demo: run ended: %s: %s\n", ld_status_str(rc), ld_error_message(err));
    else fprintf(stderr, "demo: run ended cleanly\n");
    ld_error_free(err);

    /* The run ends when the gate is empty, or after close: connection threads end promptly;
     * give them a moment before exiting. */
    pthread_mutex_lock(&d.mu);
    struct timespec until;
    abs_time_in(&until, 2000);
    ld_connection_stats left;
    memset(&left, 0, sizeof left);
    for (;;) {
        if (d.runner == NULL || ld_runner_connection_stats(d.runner, &left) != LD_OK || left.admitted == 0) break;
        if (pthread_cond_timedwait(&d.changed, &d.mu, &until) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&d.mu);
    if (left.admitted > 0) fprintf(stderr, "demo: %llu connection(s) still open at exit\n", (unsigned long long)left.admitted);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    if (control_started) {
        unsigned char stop = 0;
        if (write(d.control[1], &stop, 1) == 1) pthread_join(control, NULL);
    }
    ld_runner_free(d.runner);
    ld_server_free(server);
    close(d.wake[0]);
    close(d.wake[1]);
    return rc == LD_OK ? 0 : 1;
}
