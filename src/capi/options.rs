//! `ld_options`: the run options, set one by one.
//!
//! One contract for every setter, as in rustls-ffi ("no partial successes"): the change is made
//! on a copy, checked, and kept only when the verdict is `LD_OK`; a rejected value leaves the
//! options exactly as they were. `ld_runner_new` and `ld_run` validate everything again and put
//! a message naming the bad value in their `error_out`, for what only the combination decides
//! (an upgrade signal that a later `ld_options_set_signals` made a trigger signal too).

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Arc;
use std::time::Duration;

use super::boundary::guard;
use super::error::ld_status;
use super::runner::ld_state;
use crate::error::Error;
use crate::options::{self, Level, Options, RepeatSignalPolicy};

/// Run options. Make with `ld_options_new`, free with `ld_options_free`. Runners copy the
/// options when they are made, so the options may be changed or freed afterwards.
/// Not thread-safe: set options from one thread at a time.
///
/// Every `ld_options_set_*` either stores its value and returns `LD_OK`, or returns an error
/// and leaves the options unchanged (no partial update). `ld_runner_new` checks the options as
/// a whole again, for values that conflict with each other.
pub struct ld_options {
    pub(crate) options: Options,
}

/// Log severity passed to an `ld_log_fn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ld_log_level {
    /// Detail about the library itself.
    LD_LOG_DEBUG = 0,
    /// A lifecycle event (the Go texts: `Received signal [terminated]; entering lame-duck mode for 3s`).
    LD_LOG_INFO = 1,
    /// Something went wrong, the run goes on.
    LD_LOG_WARN = 2,
    /// The run failed.
    LD_LOG_ERROR = 3,
}

/// What a trigger signal does once lame-duck has already begun. Pass to
/// `ld_options_set_repeat_signal_policy`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ld_repeat_policy {
    /// Default. Second signal: end the period now and call close (result `LD_FORCED`).
    /// Third: restore the default disposition and re-raise, so the process dies by the signal.
    LD_REPEAT_FORCE = 0,
    /// Log repeated signals and otherwise ignore them.
    LD_REPEAT_IGNORE = 1,
    /// Second signal: restore the default disposition and re-raise it at once.
    LD_REPEAT_EXIT = 2,
}

/// Receives one log line. `message` is NUL-terminated and valid only during the call.
/// Called on the thread running `ld_run`/`ld_runner_run`, one call at a time per runner.
/// Must not call `ld_runner_run` or `ld_runner_free` on the same runner.
pub type ld_log_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, level: ld_log_level, message: *const c_char)>;

/// Receives every state transition, in order. Called on the thread running
/// `ld_run`/`ld_runner_run`, one call at a time per runner; keep it short (it delays the run).
pub type ld_state_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, old_state: ld_state, new_state: ld_state)>;

/// A `void *` the caller promised may be used from the runner's thread.
#[derive(Clone, Copy)]
struct ForeignData(*mut c_void);
// SAFETY: the header documents that callbacks run on the runner's thread, so the caller who
// registers `user_data` promises it may be used from there.
unsafe impl Send for ForeignData {}
// SAFETY: as above; we never touch the pointee ourselves, we only pass the pointer back.
unsafe impl Sync for ForeignData {}

fn with_options(options: *mut ld_options, f: impl FnOnce(&mut Options) -> ld_status) -> ld_status {
    // SAFETY: NULL is checked; otherwise the caller passes live options from ld_options_new,
    // used by one thread at a time (documented).
    match unsafe { options.as_mut() } {
        Some(o) => guard(ld_status::LD_PANIC, || f(&mut o.options)),
        None => ld_status::LD_NULL_ARGUMENT,
    }
}

/// The setter contract: `change` works on a copy, which replaces the options only when it
/// returns `LD_OK`, so a rejected value leaves them unchanged.
fn update(options: *mut ld_options, change: impl FnOnce(&mut Options) -> ld_status) -> ld_status {
    with_options(options, |o| {
        let mut next = o.clone();
        let status = change(&mut next);
        if status == ld_status::LD_OK {
            *o = next;
        }
        status
    })
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// `signals[0..count]` copied; `None` when `signals` is NULL with a non-zero count.
fn signal_array(signals: *const c_int, count: usize) -> Option<Vec<i32>> {
    if count == 0 {
        return Some(Vec::new());
    }
    // SAFETY: the caller passes `count` readable ints at `signals` (checked non-NULL).
    (!signals.is_null()).then(|| unsafe { std::slice::from_raw_parts(signals, count) }.to_vec())
}

fn verdict(result: Result<(), Error>) -> ld_status {
    ld_status::of(result)
}

/// Makes options with the defaults: period 3000 ms, signals SIGINT and SIGTERM, drain delay 0,
/// close timeout 5000 ms, logging to stderr, repeat policy `LD_REPEAT_FORCE`, readiness when
/// serve starts, the library owning the signals, upgrade on SIGHUP with a 60000 ms timeout,
/// the program's own command line, no pid file. Free with `ld_options_free`. Never NULL.
#[no_mangle]
pub extern "C" fn ld_options_new() -> *mut ld_options {
    guard(std::ptr::null_mut(), || Box::into_raw(Box::new(ld_options { options: Options::default() })))
}

/// Frees options. NULL does nothing. Runners made from them are not affected.
///
/// # Safety
/// `options` must be NULL or from `ld_options_new`, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ld_options_free(options: *mut ld_options) {
    guard((), || {
        if !options.is_null() {
            // SAFETY: per the contract, it came from Box::into_raw in ld_options_new.
            drop(unsafe { Box::from_raw(options) });
        }
    })
}

/// Sets the lame-duck period: shutdown's deadline is trigger (+ drain delay) + period.
/// Errors (options unchanged): `LD_NULL_ARGUMENT`; `LD_INVALID_ARGUMENT` for 0 or more than
/// 86400000 (24 h).
#[no_mangle]
pub extern "C" fn ld_options_set_period_ms(options: *mut ld_options, period_ms: u64) -> ld_status {
    update(options, |o| {
        o.period = millis(period_ms);
        verdict(options::validate_period(o.period))
    })
}

/// Sets the drain delay: after the trigger the state is `LD_STATE_DRAINING` (not ready) and
/// serve keeps serving this long before shutdown is called, so load balancers stop sending
/// traffic first. 0 (the default) means no drain.
/// Errors (options unchanged): `LD_NULL_ARGUMENT`; `LD_INVALID_ARGUMENT` above 86400000 (24 h).
#[no_mangle]
pub extern "C" fn ld_options_set_drain_delay_ms(options: *mut ld_options, delay_ms: u64) -> ld_status {
    update(options, |o| {
        o.drain_delay = millis(delay_ms);
        verdict(options::validate_drain_delay(o.drain_delay))
    })
}

/// Sets the adaptive drain's quiet time: the drain delay ends early once no new connection has
/// been admitted through the gate (`ld_context_acquire_connection`) for `quiet_ms` since
/// readiness flipped, and, when readiness probes are answered here (the health listener, or
/// `ld_runner_health`), after at least one answered "not ready". At the latest the drain ends
/// after the drain delay. 0 (the default) turns it off.
/// Errors (options unchanged): `LD_NULL_ARGUMENT`; `LD_INVALID_ARGUMENT` above 86400000 (24 h).
/// `ld_runner_new` refuses a quiet time that is not shorter than the drain delay.
#[no_mangle]
pub extern "C" fn ld_options_set_drain_quiet_ms(options: *mut ld_options, quiet_ms: u64) -> ld_status {
    update(options, |o| {
        o.drain_quiet = millis(quiet_ms);
        if o.drain_quiet > crate::MAX_DURATION {
            return ld_status::LD_INVALID_ARGUMENT;
        }
        ld_status::LD_OK
    })
}

/// Sets where the built-in health listener answers `/ready`, `/live` and `/health` (HTTP/1.1,
/// on a thread of the library's, from the run's state): `"127.0.0.1:8081"`, `":8081"` (every
/// IPv4 address), `"[::1]:8081"`, a unix socket path; port 0 lets the kernel pick one
/// (`ld_runner_health_address` tells which). It is taken like `ld_listen`, so an upgrade
/// hands it on and systemd or start_server may pass it in. NULL (the default): no listener.
/// The string is copied. Errors (options unchanged): `LD_NULL_ARGUMENT` when options is NULL;
/// `LD_INVALID_ARGUMENT` for an address `ld_listen` would not take, or one not UTF-8.
#[no_mangle]
pub extern "C" fn ld_options_set_health_address(options: *mut ld_options, address: *const c_char) -> ld_status {
    update(options, |o| {
        if address.is_null() {
            o.health_address = None;
            return ld_status::LD_OK;
        }
        // SAFETY: non-NULL and NUL-terminated per the contract.
        let Ok(address) = unsafe { std::ffi::CStr::from_ptr(address) }.to_str() else {
            return ld_status::LD_INVALID_ARGUMENT;
        };
        o.health_address = Some(address.to_string());
        verdict(options::validate_health_address(address))
    })
}

/// Sets how long the run waits, once close was called, for close (and for serve and shutdown)
/// to return before it gives up on them and returns anyway (`ld_error_abandoned`).
/// Errors (options unchanged): `LD_NULL_ARGUMENT`; `LD_INVALID_ARGUMENT` for 0 or above
/// 86400000 (24 h).
#[no_mangle]
pub extern "C" fn ld_options_set_close_timeout_ms(options: *mut ld_options, timeout_ms: u64) -> ld_status {
    update(options, |o| {
        o.close_timeout = millis(timeout_ms);
        verdict(options::validate_close_timeout(o.close_timeout))
    })
}

/// Replaces the trigger signals with `signals[0..count]` (duplicates are fine). The array is
/// copied. Signals that cannot or must not be trapped are rejected: 0, negatives, above
/// SIGRTMAX, SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGFPE, SIGILL and the C library's reserved
/// real-time signals. An empty list (count 0) means no trigger signal: only `ld_runner_stop`
/// starts lame-duck (as `signals: []` in Python and Node; Go's lameduck refuses it).
/// Errors (options unchanged): `LD_NULL_ARGUMENT` (options NULL, or signals NULL with
/// count > 0); `LD_INVALID_ARGUMENT` for a bad signal.
#[no_mangle]
pub extern "C" fn ld_options_set_signals(options: *mut ld_options, signals: *const c_int, count: usize) -> ld_status {
    update(options, |o| {
        let Some(list) = signal_array(signals, count) else { return ld_status::LD_NULL_ARGUMENT };
        o.signals = list;
        verdict(o.validate_signal_setting())
    })
}

/// Sends log lines to `log_fn(user_data, level, message)` instead of stderr. `user_data` is
/// borrowed: it must stay valid while any runner made from these options exists.
/// Errors: `LD_NULL_ARGUMENT` when options or log_fn is NULL (use
/// `ld_options_disable_logging` to turn logging off).
#[no_mangle]
pub extern "C" fn ld_options_set_logger(options: *mut ld_options, log_fn: ld_log_fn, user_data: *mut c_void) -> ld_status {
    let Some(log_fn) = log_fn else { return ld_status::LD_NULL_ARGUMENT };
    let data = ForeignData(user_data);
    update(options, move |o| {
        o.logger = Some(Arc::new(move |level: Level, message: &str| {
            let level = match level {
                Level::Debug => ld_log_level::LD_LOG_DEBUG,
                Level::Info => ld_log_level::LD_LOG_INFO,
                Level::Warn => ld_log_level::LD_LOG_WARN,
                Level::Error => ld_log_level::LD_LOG_ERROR,
            };
            let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
            let data = data; // the whole ForeignData, not its raw field
                             // SAFETY: a C function pointer the caller registered, with its own user_data.
            unsafe { log_fn(data.0, level, text.as_ptr()) }
        }));
        ld_status::LD_OK
    })
}

/// Turns logging off (Go's `WithoutLogger`, which here does not panic).
/// Errors: `LD_NULL_ARGUMENT`.
#[no_mangle]
pub extern "C" fn ld_options_disable_logging(options: *mut ld_options) -> ld_status {
    update(options, |o| {
        o.logger = None;
        ld_status::LD_OK
    })
}

/// Sets what repeated trigger signals do: one of `LD_REPEAT_FORCE` (default),
/// `LD_REPEAT_IGNORE`, `LD_REPEAT_EXIT`.
/// Errors (options unchanged): `LD_NULL_ARGUMENT`; `LD_INVALID_ARGUMENT` for any other value.
#[no_mangle]
pub extern "C" fn ld_options_set_repeat_signal_policy(options: *mut ld_options, policy: c_int) -> ld_status {
    update(options, |o| {
        o.repeat_signal = match policy {
            0 => RepeatSignalPolicy::Force,
            1 => RepeatSignalPolicy::Ignore,
            2 => RepeatSignalPolicy::ExitNow,
            _ => return ld_status::LD_INVALID_ARGUMENT,
        };
        ld_status::LD_OK
    })
}

/// Calls `state_fn(user_data, old, new)` on every state transition (for health endpoints and
/// metrics). `user_data` is borrowed, as for the logger. NULL `state_fn` removes the observer.
/// Errors: `LD_NULL_ARGUMENT` when options is NULL.
#[no_mangle]
pub extern "C" fn ld_options_set_state_observer(
    options: *mut ld_options,
    state_fn: ld_state_fn,
    user_data: *mut c_void,
) -> ld_status {
    let data = ForeignData(user_data);
    update(options, move |o| {
        o.state_observer = state_fn.map(|f| {
            Arc::new(move |old: crate::State, new: crate::State| {
                let data = data;
                // SAFETY: a C function pointer the caller registered, with its own user_data.
                unsafe { f(data.0, ld_state::from(old), ld_state::from(new)) }
            }) as crate::StateObserver
        });
        ld_status::LD_OK
    })
}

/// When true, the run becomes ready (`LD_STATE_READY`, `ld_runner_wait_ready` returns) only
/// once serve calls `ld_context_ready`, i.e. when it is bound and accepting. When false (the
/// default), as soon as the signal handlers are installed and serve has been called.
/// Errors: `LD_NULL_ARGUMENT`.
#[no_mangle]
pub extern "C" fn ld_options_set_explicit_ready(options: *mut ld_options, explicit_ready: bool) -> ld_status {
    update(options, |o| {
        o.explicit_ready = explicit_ready;
        ld_status::LD_OK
    })
}

/// When false, the library installs no signal handlers: the program catches the signals
/// itself (signalfd, an event loop) and forwards them with `ld_runner_deliver_signal`.
/// Default true.
/// Errors: `LD_NULL_ARGUMENT`.
#[no_mangle]
pub extern "C" fn ld_options_set_install_signal_handlers(options: *mut ld_options, install: bool) -> ld_status {
    update(options, |o| {
        o.signal_owner = if install { options::SignalOwner::Library } else { options::SignalOwner::Host };
        ld_status::LD_OK
    })
}

/// Replaces the upgrade signals (default SIGHUP) with `signals[0..count]`; count 0 turns
/// upgrades by signal off (`ld_runner_upgrade` still works). The same signals are accepted as
/// for `ld_options_set_signals`, and none may also be a trigger signal.
/// Errors (options unchanged): `LD_NULL_ARGUMENT` (options NULL, or signals NULL with
/// count > 0); `LD_INVALID_ARGUMENT` for a bad signal (checked against the trigger signals again by
/// `ld_runner_new`).
#[no_mangle]
pub extern "C" fn ld_options_set_upgrade_signals(options: *mut ld_options, signals: *const c_int, count: usize) -> ld_status {
    update(options, |o| {
        let Some(list) = signal_array(signals, count) else { return ld_status::LD_NULL_ARGUMENT };
        o.upgrade_signals = list;
        verdict(options::validate_upgrade_signals(&o.upgrade_signals, &o.signals))
    })
}

/// Sets how long an upgrade's new process has to report ready before it is terminated and
/// the upgrade fails (the old process goes on serving). Default 60000.
/// Errors (options unchanged): `LD_NULL_ARGUMENT`; `LD_INVALID_ARGUMENT` for 0 or above
/// 86400000 (24 h).
#[no_mangle]
pub extern "C" fn ld_options_set_upgrade_timeout_ms(options: *mut ld_options, timeout_ms: u64) -> ld_status {
    update(options, |o| {
        o.upgrade_timeout = millis(timeout_ms);
        verdict(options::validate_upgrade_timeout(o.upgrade_timeout))
    })
}

/// Sets how long a process started by an upgrade waits, once ready, for `ld_listen` calls to
/// take every listener the previous generation handed over, before it reports ready. When the
/// time is up the upgrade fails (the old process goes on serving) with a message naming the
/// listeners nobody took. Default 10000.
/// Errors (options unchanged): `LD_NULL_ARGUMENT`; `LD_INVALID_ARGUMENT` for 0 or above
/// 86400000 (24 h).
#[no_mangle]
pub extern "C" fn ld_options_set_listen_timeout_ms(options: *mut ld_options, timeout_ms: u64) -> ld_status {
    update(options, |o| {
        o.listen_timeout = millis(timeout_ms);
        verdict(options::validate_listen_timeout(o.listen_timeout))
    })
}

/// Sets how long the old process keeps serving beside a new one that reported ready before it
/// hands over and enters lame-duck. A new process that exits within this window fails the
/// upgrade and the old process simply goes on serving. 0 hands over at once. Default 1000.
/// Errors (options unchanged): `LD_NULL_ARGUMENT`; `LD_INVALID_ARGUMENT` above 60000 (1 min).
#[no_mangle]
pub extern "C" fn ld_options_set_upgrade_confirm_ms(options: *mut ld_options, window_ms: u64) -> ld_status {
    update(options, |o| {
        o.upgrade_confirm = millis(window_ms);
        verdict(options::validate_upgrade_confirm(o.upgrade_confirm))
    })
}

/// Allows upgrades of a process that has no listener known to lameduck (a worker with no
/// sockets). Off by default: such an upgrade fails with `LD_UPGRADE_FAILED`, because a server
/// that binds its own port would start a successor that cannot bind it; bind with `ld_listen`
/// (or adopt the socket with `ld_listen_adopt`) instead.
/// Errors: `LD_NULL_ARGUMENT`.
#[no_mangle]
pub extern "C" fn ld_options_set_upgrade_without_listeners(options: *mut ld_options, allow: bool) -> ld_status {
    update(options, |o| {
        o.upgrade_without_listeners = allow;
        ld_status::LD_OK
    })
}

/// Sets the connection limit the run's gate starts with: at most `max` connections admitted
/// through `ld_context_acquire_connection` at once (0, the default: unlimited). Change it while
/// the server runs with `ld_runner_set_max_connections`.
/// Errors (options unchanged): `LD_NULL_ARGUMENT`; `LD_INVALID_ARGUMENT` above 2147483647.
#[no_mangle]
pub extern "C" fn ld_options_set_max_connections(options: *mut ld_options, max: u64) -> ld_status {
    update(options, |o| {
        o.max_connections = Some(usize::try_from(max).unwrap_or(usize::MAX)).filter(|&n| n > 0);
        verdict(options::validate_max_connections(o.max_connections))
    })
}

/// Sets what an upgrade starts: `program` (a path, relative to the directory the process
/// started in, or a bare name looked up in `PATH` at each upgrade) with the argument vector
/// `argv[0..argc]` (`argv[0]` included; all copied). NULL `program` restores the default: the
/// program and arguments this process was started with.
/// Errors (options unchanged): `LD_NULL_ARGUMENT` (options NULL, argv NULL with a program, or
/// a NULL entry);
/// `LD_INVALID_ARGUMENT` when `argc` is 0 or `program` is empty.
#[no_mangle]
pub extern "C" fn ld_options_set_upgrade_command(
    options: *mut ld_options,
    program: *const c_char,
    argv: *const *const c_char,
    argc: usize,
) -> ld_status {
    use std::os::unix::ffi::OsStrExt;
    update(options, |o| {
        if program.is_null() {
            o.upgrade_command = None;
            return ld_status::LD_OK;
        }
        if argv.is_null() && argc > 0 {
            return ld_status::LD_NULL_ARGUMENT;
        }
        // SAFETY: non-NULL and NUL-terminated per the contract.
        let program = std::ffi::OsStr::from_bytes(unsafe { std::ffi::CStr::from_ptr(program) }.to_bytes());
        let mut args = Vec::with_capacity(argc);
        for i in 0..argc {
            // SAFETY: the caller passes `argc` readable pointers at `argv` (checked non-NULL).
            let arg = unsafe { *argv.add(i) };
            if arg.is_null() {
                return ld_status::LD_NULL_ARGUMENT;
            }
            // SAFETY: non-NULL and NUL-terminated per the contract.
            args.push(std::ffi::OsStr::from_bytes(unsafe { std::ffi::CStr::from_ptr(arg) }.to_bytes()).to_os_string());
        }
        let command = options::UpgradeCommand { program: program.into(), args };
        let status = verdict(options::validate_upgrade_command(&command));
        o.upgrade_command = Some(command);
        status
    })
}

/// Sets a pid file (copied), written atomically (temporary file + rename) by whichever
/// process is the current generation once its run is ready, and removed when the last
/// generation stops. NULL removes the setting.
/// Errors (options unchanged): `LD_NULL_ARGUMENT` when options is NULL; `LD_INVALID_ARGUMENT`
/// for "".
#[no_mangle]
pub extern "C" fn ld_options_set_pid_file(options: *mut ld_options, path: *const c_char) -> ld_status {
    use std::os::unix::ffi::OsStrExt;
    update(options, |o| {
        if path.is_null() {
            o.pid_file = None;
            return ld_status::LD_OK;
        }
        // SAFETY: non-NULL and NUL-terminated per the contract.
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes()));
        o.pid_file = Some(path.into());
        verdict(options::validate_pid_file(path))
    })
}
