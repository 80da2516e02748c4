//! `ld_runner` and `ld_run`: Go's `NewRunner`/`Runner.Run`/`Ready`/`State` and `lameduck.Run`.

use std::ffi::{c_char, c_int};
use std::sync::Arc;
use std::time::Duration;

use super::boundary::{guard, guard_result, null_arg};
use super::error::{ld_error, ld_status};
use super::options::ld_options;
use super::server::ld_server;
use crate::error::Error;
use crate::lifecycle::Runner;
use crate::options::Options;
use crate::state::State;

/// A runner's lifecycle state. Transitions, in order:
/// NOT_STARTED → STARTING → SERVING → READY → DRAINING → SHUTTING_DOWN → CLOSING → STOPPED,
/// or FAILED when serve fails. DRAINING appears only with a drain delay, CLOSING only when
/// close is called. READY → UPGRADING → READY while an upgrade starts a new process that then
/// fails; READY → UPGRADING → HANDING_OVER → (CLOSING →) STOPPED when it takes over. A health
/// check should report READY, UPGRADING and HANDING_OVER as healthy.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ld_state {
    /// Only for a NULL runner.
    LD_STATE_UNKNOWN = 0,
    /// Made, not yet run.
    LD_STATE_NOT_STARTED = 1,
    /// `ld_runner_run` was called; installing signal handlers.
    LD_STATE_STARTING = 2,
    /// serve has been started, the run is not ready yet: with explicit readiness until serve
    /// calls `ld_context_ready`; otherwise only until the coordinator reports READY, at once.
    /// Every run passes through it, so observers see `STARTING → SERVING → READY`.
    LD_STATE_SERVING = 3,
    /// Handlers installed and serve running (and, with explicit readiness, accepting).
    LD_STATE_READY = 4,
    /// Triggered; serve keeps serving during the drain delay while reporting not ready.
    LD_STATE_DRAINING = 5,
    /// shutdown has been called with its deadline.
    LD_STATE_SHUTTING_DOWN = 6,
    /// close has been called.
    LD_STATE_CLOSING = 7,
    /// The run is over.
    LD_STATE_STOPPED = 8,
    /// serve failed (or could not start).
    LD_STATE_FAILED = 9,
    /// Still fully serving, as in READY, while an upgrade's new process starts: back to READY
    /// if the upgrade fails, on to lame-duck once the new process is ready. A health check
    /// should report READY and UPGRADING alike as healthy.
    LD_STATE_UPGRADING = 10,
    /// Lame-duck after a hand-over (in place of SHUTTING_DOWN): shutdown is running and this
    /// process no longer accepts, but the new process serves the same sockets, so a health check
    /// should still report healthy.
    LD_STATE_HANDING_OVER = 11,
}

/// Pairs each [`State`] with its `ld_state`: an exhaustive `match` (a new state without a C
/// value does not compile) whose numbers are checked equal at compile time, so the C enum above
/// cannot drift from the core's table.
macro_rules! c_states {
    ($($state:ident => $c:ident),* $(,)?) => {
        impl From<State> for ld_state {
            fn from(state: State) -> ld_state {
                match state {
                    $( State::$state => ld_state::$c, )*
                }
            }
        }
        const _: () = {
            $( assert!(State::$state as i32 == ld_state::$c as i32); )*
        };
    };
}

c_states! {
    NotStarted => LD_STATE_NOT_STARTED,
    Starting => LD_STATE_STARTING,
    Serving => LD_STATE_SERVING,
    Ready => LD_STATE_READY,
    Draining => LD_STATE_DRAINING,
    ShuttingDown => LD_STATE_SHUTTING_DOWN,
    Closing => LD_STATE_CLOSING,
    Stopped => LD_STATE_STOPPED,
    Failed => LD_STATE_FAILED,
    Upgrading => LD_STATE_UPGRADING,
    HandingOver => LD_STATE_HANDING_OVER,
}

/// A prepared run of one server. Made by `ld_runner_new`, run once by `ld_runner_run`, freed
/// by `ld_runner_free`. `ld_runner_stop`, `ld_runner_state`, `ld_runner_wait_ready` and
/// `ld_runner_deliver_signal` may be called from any thread, at any time, including from
/// inside a hook.
pub struct ld_runner {
    runner: Runner,
    /// Set by the first `ld_runner_free`: while its release waits for an abandoned hook, a
    /// second call is refused instead of freeing the runner twice.
    freed: std::sync::atomic::AtomicBool,
}

fn make_runner(server: *const ld_server, options: *const ld_options) -> Result<Runner, Error> {
    // SAFETY: NULL is checked; otherwise a live server from ld_server_new.
    let server = unsafe { server.as_ref() }.ok_or_else(|| null_arg("server"))?;
    // SAFETY: NULL means defaults; otherwise live options from ld_options_new.
    let options = unsafe { options.as_ref() }.map_or_else(Options::default, |o| o.options.clone());
    Runner::new(Arc::clone(&server.inner) as Arc<dyn crate::Server>, options)
}

pub(super) fn with_runner<T>(runner: *const ld_runner, absent: T, f: impl FnOnce(&Runner) -> T) -> T {
    // SAFETY: NULL is checked; otherwise a live runner from ld_runner_new.
    match unsafe { runner.as_ref() } {
        Some(r) => f(&r.runner),
        None => absent,
    }
}

/// Runs `server` under lame-duck coordination until it stops: Go's `lameduck.Run`.
/// `options` may be NULL for the defaults; `error_out` may be NULL.
///
/// Blocks the calling thread. Installs handlers for the trigger signals for the duration of
/// the run (chained to the previous handlers, restored afterwards). Returns `LD_OK` when
/// shutdown completed (or serve returned 0 before any signal), otherwise `LD_EXPIRED`,
/// `LD_FORCED`, `LD_SHUTDOWN_FAILED`, `LD_FAILED`, or a setup error (`LD_NULL_ARGUMENT`,
/// `LD_INVALID_ARGUMENT`, `LD_SIGNAL_SETUP`, `LD_SYSTEM`) before anything started.
/// Must not be called from inside a hook of the same server's running run.
#[no_mangle]
pub extern "C" fn ld_run(server: *const ld_server, options: *const ld_options, error_out: *mut *mut ld_error) -> ld_status {
    guard_result(error_out, || make_runner(server, options)?.run())
}

/// Makes a runner for `server` with `options` (NULL for defaults), validating everything:
/// nothing starts and no handler is installed. The runner keeps its own reference to the
/// server and a copy of the options. On success writes `*runner_out`; free it with
/// `ld_runner_free`.
/// Errors: `LD_NULL_ARGUMENT`, `LD_INVALID_ARGUMENT` (the message names the bad value),
/// `LD_SYSTEM`.
#[no_mangle]
pub extern "C" fn ld_runner_new(
    server: *const ld_server,
    options: *const ld_options,
    runner_out: *mut *mut ld_runner,
    error_out: *mut *mut ld_error,
) -> ld_status {
    guard_result(error_out, || {
        if runner_out.is_null() {
            return Err(null_arg("runner_out"));
        }
        let runner = make_runner(server, options)?;
        // SAFETY: checked non-NULL above.
        unsafe { *runner_out = Box::into_raw(Box::new(ld_runner { runner, freed: Default::default() })) };
        Ok(())
    })
}

/// Runs the runner (see `ld_run` for the outcomes), blocking the calling thread. A runner
/// runs once: a second call, or a call while it runs, returns `LD_BUSY`. If `ld_runner_stop`
/// was called before, no hook is called and the result is `LD_CANCELED`.
#[no_mangle]
pub extern "C" fn ld_runner_run(runner: *const ld_runner, error_out: *mut *mut ld_error) -> ld_status {
    guard_result(error_out, || with_runner(runner, Err(null_arg("runner")), Runner::run))
}

/// Starts lame-duck exactly as a trigger signal would (drain delay, then shutdown with its
/// deadline). Idempotent; never counts as a repeated signal. Before `ld_runner_run` it makes
/// the run return `LD_CANCELED` without calling any hook.
///
/// Safe to call from any thread, from inside a hook, and from a signal handler: it only does
/// an atomic update and a `write(2)` to a pipe (async-signal-safe).
/// Errors: `LD_NULL_ARGUMENT`.
#[no_mangle]
pub extern "C" fn ld_runner_stop(runner: *const ld_runner) -> ld_status {
    guard(ld_status::LD_PANIC, || {
        with_runner(runner, ld_status::LD_NULL_ARGUMENT, |r| {
            r.stop();
            ld_status::LD_OK
        })
    })
}

/// Upgrades now, as an upgrade signal (SIGHUP by default) would, and waits for the outcome:
/// starts the program again (see `ld_options_set_upgrade_command`) with every listener from
/// `ld_listen` or `ld_listen_adopt` at fd 3.. (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) and
/// a readiness channel (`LAMEDUCK_READY_FD`), waits until it reports ready (which a lameduck
/// program does once its `ld_listen` calls took every listener), keeps serving beside it for
/// the confirmation window (`ld_options_set_upgrade_confirm_ms`), then hands over: this run
/// enters lame-duck without its drain delay. On success writes the new process's pid to
/// `pid_out` (may be NULL).
///
/// Blocks the calling thread for at most the upgrade timeout plus 5 s. Any thread except the
/// one running `ld_runner_run` (a hook may call it). Not async-signal-safe: from a signal
/// handler, use an upgrade signal instead.
/// Errors (with a message in `error_out`):
/// - `LD_UPGRADE_FAILED`: the program could not start, exited (before it was ready or within
///   the confirmation window), reported `FAILED=` (its listeners were not all taken), or was
///   not ready within the upgrade timeout; it was terminated (SIGTERM, then SIGKILL) and this
///   run goes on serving. Also when nothing was started: this process has no listener known to
///   lameduck (see `ld_options_set_upgrade_without_listeners`), or it is a `start_server`
///   worker (its supervisor upgrades it).
/// - `LD_BUSY`: an upgrade is already in flight, or this process's own predecessor has not
///   handed over to it yet.
/// - `LD_NOT_RUNNING`: the run is not serving (not started, starting, in lame-duck, or over).
/// - `LD_CANCELED`: lame-duck began before the new process was ready; it was terminated.
/// - `LD_NULL_ARGUMENT`.
#[no_mangle]
pub extern "C" fn ld_runner_upgrade(runner: *const ld_runner, pid_out: *mut c_int, error_out: *mut *mut ld_error) -> ld_status {
    guard_result(error_out, || {
        let pid = with_runner(runner, Err(null_arg("runner")), Runner::upgrade)?;
        if !pid_out.is_null() {
            // SAFETY: checked non-NULL; the caller passes a writable int.
            unsafe { *pid_out = pid as c_int };
        }
        Ok(())
    })
}

/// Hands the runner a trigger signal the program caught itself (with
/// `ld_options_set_install_signal_handlers(false)`): exactly as if the library had caught it,
/// including the repeat-signal policy, which may end the process. An upgrade signal starts an
/// upgrade (its outcome goes to the log and the state observer). Async-signal-safe.
/// Errors: `LD_NULL_ARGUMENT`; `LD_INVALID_ARGUMENT` when `signal` is neither a trigger nor
/// an upgrade signal.
#[no_mangle]
pub extern "C" fn ld_runner_deliver_signal(runner: *const ld_runner, signal: c_int) -> ld_status {
    guard(ld_status::LD_PANIC, || with_runner(runner, ld_status::LD_NULL_ARGUMENT, |r| ld_status::of(r.deliver_signal(signal))))
}

/// Waits until the run is ready: signal handlers installed and serve called (with explicit
/// readiness: serve called `ld_context_ready`). `timeout_ms` < 0 waits without limit.
/// Returns `LD_OK` (ready now, or was ready earlier in a run that is over), `LD_TIMEOUT`,
/// `LD_NOT_RUNNING` (the run ended without becoming ready) or `LD_NULL_ARGUMENT`. Any thread;
/// may be called before `ld_runner_run` starts.
#[no_mangle]
pub extern "C" fn ld_runner_wait_ready(runner: *const ld_runner, timeout_ms: i64) -> ld_status {
    guard(ld_status::LD_PANIC, || {
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        with_runner(runner, ld_status::LD_NULL_ARGUMENT, |r| ld_status::of(r.wait_ready(timeout)))
    })
}

/// The current state (an atomic read; any thread, any time). NULL gives `LD_STATE_UNKNOWN`.
#[no_mangle]
pub extern "C" fn ld_runner_state(runner: *const ld_runner) -> ld_state {
    guard(ld_state::LD_STATE_UNKNOWN, || with_runner(runner, ld_state::LD_STATE_UNKNOWN, |r| r.state().into()))
}

/// The state's name (`"READY"`, `"DRAINING"`, …; `"UNKNOWN"` for anything else). Static.
#[no_mangle]
pub extern "C" fn ld_state_str(state: c_int) -> *const c_char {
    guard(c"UNKNOWN".as_ptr(), || State::from_code(state).map_or(c"UNKNOWN", State::c_name).as_ptr())
}

/// Frees a runner. NULL does nothing and returns `LD_OK`. Once `ld_runner_run` has begun (its
/// state has left NOT_STARTED, or `ld_runner_wait_ready` returned) and until it returns,
/// including from inside one of its hooks, the runner is not freed and `LD_BUSY` is returned:
/// stop it, wait for `ld_runner_run` to return, then free it. (A free racing the very call of
/// `ld_runner_run` on another thread is the caller's race, as with any free.)
///
/// A hook the run abandoned (a shutdown that ignored its deadline, a close that never
/// returned) may still be running when `ld_runner_run` returns. It may go on calling
/// `ld_runner_state`, `ld_runner_stop` and the `ld_context_*` functions: the runner's memory is
/// released only when the last such hook returns, even if `ld_runner_free` was called (and
/// returned `LD_OK`) before. The server's `free_user_data` runs then too, on that hook's thread.
/// A second `ld_runner_free` in that time returns `LD_INVALID_ARGUMENT` and frees nothing.
///
/// # Safety
/// `runner` must be NULL or from `ld_runner_new`, not yet freed, and no thread other than an
/// abandoned hook may use it once this returns `LD_OK`.
#[no_mangle]
pub unsafe extern "C" fn ld_runner_free(runner: *mut ld_runner) -> ld_status {
    guard(ld_status::LD_PANIC, || {
        if runner.is_null() {
            return ld_status::LD_OK;
        }
        if with_runner(runner, false, Runner::is_running) {
            return ld_status::LD_BUSY;
        }
        // SAFETY: per the contract, a live runner from ld_runner_new (perhaps awaiting release).
        let handle = unsafe { &*runner };
        if handle.freed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return ld_status::LD_INVALID_ARGUMENT;
        }
        // Freed now, or by the last abandoned hook to return; until then the pointer stays
        // valid for those hooks. The box is rebuilt only when it is dropped, so no owner exists
        // while hooks still borrow it.
        let address = runner as usize;
        handle.runner.live_hooks().after(Box::new(move || {
            // SAFETY: it came from Box::into_raw in ld_runner_new, and this runs exactly once.
            drop(unsafe { Box::from_raw(address as *mut ld_runner) })
        }));
        ld_status::LD_OK
    })
}
