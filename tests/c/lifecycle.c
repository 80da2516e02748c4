/* Runs and their outcomes: defaults and Go log texts, each way a run ends, the drain delay,
 * readiness and the state transitions. */
#include "common.h"

/* ---------------------------------------------------------------------------------------- */
/* 1. Defaults, Go log texts.                                                               */

int test_defaults(void) {
    for (int i = 0; i < 2; i++) {
        int sig = i == 0 ? SIGTERM : SIGINT;
        test_server t;
        ts_init(&t);
        ld_server *server = make_server(&t);
        bg_run b;
        bg_start_ready(&b, server, NULL); /* NULL options: defaults, logging to stderr */
        CHECK(kill(getpid(), sig) == 0);
        bg_join(&b);
        CHECK_EQ(b.status, LD_OK);
        CHECK(b.error == NULL);
        CHECK_EQ(t.shutdown_calls, 1);
        CHECK_EQ(t.close_calls, 0);
        /* default period 3 s: the deadline is at most 3000 ms away, and most of it is left */
        CHECK(t.shutdown_remaining_ms <= 3000 && t.shutdown_remaining_ms > 2000);
        bg_finish(&b);
        ld_server_free(server);
        CHECK_EQ(t.frees, 1);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* 3-8. Outcomes.                                                                           */

typedef struct {
    ld_status status;
    int code;
    char message[512];
    bool abandoned;
    int64_t signal_ms, returned_ms;
} outcome;

/* Runs a server, sends SIGTERM once ready (unless serve ends by itself), collects the outcome. */
static outcome run_case(test_server *t, uint64_t period_ms, uint64_t close_timeout_ms, bool send_signal) {
    ld_server *server = make_server(t);
    ld_options *o = quiet_options();
    CHECK_EQ(ld_options_set_period_ms(o, period_ms), LD_OK);
    CHECK_EQ(ld_options_set_close_timeout_ms(o, close_timeout_ms), LD_OK);
    bg_run b;
    bg_start(&b, server, o);
    outcome out;
    memset(&out, 0, sizeof out);
    if (send_signal) {
        CHECK_EQ(ld_runner_wait_ready(b.runner, 10000), LD_OK);
        ts_wait_for(t, &t->serve_calls, 1); /* ready means serve was called, not that it ran yet */
        out.signal_ms = now_ms();
        CHECK(kill(getpid(), SIGTERM) == 0);
    }
    bg_join(&b);
    out.status = b.status;
    out.returned_ms = b.returned_ms;
    CHECK_EQ(b.status == LD_OK, b.error == NULL);
    if (b.error) {
        CHECK_EQ(ld_error_status(b.error), b.status);
        out.code = ld_error_code(b.error);
        snprintf(out.message, sizeof out.message, "%s", ld_error_message(b.error));
        out.abandoned = ld_error_abandoned(b.error);
    }
    ld_error_free(b.error);
    b.error = NULL;
    bg_finish(&b); /* the run is over even when a hook was abandoned: freeing is fine */
    ld_server_free(server);
    if (out.abandoned) CHECK_EQ(t->frees, 0); /* the abandoned hook still holds user_data */
    ld_options_free(o);
    return out;
}

/* close was called at the deadline or later. The deadline is at least the period after the
 * signal was sent (it is set when the signal is handled), whatever the thread timings: on a
 * loaded machine, or under valgrind, the shutdown thread may even start after it. 1 ms of slack
 * for the millisecond rounding of the two readings. */
static bool close_at_or_after_deadline(const test_server *t, const outcome *out, int64_t period_ms) {
    return t->close_entry_ms + 1 >= out->signal_ms + period_ms;
}

int test_shutdown_ok(void) {
    test_server t;
    ts_init(&t);
    outcome out = run_case(&t, 3000, 5000, true);
    CHECK_EQ(out.status, LD_OK);
    CHECK_EQ(t.shutdown_calls, 1);
    CHECK(t.shutdown_saw_serving); /* shutdown runs while serve is still running */
    CHECK_EQ(t.close_calls, 0);
    CHECK_CONTAINS(log_buf, "Completed lame-duck mode");
    return 0;
}

int test_serve_outlives_deadline(void) {
    test_server t;
    ts_init(&t);
    t.shutdown_mode = SHUTDOWN_OK_KEEP_SERVING;
    t.close_rc = 5;
    outcome out = run_case(&t, 200, 5000, true);
    CHECK_EQ(out.status, LD_EXPIRED);
    CHECK_EQ(out.code, 5);
    CHECK_EQ(t.close_calls, 1);
    CHECK(close_at_or_after_deadline(&t, &out, 200)); /* at the deadline, not before */
    CHECK_CONTAINS(out.message, "Lame-duck period has expired + close hook returned 5");
    return 0;
}

int test_deadline_exceeded(void) {
    test_server t;
    ts_init(&t);
    t.shutdown_mode = SHUTDOWN_WAIT_DEADLINE;
    t.close_rc = 3;
    outcome out = run_case(&t, 200, 5000, true);
    CHECK_EQ(out.status, LD_EXPIRED);
    CHECK_EQ(out.code, 3);
    CHECK_EQ(t.shutdown_calls, 1);
    CHECK_EQ(t.close_calls, 1);
    CHECK_EQ(strcmp(out.message, "Lame-duck period has expired + close hook returned 3"), 0);
    CHECK_CONTAINS(log_buf, "Lame-duck period has expired");

    test_server t2; /* close succeeds: the message is exactly Go's */
    ts_init(&t2);
    t2.shutdown_mode = SHUTDOWN_WAIT_DEADLINE;
    out = run_case(&t2, 200, 5000, true);
    CHECK_EQ(out.status, LD_EXPIRED);
    CHECK_EQ(out.code, 0);
    CHECK_EQ(strcmp(out.message, "Lame-duck period has expired"), 0);
    return 0;
}

int test_shutdown_failed(void) {
    test_server t;
    ts_init(&t);
    t.shutdown_mode = SHUTDOWN_FAIL;
    outcome out = run_case(&t, 3000, 5000, true);
    CHECK_EQ(out.status, LD_SHUTDOWN_FAILED);
    CHECK_EQ(out.code, 42);
    CHECK_EQ(t.close_calls, 0);
    CHECK_CONTAINS(out.message, "shutdown hook returned 42");
    CHECK_CONTAINS(log_buf, "error shutting down server: shutdown hook returned 42");

    test_server t2; /* serve still running at the deadline: close is called, result unchanged */
    ts_init(&t2);
    t2.shutdown_mode = SHUTDOWN_FAIL_KEEP_SERVING;
    out = run_case(&t2, 200, 5000, true);
    CHECK_EQ(out.status, LD_SHUTDOWN_FAILED);
    CHECK_EQ(out.code, 42);
    CHECK_EQ(t2.close_calls, 1);
    return 0;
}

int test_shutdown_hangs(void) {
    test_server t;
    ts_init(&t);
    t.shutdown_mode = SHUTDOWN_HANG;
    outcome out = run_case(&t, 200, 500, true);
    CHECK_EQ(out.status, LD_EXPIRED);
    CHECK_EQ(t.close_calls, 1);
    CHECK(close_at_or_after_deadline(&t, &out, 200));
    CHECK(out.abandoned);
    CHECK_CONTAINS(out.message, "shutdown did not return within 500ms (abandoned)");
    /* bounded: deadline + close timeout, with a generous margin for slow machines */
    CHECK(out.returned_ms - out.signal_ms < 200 + 500 + 5000);
    return 0;
}

int test_close_hangs(void) {
    test_server t;
    ts_init(&t);
    t.shutdown_mode = SHUTDOWN_WAIT_DEADLINE;
    t.close_mode = CLOSE_HANG;
    outcome out = run_case(&t, 200, 500, true);
    CHECK_EQ(out.status, LD_EXPIRED);
    CHECK(out.abandoned);
    CHECK_CONTAINS(out.message, "close did not return within 500ms (abandoned)");
    CHECK(out.returned_ms - out.signal_ms < 200 + 500 + 5000);
    return 0;
}

int test_serve_fails(void) {
    test_server t;
    ts_init(&t);
    t.serve_mode = SERVE_RETURN_AT_ONCE;
    t.serve_rc = 7;
    outcome out = run_case(&t, 3000, 5000, false);
    CHECK_EQ(out.status, LD_FAILED);
    CHECK_EQ(out.code, 7);
    CHECK_EQ(t.shutdown_calls, 0);
    CHECK_EQ(t.close_calls, 0);
    CHECK_CONTAINS(log_buf, "Server failed: serve hook returned 7");
    CHECK(current_handler(SIGTERM) == SIG_DFL); /* handlers restored */

    test_server t2; /* serve returning 0 on its own ends the run with success, no lame-duck */
    ts_init(&t2);
    t2.serve_mode = SERVE_RETURN_AT_ONCE;
    out = run_case(&t2, 3000, 5000, false);
    CHECK_EQ(out.status, LD_OK);
    CHECK_EQ(t2.shutdown_calls, 0);
    CHECK_EQ(t2.close_calls, 0);
    return 0;
}

int test_final_states(void) {
    test_server t;
    ts_init(&t);
    t.serve_mode = SERVE_RETURN_AT_ONCE;
    t.serve_rc = 7;
    ld_server *server = make_server(&t);
    ld_options *o = quiet_options();
    bg_run b;
    bg_start(&b, server, o);
    bg_join(&b);
    CHECK_EQ(ld_runner_state(b.runner), LD_STATE_FAILED);
    bg_finish(&b);
    ld_server_free(server);

    test_server t2;
    ts_init(&t2);
    server = make_server(&t2);
    bg_start_ready(&b, server, o);
    CHECK_EQ(ld_runner_state(b.runner), LD_STATE_READY);
    CHECK_EQ(ld_runner_stop(b.runner), LD_OK);
    bg_join(&b);
    CHECK_EQ(ld_runner_state(b.runner), LD_STATE_STOPPED);
    bg_finish(&b);
    ld_server_free(server);
    ld_options_free(o);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* 9. Drain delay.                                                                          */

int test_drain_delay(void) {
    fixture *f = fx_new();
    CHECK_EQ(ld_options_set_drain_delay_ms(f->o, 400), LD_OK);
    CHECK_EQ(ld_options_set_state_observer(f->o, record_state, NULL), LD_OK);
    bg_start_ready(&f->b, f->server, f->o);
    ts_wait_for(&f->t, &f->t.serve_calls, 1); /* serve's thread is running its code */
    int64_t signal_ms = now_ms();
    CHECK(kill(getpid(), SIGTERM) == 0);
    while (ld_runner_state(f->b.runner) == LD_STATE_READY) usleep(1000);
    /* Draining: serve still serving, shutdown not called yet. */
    CHECK_EQ(ld_runner_state(f->b.runner), LD_STATE_DRAINING);
    pthread_mutex_lock(&f->t.mu);
    CHECK(f->t.serving);
    CHECK_EQ(f->t.shutdown_calls, 0);
    pthread_mutex_unlock(&f->t.mu);
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_OK);
    CHECK_EQ(f->t.shutdown_calls, 1);
    CHECK(f->t.shutdown_entry_ms - signal_ms >= 400); /* shutdown only after the drain delay */
    CHECK(f->t.shutdown_remaining_ms > 2000);         /* ...with its full period */
    CHECK_CONTAINS(log_buf, "Received signal [terminated]; draining for 400ms, then entering lame-duck mode for 3s");
    ld_state want[] = {LD_STATE_NOT_STARTED, LD_STATE_STARTING, LD_STATE_SERVING, LD_STATE_READY,
                       LD_STATE_DRAINING, LD_STATE_SHUTTING_DOWN, LD_STATE_STOPPED};
    check_states(want, 7);
    fx_free(f);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* 11. Ready.                                                                               */

int test_ready_race(void) {
    /* Go's Ready fires before its handler is installed and loses 186 of 200 SIGTERMs. */
    for (int i = 0; i < 200; i++) {
        test_server t;
        ts_init(&t);
        ld_server *server = make_server(&t);
        ld_options *o = ld_options_new();
        CHECK_EQ(ld_options_disable_logging(o), LD_OK);
        bg_run b;
        bg_start(&b, server, o);
        CHECK_EQ(ld_runner_wait_ready(b.runner, -1), LD_OK);
        CHECK(kill(getpid(), SIGTERM) == 0); /* immediately after ready */
        bg_join(&b);
        CHECK_EQ(b.status, LD_OK);
        CHECK_EQ(t.shutdown_calls, 1);
        bg_finish(&b);
        ld_options_free(o);
        ld_server_free(server);
    }
    CHECK(current_handler(SIGTERM) == SIG_DFL);
    return 0;
}

int test_explicit_ready(void) {
    test_server t;
    ts_init(&t);
    t.serve_mode = SERVE_READY_LATE;
    ld_server *server = make_server(&t);
    ld_options *o = quiet_options();
    CHECK_EQ(ld_options_set_explicit_ready(o, true), LD_OK);
    bg_run b;
    bg_start(&b, server, o);
    ts_wait_for(&t, &t.serve_calls, 1);
    CHECK_EQ(ld_runner_wait_ready(b.runner, 20), LD_TIMEOUT); /* serve has not said ready yet */
    CHECK_EQ(ld_runner_state(b.runner), LD_STATE_SERVING);
    CHECK_EQ(ld_runner_wait_ready(b.runner, -1), LD_OK);
    CHECK_EQ(ld_runner_state(b.runner), LD_STATE_READY);
    CHECK(kill(getpid(), SIGTERM) == 0);
    bg_join(&b);
    CHECK_EQ(b.status, LD_OK);
    CHECK_EQ(ld_runner_wait_ready(b.runner, 0), LD_OK); /* it was ready once */
    bg_finish(&b);
    ld_server_free(server);

    test_server t2; /* serve fails before ready: waiters learn the run ended */
    ts_init(&t2);
    t2.serve_mode = SERVE_READY_LATE;
    t2.serve_rc = 4;
    server = make_server(&t2);
    bg_start(&b, server, o);
    CHECK_EQ(ld_runner_wait_ready(b.runner, -1), LD_NOT_RUNNING);
    bg_join(&b);
    CHECK_EQ(b.status, LD_FAILED);
    bg_finish(&b);
    ld_server_free(server);
    ld_options_free(o);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* 12. State: atomic, readable from any thread, every transition observed.                  */

static volatile int reader_stop;
static void *state_reader(void *arg) {
    ld_runner *r = arg;
    long reads = 0;
    while (!reader_stop) {
        ld_state s = ld_runner_state(r);
        CHECK(s >= LD_STATE_NOT_STARTED && s <= LD_STATE_FAILED);
        reads++;
    }
    return (void *)reads;
}

int test_state_observer(void) {
    fixture *f = fx_new();
    f->t.shutdown_mode = SHUTDOWN_WAIT_DEADLINE;
    CHECK_EQ(ld_options_set_period_ms(f->o, 100), LD_OK);
    CHECK_EQ(ld_options_set_state_observer(f->o, record_state, NULL), LD_OK);
    ld_runner *runner = NULL;
    CHECK_EQ(ld_runner_new(f->server, f->o, &runner, NULL), LD_OK);
    CHECK_EQ(ld_runner_state(runner), LD_STATE_NOT_STARTED);
    pthread_t readers[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&readers[i], NULL, state_reader, runner) == 0);
    f->b.runner = runner;
    CHECK(pthread_create(&f->b.thread, NULL, bg_main, &f->b) == 0);
    CHECK_EQ(ld_runner_wait_ready(runner, 10000), LD_OK);
    CHECK(kill(getpid(), SIGTERM) == 0);
    bg_join(&f->b);
    reader_stop = 1;
    for (int i = 0; i < 2; i++) pthread_join(readers[i], NULL);
    CHECK_EQ(f->b.status, LD_EXPIRED);
    ld_state want[] = {LD_STATE_NOT_STARTED, LD_STATE_STARTING, LD_STATE_SERVING, LD_STATE_READY,
                       LD_STATE_SHUTTING_DOWN, LD_STATE_CLOSING, LD_STATE_STOPPED};
    check_states(want, 7);
    CHECK_EQ(strcmp(ld_state_str(LD_STATE_SHUTTING_DOWN), "SHUTTING_DOWN"), 0);
    CHECK_EQ(strcmp(ld_state_str(99), "UNKNOWN"), 0);
    fx_free(f);
    return 0;
}
