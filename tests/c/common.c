/* Definitions of the helpers declared in common.h. */
#include "common.h"

int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void ts_init(test_server *t) {
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    t->stop_status = t->free_status = (ld_status)-1;
}

void ts_stop_serving(test_server *t) {
    pthread_mutex_lock(&t->mu);
    t->stopped = 1;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

void ts_wait_for(test_server *t, int *counter, int at_least) {
    pthread_mutex_lock(&t->mu);
    while (*counter < at_least) pthread_cond_wait(&t->cv, &t->mu);
    pthread_mutex_unlock(&t->mu);
}

void block_forever(void) {
    for (;;) pause();
}

int t_serve(void *ud, const ld_context *ctx) {
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

int t_shutdown(void *ud, const ld_context *ctx) {
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

int t_close(void *ud) {
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

void t_free(void *ud) {
    test_server *t = ud;
    pthread_mutex_lock(&t->mu);
    t->frees++;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

ld_server *make_server(test_server *t) {
    ld_server *server = NULL;
    ld_error *err = NULL;
    CHECK_EQ(ld_server_new(t_serve, t_shutdown, t_close, t, t_free, &server, &err), LD_OK);
    CHECK(server != NULL);
    CHECK(err == NULL);
    return server;
}

/* Captured log lines, for asserting the Go texts. */
pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
char log_buf[16384];
void capture_log(void *ud, ld_log_level level, const char *message) {
    (void)ud;
    (void)level;
    pthread_mutex_lock(&log_mu);
    size_t used = strlen(log_buf);
    snprintf(log_buf + used, sizeof log_buf - used, "%s\n", message);
    pthread_mutex_unlock(&log_mu);
}

ld_options *quiet_options(void) {
    ld_options *o = ld_options_new();
    CHECK(o != NULL);
    CHECK_EQ(ld_options_set_logger(o, capture_log, NULL), LD_OK);
    return o;
}

void *bg_main(void *arg) {
    bg_run *b = arg;
    b->status = ld_runner_run(b->runner, &b->error);
    b->returned_ms = now_ms();
    return NULL;
}

void bg_start(bg_run *b, ld_server *server, const ld_options *options) {
    memset(b, 0, sizeof *b);
    ld_error *err = NULL;
    CHECK_EQ(ld_runner_new(server, options, &b->runner, &err), LD_OK);
    CHECK(pthread_create(&b->thread, NULL, bg_main, b) == 0);
}

void bg_start_ready(bg_run *b, ld_server *server, const ld_options *options) {
    bg_start(b, server, options);
    CHECK_EQ(ld_runner_wait_ready(b->runner, 10000), LD_OK);
}

void bg_join(bg_run *b) {
    CHECK(pthread_join(b->thread, NULL) == 0);
}

void bg_finish(bg_run *b) {
    ld_error_free(b->error);
    CHECK_EQ(ld_runner_free(b->runner), LD_OK);
}

fixture *fx_new(void) {
    fixture *f = calloc(1, sizeof *f);
    CHECK(f != NULL);
    ts_init(&f->t);
    f->server = make_server(&f->t);
    f->o = quiet_options();
    return f;
}

void fx_free(fixture *f) {
    if (f->b.runner) bg_finish(&f->b);
    ld_options_free(f->o);
    ld_server_free(f->server);
    free(f);
}

int count_dir(const char *path) {
    DIR *d = opendir(path);
    CHECK(d != NULL);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

void (*current_handler(int sig))(int) {
    struct sigaction sa;
    CHECK(sigaction(sig, NULL, &sa) == 0);
    return sa.sa_handler;
}

pthread_mutex_t states_mu = PTHREAD_MUTEX_INITIALIZER;
ld_state states_seen[64];
int states_count;
void record_state(void *ud, ld_state old_state, ld_state new_state) {
    (void)ud;
    pthread_mutex_lock(&states_mu);
    if (states_count == 0) states_seen[states_count++] = old_state;
    if (states_count < 64) states_seen[states_count++] = new_state;
    pthread_mutex_unlock(&states_mu);
}

void check_states(const ld_state *want, int n) {
    pthread_mutex_lock(&states_mu);
    for (int i = 0; i < states_count; i++) fprintf(stderr, "state %d: %s\n", i, ld_state_str(states_seen[i]));
    CHECK_EQ(states_count, n);
    for (int i = 0; i < n; i++) CHECK_EQ(states_seen[i], want[i]);
    pthread_mutex_unlock(&states_mu);
}

/* Waits (bounded) until the captured log contains `needle`. */
int wait_for_log(const char *needle) {
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
