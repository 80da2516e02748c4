/* Upgrades started with ld_runner_upgrade. (SIGHUP upgrades of a real server: c_upgrade.rs.) */
#include "common.h"

/* The run is still serving (an upgrade failed and rolled back): stop it, expect a clean end,
 * free the fixture. */
static int still_serving_then_stop(fixture *f) {
    CHECK_EQ(ld_runner_state(f->b.runner), LD_STATE_READY);
    CHECK_EQ(ld_runner_stop(f->b.runner), LD_OK);
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_OK);
    fx_free(f);
    return 0;
}

/* Runs a fixture whose upgrade command is argv[0..argc], calls ld_runner_upgrade once, and
 * returns its status; the message goes to `message`. The run is stopped (or has ended after a
 * successful upgrade) and freed before returning. */
static ld_status upgrade_once(const char *const *argv, size_t argc, uint64_t timeout_ms, int *pid, char *message, size_t size) {
    fixture *f = fx_new();
    CHECK_EQ(ld_options_set_upgrade_without_listeners(f->o, true), LD_OK); /* no sockets here */
    CHECK_EQ(ld_options_set_upgrade_command(f->o, argv[0], argv, argc), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_timeout_ms(f->o, timeout_ms), LD_OK);
    bg_start_ready(&f->b, f->server, f->o);
    ld_error *err = NULL;
    *pid = -1;
    ld_status rc = ld_runner_upgrade(f->b.runner, pid, &err);
    snprintf(message, size, "%s", err ? ld_error_message(err) : "");
    ld_error_free(err);
    if (rc != LD_OK) {
        CHECK_EQ(ld_runner_state(f->b.runner), LD_STATE_READY); /* rolled back: still serving */
        CHECK_EQ(f->t.shutdown_calls, 0);
        CHECK_EQ(ld_runner_stop(f->b.runner), LD_OK);
    }
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_OK);
    fx_free(f);
    return rc;
}

int test_upgrade_failures(void) {
    char message[512];
    int pid;
    const char *exits[] = {"sh", "-c", "exit 3"};
    CHECK_EQ(upgrade_once(exits, 3, 10000, &pid, message, sizeof message), LD_UPGRADE_FAILED);
    CHECK_CONTAINS(message, "exited with status 3 before it was ready");

    const char *never_ready[] = {"sleep", "30"};
    CHECK_EQ(upgrade_once(never_ready, 2, 300, &pid, message, sizeof message), LD_UPGRADE_FAILED);
    CHECK_CONTAINS(message, "was not ready within 300ms; stopped it with SIGTERM");

    const char *ignores_term[] = {"sh", "-c", "trap '' TERM; exec sleep 30"};
    CHECK_EQ(upgrade_once(ignores_term, 3, 300, &pid, message, sizeof message), LD_UPGRADE_FAILED);
    CHECK_CONTAINS(message, "killed it with SIGKILL after it ignored SIGTERM for 5s");

    const char *missing[] = {"/nonexistent/lameduck-server"};
    CHECK_EQ(upgrade_once(missing, 1, 10000, &pid, message, sizeof message), LD_UPGRADE_FAILED);
    CHECK_CONTAINS(message, "cannot start /nonexistent/lameduck-server: No such file or directory");

    const char *not_in_path[] = {"lameduck-no-such-program"};
    CHECK_EQ(upgrade_once(not_in_path, 1, 10000, &pid, message, sizeof message), LD_UPGRADE_FAILED);
    CHECK_CONTAINS(message, "lameduck-no-such-program: not found in PATH");
    CHECK_CONTAINS(log_buf, "Upgrade failed: ");
    CHECK_CONTAINS(log_buf, "; still serving");
    return 0;
}

/* A program that is not lameduck-based reports ready with the one-line protocol. */
int test_upgrade_one_line_protocol(void) {
    fixture *f = fx_new();
    const char *argv[] = {"sh", "-c", "test -z \"$LISTEN_FDS\" && echo READY=1 >&$LAMEDUCK_READY_FD && exec sleep 30"};
    CHECK_EQ(ld_options_set_upgrade_command(f->o, "/bin/sh", argv, 3), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_without_listeners(f->o, true), LD_OK);
    CHECK_EQ(ld_options_set_state_observer(f->o, record_state, NULL), LD_OK);
    bg_start_ready(&f->b, f->server, f->o);
    int pid = -1;
    ld_error *err = NULL;
    CHECK_EQ(ld_runner_upgrade(f->b.runner, &pid, &err), LD_OK);
    CHECK(err == NULL);
    CHECK(pid > 0);
    bg_join(&f->b); /* the new process took over: this run lame-ducks and ends by itself */
    CHECK_EQ(f->b.status, LD_OK);
    CHECK_EQ(f->t.shutdown_calls, 1);
    ld_state want[] = {LD_STATE_NOT_STARTED, LD_STATE_STARTING, LD_STATE_SERVING, LD_STATE_READY,
                       LD_STATE_UPGRADING, LD_STATE_HANDING_OVER, LD_STATE_STOPPED};
    check_states(want, 7);
    char needle[64];
    snprintf(needle, sizeof needle, "New process %d is ready; entering lame-duck mode for 3s", pid);
    CHECK_CONTAINS(log_buf, needle);
    CHECK_CONTAINS(ld_state_str(LD_STATE_UPGRADING), "UPGRADING");
    CHECK_CONTAINS(ld_state_str(LD_STATE_HANDING_OVER), "HANDING_OVER");
    /* It is our child and still running: the upgrade does not kill a successor. */
    CHECK(kill(pid, 0) == 0);
    CHECK(kill(pid, SIGKILL) == 0);
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    fx_free(f);
    return 0;
}

static void *upgrade_thread(void *arg) {
    bg_run *b = arg;
    static ld_status rc;
    rc = ld_runner_upgrade(b->runner, NULL, NULL);
    return &rc;
}

int test_upgrade_busy_and_not_running(void) {
    fixture *f = fx_new();
    ld_error *err = NULL;
    int pid = 0;
    CHECK_EQ(ld_runner_upgrade(NULL, &pid, &err), LD_NULL_ARGUMENT);
    ld_error_free(err);
    err = NULL;
    const char *argv[] = {"sleep", "30"};
    CHECK_EQ(ld_options_set_upgrade_command(f->o, "sleep", argv, 2), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_timeout_ms(f->o, 1500), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_without_listeners(f->o, true), LD_OK);
    CHECK_EQ(ld_runner_new(f->server, f->o, &f->b.runner, &err), LD_OK);
    CHECK_EQ(ld_runner_upgrade(f->b.runner, &pid, &err), LD_NOT_RUNNING);
    CHECK_CONTAINS(ld_error_message(err), "cannot upgrade: the runner is not running (state NOT_STARTED)");
    ld_error_free(err);
    err = NULL;
    ld_runner_free(f->b.runner);
    bg_start_ready(&f->b, f->server, f->o);
    pthread_t first;
    CHECK(pthread_create(&first, NULL, upgrade_thread, &f->b) == 0);
    while (ld_runner_state(f->b.runner) != LD_STATE_UPGRADING) usleep(1000);
    CHECK_EQ(ld_runner_upgrade(f->b.runner, &pid, &err), LD_BUSY);
    CHECK_CONTAINS(ld_error_message(err), "an upgrade is already in progress (new process ");
    ld_error_free(err);
    err = NULL;
    void *first_rc = NULL;
    CHECK(pthread_join(first, &first_rc) == 0);
    CHECK_EQ(*(ld_status *)first_rc, LD_UPGRADE_FAILED);
    CHECK_EQ(ld_runner_state(f->b.runner), LD_STATE_READY);
    /* During lame-duck there is nothing to upgrade. */
    f->t.shutdown_mode = SHUTDOWN_SLOW_OK;
    CHECK_EQ(ld_runner_stop(f->b.runner), LD_OK);
    while (ld_runner_state(f->b.runner) != LD_STATE_SHUTTING_DOWN) usleep(1000);
    CHECK_EQ(ld_runner_upgrade(f->b.runner, &pid, &err), LD_NOT_RUNNING);
    CHECK_CONTAINS(ld_error_message(err), "not serving (state SHUTTING_DOWN)");
    ld_error_free(err);
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_OK);
    fx_free(f);
    return 0;
}

/* 50 failed upgrades leave no descriptor, thread or child process behind. */
int test_upgrade_failures_leak_nothing(void) {
    fixture *f = fx_new();
    const char *argv[] = {"false"};
    CHECK_EQ(ld_options_set_upgrade_command(f->o, "false", argv, 1), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_without_listeners(f->o, true), LD_OK);
    bg_start_ready(&f->b, f->server, f->o);
    /* Warm up once (first-use allocations such as the generation record), then count. */
    CHECK_EQ(ld_runner_upgrade(f->b.runner, NULL, NULL), LD_UPGRADE_FAILED);
    int threads_before = count_dir("/proc/self/task");
    int fds_before = count_dir("/proc/self/fd");
    for (int i = 0; i < 50; i++) CHECK_EQ(ld_runner_upgrade(f->b.runner, NULL, NULL), LD_UPGRADE_FAILED);
    CHECK_EQ(count_dir("/proc/self/task"), threads_before);
    CHECK_EQ(count_dir("/proc/self/fd"), fds_before);
    CHECK_EQ(waitpid(-1, NULL, WNOHANG), -1); /* no child left, not even a zombie */
    CHECK_EQ(errno, ECHILD);
    return still_serving_then_stop(f);
}

/* A process with no socket known to lameduck refuses to upgrade (the new process could not
 * bind its port) and says how to fix it; a socket bound by hand and adopted is handed on. */
int test_upgrade_needs_a_known_listener(void) {
    fixture *f = fx_new();
    const char *argv[] = {"sh", "-c", "test \"$LISTEN_FDS\" = 1 && echo READY=1 >&$LAMEDUCK_READY_FD && exec sleep 30"};
    CHECK_EQ(ld_options_set_upgrade_command(f->o, "/bin/sh", argv, 3), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_confirm_ms(f->o, 0), LD_OK);
    bg_start_ready(&f->b, f->server, f->o);
    int pid = -1;
    ld_error *err = NULL;
    CHECK_EQ(ld_runner_upgrade(f->b.runner, &pid, &err), LD_UPGRADE_FAILED);
    CHECK_CONTAINS(ld_error_message(err), "no listener known to lameduck");
    CHECK_CONTAINS(ld_error_message(err), "bind with listen() (ld_listen");
    ld_error_free(err);
    err = NULL;
    CHECK_EQ(ld_runner_state(f->b.runner), LD_STATE_READY); /* refused: nothing was started */
    CHECK_EQ(waitpid(-1, NULL, WNOHANG), -1);

    /* adopt checks what it is given */
    CHECK_EQ(ld_listen_adopt(0, NULL, &err), LD_INVALID_ARGUMENT);
    CHECK_CONTAINS(ld_error_message(err), "fd 0 from adopt is not");
    ld_error_free(err);
    err = NULL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    CHECK_EQ(ld_listen_adopt(fd, NULL, &err), LD_INVALID_ARGUMENT); /* bound, not listening */
    ld_error_free(err);
    err = NULL;
    CHECK(listen(fd, 16) == 0);
    CHECK_EQ(ld_listen_adopt(fd, "bad:name", &err), LD_INVALID_ARGUMENT);
    ld_error_free(err);
    err = NULL;
    CHECK_EQ(ld_listen_adopt(fd, "http", &err), LD_OK);
    CHECK_EQ(ld_listen_adopt(fd, NULL, NULL), LD_OK); /* again: harmless */
    CHECK_EQ(ld_runner_upgrade(f->b.runner, &pid, &err), LD_OK); /* the child saw LISTEN_FDS=1 */
    CHECK(err == NULL);
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_OK);
    CHECK(kill(pid, SIGKILL) == 0);
    CHECK_EQ(waitpid(pid, NULL, 0), pid);
    close(fd);
    fx_free(f);
    return 0;
}

/* A new process that reports ready and exits at once (within the confirmation window) is a
 * failed upgrade: this process never stopped serving, and goes on. */
int test_upgrade_ready_then_exit_rolls_back(void) {
    fixture *f = fx_new();
    const char *argv[] = {"sh", "-c", "echo READY=1 >&$LAMEDUCK_READY_FD; exit 4"};
    CHECK_EQ(ld_options_set_upgrade_command(f->o, "/bin/sh", argv, 3), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_without_listeners(f->o, true), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_confirm_ms(f->o, 5000), LD_OK); /* far longer than sh lives */
    bg_start_ready(&f->b, f->server, f->o);
    int pid = -1;
    ld_error *err = NULL;
    CHECK_EQ(ld_runner_upgrade(f->b.runner, &pid, &err), LD_UPGRADE_FAILED);
    CHECK_CONTAINS(ld_error_message(err), "exited with status 4 within 5s of reporting ready");
    ld_error_free(err);
    err = NULL;
    CHECK_EQ(ld_runner_state(f->b.runner), LD_STATE_READY);
    CHECK_EQ(f->t.shutdown_calls, 0);
    /* A new process that says it cannot take over is stopped, with its reason. */
    const char *says_no[] = {"sh", "-c", "echo FAILED=fd 3 was not taken >&$LAMEDUCK_READY_FD; exec sleep 30"};
    CHECK_EQ(ld_runner_stop(f->b.runner), LD_OK);
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_OK);
    fx_free(f);
    f = fx_new();
    CHECK_EQ(ld_options_set_upgrade_without_listeners(f->o, true), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_command(f->o, "/bin/sh", says_no, 3), LD_OK);
    bg_start_ready(&f->b, f->server, f->o);
    CHECK_EQ(ld_runner_upgrade(f->b.runner, &pid, &err), LD_UPGRADE_FAILED);
    CHECK_CONTAINS(ld_error_message(err), "cannot take over: fd 3 was not taken; stopped it with SIGTERM");
    ld_error_free(err);
    return still_serving_then_stop(f);
}
