//! Runs the C tests (`tests/c/*.c`: one program, its sub-tests in files by concern, `main.c`
//! dispatching by name) against the freshly built `liblameduck.so`: one process per sub-test, real signals, AddressSanitizer/UBSan by default
//! (`LAMEDUCK_C_MODE=valgrind` runs them under valgrind instead).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

fn program() -> &'static PathBuf {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| common::build_c("test_api", SOURCES))
}

/// The C test program's files: every `.c` in tests/c except those in [`OWN_PROGRAMS`].
const SOURCES: &[&str] = &[
    "tests/c/main.c",
    "tests/c/common.c",
    "tests/c/lifecycle.c",
    "tests/c/signals.c",
    "tests/c/ownership.c",
    "tests/c/options.c",
    "tests/c/null_args.c",
    "tests/c/upgrade.c",
    "tests/c/gate.c",
    "tests/c/health.c",
];

/// C files that are programs of their own, and the test that builds and runs each.
const OWN_PROGRAMS: &[(&str, &str)] = &[("pkgconfig_smoke.c", "tests/install.rs"), ("test_listen.c", "tests/c_listen.rs")];

/// A new C file must be compiled in (or built by a test of its own), or its sub-tests would
/// silently never run.
#[test]
fn every_c_file_is_compiled() {
    let dir = common::repo().join("tests/c");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".c") {
            continue;
        }
        match OWN_PROGRAMS.iter().find(|(file, _)| *file == name) {
            Some((file, test)) => {
                let text = std::fs::read_to_string(common::repo().join(test)).unwrap();
                assert!(text.contains(&format!("tests/c/{file}")), "{test} does not build tests/c/{file}");
            }
            None => assert!(SOURCES.contains(&format!("tests/c/{name}").as_str()), "tests/c/{name} is not in SOURCES"),
        }
    }
}

enum Expect {
    Pass,
    KilledBy(i32),
}

fn run(name: &str, expect: Expect) -> String {
    let mut cmd = common::c_command(program());
    cmd.arg(name);
    let (status, stdout, stderr) = common::run_limited(cmd, Duration::from_secs(120));
    match expect {
        Expect::Pass => assert!(
            status.success() && stdout.contains(&format!("ok {name}")),
            "C sub-test {name} failed ({status:?}):\n{stdout}\n{stderr}"
        ),
        Expect::KilledBy(signal) => {
            // valgrind reports the child's death by signal as its own.
            assert_eq!(status.signal(), Some(signal), "{name} should die by signal {signal}: {status:?}\n{stderr}");
        }
    }
    stderr
}

macro_rules! c_tests {
    ($($name:ident),* $(,)?) => { $( #[test] fn $name() { run(stringify!($name), Expect::Pass); } )* };
}

c_tests!(
    custom_signals_replace,
    validation,
    rejected_setters_change_nothing,
    shutdown_ok,
    serve_outlives_deadline,
    deadline_exceeded,
    shutdown_failed,
    shutdown_hangs,
    close_hangs,
    serve_fails,
    final_states,
    drain_delay,
    repeat_force,
    repeat_ignore,
    ready_race,
    explicit_ready,
    state_observer,
    stop_from_thread,
    stop_in_hook,
    stop_from_signal_handler,
    stop_before_run,
    run_twice_and_free_while_running,
    abandoned_hook_outlives_free,
    free_during_run_is_busy,
    chaining_and_restore,
    no_leaks_across_runs,
    user_data_destructor,
    deliver_signal,
    null_arguments,
    strings_and_version,
    logger_lines,
    upgrade_failures,
    upgrade_one_line_protocol,
    upgrade_busy_and_not_running,
    upgrade_failures_leak_nothing,
    upgrade_options,
    upgrade_needs_a_known_listener,
    upgrade_ready_then_exit_rolls_back,
    stop_then_signals,
    gate_null_arguments,
    gate_limits,
    gate_busy_timeout_raise_lower,
    gate_lame_duck_closes_promptly,
    gate_release_idempotent_no_drift,
    gate_two_threads_one_slot,
    gate_open_connections,
    gate_run_waits_for_last_permit,
    gate_close_at_deadline,
    health_null_arguments,
    health_options,
    health_listener,
);

#[test]
fn defaults() {
    let stderr = run("defaults", Expect::Pass);
    // Logging is on by default, to stderr, with Go's texts.
    assert!(stderr.contains("lameduck: Waiting for signals: [interrupt terminated]"), "{stderr}");
    assert!(stderr.contains("lameduck: Received signal [terminated]; entering lame-duck mode for 3s"), "{stderr}");
    assert!(stderr.contains("lameduck: Received signal [interrupt]; entering lame-duck mode for 3s"), "{stderr}");
    assert!(stderr.contains("lameduck: Completed lame-duck mode"), "{stderr}");
}

#[test]
fn logging_disabled() {
    let stderr = run("logging_disabled", Expect::Pass);
    assert!(!stderr.contains("lameduck:"), "logging was disabled, yet: {stderr}");
}

#[test]
fn custom_signals_sigterm_kills() {
    run("custom_signals_sigterm_kills", Expect::KilledBy(libc::SIGTERM));
}

#[test]
fn repeat_force_third_kills() {
    let stderr = run("repeat_force_third_kills", Expect::KilledBy(libc::SIGTERM));
    assert!(stderr.contains("again; forcing close now"), "{stderr}");
}

#[test]
fn repeat_exit() {
    run("repeat_exit", Expect::KilledBy(libc::SIGTERM));
}

/// Every sub-test in the C file is run by one of the tests above.
#[test]
fn every_subtest_is_run() {
    let (status, stdout, _) =
        common::run_limited(common::c_command(program()).arg("--list").to_owned_cmd(), Duration::from_secs(60));
    assert!(status.success());
    let this_file = include_str!("c_api.rs");
    for name in stdout.lines() {
        assert!(
            this_file.contains(&format!("    {name},")) || this_file.contains(&format!("fn {name}()")),
            "sub-test {name} is never run"
        );
    }
}

trait ToOwnedCmd {
    fn to_owned_cmd(&mut self) -> std::process::Command;
}
impl ToOwnedCmd for std::process::Command {
    fn to_owned_cmd(&mut self) -> std::process::Command {
        std::mem::replace(self, std::process::Command::new("true"))
    }
}
