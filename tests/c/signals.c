/* Trigger signals: custom lists, repeated signals and their policies, stop (from a thread, a
 * hook, a signal handler), chaining to and restoring the previous handlers, host-owned signals. */
#include "common.h"

int test_custom_signals_replace(void) {
    fixture *f = fx_new();
    int sigs[] = {SIGUSR1};
    CHECK_EQ(ld_options_set_signals(f->o, sigs, 1), LD_OK);
    bg_start_ready(&f->b, f->server, f->o);
    CHECK(current_handler(SIGTERM) == SIG_DFL); /* the default list was replaced, not extended */
    CHECK(current_handler(SIGINT) == SIG_DFL);
    CHECK(kill(getpid(), SIGUSR1) == 0);
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_OK);
    CHECK_CONTAINS(log_buf, "Waiting for signals: [user defined signal 1]");
    CHECK_CONTAINS(log_buf, "Received signal [user defined signal 1]; entering lame-duck mode for 3s");
    fx_free(f);
    return 0;
}

/* With [SIGUSR1] as the list, SIGTERM is not trapped: the process must die by it. */
int test_custom_signals_sigterm_kills(void) {
    test_server t;
    ts_init(&t);
    ld_server *server = make_server(&t);
    ld_options *o = quiet_options();
    int sigs[] = {SIGUSR1};
    CHECK_EQ(ld_options_set_signals(o, sigs, 1), LD_OK);
    bg_run b;
    bg_start_ready(&b, server, o);
    kill(getpid(), SIGTERM);
    sleep(10);
    return 3; /* not reached */
}

/* ---------------------------------------------------------------------------------------- */
/* 10. Repeated signals.                                                                    */

static int repeat_case(int policy, int signals_to_send, test_server *t, bg_run *b) {
    ts_init(t);
    t->shutdown_mode = policy == LD_REPEAT_IGNORE ? SHUTDOWN_SLOW_OK : SHUTDOWN_WAIT_DEADLINE;
    t->close_rc = 9;
    ld_server *server = make_server(t);
    ld_options *o = quiet_options();
    CHECK_EQ(ld_options_set_period_ms(o, 60000), LD_OK); /* the test must not wait for this */
    CHECK_EQ(ld_options_set_repeat_signal_policy(o, policy), LD_OK);
    bg_start_ready(b, server, o);
    CHECK(kill(getpid(), SIGTERM) == 0);
    ts_wait_for(t, &t->shutdown_calls, 1);
    for (int i = 1; i < signals_to_send; i++) CHECK(kill(getpid(), SIGTERM) == 0);
    bg_join(b);
    ld_options_free(o);
    ld_server_free(server);
    return 0;
}

int test_repeat_force(void) {
    test_server t;
    bg_run b;
    repeat_case(LD_REPEAT_FORCE, 2, &t, &b);
    CHECK_EQ(b.status, LD_FORCED);
    CHECK_EQ(ld_error_code(b.error), 9);
    CHECK_CONTAINS(ld_error_message(b.error), "cut short by a repeated signal + close hook returned 9");
    CHECK_EQ(t.close_calls, 1);
    CHECK(b.returned_ms - t.shutdown_entry_ms < 30000); /* far before the 60 s period */
    CHECK_CONTAINS(log_buf, "Received signal [terminated] again; forcing close now");
    bg_finish(&b);
    return 0;
}

/* Third SIGTERM with the force policy: default disposition restored and re-raised. */
int test_repeat_force_third_kills(void) {
    test_server t;
    bg_run b;
    ts_init(&t);
    t.shutdown_mode = SHUTDOWN_HANG;
    t.close_mode = CLOSE_HANG;
    ld_server *server = make_server(&t);
    ld_options *o = ld_options_new(); /* log to stderr: the harness checks the lines */
    CHECK_EQ(ld_options_set_period_ms(o, 60000), LD_OK);
    CHECK_EQ(ld_options_set_close_timeout_ms(o, 60000), LD_OK);
    bg_start_ready(&b, server, o);
    CHECK(kill(getpid(), SIGTERM) == 0);
    ts_wait_for(&t, &t.shutdown_calls, 1);
    CHECK(kill(getpid(), SIGTERM) == 0);
    ts_wait_for(&t, &t.close_calls, 1);
    kill(getpid(), SIGTERM);
    sleep(10);
    return 3; /* not reached */
}

int test_repeat_ignore(void) {
    test_server t;
    bg_run b;
    repeat_case(LD_REPEAT_IGNORE, 3, &t, &b);
    CHECK_EQ(b.status, LD_OK);
    CHECK_EQ(t.close_calls, 0);
    CHECK_CONTAINS(log_buf, "Received signal [terminated] again; ignoring it");
    bg_finish(&b);
    return 0;
}

/* exit policy: the second signal kills the process. */
int test_repeat_exit(void) {
    test_server t;
    bg_run b;
    ts_init(&t);
    t.shutdown_mode = SHUTDOWN_HANG;
    ld_server *server = make_server(&t);
    ld_options *o = quiet_options();
    CHECK_EQ(ld_options_set_repeat_signal_policy(o, LD_REPEAT_EXIT), LD_OK);
    bg_start_ready(&b, server, o);
    CHECK(kill(getpid(), SIGTERM) == 0);
    ts_wait_for(&t, &t.shutdown_calls, 1);
    kill(getpid(), SIGTERM);
    sleep(10);
    return 3; /* not reached */
}

/* ---------------------------------------------------------------------------------------- */
/* 13. Stop: the same graceful path as a signal; from a thread, a hook, a signal handler.   */

int test_stop_from_thread(void) {
    fixture *f = fx_new();
    bg_start_ready(&f->b, f->server, f->o);
    CHECK_EQ(ld_runner_stop(f->b.runner), LD_OK);
    CHECK_EQ(ld_runner_stop(f->b.runner), LD_OK); /* idempotent */
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_OK);
    CHECK_EQ(f->t.shutdown_calls, 1); /* Go's cancellation skips Shutdown; ours does not */
    CHECK_EQ(f->t.close_calls, 0);
    CHECK_CONTAINS(log_buf, "Stop requested; entering lame-duck mode for 3s");
    fx_free(f);
    return 0;
}

int test_stop_in_hook(void) {
    fixture *f = fx_new();
    f->t.serve_mode = SERVE_STOP_ITSELF; /* serve calls ld_runner_stop and ld_runner_free */
    CHECK_EQ(ld_runner_new(f->server, f->o, &f->b.runner, NULL), LD_OK);
    f->t.runner = f->b.runner; /* before serve can read it */
    CHECK(pthread_create(&f->b.thread, NULL, bg_main, &f->b) == 0);
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_OK);
    CHECK_EQ(f->t.stop_status, LD_OK);
    CHECK_EQ(f->t.free_status, LD_BUSY); /* freeing a running runner is refused, not a crash */
    CHECK_EQ(f->t.shutdown_calls, 1);
    fx_free(f);
    return 0;
}

static ld_runner *handler_runner;
static void stop_handler(int sig) {
    (void)sig;
    ld_runner_stop(handler_runner); /* async-signal-safe */
}

int test_stop_from_signal_handler(void) {
    fixture *f = fx_new();
    bg_start_ready(&f->b, f->server, f->o);
    handler_runner = f->b.runner;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = stop_handler;
    CHECK(sigaction(SIGUSR2, &sa, NULL) == 0);
    CHECK(raise(SIGUSR2) == 0);
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_OK);
    CHECK_EQ(f->t.shutdown_calls, 1);
    fx_free(f);
    return 0;
}

int test_stop_before_run(void) {
    fixture *f = fx_new();
    ld_runner *runner = NULL;
    CHECK_EQ(ld_runner_new(f->server, f->o, &runner, NULL), LD_OK);
    CHECK_EQ(ld_runner_stop(runner), LD_OK);
    ld_error *err = NULL;
    CHECK_EQ(ld_runner_run(runner, &err), LD_CANCELED);
    CHECK_CONTAINS(ld_error_message(err), "stopped before it started");
    CHECK_EQ(f->t.serve_calls, 0);
    CHECK_EQ(f->t.shutdown_calls, 0);
    CHECK_EQ(ld_runner_state(runner), LD_STATE_STOPPED);
    CHECK_EQ(ld_runner_wait_ready(runner, -1), LD_NOT_RUNNING);
    ld_error_free(err);
    CHECK_EQ(ld_runner_free(runner), LD_OK);
    fx_free(f);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* 15. Chaining, restoring, no leaks.                                                       */

static volatile sig_atomic_t user_handler_calls;
static void user_handler(int sig) {
    (void)sig;
    user_handler_calls++;
}

int test_chaining_and_restore(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = user_handler;
    CHECK(sigaction(SIGTERM, &sa, NULL) == 0);
    for (int round = 0; round < 2; round++) {
        test_server t;
        ts_init(&t);
        ld_server *server = make_server(&t);
        ld_options *o = quiet_options();
        bg_run b;
        bg_start_ready(&b, server, o);
        CHECK(current_handler(SIGTERM) != user_handler); /* ours is installed... */
        CHECK(kill(getpid(), SIGTERM) == 0);
        bg_join(&b);
        CHECK_EQ(b.status, LD_OK);
        CHECK_EQ(user_handler_calls, round + 1);          /* ...and the previous one still ran */
        CHECK(current_handler(SIGTERM) == user_handler); /* restored after the run */
        CHECK(current_handler(SIGINT) == SIG_DFL);
        bg_finish(&b);
        ld_options_free(o);
        ld_server_free(server);
    }
    return 0;
}

int test_deliver_signal(void) {
    fixture *f = fx_new();
    CHECK_EQ(ld_options_set_install_signal_handlers(f->o, false), LD_OK);
    bg_start_ready(&f->b, f->server, f->o);
    CHECK(current_handler(SIGTERM) == SIG_DFL); /* the library installed nothing */
    CHECK_EQ(ld_runner_deliver_signal(f->b.runner, SIGUSR1), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_runner_deliver_signal(f->b.runner, 0), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_runner_deliver_signal(f->b.runner, 1000), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_runner_deliver_signal(f->b.runner, SIGTERM), LD_OK);
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_OK);
    CHECK_EQ(f->t.shutdown_calls, 1);
    CHECK_CONTAINS(log_buf, "Received signal [terminated]; entering lame-duck mode");
    fx_free(f);
    return 0;
}

/* "The app stops itself, then its supervisor stops it": a stop followed by a signal is one
 * event; only the signal after that is a repeat (forced), and it does not kill. */
int test_stop_then_signals(void) {
    fixture *f = fx_new();
    f->t.shutdown_mode = SHUTDOWN_WAIT_DEADLINE;
    CHECK_EQ(ld_options_set_period_ms(f->o, 60000), LD_OK);
    bg_start_ready(&f->b, f->server, f->o);
    CHECK_EQ(ld_runner_stop(f->b.runner), LD_OK);
    ts_wait_for(&f->t, &f->t.shutdown_calls, 1);
    CHECK(kill(getpid(), SIGTERM) == 0);
    CHECK_EQ(wait_for_log("Received signal [terminated]"), 0);
    CHECK_CONTAINS(log_buf, "Received signal [terminated]; already in lame-duck mode since the stop request");
    CHECK_EQ(ld_runner_state(f->b.runner), LD_STATE_SHUTTING_DOWN); /* not forced */
    CHECK_EQ(f->t.close_calls, 0);
    CHECK(kill(getpid(), SIGTERM) == 0);
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_FORCED); /* the second signal forces; we are alive to see it */
    CHECK_EQ(f->t.close_calls, 1);
    CHECK_CONTAINS(log_buf, "Received signal [terminated] again; forcing close now");
    fx_free(f);
    return 0;
}
