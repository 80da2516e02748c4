/*
 * The C demo (examples/http_server.c) without lameduck, for benches/adapter_cost.py:
 *
 *   bare_http_server [--host 127.0.0.1] [--port 8080]
 *
 * The same shape as the demo: a non-blocking listener polled by one accept loop, a detached
 * thread per connection, the same request parsing (recv until the blank line, sscanf of the
 * request line, strcasestr for "connection: close") and the same single-write response with
 * the same body ("hello from lameduck (pid N)\n", every path). What it leaves out is all the
 * demo does for lame-duck: no ld_* calls, no poll-with-timeout before each read (the demo's
 * idle grace), no draining flag read under the mutex per request, no connection table. So
 * the pair measures what lame-duck costs the demo, the library and the demo's own handling.
 * SIGTERM/SIGINT end it at once.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void send_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n <= 0) return;
        buf += n;
        len -= (size_t)n;
    }
}

/* As the demo's respond(): one write per response. */
static void respond(int fd, int status, const char *reason, const char *body, int keep_alive) {
    char out[1024];
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: %s\r\n\r\n%s",
                     status, reason, strlen(body), keep_alive ? "keep-alive" : "close", body);
    send_all(fd, out, n < (int)sizeof out ? (size_t)n : sizeof out - 1);
}

static void *conn_main(void *arg) {
    int fd = (int)(intptr_t)arg;
    char buf[8192];
    size_t used = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + used, sizeof buf - 1 - used, 0);
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
        int keep_alive = strcmp(version, "HTTP/1.1") == 0 && strcasestr(buf, "connection: close") == NULL;
        char body[256];
        snprintf(body, sizeof body, "hello from lameduck (pid %d)\n", (int)getpid());
        respond(fd, 200, "OK", body, keep_alive);
        if (!keep_alive) break;
        size_t consumed = (size_t)(end + 4 - buf);
        memmove(buf, buf + consumed, used - consumed);
        used -= consumed;
    }
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    long port = 8080;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--host") == 0) host = argv[i + 1];
        else if (strcmp(argv[i], "--port") == 0) port = strtol(argv[i + 1], NULL, 10);
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "bare_http_server: bad --host %s\n", host);
        return 2;
    }
    int listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listen_fd, SOMAXCONN) != 0) {
        perror("bare_http_server: listen");
        return 1;
    }
    printf("listening on http://%s:%ld\n", host, port);
    fflush(stdout);
    for (;;) {
        struct pollfd p = {listen_fd, POLLIN, 0};
        if (poll(&p, 1, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) continue;
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, conn_main, (void *)(intptr_t)fd) != 0) close(fd);
        pthread_attr_destroy(&attr);
    }
    return 1;
}
