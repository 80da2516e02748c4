/* Health answers through the C API (issue 14): ld_runner_health's status and body (truncated
 * like snprintf), the built-in listener over a real socket in READY and DRAINING, its address,
 * the options' errors. (The adaptive drain and hostile clients: tests/health.rs.) */
#include "common.h"

#include <arpa/inet.h>

/* One GET on a new connection to the listener at "127.0.0.1:PORT"; the status, body in `body`. */
static int http_get(const char *address, const char *path, char *body, size_t size) {
    const char *colon = strrchr(address, ':');
    CHECK(colon != NULL);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    char request[256];
    int n = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n", path);
    CHECK(write(fd, request, (size_t)n) == n);
    char answer[4096];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof answer - 1 && (r = read(fd, answer + got, sizeof answer - 1 - got)) > 0) got += (size_t)r;
    answer[got] = 0;
    close(fd);
    CHECK(strncmp(answer, "HTTP/1.1 ", 9) == 0);
    const char *start = strstr(answer, "\r\n\r\n");
    CHECK(start != NULL);
    snprintf(body, size, "%s", start + 4);
    return atoi(answer + 9);
}

int test_health_null_arguments(void) {
    int status = 0;
    char body[64];
    size_t len = 0;
    CHECK_EQ(ld_runner_health(NULL, "/ready", &status, body, sizeof body, &len), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_runner_health_address(NULL, body, sizeof body, &len), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_health_address(NULL, "127.0.0.1:0"), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_drain_quiet_ms(NULL, 10), LD_NULL_ARGUMENT);
    fixture *f = fx_new();
    CHECK_EQ(ld_runner_new(f->server, f->o, &f->b.runner, NULL), LD_OK);
    CHECK_EQ(ld_runner_health(f->b.runner, NULL, &status, body, sizeof body, &len), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_runner_health(f->b.runner, "/ready", NULL, body, sizeof body, &len), LD_NULL_ARGUMENT);
    /* No body buffer: only the status and the length. */
    CHECK_EQ(ld_runner_health(f->b.runner, "/ready", &status, NULL, 0, &len), LD_OK);
    CHECK_EQ(status, 503);
    CHECK_EQ(len, strlen("not ready: NOT_STARTED\n"));
    /* Truncated like snprintf, always NUL-terminated. */
    CHECK_EQ(ld_runner_health(f->b.runner, "/ready", &status, body, 5, &len), LD_OK);
    CHECK(strcmp(body, "not ") == 0);
    CHECK_EQ(ld_runner_health_address(f->b.runner, body, sizeof body, &len), LD_NOT_RUNNING);
    fx_free(f);
    return 0;
}

int test_health_options(void) {
    ld_options *o = quiet_options();
    CHECK_EQ(ld_options_set_health_address(o, "[::1:80"), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_health_address(o, "host:notaport"), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_health_address(o, "\xff\xfe:1"), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_health_address(o, "127.0.0.1:0"), LD_OK);
    CHECK_EQ(ld_options_set_health_address(o, NULL), LD_OK); /* back to none */
    CHECK_EQ(ld_options_set_drain_quiet_ms(o, 86400001), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_drain_quiet_ms(o, 100), LD_OK);
    /* Not shorter than the drain delay (0): refused when the runner is made, naming it. */
    test_server t;
    ts_init(&t);
    ld_server *server = make_server(&t);
    ld_runner *runner = NULL;
    ld_error *err = NULL;
    CHECK_EQ(ld_runner_new(server, o, &runner, &err), LD_INVALID_ARGUMENT);
    CHECK_CONTAINS(ld_error_message(err), "drain quiet time 100ms is invalid");
    ld_error_free(err);
    CHECK_EQ(ld_options_set_drain_delay_ms(o, 1000), LD_OK);
    CHECK_EQ(ld_runner_new(server, o, &runner, NULL), LD_OK);
    CHECK_EQ(ld_runner_free(runner), LD_OK);
    ld_server_free(server);
    ld_options_free(o);
    return 0;
}

int test_health_listener(void) {
    fixture *f = fx_new();
    CHECK_EQ(ld_options_set_health_address(f->o, "127.0.0.1:0"), LD_OK);
    CHECK_EQ(ld_options_set_drain_delay_ms(f->o, 60000), LD_OK);
    bg_start_ready(&f->b, f->server, f->o);
    char address[64], body[1024];
    size_t len = 0;
    CHECK_EQ(ld_runner_health_address(f->b.runner, address, sizeof address, &len), LD_OK);
    CHECK_EQ(len, strlen(address));
    CHECK(strncmp(address, "127.0.0.1:", 10) == 0 && strcmp(address, "127.0.0.1:0") != 0);
    CHECK_EQ(http_get(address, "/ready", body, sizeof body), 200);
    CHECK(strcmp(body, "ready\n") == 0);
    CHECK_EQ(http_get(address, "/health", body, sizeof body), 200);
    CHECK_CONTAINS(body, "{\"state\":\"READY\",\"ready\":true,\"live\":true,\"pid\":");
    int status = 0;
    CHECK_EQ(ld_runner_health(f->b.runner, "/health", &status, body, sizeof body, &len), LD_OK);
    CHECK_EQ(status, 200);
    CHECK_CONTAINS(body, "\"generation\":1,\"connections\":{\"limit\":null");
    CHECK_EQ(ld_runner_health(f->b.runner, "/nope", &status, NULL, 0, NULL), LD_OK);
    CHECK_EQ(status, 404);
    CHECK_EQ(ld_runner_stop(f->b.runner), LD_OK);
    while (ld_runner_state(f->b.runner) != LD_STATE_DRAINING) usleep(1000);
    CHECK_EQ(http_get(address, "/ready", body, sizeof body), 503);
    CHECK(strcmp(body, "not ready: DRAINING\n") == 0);
    CHECK_EQ(http_get(address, "/live", body, sizeof body), 200);
    /* A second signal forces close: the run ends, and the listener with it. */
    CHECK(kill(getpid(), SIGTERM) == 0);
    CHECK(kill(getpid(), SIGTERM) == 0);
    bg_join(&f->b);
    CHECK_EQ(ld_runner_health_address(f->b.runner, address, sizeof address, &len), LD_NOT_RUNNING);
    fx_free(f);
    return 0;
}
