/*
 * The C drain API (ld_listen_should_drain, ld_listen_stop_accepting, ld_listen_has_pending,
 * ld_listen_drain, ld_listen_shut) against real sockets: one sub-test per
 * process (the listener registry is
 * per process), named by argv[1], run by tests/c_listen.rs under ASan/UBSan or valgrind.
 * Prints "ok NAME" when every check passed; a failed check exits 1 with its location.
 */
#include "common.h" /* first (it defines _GNU_SOURCE): CHECK, CHECK_EQ (exit 1), now_ms, from common.c */

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int port_of(int fd) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &len) != 0) return -1;
    return ntohs(a.sin_port);
}

/* A connected client socket, or -1. */
static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* True when a connection attempt completes within `ms` (a dropped SYN never does). */
static int connects_within(int port, int ms) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    int ok = rc == 0;
    if (rc != 0 && errno == EINPROGRESS) {
        struct pollfd p = {fd, POLLOUT, 0};
        int err = 0;
        socklen_t len = sizeof err;
        ok = poll(&p, 1, ms) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
    }
    close(fd);
    return ok;
}

/* True when a connection attempt is refused (ECONNREFUSED) within `ms`: a dropped SYN is not
 * answered for a second (its retransmission), so a refusal within far less came at once. */
static int refused_within(int port, int ms) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    int err = rc == 0 ? 0 : errno;
    if (rc != 0 && errno == EINPROGRESS) {
        struct pollfd p = {fd, POLLOUT, 0};
        socklen_t len = sizeof err;
        err = 0;
        if (poll(&p, 1, ms) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = ETIMEDOUT;
    }
    close(fd);
    return err == ECONNREFUSED;
}

/* ld_listen_shut's callback: collects the connections in an array of 8. */
typedef struct {
    int fds[8];
    int n;
} taken;

static void take(void *ud, int fd) {
    taken *t = ud;
    CHECK(t->n < 8);
    t->fds[t->n++] = fd;
}

static int has_pending(int fd) {
    bool pending = false;
    CHECK_EQ(ld_listen_has_pending(fd, &pending, NULL), LD_OK);
    return pending;
}

/* Waits until the kernel has queued a connection (the handshake is asynchronous). */
static int wait_pending(int fd) {
    for (int i = 0; i < 500 && !has_pending(fd); i++) sleep_ms(2);
    return has_pending(fd);
}

static void *accept_one(void *arg) {
    int fd = *(int *)arg;
    sleep_ms(100); /* let the drain see the queue first */
    int conn = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
    if (conn >= 0) close(conn);
    return NULL;
}

/* A listener of our own: drained, waiting for the accept loop, bounded by the timeout. */
static void own_listener(void) {
    int fd = -1;
    CHECK_EQ(ld_listen("127.0.0.1:0", NULL, &fd, NULL), LD_OK);
    int port = port_of(fd);
    CHECK(ld_listen_should_drain(fd));
    CHECK(!ld_listen_is_shared(fd));
    CHECK(!ld_listen_is_inherited(fd));
    int copy = dup(fd);
    CHECK(ld_listen_should_drain(copy)); /* a copy is the same socket */
    close(copy);
    CHECK(!has_pending(fd));

    int client = connect_to(port);
    CHECK(client >= 0);
    CHECK(wait_pending(fd));
    /* Nobody accepts: the drain gives up at its timeout, naming the descriptor. */
    ld_error *err = NULL;
    int64_t started = now_ms();
    CHECK_EQ(ld_listen_drain(fd, 50, &err), LD_TIMEOUT);
    CHECK(now_ms() - started >= 50);
    CHECK(err != NULL && strstr(ld_error_message(err), "still had connections waiting") != NULL);
    ld_error_free(err);
    /* New connections are dropped from now on; the queued one is still there. */
    CHECK(!connects_within(port, 200));
    CHECK(has_pending(fd));
    /* With an accept loop running, the drain returns once the queue is empty. */
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, accept_one, &fd), 0);
    err = NULL;
    CHECK_EQ(ld_listen_drain(fd, -1, &err), LD_OK);
    CHECK(err == NULL);
    pthread_join(t, NULL);
    CHECK(!has_pending(fd));
    close(client);
    close(fd);
    CHECK(ld_listen_should_drain(-1)); /* not known: bound by the program */
}

/* The parts, and their errors. */
static void parts_and_errors(void) {
    int fd = -1;
    CHECK_EQ(ld_listen("127.0.0.1:0", NULL, &fd, NULL), LD_OK);
    int port = port_of(fd);
    CHECK_EQ(ld_listen_stop_accepting(fd, NULL), LD_OK);
    CHECK(!connects_within(port, 200));
    CHECK_EQ(ld_listen_drain(fd, 0, NULL), LD_OK); /* nothing queued: done at once */
    close(fd);

    ld_error *err = NULL;
    CHECK_EQ(ld_listen_has_pending(0, NULL, &err), LD_NULL_ARGUMENT);
    CHECK(err != NULL && strcmp(ld_error_message(err), "pending_out is NULL") == 0);
    ld_error_free(err);
    bool pending = true;
    err = NULL;
    CHECK_EQ(ld_listen_has_pending(-1, &pending, &err), LD_SYSTEM);
    CHECK(pending); /* unchanged on error */
    CHECK(err != NULL && strstr(ld_error_message(err), "fd -1") != NULL);
    ld_error_free(err);
    err = NULL;
    CHECK_EQ(ld_listen_stop_accepting(-1, &err), LD_SYSTEM);
    CHECK(err != NULL && strstr(ld_error_message(err), "cannot stop accepting on fd -1") != NULL);
    ld_error_free(err);
    int file = open("/dev/null", O_RDONLY | O_CLOEXEC);
    err = NULL;
    CHECK_EQ(ld_listen_drain(file, 10, &err), LD_SYSTEM); /* not a socket */
    CHECK(err != NULL && strstr(ld_error_message(err), "cannot drain fd") != NULL);
    ld_error_free(err);
    close(file);
    CHECK_EQ(ld_listen_drain(-1, 10, NULL), LD_SYSTEM);
}

/* Stopping an own listener at once: the shut takes what is still queued and refuses newcomers
 * at once. */
static void shut_listener(void) {
    int fd = -1;
    CHECK_EQ(ld_listen("127.0.0.1:0", NULL, &fd, NULL), LD_OK);
    int port = port_of(fd);
    int clients[3];
    for (int i = 0; i < 3; i++) {
        clients[i] = connect_to(port);
        CHECK(clients[i] >= 0);
        if (i < 2) CHECK_EQ(send(clients[i], "hi", 2, MSG_NOSIGNAL), 2); /* the third sends nothing */
    }
    CHECK(wait_pending(fd));

    taken t = {{0}, 0};
    ld_error *err = NULL;
    CHECK_EQ(ld_listen_shut(fd, take, &t, &err), LD_OK);
    CHECK(err == NULL);
    CHECK_EQ(t.n, 3);
    CHECK(refused_within(port, 500)); /* at once: no SYN waits for its retransmission */
    CHECK(!has_pending(fd));
    for (int i = 0; i < 3; i++) {
        CHECK(fcntl(t.fds[i], F_GETFD) & FD_CLOEXEC);
        char buf[2];
        if (i < 2) CHECK_EQ(recv(t.fds[i], buf, 2, MSG_WAITALL), 2); /* not reset: the request is there */
        CHECK_EQ(send(t.fds[i], "ok", 2, MSG_NOSIGNAL), 2);
        CHECK_EQ(recv(clients[i], buf, 2, MSG_WAITALL), 2);
        CHECK(memcmp(buf, "ok", 2) == 0);
        close(t.fds[i]);
        close(clients[i]);
    }
    /* The descriptor stays the caller's, no longer listening. */
    err = NULL;
    CHECK_EQ(ld_listen_shut(fd, take, &t, &err), LD_SYSTEM);
    CHECK(err != NULL && strstr(ld_error_message(err), "cannot shut fd") != NULL);
    ld_error_free(err);
    close(fd);

    err = NULL;
    CHECK_EQ(ld_listen_shut(-1, NULL, NULL, &err), LD_NULL_ARGUMENT);
    CHECK(err != NULL && strcmp(ld_error_message(err), "on_connection is NULL") == 0);
    ld_error_free(err);
    CHECK_EQ(ld_listen_shut(-1, take, &t, NULL), LD_SYSTEM);
    int file = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK_EQ(ld_listen_shut(file, take, &t, NULL), LD_SYSTEM); /* not a socket */
    close(file);
    CHECK_EQ(t.n, 3); /* no callback on error */
}

/* A socket handed over as systemd does (fd 3, LISTEN_FDS, LISTEN_PID): shared, so never
 * drained, and the answer is the same before ld_listen took it as after. */
static void inherited_listener(void) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK_EQ(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ(listen(s, 16), 0);
    int port = port_of(s);
    if (s != 3) { /* socket() may have given fd 3 itself */
        CHECK_EQ(dup2(s, 3), 3);
        close(s);
    }
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    /* Single-threaded here, before the first lameduck call: the only safe time to setenv. */
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_PID", pid, 1);

    CHECK(!ld_listen_should_drain(3)); /* asked before any ld_listen: the registry reads the environment */
    CHECK(ld_listen_is_shared(3));
    int copy = dup(3);
    CHECK(!ld_listen_should_drain(copy)); /* a copy of a shared socket is shared */
    close(copy);
    char address[64];
    snprintf(address, sizeof address, "127.0.0.1:%d", port);
    int fd = -1;
    CHECK_EQ(ld_listen(address, NULL, &fd, NULL), LD_OK);
    CHECK_EQ(fd, 3);
    CHECK(ld_listen_is_inherited(fd));
    CHECK(!ld_listen_should_drain(fd));
    /* The environment is read, never changed. */
    CHECK(getenv("LISTEN_FDS") != NULL && strcmp(getenv("LISTEN_FDS"), "1") == 0);
    CHECK(getenv("LISTEN_PID") != NULL && strcmp(getenv("LISTEN_PID"), pid) == 0);
    /* Draining a shared listener leaves it alone: it still accepts new connections. */
    int client = connect_to(port);
    CHECK(client >= 0);
    CHECK(wait_pending(fd));
    CHECK_EQ(ld_listen_drain(fd, 1000, NULL), LD_OK); /* at once, though a connection is queued */
    CHECK(has_pending(fd));
    CHECK(connects_within(port, 2000));
    taken t = {{0}, 0};
    CHECK_EQ(ld_listen_shut(fd, take, &t, NULL), LD_OK); /* left alone: nothing taken, still listening */
    CHECK_EQ(t.n, 0);
    CHECK(has_pending(fd));
    CHECK(connects_within(port, 2000));
    close(client);
    close(fd);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s own_listener|parts_and_errors|shut_listener|inherited_listener\n", argv[0]);
        return 2;
    }
    const char *name = argv[1];
    if (strcmp(name, "own_listener") == 0) own_listener();
    else if (strcmp(name, "parts_and_errors") == 0) parts_and_errors();
    else if (strcmp(name, "shut_listener") == 0) shut_listener();
    else if (strcmp(name, "inherited_listener") == 0) inherited_listener();
    else {
        fprintf(stderr, "unknown sub-test %s\n", name);
        return 2;
    }
    printf("ok %s\n", name);
    return 0;
}
