/* The connection gate through the C API (issue 13): limits and their errors, permits, the
 * counts, lame-duck draining it, the run waiting for the last permit, close at the deadline.
 * (Real sockets and the demo: tests/c_gate.rs.) */
#include "common.h"

#include <stdatomic.h>
#include <stdint.h>

/* A server whose serve hook lends its context to the test until shutdown lets it go. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const ld_context *ctx; /* valid while serve runs */
    int serving, stop, let_go, shutdown_calls, close_calls;
    ld_runner *runner;
    size_t close_listed; /* ld_runner_open_connections in close */
    int close_fd;
} gate_server;

static void gs_set(gate_server *g, int *field, int value) {
    pthread_mutex_lock(&g->mu);
    *field = value;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void gs_wait(gate_server *g, int *field, int at_least) {
    pthread_mutex_lock(&g->mu);
    while (*field < at_least) pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static int g_serve(void *ud, const ld_context *ctx) {
    gate_server *g = ud;
    pthread_mutex_lock(&g->mu);
    g->ctx = ctx;
    g->serving = 1;
    pthread_cond_broadcast(&g->cv);
    while (!g->stop) pthread_cond_wait(&g->cv, &g->mu);
    g->ctx = NULL;
    g->serving = 0;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return 0;
}

/* Waits until the test lets go (let_go), then stops serve and returns 0. */
static int g_shutdown(void *ud, const ld_context *ctx) {
    (void)ctx;
    gate_server *g = ud;
    pthread_mutex_lock(&g->mu);
    g->shutdown_calls++;
    pthread_cond_broadcast(&g->cv);
    while (!g->let_go) pthread_cond_wait(&g->cv, &g->mu);
    g->stop = 1;
    pthread_cond_broadcast(&g->cv);
    while (g->serving) pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    return 0;
}

static int g_close(void *ud) {
    gate_server *g = ud;
    int fd = -1;
    size_t n = ld_runner_open_connections(g->runner, &fd, 1);
    pthread_mutex_lock(&g->mu);
    g->close_calls++;
    g->close_listed = n;
    g->close_fd = fd;
    g->stop = 1;
    g->let_go = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return 0;
}

typedef struct {
    gate_server g;
    ld_server *server;
    ld_options *o;
    bg_run b;
    bool joined;
} gate_fixture;

static void gf_join(gate_fixture *f) {
    if (!f->joined) bg_join(&f->b);
    f->joined = true;
}

/* A run with limit `max` (0: unlimited) and `period_ms`, serving: its context is f->g.ctx. */
static gate_fixture *gf_start(uint64_t max, uint64_t period_ms) {
    gate_fixture *f = calloc(1, sizeof *f);
    CHECK(f != NULL);
    pthread_mutex_init(&f->g.mu, NULL);
    pthread_cond_init(&f->g.cv, NULL);
    ld_error *err = NULL;
    CHECK_EQ(ld_server_new(g_serve, g_shutdown, g_close, &f->g, NULL, &f->server, &err), LD_OK);
    f->o = quiet_options();
    CHECK_EQ(ld_options_set_max_connections(f->o, max), LD_OK);
    CHECK_EQ(ld_options_set_period_ms(f->o, period_ms), LD_OK);
    bg_start(&f->b, f->server, f->o);
    f->g.runner = f->b.runner;
    gs_wait(&f->g, &f->g.serving, 1);
    return f;
}

/* Lets shutdown go (if the run was triggered), waits for the run, frees everything. */
static ld_status gf_finish(gate_fixture *f) {
    gs_set(&f->g, &f->g.let_go, 1);
    gf_join(f);
    ld_status status = f->b.status;
    bg_finish(&f->b);
    ld_options_free(f->o);
    ld_server_free(f->server);
    free(f);
    return status;
}

static ld_connection_stats stats_of(const ld_runner *r) {
    ld_connection_stats s;
    memset(&s, 0xff, sizeof s);
    CHECK_EQ(ld_runner_connection_stats(r, &s), LD_OK);
    return s;
}

static ld_permit *must_acquire(const ld_context *ctx) {
    ld_permit *p = NULL;
    ld_error *err = NULL;
    CHECK_EQ(ld_context_acquire_connection(ctx, 0, &p, &err), LD_OK);
    CHECK(p != NULL);
    CHECK(err == NULL);
    return p;
}

/* An acquire on another thread, to be blocked on a full gate. */
typedef struct {
    pthread_t thread;
    const ld_context *ctx;
    bool queued;
    ld_status status;
    ld_permit *permit;
    int64_t returned_ms;
} blocked_acquire;

static void *blocked_main(void *arg) {
    blocked_acquire *a = arg;
    ld_error *err = NULL;
    a->status = a->queued ? ld_context_acquire_queued_connection(a->ctx, -1, &a->permit, &err)
                          : ld_context_acquire_connection(a->ctx, -1, &a->permit, &err);
    if (a->status != LD_OK) {
        CHECK(err != NULL);
        CHECK_EQ(ld_error_status(err), a->status);
        CHECK(a->permit == NULL);
    }
    ld_error_free(err);
    a->returned_ms = now_ms();
    return NULL;
}

static void start_blocked(blocked_acquire *a, const ld_runner *r, const ld_context *ctx, bool queued, uint64_t waiting_before) {
    memset(a, 0, sizeof *a);
    a->ctx = ctx;
    a->queued = queued;
    a->status = (ld_status)-1;
    CHECK(pthread_create(&a->thread, NULL, blocked_main, a) == 0);
    for (int i = 0; stats_of(r).waiting == waiting_before; i++) {
        CHECK(i < 30000); /* 30 s */
        usleep(1000);
    }
}

/* ---------------------------------------------------------------------------------------- */

int test_gate_null_arguments(void) {
    ld_error *err = NULL;
    int64_t free_before = 7;
    ld_connection_stats s;
    CHECK_EQ(ld_options_set_max_connections(NULL, 1), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_runner_set_max_connections(NULL, 1, &free_before, &err), LD_NULL_ARGUMENT);
    CHECK(err != NULL);
    CHECK_EQ(ld_error_status(err), LD_NULL_ARGUMENT);
    CHECK_CONTAINS(ld_error_message(err), "runner");
    ld_error_free(err);
    err = NULL;
    CHECK_EQ(free_before, 7); /* untouched */
    CHECK_EQ(ld_context_set_max_connections(NULL, 1, NULL, NULL), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_runner_connection_stats(NULL, &s), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_context_connection_stats(NULL, &s), LD_NULL_ARGUMENT);
    ld_permit *p = (ld_permit *)&s; /* garbage: must be overwritten with NULL */
    CHECK_EQ(ld_context_acquire_connection(NULL, 0, &p, &err), LD_NULL_ARGUMENT);
    CHECK(p == NULL);
    CHECK_EQ(ld_error_status(err), LD_NULL_ARGUMENT);
    ld_error_free(err);
    err = NULL;
    p = (ld_permit *)&s;
    CHECK_EQ(ld_context_acquire_queued_connection(NULL, -1, &p, NULL), LD_NULL_ARGUMENT);
    CHECK(p == NULL);
    CHECK_EQ(ld_permit_set_fd(NULL, 3), LD_NULL_ARGUMENT);
    ld_permit_release(NULL); /* nothing to do */
    ld_permit_release(&p);   /* *p NULL: nothing to do */
    CHECK_EQ(ld_runner_open_connections(NULL, NULL, 0), 0);
    CHECK_EQ(ld_context_open_connections(NULL, NULL, 0), 0);

    gate_fixture *f = gf_start(0, 3000);
    CHECK_EQ(ld_runner_connection_stats(f->b.runner, NULL), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_context_connection_stats(f->g.ctx, NULL), LD_NULL_ARGUMENT);
    CHECK_EQ(ld_context_acquire_connection(f->g.ctx, 0, NULL, &err), LD_NULL_ARGUMENT);
    CHECK_CONTAINS(ld_error_message(err), "permit_out");
    ld_error_free(err);
    err = NULL;
    CHECK_EQ(ld_context_acquire_queued_connection(f->g.ctx, 0, NULL, NULL), LD_NULL_ARGUMENT);
    CHECK_EQ(stats_of(f->b.runner).admitted, 0); /* nothing was admitted by the refused calls */
    CHECK_EQ(stats_of(f->b.runner).total, 0);
    CHECK_EQ(ld_runner_stop(f->b.runner), LD_OK);
    CHECK_EQ(gf_finish(f), LD_OK);
    return 0;
}

int test_gate_limits(void) {
    ld_options *o = ld_options_new();
    CHECK_EQ(ld_options_set_max_connections(o, 2147483648ULL), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_max_connections(o, UINT64_MAX), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_options_set_max_connections(o, 2147483647ULL), LD_OK);
    CHECK_EQ(ld_options_set_max_connections(o, 0), LD_OK);
    CHECK_EQ(ld_options_set_max_connections(o, 3), LD_OK);
    CHECK_EQ(ld_options_set_max_connections(o, 2147483648ULL), LD_INVALID_ARGUMENT); /* keeps 3 */
    test_server t;
    ts_init(&t);
    ld_server *server = make_server(&t);
    ld_runner *r = NULL;
    ld_error *err = NULL;
    CHECK_EQ(ld_runner_new(server, o, &r, &err), LD_OK);
    ld_connection_stats s = stats_of(r);
    CHECK_EQ(s.limit, 3);
    CHECK_EQ(s.admitted, 0);
    CHECK_EQ(s.waiting, 0);
    CHECK_EQ(s.total, 0);
    CHECK_EQ(s.peak, 0);
    CHECK_EQ(s.phase, LD_GATE_PHASE_OPEN);

    /* Refused limits change nothing and leave free_before alone. */
    int64_t free_before = -7;
    CHECK_EQ(ld_runner_set_max_connections(r, 2147483648ULL, &free_before, &err), LD_INVALID_ARGUMENT);
    CHECK_EQ(ld_error_status(err), LD_INVALID_ARGUMENT);
    CHECK_CONTAINS(ld_error_message(err), "2147483648");
    ld_error_free(err);
    err = NULL;
    CHECK_EQ(ld_runner_set_max_connections(r, UINT64_MAX, &free_before, NULL), LD_INVALID_ARGUMENT);
    CHECK_EQ(free_before, -7);
    CHECK_EQ(stats_of(r).limit, 3);

    /* free_before: the free slots before the change; -1 when it was unlimited. */
    CHECK_EQ(ld_runner_set_max_connections(r, 5, &free_before, &err), LD_OK);
    CHECK(err == NULL);
    CHECK_EQ(free_before, 3);
    CHECK_EQ(stats_of(r).limit, 5);
    CHECK_EQ(ld_runner_set_max_connections(r, 0, &free_before, NULL), LD_OK);
    CHECK_EQ(free_before, 5);
    CHECK_EQ(stats_of(r).limit, 0);
    CHECK_EQ(ld_runner_set_max_connections(r, 2147483647ULL, &free_before, NULL), LD_OK);
    CHECK_EQ(free_before, -1);
    CHECK_EQ(ld_runner_set_max_connections(r, 2, NULL, NULL), LD_OK); /* free_before may be NULL */
    CHECK_EQ(stats_of(r).limit, 2);
    CHECK_EQ(ld_runner_free(r), LD_OK);
    ld_server_free(server);
    ld_options_free(o);

    /* While running, with connections admitted; the context form is the same gate. */
    gate_fixture *f = gf_start(3, 3000);
    ld_permit *a = must_acquire(f->g.ctx);
    CHECK_EQ(ld_context_set_max_connections(f->g.ctx, 4, &free_before, NULL), LD_OK);
    CHECK_EQ(free_before, 2);
    CHECK_EQ(ld_context_set_max_connections(f->g.ctx, 1, &free_before, NULL), LD_OK);
    CHECK_EQ(free_before, 3);
    CHECK_EQ(ld_context_set_max_connections(f->g.ctx, 2147483648ULL, &free_before, &err), LD_INVALID_ARGUMENT);
    ld_error_free(err);
    CHECK_EQ(free_before, 3);
    ld_connection_stats cs;
    CHECK_EQ(ld_context_connection_stats(f->g.ctx, &cs), LD_OK);
    CHECK_EQ(cs.limit, 1);
    CHECK_EQ(cs.admitted, 1);
    CHECK_EQ(ld_context_set_max_connections(f->g.ctx, 1, &free_before, NULL), LD_OK);
    CHECK_EQ(free_before, 0); /* full */
    ld_permit_release(&a);
    CHECK(a == NULL);
    CHECK_EQ(ld_runner_stop(f->b.runner), LD_OK);
    CHECK_EQ(gf_finish(f), LD_OK);
    return 0;
}

int test_gate_busy_timeout_raise_lower(void) {
    gate_fixture *f = gf_start(2, 3000);
    const ld_context *ctx = f->g.ctx;
    ld_runner *r = f->b.runner;
    ld_permit *a = must_acquire(ctx), *b = must_acquire(ctx), *p = NULL;
    ld_error *err = NULL;
    /* Full, without waiting: LD_BUSY, and the permit is written NULL. */
    p = (ld_permit *)&err;
    CHECK_EQ(ld_context_acquire_connection(ctx, 0, &p, &err), LD_BUSY);
    CHECK(p == NULL);
    CHECK_EQ(ld_error_status(err), LD_BUSY);
    ld_error_free(err);
    err = NULL;
    CHECK_EQ(ld_context_acquire_queued_connection(ctx, 0, &p, NULL), LD_BUSY);
    /* Full, with a timeout: LD_TIMEOUT, not before the timeout. */
    int64_t before = now_ms();
    CHECK_EQ(ld_context_acquire_connection(ctx, 100, &p, &err), LD_TIMEOUT);
    CHECK(now_ms() - before >= 99); /* 1 ms for the millisecond rounding of the two readings */
    CHECK(p == NULL);
    CHECK_EQ(ld_error_status(err), LD_TIMEOUT);
    ld_error_free(err);
    err = NULL;
    ld_connection_stats s = stats_of(r);
    CHECK_EQ(s.admitted, 2);
    CHECK_EQ(s.waiting, 0);
    CHECK_EQ(s.total, 2);

    /* Raising admits a blocked acquire at once. */
    blocked_acquire w;
    start_blocked(&w, r, ctx, false, 0);
    int64_t free_before = -9;
    CHECK_EQ(ld_runner_set_max_connections(r, 3, &free_before, NULL), LD_OK);
    CHECK_EQ(free_before, 0);
    CHECK(pthread_join(w.thread, NULL) == 0);
    CHECK_EQ(w.status, LD_OK);
    CHECK(w.permit != NULL);
    CHECK_EQ(stats_of(r).admitted, 3);

    /* Lowering to 1 with 3 open closes none; none is admitted until fewer than 1 are open. */
    CHECK_EQ(ld_runner_set_max_connections(r, 1, &free_before, NULL), LD_OK);
    CHECK_EQ(free_before, 0);
    CHECK_EQ(stats_of(r).admitted, 3);
    CHECK_EQ(ld_context_acquire_connection(ctx, 0, &p, NULL), LD_BUSY);
    ld_permit_release(&a);
    CHECK(a == NULL);
    CHECK_EQ(stats_of(r).admitted, 2);
    CHECK_EQ(ld_context_acquire_connection(ctx, 0, &p, NULL), LD_BUSY);
    /* A blocked acquire, then a release with 1 still open at limit 1: still not admitted. */
    blocked_acquire w2;
    start_blocked(&w2, r, ctx, false, 0);
    ld_permit_release(&b);
    CHECK_EQ(stats_of(r).admitted, 1);
    CHECK_EQ(stats_of(r).waiting, 1);
    CHECK_EQ(ld_context_acquire_connection(ctx, 0, &p, NULL), LD_BUSY);
    /* The last one goes: the blocked acquire is admitted. */
    ld_permit_release(&w.permit);
    CHECK(pthread_join(w2.thread, NULL) == 0);
    CHECK_EQ(w2.status, LD_OK);
    s = stats_of(r);
    CHECK_EQ(s.admitted, 1);
    CHECK_EQ(s.waiting, 0);
    CHECK_EQ(s.total, 4);
    CHECK_EQ(s.peak, 3);
    /* Lame-duck: an acquire blocked on the full gate returns LD_GATE_CLOSED. */
    blocked_acquire w3;
    start_blocked(&w3, r, ctx, false, 0);
    CHECK_EQ(ld_runner_stop(r), LD_OK);
    CHECK(pthread_join(w3.thread, NULL) == 0);
    CHECK_EQ(w3.status, LD_GATE_CLOSED);
    CHECK_EQ(stats_of(r).waiting, 0);
    ld_permit_release(&w2.permit);
    CHECK_EQ(gf_finish(f), LD_OK);
    return 0;
}

/* Lame-duck (a real SIGTERM) drains the gate: an acquire blocked on the full gate returns
 * LD_GATE_CLOSED promptly, a new one at once; the queued form still admits, within the limit. */
int test_gate_lame_duck_closes_promptly(void) {
    gate_fixture *f = gf_start(1, 10000);
    const ld_context *ctx = f->g.ctx;
    ld_runner *r = f->b.runner;
    CHECK_EQ(ld_runner_wait_ready(r, 10000), LD_OK);
    ld_permit *held = must_acquire(ctx);
    blocked_acquire w;
    start_blocked(&w, r, ctx, false, 0);
    int64_t signalled = now_ms();
    CHECK(kill(getpid(), SIGTERM) == 0);
    CHECK(pthread_join(w.thread, NULL) == 0);
    CHECK_EQ(w.status, LD_GATE_CLOSED);
    CHECK(w.returned_ms - signalled < 5000); /* the period is 10 s: nothing released a slot */
    gs_wait(&f->g, &f->g.shutdown_calls, 1);
    ld_permit *p = NULL;
    ld_error *err = NULL;
    CHECK_EQ(ld_context_acquire_connection(ctx, -1, &p, &err), LD_GATE_CLOSED); /* at once */
    CHECK(p == NULL);
    CHECK_EQ(ld_error_status(err), LD_GATE_CLOSED);
    ld_error_free(err);
    ld_connection_stats s = stats_of(r);
    CHECK_EQ(s.phase, LD_GATE_PHASE_DRAINING);
    CHECK_EQ(s.admitted, 1);
    /* Queued connections: still within the limit. */
    CHECK_EQ(ld_context_acquire_queued_connection(ctx, 0, &p, NULL), LD_BUSY);
    blocked_acquire q;
    start_blocked(&q, r, ctx, true, 0);
    ld_permit_release(&held);
    CHECK(pthread_join(q.thread, NULL) == 0);
    CHECK_EQ(q.status, LD_OK);
    CHECK_EQ(stats_of(r).admitted, 1);
    ld_permit_release(&q.permit);
    CHECK_EQ(gf_finish(f), LD_OK);
    return 0;
}

/* Release is idempotent through the variable; the counts do not drift over 10,000 admissions,
 * alone or with two threads contending for one slot. */
int test_gate_release_idempotent_no_drift(void) {
    gate_fixture *f = gf_start(0, 3000);
    const ld_context *ctx = f->g.ctx;
    ld_runner *r = f->b.runner;
    ld_permit *p = must_acquire(ctx);
    ld_permit_release(&p);
    CHECK(p == NULL);
    ld_permit_release(&p); /* the same variable again: nothing */
    ld_connection_stats s = stats_of(r);
    CHECK_EQ(s.admitted, 0);
    CHECK_EQ(s.total, 1);
    for (int i = 0; i < 10000; i++) {
        p = must_acquire(ctx);
        ld_permit_release(&p);
        ld_permit_release(&p);
    }
    s = stats_of(r);
    CHECK_EQ(s.admitted, 0);
    CHECK_EQ(s.total, 10001);
    CHECK_EQ(s.peak, 1);
    CHECK_EQ(s.limit, 0);
    ld_permit *many[100];
    for (int i = 0; i < 100; i++) many[i] = must_acquire(ctx);
    CHECK_EQ(stats_of(r).admitted, 100);
    for (int i = 0; i < 100; i++) ld_permit_release(&many[i]);
    s = stats_of(r);
    CHECK_EQ(s.admitted, 0);
    CHECK_EQ(s.peak, 100);
    CHECK_EQ(s.total, 10101);
    CHECK_EQ(ld_runner_stop(r), LD_OK);
    CHECK_EQ(gf_finish(f), LD_OK);
    return 0;
}

typedef struct {
    const ld_context *ctx;
    atomic_int *inside, *most;
} contender;

static void *contend(void *arg) {
    contender *c = arg;
    for (int i = 0; i < 5000; i++) {
        ld_permit *p = NULL;
        CHECK_EQ(ld_context_acquire_connection(c->ctx, -1, &p, NULL), LD_OK);
        int now = atomic_fetch_add(c->inside, 1) + 1;
        int most = atomic_load(c->most);
        while (now > most && !atomic_compare_exchange_weak(c->most, &most, now)) {
        }
        atomic_fetch_sub(c->inside, 1);
        ld_permit_release(&p);
    }
    return NULL;
}

int test_gate_two_threads_one_slot(void) {
    gate_fixture *f = gf_start(1, 3000);
    atomic_int inside = 0, most = 0;
    contender c = {f->g.ctx, &inside, &most};
    pthread_t t1, t2;
    CHECK(pthread_create(&t1, NULL, contend, &c) == 0);
    CHECK(pthread_create(&t2, NULL, contend, &c) == 0);
    CHECK(pthread_join(t1, NULL) == 0);
    CHECK(pthread_join(t2, NULL) == 0);
    CHECK_EQ(atomic_load(&most), 1);
    ld_connection_stats s = stats_of(f->b.runner);
    CHECK_EQ(s.admitted, 0);
    CHECK_EQ(s.waiting, 0);
    CHECK_EQ(s.total, 10000);
    CHECK_EQ(s.peak, 1);
    CHECK_EQ(ld_runner_stop(f->b.runner), LD_OK);
    CHECK_EQ(gf_finish(f), LD_OK);
    return 0;
}

/* ld_*_open_connections: the tagged permits, in admission order; the count even when it
 * exceeds the capacity (only `capacity` entries written). */
int test_gate_open_connections(void) {
    gate_fixture *f = gf_start(0, 3000);
    const ld_context *ctx = f->g.ctx;
    ld_runner *r = f->b.runner;
    ld_permit *a = must_acquire(ctx), *b = must_acquire(ctx), *c = must_acquire(ctx);
    CHECK_EQ(ld_runner_open_connections(r, NULL, 0), 0); /* none tagged yet */
    CHECK_EQ(ld_permit_set_fd(b, 21), LD_OK);
    CHECK_EQ(ld_permit_set_fd(a, 20), LD_OK);
    int fds[4] = {-5, -5, -5, -5};
    CHECK_EQ(ld_runner_open_connections(r, fds, 4), 2); /* c is untagged */
    CHECK_EQ(fds[0], 20);
    CHECK_EQ(fds[1], 21);
    CHECK_EQ(fds[2], -5);
    int one[2] = {-5, -5};
    CHECK_EQ(ld_context_open_connections(ctx, one, 1), 2); /* more than the room */
    CHECK_EQ(one[0], 20);
    CHECK_EQ(one[1], -5);
    CHECK_EQ(ld_runner_open_connections(r, NULL, 0), 2);
    CHECK_EQ(ld_context_open_connections(ctx, NULL, 0), 2);
    CHECK_EQ(ld_permit_set_fd(c, 22), LD_OK);
    CHECK_EQ(ld_permit_set_fd(a, 23), LD_OK); /* tagged again: the new descriptor */
    CHECK_EQ(ld_runner_open_connections(r, fds, 4), 3);
    CHECK_EQ(fds[0], 23);
    CHECK_EQ(fds[1], 21);
    CHECK_EQ(fds[2], 22);
    ld_permit_release(&a);
    CHECK_EQ(ld_runner_open_connections(r, fds, 4), 2);
    CHECK_EQ(fds[0], 21);
    CHECK_EQ(fds[1], 22);
    ld_permit_release(&b);
    ld_permit_release(&c);
    CHECK_EQ(ld_runner_open_connections(r, fds, 4), 0);
    CHECK_EQ(ld_runner_stop(r), LD_OK);
    CHECK_EQ(gf_finish(f), LD_OK);
    return 0;
}

/* shutdown returned and serve returned, yet the run goes on until the last permit is back; it
 * then ends cleanly (close is not called), well before its period. */
int test_gate_run_waits_for_last_permit(void) {
    gate_fixture *f = gf_start(0, 30000);
    ld_runner *r = f->b.runner;
    CHECK_EQ(ld_runner_wait_ready(r, 10000), LD_OK);
    ld_permit *p = must_acquire(f->g.ctx);
    gs_set(&f->g, &f->g.let_go, 1); /* shutdown returns at once */
    CHECK(kill(getpid(), SIGTERM) == 0);
    CHECK_EQ(wait_for_log("Waiting for 1 open connection(s) to close"), 0);
    CHECK_EQ(wait_for_log("Completed lame-duck mode"), 0);
    pthread_mutex_lock(&f->g.mu);
    CHECK_EQ(f->g.serving, 0); /* serve has returned too */
    pthread_mutex_unlock(&f->g.mu);
    CHECK_EQ(f->b.returned_ms, 0); /* the run has not */
    CHECK_EQ(ld_runner_state(r), LD_STATE_SHUTTING_DOWN);
    int64_t released = now_ms();
    ld_permit_release(&p);
    gf_join(f);
    CHECK_EQ(f->b.status, LD_OK);
    CHECK(f->b.returned_ms >= released);
    CHECK(f->b.returned_ms - released < 10000);
    CHECK_EQ(f->g.close_calls, 0);
    CHECK_EQ(stats_of(r).phase, LD_GATE_PHASE_CLOSED);
    CHECK_EQ(gf_finish(f), LD_OK);
    return 0;
}

/* A permit never released: the run calls close at the deadline (close sees it listed), and
 * returns LD_EXPIRED; the permit can still be released after the run. */
int test_gate_close_at_deadline(void) {
    gate_fixture *f = gf_start(0, 300);
    ld_runner *r = f->b.runner;
    CHECK_EQ(ld_runner_wait_ready(r, 10000), LD_OK);
    int pair[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0);
    ld_permit *p = must_acquire(f->g.ctx);
    CHECK_EQ(ld_permit_set_fd(p, pair[0]), LD_OK);
    gs_set(&f->g, &f->g.let_go, 1);
    int64_t signalled = now_ms();
    CHECK(kill(getpid(), SIGTERM) == 0);
    gf_join(f);
    CHECK_EQ(f->b.status, LD_EXPIRED);
    CHECK(f->b.returned_ms - signalled >= 299);
    CHECK_EQ(f->g.close_calls, 1);
    CHECK_EQ(f->g.close_listed, 1);
    CHECK_EQ(f->g.close_fd, pair[0]);
    CHECK_EQ(wait_for_log("Lame-duck period has expired"), 0);
    CHECK_EQ(stats_of(r).admitted, 1);
    ld_permit_release(&p);
    CHECK_EQ(stats_of(r).admitted, 0);
    close(pair[0]);
    close(pair[1]);
    CHECK_EQ(gf_finish(f), LD_EXPIRED);
    return 0;
}
