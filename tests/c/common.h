/*
 * What every C test file shares: the checks, a configurable test server, a runner on a
 * background thread, captured log lines and state transitions. Definitions in common.c.
 */
#ifndef LAMEDUCK_TEST_COMMON_H
#define LAMEDUCK_TEST_COMMON_H

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

/* Runs a runner on a thread so the test can signal it. */
typedef struct {
    pthread_t thread;
    ld_runner *runner;
    ld_status status;
    ld_error *error;
    int64_t returned_ms;
} bg_run;

/* One test's server, options and background run, made and freed together. Heap-allocated
 * because the server keeps a pointer to `t`. */
typedef struct {
    test_server t;
    ld_server *server;
    ld_options *o;
    bg_run b;
} fixture;

extern pthread_mutex_t log_mu;
extern char log_buf[16384];
extern pthread_mutex_t states_mu;
extern ld_state states_seen[64];
extern int states_count;

int64_t now_ms(void);
void ts_init(test_server *t);
void ts_stop_serving(test_server *t);
void ts_wait_for(test_server *t, int *counter, int at_least);
void block_forever(void);
int t_serve(void *ud, const ld_context *ctx);
int t_shutdown(void *ud, const ld_context *ctx);
int t_close(void *ud);
void t_free(void *ud);
ld_server *make_server(test_server *t);
void capture_log(void *ud, ld_log_level level, const char *message);
ld_options *quiet_options(void);
void *bg_main(void *arg);
void bg_start(bg_run *b, ld_server *server, const ld_options *options);
void bg_start_ready(bg_run *b, ld_server *server, const ld_options *options);
void bg_join(bg_run *b);
void bg_finish(bg_run *b);
fixture *fx_new(void);
void fx_free(fixture *f);
int count_dir(const char *path);
void (*current_handler(int sig))(int);
void record_state(void *ud, ld_state old_state, ld_state new_state);
void check_states(const ld_state *want, int n);
int wait_for_log(const char *needle);

/* Every sub-test, by name: `test_api <name>` runs `test_<name>` (see main.c). */
#define SUBTESTS(X) \
    X(defaults) \
    X(custom_signals_replace) \
    X(custom_signals_sigterm_kills) \
    X(validation) \
    X(rejected_setters_change_nothing) \
    X(shutdown_ok) \
    X(serve_outlives_deadline) \
    X(deadline_exceeded) \
    X(shutdown_failed) \
    X(shutdown_hangs) \
    X(close_hangs) \
    X(serve_fails) \
    X(final_states) \
    X(drain_delay) \
    X(repeat_force) \
    X(repeat_force_third_kills) \
    X(repeat_ignore) \
    X(repeat_exit) \
    X(ready_race) \
    X(explicit_ready) \
    X(state_observer) \
    X(stop_from_thread) \
    X(stop_in_hook) \
    X(stop_from_signal_handler) \
    X(stop_before_run) \
    X(run_twice_and_free_while_running) \
    X(abandoned_hook_outlives_free) \
    X(free_during_run_is_busy) \
    X(chaining_and_restore) \
    X(no_leaks_across_runs) \
    X(user_data_destructor) \
    X(deliver_signal) \
    X(null_arguments) \
    X(strings_and_version) \
    X(logging_disabled) \
    X(logger_lines) \
    X(upgrade_failures) \
    X(upgrade_one_line_protocol) \
    X(upgrade_busy_and_not_running) \
    X(upgrade_failures_leak_nothing) \
    X(upgrade_options) \
    X(upgrade_needs_a_known_listener) \
    X(upgrade_ready_then_exit_rolls_back) \
    X(stop_then_signals) \
    X(gate_null_arguments) \
    X(gate_limits) \
    X(gate_busy_timeout_raise_lower) \
    X(gate_lame_duck_closes_promptly) \
    X(gate_release_idempotent_no_drift) \
    X(gate_two_threads_one_slot) \
    X(gate_open_connections) \
    X(gate_run_waits_for_last_permit) \
    X(gate_close_at_deadline) \
    X(health_null_arguments) \
    X(health_options) \
    X(health_listener)
#define DECLARE_SUBTEST(name) int test_##name(void);
SUBTESTS(DECLARE_SUBTEST)
#undef DECLARE_SUBTEST

#endif
