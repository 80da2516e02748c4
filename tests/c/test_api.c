/*
 * C tests of liblameduck, one behaviour per sub-test: `test_api <name>`.
 * Driven by tests/c_api.rs, which runs each sub-test in its own process (built with
 * AddressSanitizer/UBSan, or under valgrind) and checks the exit status and stderr.
 * Sub-tests send real signals with kill(2) and wait on events, never on fixed sleeps,
 * except where a bound is asserted ("at least the drain delay").
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lameduck.h"

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "CHECK failed at %s:%d: %s\n", __FILE__, __LINE__, #cond);       \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)
#define CHECK_EQ(a, b)                                                                       \
    do {                                                                                     \
        long long a_ = (long long)(a), b_ = (long long)(b);                                  \
        if (a_ != b_) {                                                                      \
            fprintf(stderr, "CHECK_EQ failed at %s:%d: %s == %lld, expected %s == %lld\n",   \
                    __FILE__, __LINE__, #a, a_, #b, b_);                                     \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)
#define CHECK_CONTAINS(haystack, needle)                                                     \
    do {                                                                                     \
        const char *h_ = (haystack);                                                         \
        if (h_ == NULL || strstr(h_, (needle)) == NULL) {                                    \
            fprintf(stderr, "CHECK_CONTAINS failed at %s:%d: \"%s\" does not contain \"%s\"\n", \
                    __FILE__, __LINE__, h_ ? h_ : "(null)", (needle));                        \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------------------------------- */
/* A configurable test server.                                                              */

enum serve_mode { SERVE_UNTIL_STOPPED, SERVE_RETURN_AT_ONCE, SERVE_STOP_ITSELF, SERVE_READY_LATE };
enum shutdown_mode {
    SHUTDOWN_OK,              /* stop serve, return 0 */
    SHUTDOWN_OK_KEEP_SERVING, /* return 0, but serve keeps running */
    SHUTDOWN_WAIT_DEADLINE,   /* wait for the context, return LD_DEADLINE_EXCEEDED */
    SHUTDOWN_FAIL,            /* stop serve, return 42 */
    SHUTDOWN_FAIL_KEEP_SERVING,
    SHUTDOWN_HANG,            /* never return */
    SHUTDOWN_SLOW_OK,         /* take 300 ms, then stop serve and return 0 */
    SHUTDOWN_LATE_USE,        /* outlive the run (abandoned), then use the runner and context */
    SHUTDOWN_WAIT_RELEASE,    /* wait until the test lets go, then stop serve and return 0 */
};
enum close_mode { CLOSE_OK, CLOSE_HANG };

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    enum serve_mode serve_mode;
    enum shutdown_mode shutdown_mode;
    enum close_mode close_mode;
    int serve_rc, close_rc;
    int serve_calls, shutdown_calls, close_calls, frees;
    int serving, stopped;
    bool shutdown_saw_serving;
    int64_t shutdown_remaining_ms, shutdown_entry_ms, close_entry_ms;
    ld_runner *runner; /* for hooks that stop or free their own runner */
    ld_status stop_status, free_status;
    int released, late_done; /* SHUTDOWN_LATE_USE: let go by the test; its calls are made */
    ld_state late_state;
    int64_t late_remaining_ms;
    bool late_is_done;
} test_server;

static void ts_init(test_server *t) {
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    t->stop_status = t->free_status = (ld_status)-1;
}

static void ts_stop_serving(test_server *t) {
    pthread_mutex_lock(&t->mu);
    t->stopped = 1;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

static void ts_wait_for(test_server *t, int *counter, int at_least) {
    pthread_mutex_lock(&t->mu);
    while (*counter < at_least) pthread_cond_wait(&t->cv, &t->mu);
    pthread_mutex_unlock(&t->mu);
}

static void block_forever(void) {
    for (;;) pause();
}

static int t_serve(void *ud, const ld_context *ctx) {
    test_server *t = ud;
    pthread_mutex_lock(&t->mu);
    t->serve_calls++;
    t->serving = 1;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    if (t->serve_mode == SERVE_STOP_ITSELF) {
        t->stop_status = ld_runner_stop(t->runner);
        t->free_status = ld_runner_free(t->runner);
    }
    if (t->serve_mode == SERVE_READY_LATE) {
        /* Not ready yet, so nobody has signalled: there is no deadline before lame-duck. */
        CHECK_EQ(ld_context_remaining_ms(ctx), -1);
        CHECK(!ld_context_done(ctx));
        CHECK(!ld_context_wait(ctx, 10));
        usleep(200 * 1000);
        if (t->serve_rc != 0) return t->serve_rc; /* fails before ever being ready */
        CHECK_EQ(ld_context_ready(ctx), LD_OK);
    }
    if (t->serve_mode != SERVE_RETURN_AT_ONCE) {
        pthread_mutex_lock(&t->mu);
        while (!t->stopped) pthread_cond_wait(&t->cv, &t->mu);
        pthread_mutex_unlock(&t->mu);
    }
    pthread_mutex_lock(&t->mu);
    t->serving = 0;
    pthread_mutex_unlock(&t->mu);
    return t->serve_rc;
}

static int t_shutdown(void *ud, const ld_context *ctx) {
    test_server *t = ud;
    pthread_mutex_lock(&t->mu);
    t->shutdown_calls++;
    t->shutdown_entry_ms = now_ms();
    t->shutdown_remaining_ms = ld_context_remaining_ms(ctx);
    t->shutdown_saw_serving = t->serving;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    switch (t->shutdown_mode) {
    case SHUTDOWN_OK: ts_stop_serving(t); return 0;
    case SHUTDOWN_OK_KEEP_SERVING: return 0;
    case SHUTDOWN_WAIT_DEADLINE:
        CHECK(ld_context_wait(ctx, -1));
        CHECK(ld_context_done(ctx));
        CHECK_EQ(ld_context_remaining_ms(ctx), 0);
        return LD_DEADLINE_EXCEEDED;
    case SHUTDOWN_FAIL: ts_stop_serving(t); return 42;
    case SHUTDOWN_FAIL_KEEP_SERVING: return 42;
    case SHUTDOWN_HANG: block_forever(); return 0;
    case SHUTDOWN_SLOW_OK:
        CHECK(!ld_context_wait(ctx, 300));
        ts_stop_serving(t);
        return 0;
    case SHUTDOWN_WAIT_RELEASE:
        ts_wait_for(t, &t->released, 1);
        ts_stop_serving(t);
        return 0;
    case SHUTDOWN_LATE_USE:
        ts_wait_for(t, &t->released, 1);
        t->late_state = ld_runner_state(t->runner);
        t->stop_status = ld_runner_stop(t->runner);
        t->free_status = ld_runner_free(t->runner); /* freed already: refused, not a double free */
        t->late_remaining_ms = ld_context_remaining_ms(ctx);
        t->late_is_done = ld_context_done(ctx);
        pthread_mutex_lock(&t->mu);
        t->late_done = 1;
        pthread_cond_broadcast(&t->cv);
        pthread_mutex_unlock(&t->mu);
        return 0;
    }
    return 0;
}

static int t_close(void *ud) {
    test_server *t = ud;
    pthread_mutex_lock(&t->mu);
    t->close_calls++;
    t->close_entry_ms = now_ms();
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    if (t->close_mode == CLOSE_HANG) block_forever();
    ts_stop_serving(t);
    return t->close_rc;
}

static void t_free(void *ud) {
    test_server *t = ud;
    pthread_mutex_lock(&t->mu);
    t->frees++;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

static ld_server *make_server(test_server *t) {
    ld_server *server = NULL;
    ld_error *err = NULL;
    CHECK_EQ(ld_server_new(t_serve, t_shutdown, t_close, t, t_free, &server, &err), LD_OK);
    CHECK(server != NULL);
    CHECK(err == NULL);
    return server;
}

/* Captured log lines, for asserting the Go texts. */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_buf[16384];
static void capture_log(void *ud, ld_log_level level, const char *message) {
    (void)ud;
    (void)level;
    pthread_mutex_lock(&log_mu);
    size_t used = strlen(log_buf);
    snprintf(log_buf + used, sizeof log_buf - used, "%s\n", message);
    pthread_mutex_unlock(&log_mu);
}

static ld_options *quiet_options(void) {
    ld_options *o = ld_options_new();
    CHECK(o != NULL);
    CHECK_EQ(ld_options_set_logger(o, capture_log, NULL), LD_OK);
    return o;
}

/* Runs a runner on a thread so the test can signal it. */
typedef struct {
    pthread_t thread;
    ld_runner *runner;
    ld_status status;
    ld_error *error;
    int64_t returned_ms;
} bg_run;

static void *bg_main(void *arg) {
    bg_run *b = arg;
    b->status = ld_runner_run(b->runner, &b->error);
    b->returned_ms = now_ms();
    return NULL;
}

static void bg_start(bg_run *b, ld_server *server, const ld_options *options) {
    memset(b, 0, sizeof *b);
    ld_error *err = NULL;
    CHECK_EQ(ld_runner_new(server, options, &b->runner, &err), LD_OK);
    CHECK(pthread_create(&b->thread, NULL, bg_main, b) == 0);
}

static void bg_start_ready(bg_run *b, ld_server *server, const ld_options *options) {
    bg_start(b, server, options);
    CHECK_EQ(ld_runner_wait_ready(b->runner, 10000), LD_OK);
}

static void bg_join(bg_run *b) {
    CHECK(pthread_join(b->thread, NULL) == 0);
}

static void bg_finish(bg_run *b) {
    ld_error_free(b->error);
    CHECK_EQ(ld_runner_free(b->runner), LD_OK);
}

/* One test's server, options and background run, made and freed together. Heap-allocated
 * because the server keeps a pointer to `t`. */
typedef struct {
    test_server t;
    ld_server *server;
    ld_options *o;
    bg_run b;
} fixture;

static fixture *fx_new(void) {
    fixture *f = calloc(1, sizeof *f);
    CHECK(f != NULL);
    ts_init(&f->t);
    f->server = make_server(&f->t);
    f->o = quiet_options();
    return f;
}

static void fx_free(fixture *f) {
    if (f->b.runner) bg_finish(&f->b);
    ld_options_free(f->o);
    ld_server_free(f->server);
    free(f);
}

static int count_dir(const char *path) {
    DIR *d = opendir(path);
    CHECK(d != NULL);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static void (*current_handler(int sig))(int) {
    struct sigaction sa;
    CHECK(sigaction(sig, NULL, &sa) == 0);
    return sa.sa_handler;
}

/* ---------------------------------------------------------------------------------------- */
/* 1. Defaults, Go log texts.                                                               */

static int test_defaults(void) {
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

static int test_custom_signals_replace(void) {
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
static int test_custom_signals_sigterm_kills(void) {
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

static int test_validation(void) {
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

    CHECK_EQ(ld_options_set_period_ms(o, 0), LD_INVALID_ARGUMENT);
    expect_invalid(server, o, LD_INVALID_ARGUMENT, "lame-duck period 0s is invalid");
    CHECK_EQ(ld_options_set_period_ms(o, LD_MAX_DURATION_MS + 1), LD_INVALID_ARGUMENT);
    expect_invalid(server, o, LD_INVALID_ARGUMENT, "lame-duck period 24h0m0.001s is invalid");
    CHECK_EQ(ld_options_set_period_ms(o, UINT64_MAX), LD_INVALID_ARGUMENT);
    expect_invalid(server, o, LD_INVALID_ARGUMENT, "lame-duck period");
    CHECK_EQ(ld_options_set_period_ms(o, LD_MAX_DURATION_MS), LD_OK);
    CHECK_EQ(ld_options_set_period_ms(o, 1000), LD_OK);

    CHECK_EQ(ld_options_set_drain_delay_ms(o, LD_MAX_DURATION_MS + 1), LD_INVALID_ARGUMENT);
    expect_invalid(server, o, LD_INVALID_ARGUMENT, "drain delay");
    CHECK_EQ(ld_options_set_drain_delay_ms(o, 0), LD_OK);
    CHECK_EQ(ld_options_set_close_timeout_ms(o, 0), LD_INVALID_ARGUMENT);
    expect_invalid(server, o, LD_INVALID_ARGUMENT, "close timeout 0s");
    CHECK_EQ(ld_options_set_close_timeout_ms(o, 1000), LD_OK);

    CHECK_EQ(ld_options_set_signals(o, NULL, 0), LD_INVALID_ARGUMENT);
    expect_invalid(server, o, LD_INVALID_ARGUMENT, "signal list is empty");
    CHECK_EQ(ld_options_set_signals(o, NULL, 3), LD_NULL_ARGUMENT);
    struct { int sig; const char *needle; } bad_signals[] = {
        {0, "signal 0 is invalid"},
        {-1, "signal -1 is invalid"},
        {65, "signal 65 is invalid"},
        {100000, "signal 100000 is invalid"},
        {SIGKILL, "signal 9 (killed) cannot be a trigger signal"},
        {SIGSTOP, "cannot be caught"},
        {SIGSEGV, "signal 11 (segmentation fault) cannot be a trigger signal"},
        {SIGBUS, "must not be trapped"},
        {SIGFPE, "must not be trapped"},
        {SIGILL, "must not be trapped"},
        {32, "reserved by the C library"},
    };
    for (size_t i = 0; i < sizeof bad_signals / sizeof bad_signals[0]; i++) {
        int list[] = {SIGTERM, bad_signals[i].sig};
        CHECK_EQ(ld_options_set_signals(o, list, 2), LD_INVALID_ARGUMENT);
        expect_invalid(server, o, LD_INVALID_ARGUMENT, bad_signals[i].needle);
    }
    CHECK_EQ(ld_options_set_repeat_signal_policy(o, 3), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_repeat_signal_policy(o, -1), LD_INVALID_ARGUMENT);

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

static int test_shutdown_ok(void) {
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

static int test_serve_outlives_deadline(void) {
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

static int test_deadline_exceeded(void) {
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

static int test_shutdown_failed(void) {
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

static int test_shutdown_hangs(void) {
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

static int test_close_hangs(void) {
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

static int test_serve_fails(void) {
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

static int test_final_states(void) {
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

static pthread_mutex_t states_mu = PTHREAD_MUTEX_INITIALIZER;
static ld_state states_seen[64];
static int states_count;
static void record_state(void *ud, ld_state old_state, ld_state new_state) {
    (void)ud;
    pthread_mutex_lock(&states_mu);
    if (states_count == 0) states_seen[states_count++] = old_state;
    if (states_count < 64) states_seen[states_count++] = new_state;
    pthread_mutex_unlock(&states_mu);
}

static void check_states(const ld_state *want, int n) {
    pthread_mutex_lock(&states_mu);
    for (int i = 0; i < states_count; i++) fprintf(stderr, "state %d: %s\n", i, ld_state_str(states_seen[i]));
    CHECK_EQ(states_count, n);
    for (int i = 0; i < n; i++) CHECK_EQ(states_seen[i], want[i]);
    pthread_mutex_unlock(&states_mu);
}

static int test_drain_delay(void) {
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

static int test_repeat_force(void) {
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
static int test_repeat_force_third_kills(void) {
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

static int test_repeat_ignore(void) {
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
static int test_repeat_exit(void) {
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
/* 11. Ready.                                                                               */

static int test_ready_race(void) {
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

static int test_explicit_ready(void) {
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

static int test_state_observer(void) {
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

/* ---------------------------------------------------------------------------------------- */
/* 13. Stop: the same graceful path as a signal; from a thread, a hook, a signal handler.   */

static int test_stop_from_thread(void) {
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

static int test_stop_in_hook(void) {
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

static int test_stop_from_signal_handler(void) {
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

static int test_stop_before_run(void) {
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
/* 14. Run twice, free while running.                                                       */

static int test_run_twice_and_free_while_running(void) {
    fixture *f = fx_new();
    bg_start_ready(&f->b, f->server, f->o);
    ld_error *err = NULL;
    CHECK_EQ(ld_runner_run(f->b.runner, &err), LD_BUSY); /* while running */
    CHECK_CONTAINS(ld_error_message(err), "already running");
    ld_error_free(err);
    CHECK_EQ(ld_runner_free(f->b.runner), LD_BUSY);
    CHECK_EQ(ld_runner_state(f->b.runner), LD_STATE_READY); /* untouched */
    CHECK_EQ(ld_runner_stop(f->b.runner), LD_OK);
    bg_join(&f->b);
    CHECK_EQ(f->b.status, LD_OK);
    CHECK_EQ(ld_runner_run(f->b.runner, &err), LD_BUSY); /* after it ran */
    CHECK_CONTAINS(ld_error_message(err), "already run");
    ld_error_free(err);
    CHECK_EQ(f->t.serve_calls, 1);
    fx_free(f);
    return 0;
}

/* A shutdown hook that ignores its deadline is abandoned: the run returns LD_EXPIRED while it
 * still runs. The program frees the runner and the server, as it may; the hook then calls what
 * the header lets it call. All of that must still be valid (ASan and valgrind would see a read
 * of freed memory), and the runner's memory and user_data go only once the hook returned. */
static int test_abandoned_hook_outlives_free(void) {
    test_server *t = calloc(1, sizeof *t);
    CHECK(t != NULL);
    ts_init(t);
    t->shutdown_mode = SHUTDOWN_LATE_USE;
    ld_server *server = make_server(t);
    ld_options *o = quiet_options();
    CHECK_EQ(ld_options_set_period_ms(o, 100), LD_OK);
    CHECK_EQ(ld_options_set_close_timeout_ms(o, 100), LD_OK);
    bg_run b;
    bg_start(&b, server, o);
    t->runner = b.runner;
    CHECK_EQ(ld_runner_wait_ready(b.runner, 10000), LD_OK);
    ts_wait_for(t, &t->serve_calls, 1);
    CHECK(kill(getpid(), SIGTERM) == 0);
    bg_join(&b);
    CHECK_EQ(b.status, LD_EXPIRED);
    CHECK(ld_error_abandoned(b.error));
    ld_error_free(b.error);
    CHECK_EQ(ld_runner_free(b.runner), LD_OK); /* the run is over: freeing is allowed */
    CHECK_EQ(ld_runner_free(b.runner), LD_INVALID_ARGUMENT); /* still held by the hook: no double free */
    ld_server_free(server);
    ld_options_free(o);
    CHECK_EQ(t->frees, 0); /* the abandoned hook still holds user_data */
    pthread_mutex_lock(&t->mu);
    t->released = 1;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    ts_wait_for(t, &t->late_done, 1);
    CHECK_EQ(t->late_state, LD_STATE_STOPPED);
    CHECK_EQ(t->stop_status, LD_OK);
    CHECK_EQ(t->free_status, LD_INVALID_ARGUMENT);
    CHECK_EQ(t->late_remaining_ms, 0);
    CHECK(t->late_is_done);
    ts_wait_for(t, &t->frees, 1); /* released by the hook's own thread once it returned */
    CHECK_EQ(t->frees, 1);
    free(t);
    return 0;
}

/* ld_runner_free during every phase of ld_runner_run, from the state observer (which runs
 * inside the run, on its threads) and from a thread polling as fast as it can: always LD_BUSY. */
static ld_runner *phase_runner;
static int phase_frees, phase_not_busy;
static void free_in_observer(void *ud, ld_state old_state, ld_state new_state) {
    (void)ud;
    (void)old_state;
    (void)new_state;
    if (phase_runner == NULL) return; /* NOT_STARTED, reported inside ld_runner_new */
    phase_frees++;
    if (ld_runner_free(phase_runner) != LD_BUSY) phase_not_busy++;
}

static volatile int poller_stop;
static void *free_poller(void *arg) {
    long busy = 0;
    do { /* at least once, however late this thread gets to run */
        CHECK_EQ(ld_runner_free(arg), LD_BUSY);
        busy++;
    } while (!poller_stop);
    return (void *)busy;
}

static int test_free_during_run_is_busy(void) {
    fixture *f = fx_new();
    f->t.shutdown_mode = SHUTDOWN_WAIT_RELEASE;
    CHECK_EQ(ld_options_set_period_ms(f->o, 60000), LD_OK);
    CHECK_EQ(ld_options_set_state_observer(f->o, free_in_observer, NULL), LD_OK);
    CHECK_EQ(ld_runner_new(f->server, f->o, &f->b.runner, NULL), LD_OK);
    phase_runner = f->b.runner;
    CHECK(pthread_create(&f->b.thread, NULL, bg_main, &f->b) == 0);
    CHECK_EQ(ld_runner_wait_ready(f->b.runner, 10000), LD_OK);
    pthread_t poller;
    CHECK(pthread_create(&poller, NULL, free_poller, f->b.runner) == 0);
    CHECK(kill(getpid(), SIGTERM) == 0);
    ts_wait_for(&f->t, &f->t.shutdown_calls, 1);
    ld_status in_shutdown = ld_runner_free(f->b.runner);
    poller_stop = 1;
    void *polls = NULL;
    pthread_join(poller, &polls);
    CHECK((long)polls > 0);
    pthread_mutex_lock(&f->t.mu);
    f->t.released = 1;
    pthread_cond_broadcast(&f->t.cv);
    pthread_mutex_unlock(&f->t.mu);
    bg_join(&f->b);
    CHECK_EQ(in_shutdown, LD_BUSY);
    CHECK_EQ(f->b.status, LD_OK);
    CHECK(phase_frees >= 4); /* STARTING, (SERVING,) READY, SHUTTING_DOWN, STOPPED */
    CHECK_EQ(phase_not_busy, 0);
    fx_free(f); /* and now it frees */
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* 15. Chaining, restoring, no leaks.                                                       */

static volatile sig_atomic_t user_handler_calls;
static void user_handler(int sig) {
    (void)sig;
    user_handler_calls++;
}

static int test_chaining_and_restore(void) {
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

static int test_no_leaks_across_runs(void) {
    int threads_before = count_dir("/proc/self/task");
    int fds_before = count_dir("/proc/self/fd");
    test_server t;
    ts_init(&t);
    ld_server *server = make_server(&t);
    ld_options *o = ld_options_new();
    CHECK_EQ(ld_options_disable_logging(o), LD_OK);
    CHECK_EQ(ld_options_set_period_ms(o, 50), LD_OK);
    for (int i = 0; i < 100; i++) {
        t.stopped = 0;
        t.shutdown_mode = i % 2 ? SHUTDOWN_OK : SHUTDOWN_WAIT_DEADLINE; /* with and without close */
        bg_run b;
        bg_start_ready(&b, server, o);
        CHECK(kill(getpid(), i % 3 ? SIGTERM : SIGINT) == 0);
        bg_join(&b);
        CHECK_EQ(b.status, i % 2 ? LD_OK : LD_EXPIRED);
        bg_finish(&b);
    }
    CHECK_EQ(t.serve_calls, 100);
    CHECK_EQ(count_dir("/proc/self/task"), threads_before);
    CHECK_EQ(count_dir("/proc/self/fd"), fds_before);
    CHECK(current_handler(SIGTERM) == SIG_DFL);
    CHECK(current_handler(SIGINT) == SIG_DFL);
    ld_options_free(o);
    ld_server_free(server);
    CHECK_EQ(t.frees, 1);
    return 0;
}

static int test_user_data_destructor(void) {
    test_server t;
    ts_init(&t);
    ld_server *server = make_server(&t);
    ld_runner *runner = NULL;
    ld_options *o = quiet_options();
    CHECK_EQ(ld_runner_new(server, o, &runner, NULL), LD_OK);
    ld_server_free(server);
    CHECK_EQ(t.frees, 0); /* the runner still holds the server */
    CHECK_EQ(ld_runner_stop(runner), LD_OK);
    CHECK_EQ(ld_runner_run(runner, NULL), LD_CANCELED);
    CHECK_EQ(ld_runner_free(runner), LD_OK);
    CHECK_EQ(t.frees, 1);
    ld_options_free(o);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Host-owned signals, NULL arguments, status strings, version, logging.                   */

static int test_deliver_signal(void) {
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

static int test_null_arguments(void) {
    ld_error *err = NULL;
    ld_server *server = NULL;
    ld_runner *runner = NULL;
    CHECK_EQ(ld_run(NULL, NULL, NULL), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_run(NULL, NULL, &err), LD_NULL_ARGUMENT);
    CHECK_CONTAINS(ld_error_message(err), "server is NULL");
    CHECK_EQ(ld_error_code(err), 0);
    CHECK(!ld_error_abandoned(err));
    ld_error_free(err);
    CHECK_EQ(ld_server_new(t_serve, t_shutdown, t_close, NULL, NULL, NULL, NULL), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_runner_new(NULL, NULL, &runner, NULL), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_server_new(t_serve, t_shutdown, t_close, NULL, NULL, &server, NULL), LD_OK);
    CHECK_EQ(ld_runner_new(server, NULL, NULL, &err), LD_NULL_ARGUMENT);
    CHECK_CONTAINS(ld_error_message(err), "runner_out is NULL");
    ld_error_free(err);
    CHECK_EQ(ld_runner_run(NULL, NULL), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_runner_stop(NULL), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_runner_deliver_signal(NULL, SIGTERM), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_runner_wait_ready(NULL, 0), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_runner_state(NULL), LD_STATE_UNKNOWN);
    CHECK_EQ(ld_runner_free(NULL), LD_OK);
    CHECK_EQ(ld_options_set_period_ms(NULL, 1), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_drain_delay_ms(NULL, 1), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_close_timeout_ms(NULL, 1), LD_NULL_ARGUMENT);
    int sigs[] = {SIGTERM};
    CHECK_EQ(ld_options_set_signals(NULL, sigs, 1), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_logger(NULL, capture_log, NULL), LD_NULL_ARGUMENT);
    ld_options *o = ld_options_new();
    CHECK_EQ(ld_options_set_logger(o, NULL, NULL), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_state_observer(o, NULL, NULL), LD_OK); /* NULL removes the observer */
    ld_options_free(o);
    CHECK_EQ(ld_options_disable_logging(NULL), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_repeat_signal_policy(NULL, 0), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_state_observer(NULL, record_state, NULL), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_explicit_ready(NULL, true), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_options_set_install_signal_handlers(NULL, true), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_context_remaining_ms(NULL), 0);
    CHECK(ld_context_done(NULL));
    CHECK(ld_context_wait(NULL, -1));
    CHECK_EQ(ld_context_ready(NULL), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_error_status(NULL), LD_OK);
    CHECK_EQ(ld_error_code(NULL), 0);
    CHECK_EQ(strcmp(ld_error_message(NULL), ""), 0);
    CHECK(!ld_error_abandoned(NULL));
    ld_error_free(NULL);
    ld_options_free(NULL);
    ld_server_free(NULL);
    ld_server_free(server);
    return 0;
}

static int test_strings_and_version(void) {
    for (int s = 0; s <= LD_UPGRADE_FAILED; s++) {
        CHECK(strcmp(ld_status_str(s), "unknown status") != 0);
        for (int u = 0; u < s; u++) CHECK(strcmp(ld_status_str(s), ld_status_str(u)) != 0);
    }
    CHECK_EQ(strcmp(ld_status_str(LD_OK), "ok"), 0);
    CHECK_EQ(strcmp(ld_status_str(LD_EXPIRED), "lame-duck period expired; close was called"), 0);
    CHECK_EQ(strcmp(ld_status_str(-5), "unknown status"), 0);
    CHECK_EQ(strcmp(ld_status_str(LD_UPGRADE_FAILED + 1), "unknown status"), 0);
    CHECK_EQ(strcmp(ld_version(), LAMEDUCK_VERSION_STRING), 0);
    CHECK_EQ(ld_abi_version(), LD_ABI_VERSION);
    CHECK_EQ(LAMEDUCK_VERSION_NUMBER,
             LAMEDUCK_VERSION_MAJOR * 1000000 + LAMEDUCK_VERSION_MINOR * 1000 + LAMEDUCK_VERSION_PATCH);
    CHECK_EQ(LD_DEADLINE_EXCEEDED, -ETIMEDOUT);
    return 0;
}

static int test_logging_disabled(void) {
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

static int test_logger_lines(void) {
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

/* ---------------------------------------------------------------------------------------- */


/* ---------------------------------------------------------------------------------------- */
/* Upgrades started with ld_runner_upgrade. (SIGHUP upgrades of a real server: c_upgrade.rs.) */

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

static int test_upgrade_failures(void) {
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
static int test_upgrade_one_line_protocol(void) {
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

static int test_upgrade_busy_and_not_running(void) {
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
static int test_upgrade_failures_leak_nothing(void) {
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

static int test_upgrade_options(void) {
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

/* Waits (bounded) until the captured log contains `needle`. */
static int wait_for_log(const char *needle) {
    for (int i = 0; i < 20000; i++) {
        pthread_mutex_lock(&log_mu);
        int found = strstr(log_buf, needle) != NULL;
        pthread_mutex_unlock(&log_mu);
        if (found) return 0;
        usleep(1000);
    }
    fprintf(stderr, "no log line containing \"%s\" in: %s\n", needle, log_buf);
    return 1;
}

/* A process with no socket known to lameduck refuses to upgrade (the new process could not
 * bind its port) and says how to fix it; a socket bound by hand and adopted is handed on. */
static int test_upgrade_needs_a_known_listener(void) {
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
static int test_upgrade_ready_then_exit_rolls_back(void) {
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

/* "The app stops itself, then its supervisor stops it": a stop followed by a signal is one
 * event; only the signal after that is a repeat (forced), and it does not kill. */
static int test_stop_then_signals(void) {
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

typedef struct {
    const char *name;
    int (*fn)(void);
} subtest;

static const subtest subtests[] = {
    {"defaults", test_defaults},
    {"custom_signals_replace", test_custom_signals_replace},
    {"custom_signals_sigterm_kills", test_custom_signals_sigterm_kills},
    {"validation", test_validation},
    {"shutdown_ok", test_shutdown_ok},
    {"serve_outlives_deadline", test_serve_outlives_deadline},
    {"deadline_exceeded", test_deadline_exceeded},
    {"shutdown_failed", test_shutdown_failed},
    {"shutdown_hangs", test_shutdown_hangs},
    {"close_hangs", test_close_hangs},
    {"serve_fails", test_serve_fails},
    {"final_states", test_final_states},
    {"drain_delay", test_drain_delay},
    {"repeat_force", test_repeat_force},
    {"repeat_force_third_kills", test_repeat_force_third_kills},
    {"repeat_ignore", test_repeat_ignore},
    {"repeat_exit", test_repeat_exit},
    {"ready_race", test_ready_race},
    {"explicit_ready", test_explicit_ready},
    {"state_observer", test_state_observer},
    {"stop_from_thread", test_stop_from_thread},
    {"stop_in_hook", test_stop_in_hook},
    {"stop_from_signal_handler", test_stop_from_signal_handler},
    {"stop_before_run", test_stop_before_run},
    {"run_twice_and_free_while_running", test_run_twice_and_free_while_running},
    {"abandoned_hook_outlives_free", test_abandoned_hook_outlives_free},
    {"free_during_run_is_busy", test_free_during_run_is_busy},
    {"chaining_and_restore", test_chaining_and_restore},
    {"no_leaks_across_runs", test_no_leaks_across_runs},
    {"user_data_destructor", test_user_data_destructor},
    {"deliver_signal", test_deliver_signal},
    {"null_arguments", test_null_arguments},
    {"strings_and_version", test_strings_and_version},
    {"logging_disabled", test_logging_disabled},
    {"logger_lines", test_logger_lines},
    {"upgrade_failures", test_upgrade_failures},
    {"upgrade_one_line_protocol", test_upgrade_one_line_protocol},
    {"upgrade_busy_and_not_running", test_upgrade_busy_and_not_running},
    {"upgrade_failures_leak_nothing", test_upgrade_failures_leak_nothing},
    {"upgrade_options", test_upgrade_options},
    {"upgrade_needs_a_known_listener", test_upgrade_needs_a_known_listener},
    {"upgrade_ready_then_exit_rolls_back", test_upgrade_ready_then_exit_rolls_back},
    {"stop_then_signals", test_stop_then_signals},
};

int main(int argc, char **argv) {
    size_t n = sizeof subtests / sizeof subtests[0];
    if (argc != 2) {
        fprintf(stderr, "usage: %s <subtest>|--list\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(argv[1], "--list") == 0) {
            printf("%s\n", subtests[i].name);
        } else if (strcmp(argv[1], subtests[i].name) == 0) {
            int rc = subtests[i].fn();
            if (rc == 0) printf("ok %s\n", subtests[i].name);
            return rc;
        }
    }
    if (strcmp(argv[1], "--list") == 0) return 0;
    fprintf(stderr, "unknown subtest %s\n", argv[1]);
    return 2;
}
