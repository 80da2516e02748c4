/*
 * The C driver of the cross-language conformance suite: the C leg of tests/conformance,
 * beside python_driver.py and node_driver.js. The protocol (arguments, hook behaviours, event
 * lines, exit status) is tests/conformance/README.md; tests/conformance.rs runs this program.
 * Written against the public header (include/lameduck.h) only.
 *
 *     c_driver key=value ...        (g1.KEY=VALUE applies in generation 1 only)
 *
 * Exit status: 0 when the run's result is ok, 1 otherwise, 2 for bad arguments.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lameduck.h"

static int gen;

/* ---- output: one line at a time, flushed at once ---------------------------------------- */

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;

static void emit(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&out_mu);
    printf("g%d ", gen);
    vprintf(fmt, ap);
    putchar('\n');
    fflush(stdout);
    pthread_mutex_unlock(&out_mu);
    va_end(ap);
}

static void usage_error(const char *what, const char *value) {
    fprintf(stderr, "c_driver: %s: %s\n", what, value);
    exit(2);
}

static const char *kind(ld_status status) {
    switch (status) {
    case LD_OK: return "ok";
    case LD_EXPIRED: return "expired";
    case LD_FAILED: return "failed";
    case LD_SHUTDOWN_FAILED: return "shutdown_failed";
    case LD_FORCED: return "forced";
    case LD_CANCELED: return "canceled";
    case LD_INVALID_ARGUMENT: return "invalid_argument";
    case LD_NULL_ARGUMENT: return "null_argument";
    case LD_BUSY: return "busy";
    case LD_PANIC: return "panic";
    case LD_SIGNAL_SETUP: return "signal_setup";
    case LD_TIMEOUT: return "timeout";
    case LD_NOT_RUNNING: return "not_running";
    case LD_SYSTEM: return "system";
    case LD_UPGRADE_FAILED: return "upgrade_failed";
    case LD_GATE_CLOSED: return "gate_closed";
    }
    return "unknown";
}

/* ---- arguments ---------------------------------------------------------------------------- */

static const char *const keys[] = {
    "period_ms", "drain_delay_ms", "close_timeout_ms", "signals", "upgrade_signals", "repeat",
    "explicit_ready", "logging", "upgrade_confirm_ms", "upgrade_timeout_ms", "listen_timeout_ms",
    "listen", "serve", "shutdown", "close", "before_run", "after_run", "max_connections",
    "drain_quiet_ms", "health",
};
#define NKEYS (sizeof keys / sizeof keys[0])
static const char *values[NKEYS];    /* NULL: not given */

static const char *arg(const char *key) {
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i], key) == 0) return values[i];
    return NULL;
}

static void parse_args(int argc, char **argv) {
    const char *g1[NKEYS] = {0};
    for (int a = 1; a < argc; a++) {
        const char *eq = strchr(argv[a], '=');
        if (eq == NULL) usage_error("not key=value", argv[a]);
        const char *key = argv[a];
        bool only_g1 = strncmp(key, "g1.", 3) == 0;
        if (only_g1) key += 3;
        size_t i, len = (size_t)(eq - key);
        for (i = 0; i < NKEYS; i++)
            if (strlen(keys[i]) == len && strncmp(keys[i], key, len) == 0) break;
        if (i == NKEYS) usage_error("unknown key", argv[a]);
        (only_g1 ? g1 : values)[i] = eq + 1;
    }
    if (gen == 1)
        for (size_t i = 0; i < NKEYS; i++)
            if (g1[i] != NULL) values[i] = g1[i];
}

static long long parse_int(const char *what, const char *text) {
    char *end;
    errno = 0;
    long long n = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0') usage_error(what, text);
    return n;
}

static int signal_number(const char *name) {
    static const struct { const char *name; int number; } table[] = {
        {"SIGHUP", SIGHUP}, {"SIGINT", SIGINT}, {"SIGQUIT", SIGQUIT}, {"SIGILL", SIGILL},
        {"SIGTRAP", SIGTRAP}, {"SIGABRT", SIGABRT}, {"SIGBUS", SIGBUS}, {"SIGFPE", SIGFPE},
        {"SIGKILL", SIGKILL}, {"SIGUSR1", SIGUSR1}, {"SIGSEGV", SIGSEGV}, {"SIGUSR2", SIGUSR2},
        {"SIGPIPE", SIGPIPE}, {"SIGALRM", SIGALRM}, {"SIGTERM", SIGTERM}, {"SIGCHLD", SIGCHLD},
        {"SIGCONT", SIGCONT}, {"SIGSTOP", SIGSTOP}, {"SIGTSTP", SIGTSTP}, {"SIGTTIN", SIGTTIN},
        {"SIGTTOU", SIGTTOU}, {"SIGURG", SIGURG}, {"SIGXCPU", SIGXCPU}, {"SIGXFSZ", SIGXFSZ},
        {"SIGVTALRM", SIGVTALRM}, {"SIGPROF", SIGPROF}, {"SIGWINCH", SIGWINCH}, {"SIGIO", SIGIO},
        {"SIGPWR", SIGPWR}, {"SIGSYS", SIGSYS},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(table[i].name, name) == 0) return table[i].number;
    if (strcmp(name, "SIGRTMIN") == 0) return SIGRTMIN;
    if (strcmp(name, "SIGRTMAX") == 0) return SIGRTMAX;
    if (strncmp(name, "SIGRTMIN+", 9) == 0) return SIGRTMIN + (int)parse_int("signal", name + 9);
    usage_error("unknown signal", name);
    return 0;
}

/* "SIGTERM,SIGINT" or "none" into out[]; returns the count. */
static size_t parse_signals(const char *text, int *out, size_t max) {
    size_t n = 0;
    if (strcmp(text, "none") == 0) return 0;
    char *copy = strdup(text), *save = NULL;
    for (char *name = strtok_r(copy, ",", &save); name != NULL; name = strtok_r(NULL, ",", &save)) {
        if (n == max) usage_error("too many signals", text);
        out[n++] = signal_number(name);
    }
    free(copy);
    return n;
}

/* ---- hooks -------------------------------------------------------------------------------- */

enum behaviour {
    B_BLOCK, B_RETURN, B_FAIL, B_RELEASE, B_READY_BLOCK, B_STOP_BLOCK, B_IGNORE_GATE, B_HANG,
    B_WAIT_DEADLINE, B_IGNORE_DEADLINE, B_STOP, B_UPGRADE, B_UPGRADE_BUSY, B_HOLD_PERMITS,
    B_RELEASE_PERMITS, B_HEALTH_ANSWERS,
};
struct hook { enum behaviour b; int code; };
static struct hook serve_hook = {B_BLOCK, 0}, shutdown_hook = {B_RELEASE, 0},
                   close_hook = {B_RELEASE, 0};

/* allowed: the behaviours valid for this hook, a list ending with -1 */
static void parse_hook(struct hook *hook, const char *text, const int *allowed) {
    static const char *const names[] = {
        "block", "return", "fail", "release", "ready_block", "stop_block", "ignore_gate", "hang",
        "wait_deadline", "ignore_deadline", "stop", "upgrade", "upgrade_busy", "hold_permits",
        "release_permits", "health_answers",
    };
    if (text == NULL) return;
    int b = -1;
    if (strncmp(text, "fail:", 5) == 0) {
        b = B_FAIL;
        hook->code = (int)parse_int("fail code", text + 5);
    } else {
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (i != B_FAIL && strcmp(names[i], text) == 0) b = (int)i;
    }
    for (; *allowed != -1; allowed++)
        if (*allowed == b) { hook->b = (enum behaviour)b; return; }
    usage_error("unknown hook behaviour", text);
}

/* The gate and the other one-way flags, all under one mutex. */
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static bool gate_open, close_called, never;

static void flag_set(bool *flag) {
    pthread_mutex_lock(&gate_mu);
    *flag = true;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

static void flag_wait(bool *flag) {
    pthread_mutex_lock(&gate_mu);
    while (!*flag) pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
}

static ld_runner *runner;

/* The permits hold_permits took, given back by release_permits and by close. */
#define MAX_HELD 64
static ld_permit *held[MAX_HELD];
static int nheld;

/* Admits connections through the gate (blocking) until it refuses: with a limit, the last
 * acquire blocks on the full gate until lame-duck releases it. */
static void hold_permits(const ld_context *ctx) {
    for (;;) {
        ld_permit *permit = NULL;
        ld_status st = nheld == MAX_HELD ? LD_BUSY : ld_context_acquire_connection(ctx, -1, &permit, NULL);
        if (st != LD_OK) {
            emit("accept %s", kind(st));
            return;
        }
        pthread_mutex_lock(&gate_mu);
        held[nheld++] = permit;
        int n = nheld;
        pthread_mutex_unlock(&gate_mu);
        emit("admitted %d", n);
    }
}

static void release_permits(void) {
    pthread_mutex_lock(&gate_mu);
    for (int i = 0; i < nheld; i++) ld_permit_release(&held[i]);
    nheld = 0;
    pthread_mutex_unlock(&gate_mu);
}

/* Polls (1 ms, up to 30 s) until the runner's state is `want`: an upgrade is only possible
 * once the run is READY, which the coordinator reports just after serve was called. */
static void await_state(ld_state want) {
    struct timespec ms = {0, 1000000};
    for (int i = 0; i < 30000 && ld_runner_state(runner) != want; i++)
        nanosleep(&ms, NULL);
}

static ld_status upgrade(void) {
    ld_error *error = NULL;
    ld_status status = ld_runner_upgrade(runner, NULL, &error);
    ld_error_free(error);
    return status;
}

static void *upgrade_thread(void *result) {
    *(ld_status *)result = upgrade();
    return NULL;
}

static void upgrade_busy(void) {
    await_state(LD_STATE_READY);
    pthread_t thread;
    ld_status first = LD_SYSTEM;
    if (pthread_create(&thread, NULL, upgrade_thread, &first) != 0) {
        emit("upgrade system");
        return;
    }
    await_state(LD_STATE_UPGRADING);
    emit("upgrade %s", kind(upgrade()));
    pthread_join(thread, NULL);
    emit("upgrade %s", kind(first));
}

/* With a health listener: where it listens (`health ADDRESS`), or why not (`health KIND`). */
static void report_health_address(void) {
    if (arg("health") == NULL) return;
    char address[512];
    ld_status st = ld_runner_health_address(runner, address, sizeof address, NULL);
    emit("health %s", st == LD_OK ? address : kind(st));
}

/* health_answers: the runner's in-process answers, as `answer PATH STATUS [TYPE] BODY` (the body
 * without its final newline). ld_runner_health gives no content type: it is text/plain, or
 * application/json for /health (its documented contract). */
static void health_answers(void) {
    static const char *const paths[] = {"/ready", "/live", "/health", "/nope"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        char body[1024];
        int status = 0;
        size_t len = 0;
        ld_status st = ld_runner_health(runner, paths[i], &status, body, sizeof body, &len);
        if (st != LD_OK || len != strlen(body)) {
            emit("answer %s %s len=%zu", paths[i], kind(st), len);
            continue;
        }
        if (len > 0 && body[len - 1] == '\n') body[len - 1] = '\0';
        emit("answer %s %d [%s] %s", paths[i], status,
             strcmp(paths[i], "/health") == 0 ? "application/json" : "text/plain; charset=utf-8", body);
    }
}

static int serve(void *user_data, const ld_context *ctx) {
    (void)user_data;
    emit("enter serve");
    report_health_address();
    switch (serve_hook.b) {
    case B_FAIL: emit("exit serve"); return serve_hook.code;
    case B_RETURN: emit("exit serve"); return 0;
    case B_HANG: flag_wait(&never); break;
    case B_IGNORE_GATE: flag_wait(&close_called); emit("exit serve"); return 0;
    case B_READY_BLOCK: ld_context_ready(ctx); break;
    case B_STOP_BLOCK: ld_runner_stop(runner); break;
    case B_UPGRADE: await_state(LD_STATE_READY); emit("upgrade %s", kind(upgrade())); break;
    case B_UPGRADE_BUSY: upgrade_busy(); break;
    case B_HOLD_PERMITS: hold_permits(ctx); emit("exit serve"); return 0;
    default: break;
    }
    flag_wait(&gate_open);
    emit("exit serve");
    return 0;
}

static int shutdown_fn(void *user_data, const ld_context *ctx) {
    (void)user_data;
    emit("enter shutdown");
    int code = 0;
    switch (shutdown_hook.b) {
    case B_HANG: flag_wait(&never); break;
    case B_WAIT_DEADLINE:
        while (!ld_context_wait(ctx, -1)) {}
        emit("exit shutdown");
        return LD_DEADLINE_EXCEEDED;
    case B_IGNORE_DEADLINE: flag_wait(&close_called); break;
    case B_STOP: ld_runner_stop(runner); break;
    case B_FAIL: code = shutdown_hook.code; break;
    case B_RELEASE_PERMITS: release_permits(); break;
    case B_HEALTH_ANSWERS: health_answers(); break;
    default: break;
    }
    flag_set(&gate_open);
    emit("exit shutdown");
    return code;
}

static int close_fn(void *user_data) {
    (void)user_data;
    emit("enter close");
    flag_set(&close_called);
    release_permits();
    if (close_hook.b == B_HANG) flag_wait(&never);
    flag_set(&gate_open);
    emit("exit close");
    return close_hook.b == B_FAIL ? close_hook.code : 0;
}

/* ---- logger and state observer ------------------------------------------------------------ */

static void log_line(void *user_data, ld_log_level level, const char *message) {
    (void)user_data;
    static const char *const names[] = {"debug", "info", "warn", "error"};
    emit("log %s %s", (unsigned)level < 4 ? names[level] : "unknown", message);
}

static void state_changed(void *user_data, ld_state from, ld_state to) {
    (void)user_data;
    emit("state %s %s", ld_state_str(from), ld_state_str(to));
}

/* ---- options, run and result -------------------------------------------------------------- */

static const char *const ms_keys[] = {
    "period_ms", "drain_delay_ms", "close_timeout_ms",
    "upgrade_confirm_ms", "upgrade_timeout_ms", "listen_timeout_ms", "drain_quiet_ms",
};
#define NMS (sizeof ms_keys / sizeof ms_keys[0])
static uint64_t ms_values[NMS];
static int sigs[64], upgrade_sigs[64], policy;
static long long max_connections;
static size_t nsigs, nupgrade_sigs;

/* Turns the option arguments into values (exit 2 for one that is not even of the right type). */
static void parse_options(void) {
    for (size_t i = 0; i < NMS; i++)
        if (arg(ms_keys[i]) != NULL) ms_values[i] = (uint64_t)parse_int(ms_keys[i], arg(ms_keys[i]));
    if (arg("max_connections") != NULL) max_connections = parse_int("max_connections", arg("max_connections"));
    if (arg("signals") != NULL) nsigs = parse_signals(arg("signals"), sigs, 64);
    if (arg("upgrade_signals") != NULL)
        nupgrade_sigs = parse_signals(arg("upgrade_signals"), upgrade_sigs, 64);
    const char *repeat = arg("repeat"), *explicit_ready = arg("explicit_ready");
    if (repeat != NULL)
        policy = strcmp(repeat, "force") == 0    ? LD_REPEAT_FORCE
                 : strcmp(repeat, "ignore") == 0 ? LD_REPEAT_IGNORE
                 : strcmp(repeat, "exit") == 0   ? LD_REPEAT_EXIT
                                                 : (int)parse_int("repeat", repeat);
    if (explicit_ready != NULL && strcmp(explicit_ready, "true") != 0 &&
        strcmp(explicit_ready, "false") != 0)
        usage_error("explicit_ready", explicit_ready);
}

/* A setter's status; a refusal is reported as `refused SETTER KIND`: a setter gives a status
 * and no message, so its name is how C names the option that was refused. */
static ld_status checked(const char *setter, ld_status status) {
    if (status != LD_OK) emit("refused %s %s", setter, kind(status));
    return status;
}
#define SET(setter, ...) checked(#setter, setter(__VA_ARGS__))

/* Passes every option given to the library; the first failing setter's status, or LD_OK. */
static ld_status apply_options(ld_options *o) {
    static ld_status (*const ms_setters[NMS])(ld_options *, uint64_t) = {
        ld_options_set_period_ms, ld_options_set_drain_delay_ms, ld_options_set_close_timeout_ms,
        ld_options_set_upgrade_confirm_ms, ld_options_set_upgrade_timeout_ms,
        ld_options_set_listen_timeout_ms, ld_options_set_drain_quiet_ms,
    };
    static const char *const ms_setter_names[NMS] = {
        "ld_options_set_period_ms", "ld_options_set_drain_delay_ms",
        "ld_options_set_close_timeout_ms", "ld_options_set_upgrade_confirm_ms",
        "ld_options_set_upgrade_timeout_ms", "ld_options_set_listen_timeout_ms",
        "ld_options_set_drain_quiet_ms",
    };
    ld_status st = LD_OK;
    for (size_t i = 0; i < NMS && st == LD_OK; i++) /* a negative one wraps to far above 24 h */
        if (arg(ms_keys[i]) != NULL) st = checked(ms_setter_names[i], ms_setters[i](o, ms_values[i]));
    if (st == LD_OK && arg("signals") != NULL)
        st = SET(ld_options_set_signals, o, nsigs > 0 ? sigs : NULL, nsigs);
    if (st == LD_OK && arg("upgrade_signals") != NULL)
        st = SET(ld_options_set_upgrade_signals, o, nupgrade_sigs > 0 ? upgrade_sigs : NULL,
                 nupgrade_sigs);
    if (st == LD_OK && arg("repeat") != NULL)
        st = SET(ld_options_set_repeat_signal_policy, o, policy);
    if (st == LD_OK && arg("explicit_ready") != NULL)
        st = SET(ld_options_set_explicit_ready, o, strcmp(arg("explicit_ready"), "true") == 0);
    if (st == LD_OK && arg("max_connections") != NULL) /* a negative one wraps to far above the maximum */
        st = SET(ld_options_set_max_connections, o, (uint64_t)max_connections);
    if (st == LD_OK && arg("health") != NULL)
        st = SET(ld_options_set_health_address, o, arg("health"));
    if (st == LD_OK) st = SET(ld_options_set_state_observer, o, state_changed, NULL);
    return st;
}

int main(int argc, char **argv) {
    const char *env = getenv("CONFORMANCE_GEN");
    if (env != NULL) {
        long long n = parse_int("CONFORMANCE_GEN", env);
        if (n < 0 || n >= INT_MAX) usage_error("CONFORMANCE_GEN", env);
        gen = (int)n;
    }
    char next[24];
    snprintf(next, sizeof next, "%d", gen + 1);
    if (setenv("CONFORMANCE_GEN", next, 1) != 0) usage_error("setenv", strerror(errno));
    parse_args(argc, argv);

    static const int serve_ok[] = {B_BLOCK, B_RETURN, B_FAIL, B_READY_BLOCK, B_STOP_BLOCK,
                                   B_IGNORE_GATE, B_HANG, B_UPGRADE, B_UPGRADE_BUSY,
                                   B_HOLD_PERMITS, -1};
    static const int shutdown_ok[] = {B_FAIL, B_RELEASE, B_HANG, B_WAIT_DEADLINE,
                                      B_IGNORE_DEADLINE, B_STOP, B_RELEASE_PERMITS,
                                      B_HEALTH_ANSWERS, -1};
    static const int close_ok[] = {B_FAIL, B_RELEASE, B_HANG, -1};
    parse_hook(&serve_hook, arg("serve"), serve_ok);
    parse_hook(&shutdown_hook, arg("shutdown"), shutdown_ok);
    parse_hook(&close_hook, arg("close"), close_ok);
    parse_options();
    const char *logging = arg("logging"), *before = arg("before_run"), *after = arg("after_run");
    if (logging != NULL && strcmp(logging, "on") != 0 && strcmp(logging, "off") != 0)
        usage_error("logging", logging);
    if (before != NULL && strcmp(before, "stop") != 0) usage_error("before_run", before);
    if (after != NULL && strcmp(after, "stop") != 0 && strcmp(after, "run_again") != 0)
        usage_error("after_run", after);

    emit("start pid=%ld", (long)getpid());

    ld_options *options = ld_options_new();
    ld_server *server = NULL;
    ld_error *error = NULL;
    int fd = -1;
    ld_status status = logging != NULL && strcmp(logging, "off") == 0
                           ? ld_options_disable_logging(options)
                           : ld_options_set_logger(options, log_line, NULL);
    if (status == LD_OK) status = apply_options(options);
    if (status == LD_OK) status = ld_server_new(serve, shutdown_fn, close_fn, NULL, NULL, &server,
                                                &error);
    if (status == LD_OK) status = ld_runner_new(server, options, &runner, &error);
    if (status == LD_OK && arg("listen") != NULL) {
        status = ld_listen(arg("listen"), NULL, &fd, &error);
        if (status == LD_OK)
            emit("listen %s shared=%s", arg("listen"), ld_listen_is_shared(fd) ? "true" : "false");
    }
    if (status == LD_OK) {
        if (before != NULL) ld_runner_stop(runner);
        status = ld_runner_run(runner, &error);
        if (after != NULL && strcmp(after, "stop") == 0) {
            emit("stop_after %s", kind(ld_runner_stop(runner)));
        } else if (after != NULL) {
            ld_error *again = NULL;
            emit("run_again %s", kind(ld_runner_run(runner, &again)));
            ld_error_free(again);
        }
    }
    if (error != NULL) emit("message %s", ld_error_message(error));
    int code = ld_error_code(error);
    char cause[24] = "none";
    if (code != 0) snprintf(cause, sizeof cause, "%d", code);
    emit("result %s cause=%s abandoned=%s", kind(status), cause,
         ld_error_abandoned(error) ? "true" : "false");

    ld_error_free(error);
    ld_runner_free(runner);
    ld_server_free(server);
    ld_options_free(options);
    if (fd >= 0) close(fd);
    return status == LD_OK ? 0 : 1;
}
