/* NULL arguments everywhere, status and state strings, the version. */
#include "common.h"

int test_null_arguments(void) {
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

int test_strings_and_version(void) {
    for (int s = 0; s <= LD_GATE_CLOSED; s++) {
        CHECK(strcmp(ld_status_str(s), "unknown status") != 0);
        for (int u = 0; u < s; u++) CHECK(strcmp(ld_status_str(s), ld_status_str(u)) != 0);
    }
    CHECK_EQ(strcmp(ld_status_str(LD_OK), "ok"), 0);
    CHECK_EQ(strcmp(ld_status_str(LD_EXPIRED), "lame-duck period expired; close was called"), 0);
    CHECK_EQ(strcmp(ld_status_str(-5), "unknown status"), 0);
    CHECK_EQ(strcmp(ld_status_str(LD_GATE_CLOSED + 1), "unknown status"), 0);
    CHECK_EQ(strcmp(ld_version(), LAMEDUCK_VERSION_STRING), 0);
    CHECK_EQ(ld_abi_version(), LD_ABI_VERSION);
    CHECK_EQ(LAMEDUCK_VERSION_NUMBER,
             LAMEDUCK_VERSION_MAJOR * 1000000 + LAMEDUCK_VERSION_MINOR * 1000 + LAMEDUCK_VERSION_PATCH);
    CHECK_EQ(LD_DEADLINE_EXCEEDED, -ETIMEDOUT);
    return 0;
}
