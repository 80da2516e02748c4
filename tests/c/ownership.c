/* Who owns what: a runner runs once, frees are refused while it runs, an abandoned hook keeps
 * the runner alive, nothing leaks across runs, the user_data destructor runs once. */
#include "common.h"

/* ---------------------------------------------------------------------------------------- */
/* 14. Run twice, free while running.                                                       */

int test_run_twice_and_free_while_running(void) {
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
int test_abandoned_hook_outlives_free(void) {
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

int test_free_during_run_is_busy(void) {
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

int test_no_leaks_across_runs(void) {
    int threads_before = count_dir("/proc/self/task");
    int fds_before = count_dir("/proc/self/fd");
    test_server t;
    ts_init(&t);
    ld_server *server = make_server(&t);
    ld_options *o = ld_options_new();
    CHECK_EQ(ld_options_disable_logging(o), LD_OK);
    for (int i = 0; i < 100; i++) {
        t.stopped = 0;
        t.shutdown_mode = i % 2 ? SHUTDOWN_OK : SHUTDOWN_WAIT_DEADLINE; /* with and without close */
        /* A short period where it must run out, a long one where shutdown must win even on a
         * busy machine. */
        CHECK_EQ(ld_options_set_period_ms(o, i % 2 ? 30000 : 50), LD_OK);
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

int test_user_data_destructor(void) {
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
