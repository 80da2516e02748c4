/* Built by tests/install.rs with nothing but `pkg-config --cflags --libs lameduck` against an
 * installed prefix: runs a server under ld_run and stops it with a real SIGTERM. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <lameduck.h>

static volatile int stopped;

static int serve(void *ud, const ld_context *ctx) {
    (void)ud;
    ld_context_ready(ctx);
    kill(getpid(), SIGTERM); /* the handler is installed before serve runs */
    while (!stopped) usleep(1000);
    return 0;
}
static int shutdown_hook(void *ud, const ld_context *ctx) {
    (void)ud;
    (void)ctx;
    stopped = 1;
    return 0;
}
static int close_hook(void *ud) {
    (void)ud;
    stopped = 1;
    return 0;
}

int main(void) {
    if (strcmp(ld_version(), LAMEDUCK_VERSION_STRING) != 0 || ld_abi_version() != LD_ABI_VERSION) {
        fprintf(stderr, "header and library versions differ\n");
        return 1;
    }
    ld_server *server = NULL;
    ld_error *err = NULL;
    if (ld_server_new(serve, shutdown_hook, close_hook, NULL, NULL, &server, &err) != LD_OK) return 1;
    ld_status rc = ld_run(server, NULL, &err);
    printf("ld_run: %s\n", ld_status_str(rc));
    ld_error_free(err);
    ld_server_free(server);
    return rc == LD_OK ? 0 : 1;
}
