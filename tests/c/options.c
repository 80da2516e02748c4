/* Options: validation before anything starts, the setter contract, logging. */
#include "common.h"

/* ---------------------------------------------------------------------------------------- */
/* 2. Validation before anything starts.                                                    */

static void expect_invalid(ld_server *server, ld_options *o, ld_status want, const char *needle) {
    ld_runner *runner = NULL;
    ld_error *err = NULL;
    CHECK_EQ(ld_runner_new(server, o, &runner, &err), want);
    CHECK(runner == NULL);
    CHECK(err != NULL);
    CHECK_EQ(ld_error_status(err), want);
    CHECK_CONTAINS(ld_error_message(err), needle);
    ld_error_free(err);
    err = NULL;
    CHECK_EQ(ld_run(server, o, &err), want);
    CHECK_CONTAINS(ld_error_message(err), needle);
    ld_error_free(err);
    CHECK_EQ(ld_run(server, o, NULL), want); /* error_out may be NULL */
}

/* The options make a runner: nothing invalid was stored in them. */
static void expect_valid(ld_server *server, const ld_options *o) {
    ld_runner *runner = NULL;
    ld_error *err = NULL;
    CHECK_EQ(ld_runner_new(server, o, &runner, &err), LD_OK);
    CHECK(err == NULL);
    CHECK_EQ(ld_runner_free(runner), LD_OK);
}

int test_validation(void) {
    test_server t;
    ts_init(&t);
    ld_server *server = make_server(&t);
    ld_server *bad = NULL;
    ld_error *err = NULL;

    CHECK_EQ(ld_server_new(NULL, t_shutdown, t_close, &t, NULL, &bad, &err), LD_NULL_ARGUMENT);
    CHECK_CONTAINS(ld_error_message(err), "serve hook is NULL");
    ld_error_free(err);
    CHECK_EQ(ld_server_new(t_serve, NULL, t_close, &t, NULL, &bad, &err), LD_NULL_ARGUMENT);
    CHECK_CONTAINS(ld_error_message(err), "shutdown hook is NULL");
    ld_error_free(err);
    CHECK_EQ(ld_server_new(t_serve, t_shutdown, NULL, &t, t_free, &bad, &err), LD_NULL_ARGUMENT);
    CHECK_CONTAINS(ld_error_message(err), "close hook is NULL");
    ld_error_free(err);
    CHECK(bad == NULL);
    CHECK_EQ(t.frees, 0); /* a failed constructor takes nothing */

    ld_options *o = ld_options_new();
    expect_invalid(NULL, o, LD_NULL_ARGUMENT, "server is NULL");

    /* A rejected value is not stored: the options still make a runner (each setter in detail:
     * rejected_setters_change_nothing). */
    CHECK_EQ(ld_options_set_period_ms(o, 0), LD_INVALID_ARGUMENT);
    expect_valid(server, o);
    CHECK_EQ(ld_options_set_period_ms(o, LD_MAX_DURATION_MS + 1), LD_INVALID_ARGUMENT);
    expect_valid(server, o);
    CHECK_EQ(ld_options_set_period_ms(o, UINT64_MAX), LD_INVALID_ARGUMENT);
    expect_valid(server, o);
    CHECK_EQ(ld_options_set_period_ms(o, LD_MAX_DURATION_MS), LD_OK);
    CHECK_EQ(ld_options_set_period_ms(o, 1000), LD_OK);

    CHECK_EQ(ld_options_set_drain_delay_ms(o, LD_MAX_DURATION_MS + 1), LD_INVALID_ARGUMENT);
    expect_valid(server, o);
    CHECK_EQ(ld_options_set_drain_delay_ms(o, 0), LD_OK);
    CHECK_EQ(ld_options_set_close_timeout_ms(o, 0), LD_INVALID_ARGUMENT);
    expect_valid(server, o);
    CHECK_EQ(ld_options_set_close_timeout_ms(o, 1000), LD_OK);

    CHECK_EQ(ld_options_set_signals(o, NULL, 3), LD_NULL_ARGUMENT);
    int bad_signals[] = {0, -1, 65, 100000, SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGFPE, SIGILL, 32};
    for (size_t i = 0; i < sizeof bad_signals / sizeof bad_signals[0]; i++) {
        int list[] = {SIGTERM, bad_signals[i]};
        CHECK_EQ(ld_options_set_signals(o, list, 2), LD_INVALID_ARGUMENT);
        expect_valid(server, o);
    }
    CHECK_EQ(ld_options_set_repeat_signal_policy(o, 3), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_repeat_signal_policy(o, -1), LD_INVALID_ARGUMENT);

    /* An empty trigger list is valid whoever owns the signals: only a stop triggers. */
    CHECK_EQ(ld_options_set_signals(o, NULL, 0), LD_OK);
    CHECK_EQ(ld_options_set_install_signal_handlers(o, false), LD_OK);
    CHECK_EQ(ld_options_set_install_signal_handlers(o, true), LD_OK);
    expect_valid(server, o);
    CHECK_EQ(ld_options_set_signals(o, (int[]){SIGTERM}, 1), LD_OK);

    /* Nothing started, no handler installed. */
    CHECK_EQ(t.serve_calls, 0);
    CHECK(current_handler(SIGTERM) == SIG_DFL);
    CHECK(current_handler(SIGINT) == SIG_DFL);
    CHECK_EQ(count_dir("/proc/self/task"), 1);
    ld_options_free(o);
    ld_server_free(server);
    CHECK_EQ(t.frees, 1);
    return 0;
}

int test_logging_disabled(void) {
    test_server t;
    ts_init(&t);
    ld_server *server = make_server(&t);
    ld_options *o = ld_options_new();
    CHECK_EQ(ld_options_disable_logging(o), LD_OK); /* Go's WithoutLogger panics; ours is silent */
    bg_run b;
    bg_start_ready(&b, server, o);
    CHECK(kill(getpid(), SIGTERM) == 0);
    bg_join(&b);
    CHECK_EQ(b.status, LD_OK);
    bg_finish(&b);
    ld_options_free(o);
    ld_server_free(server);
    return 0; /* the harness checks stderr is empty */
}

int test_logger_lines(void) {
    fixture *f = fx_new();
    bg_start_ready(&f->b, f->server, f->o);
    CHECK(kill(getpid(), SIGTERM) == 0);
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_OK);
    const char *want = "Waiting for signals: [interrupt terminated]\n"
                       "Upgrade on signals: [hangup]\n"
                       "Starting server\n"
                       "Received signal [terminated]; entering lame-duck mode for 3s\n"
                       "Completed lame-duck mode\n"
                       "Server stopped\n";
    if (strcmp(log_buf, want) != 0) {
        fprintf(stderr, "log was:\n%s", log_buf);
        CHECK(0);
    }
    fx_free(f);
    return 0;
}

int test_upgrade_options(void) {
    ld_options *o = ld_options_new();
    int hup = SIGHUP, term = SIGTERM, kill_ = SIGKILL;
    CHECK_EQ(ld_options_set_upgrade_signals(o, &kill_, 1), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_upgrade_signals(o, &term, 1), LD_INVALID_ARGUMENT); /* a trigger signal */
    CHECK_EQ(ld_options_set_upgrade_signals(o, NULL, 1), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_upgrade_signals(o, NULL, 0), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_signals(o, &hup, 1), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_timeout_ms(o, 0), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_upgrade_timeout_ms(o, 86400001), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_upgrade_timeout_ms(NULL, 10), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_upgrade_timeout_ms(o, 1000), LD_OK);
    const char *argv[] = {"x", NULL};
    CHECK_EQ(ld_options_set_upgrade_command(o, "x", argv, 0), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_upgrade_command(o, "", argv, 1), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_upgrade_command(o, "x", NULL, 1), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_upgrade_command(o, "x", argv, 2), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_upgrade_command(o, NULL, NULL, 0), LD_OK);
    CHECK_EQ(ld_options_set_pid_file(o, ""), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_pid_file(o, NULL), LD_OK);
    CHECK_EQ(ld_options_set_pid_file(NULL, "x"), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_listen_timeout_ms(o, 0), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_listen_timeout_ms(o, 86400001), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_listen_timeout_ms(NULL, 10), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_listen_timeout_ms(o, 5000), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_confirm_ms(o, 60001), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_upgrade_confirm_ms(NULL, 0), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_upgrade_confirm_ms(o, 0), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_without_listeners(NULL, true), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_upgrade_without_listeners(o, false), LD_OK);
    /* A trigger signal set after the upgrade signals is caught when the runner is made. */
    CHECK_EQ(ld_options_set_signals(o, &hup, 1), LD_OK);
    test_server t;
    ts_init(&t);
    ld_server *server = make_server(&t);
    ld_runner *r = NULL;
    ld_error *err = NULL;
    CHECK_EQ(ld_runner_new(server, o, &r, &err), LD_INVALID_ARGUMENT);
    CHECK_CONTAINS(ld_error_message(err), "signal 1 (hangup) cannot both trigger lame-duck and start an upgrade");
    ld_error_free(err);
    CHECK_EQ(ld_listen_is_shared(-1), false);
    ld_server_free(server);
    ld_options_free(o);
    return 0;
}

/* The setter contract: every setter either stores its value and returns LD_OK, or returns an
 * error and leaves the options exactly as they were. Each rejection below follows a valid
 * setting; the run then shows the earlier values still in place (signals, period, logger) and
 * the options make a runner after every rejection (nothing invalid stored). */
int test_rejected_setters_change_nothing(void) {
    fixture *f = fx_new();
    ld_options *o = f->o;
    int usr1 = SIGUSR1, usr2 = SIGUSR2, kill_ = SIGKILL, bad[] = {SIGUSR1, 0};
    const char *argv[] = {"/bin/true", NULL};

    CHECK_EQ(ld_options_set_signals(o, &usr1, 1), LD_OK);
    CHECK_EQ(ld_options_set_signals(o, bad, 2), LD_INVALID_ARGUMENT);
    expect_valid(f->server, o);
    CHECK_EQ(ld_options_set_signals(o, NULL, 1), LD_NULL_ARGUMENT);
    expect_valid(f->server, o);

    CHECK_EQ(ld_options_set_period_ms(o, 1000), LD_OK);
    CHECK_EQ(ld_options_set_period_ms(o, 0), LD_INVALID_ARGUMENT);
    expect_valid(f->server, o);
    CHECK_EQ(ld_options_set_period_ms(o, LD_MAX_DURATION_MS + 1), LD_INVALID_ARGUMENT);
    expect_valid(f->server, o);

    CHECK_EQ(ld_options_set_logger(o, NULL, NULL), LD_NULL_ARGUMENT); /* the capture logger stays */

    CHECK_EQ(ld_options_set_drain_delay_ms(o, 0), LD_OK);
    CHECK_EQ(ld_options_set_drain_delay_ms(o, LD_MAX_DURATION_MS + 1), LD_INVALID_ARGUMENT);
    expect_valid(f->server, o);
    CHECK_EQ(ld_options_set_close_timeout_ms(o, 2000), LD_OK);
    CHECK_EQ(ld_options_set_close_timeout_ms(o, 0), LD_INVALID_ARGUMENT);
    expect_valid(f->server, o);
    CHECK_EQ(ld_options_set_repeat_signal_policy(o, LD_REPEAT_IGNORE), LD_OK);
    CHECK_EQ(ld_options_set_repeat_signal_policy(o, 3), LD_INVALID_ARGUMENT);
    expect_valid(f->server, o);

    CHECK_EQ(ld_options_set_upgrade_signals(o, &usr2, 1), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_signals(o, &kill_, 1), LD_INVALID_ARGUMENT);
    expect_valid(f->server, o);
    CHECK_EQ(ld_options_set_upgrade_signals(o, &usr1, 1), LD_INVALID_ARGUMENT); /* a trigger signal */
    expect_valid(f->server, o);
    CHECK_EQ(ld_options_set_upgrade_signals(o, NULL, 1), LD_NULL_ARGUMENT);
    expect_valid(f->server, o);
    CHECK_EQ(ld_options_set_upgrade_timeout_ms(o, 1000), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_timeout_ms(o, 0), LD_INVALID_ARGUMENT);
    expect_valid(f->server, o);
    CHECK_EQ(ld_options_set_listen_timeout_ms(o, 1000), LD_OK);
    CHECK_EQ(ld_options_set_listen_timeout_ms(o, LD_MAX_DURATION_MS + 1), LD_INVALID_ARGUMENT);
    expect_valid(f->server, o);
    CHECK_EQ(ld_options_set_upgrade_confirm_ms(o, 0), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_confirm_ms(o, 60001), LD_INVALID_ARGUMENT);
    expect_valid(f->server, o);
    CHECK_EQ(ld_options_set_upgrade_command(o, "/bin/true", argv, 1), LD_OK);
    CHECK_EQ(ld_options_set_upgrade_command(o, "x", argv, 0), LD_INVALID_ARGUMENT);
    expect_valid(f->server, o);
    CHECK_EQ(ld_options_set_upgrade_command(o, "", argv, 1), LD_INVALID_ARGUMENT);
    expect_valid(f->server, o);
    CHECK_EQ(ld_options_set_upgrade_command(o, "x", argv, 2), LD_NULL_ARGUMENT); /* argv[1] is NULL */
    expect_valid(f->server, o);
    CHECK_EQ(ld_options_set_upgrade_command(o, "x", NULL, 1), LD_NULL_ARGUMENT);
    expect_valid(f->server, o);
    CHECK_EQ(ld_options_set_pid_file(o, NULL), LD_OK);
    CHECK_EQ(ld_options_set_pid_file(o, ""), LD_INVALID_ARGUMENT);
    expect_valid(f->server, o);

    /* The run uses the values set before the rejections. */
    bg_start_ready(&f->b, f->server, o);
    CHECK_EQ(wait_for_log("Waiting for signals: [user defined signal 1]"), 0);
    CHECK(current_handler(SIGTERM) == SIG_DFL);
    CHECK(kill(getpid(), SIGUSR1) == 0);
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_OK);
    CHECK_CONTAINS(log_buf, "Received signal [user defined signal 1]; entering lame-duck mode for 1s");
    fx_free(f);
    return 0;
}
