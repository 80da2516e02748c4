//! Status codes and the `ld_error` object.

use std::ffi::{c_char, c_int, CString};

use super::boundary::guard;
use crate::error::{Error, ErrorKind};

/// The result of an `ld_*` call or of a run. 0 is success; numbers are never reused.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ld_status {
    /// Success.
    LD_OK = 0,
    /// The lame-duck period ran out (or `shutdown` returned `LD_DEADLINE_EXCEEDED`, or `serve`
    /// was still running at the deadline) and `close` was called. Go's `Expired`.
    /// `ld_error_code` is close's return code (0 when close succeeded).
    LD_EXPIRED = 1,
    /// `serve` returned non-zero (Go's `Failed`). `ld_error_code` is serve's return code.
    LD_FAILED = 2,
    /// `shutdown` returned its own non-zero code (not `LD_DEADLINE_EXCEEDED`).
    /// `ld_error_code` is that code.
    LD_SHUTDOWN_FAILED = 3,
    /// A repeated trigger signal cut the period short and `close` was called.
    /// `ld_error_code` is close's return code.
    LD_FORCED = 4,
    /// The runner was stopped before `ld_runner_run`; no hook was called.
    LD_CANCELED = 5,
    /// An argument or option has an unusable value; the message names it.
    LD_INVALID_ARGUMENT = 6,
    /// A required pointer argument was NULL; the message names it.
    LD_NULL_ARGUMENT = 7,
    /// The runner is running, or has already run (a runner runs once); or an upgrade is
    /// already in flight (`ld_runner_upgrade`); or the connection gate is full
    /// (`ld_context_acquire_connection` with a zero timeout).
    LD_BUSY = 8,
    /// A panic inside the library was caught (a bug: please report it).
    LD_PANIC = 9,
    /// The signal handlers could not be installed.
    LD_SIGNAL_SETUP = 10,
    /// `ld_runner_wait_ready` timed out, or `ld_listen_drain` found connections still queued
    /// at its timeout.
    LD_TIMEOUT = 11,
    /// `ld_runner_wait_ready`: the run ended without ever becoming ready.
    LD_NOT_RUNNING = 12,
    /// The operating system refused a thread or a pipe.
    LD_SYSTEM = 13,
    /// `ld_runner_upgrade`: the new process could not start, exited, or was not ready within
    /// the upgrade timeout. It was terminated; the old process goes on serving.
    LD_UPGRADE_FAILED = 14,
    /// The connection gate admits no new connection: lame-duck has begun
    /// (`ld_context_acquire_connection`).
    LD_GATE_CLOSED = 15,
}

/// Pairs each `ld_status` with its [`ErrorKind`]: the conversion is an exhaustive `match` (a new
/// kind without a C status does not compile), and the numbers are checked equal at compile
/// time, so the C enum above cannot drift from the core's table.
macro_rules! statuses_of_kinds {
    ($($kind:ident => $status:ident),* $(,)?) => {
        impl ld_status {
            pub(crate) const fn from_kind(kind: ErrorKind) -> ld_status {
                match kind {
                    $( ErrorKind::$kind => ld_status::$status, )*
                }
            }
        }
        const _: () = {
            $( assert!(ErrorKind::$kind.code() == ld_status::$status as i32); )*
        };
    };
}

statuses_of_kinds! {
    Expired => LD_EXPIRED,
    Failed => LD_FAILED,
    ShutdownFailed => LD_SHUTDOWN_FAILED,
    Forced => LD_FORCED,
    Canceled => LD_CANCELED,
    InvalidArgument => LD_INVALID_ARGUMENT,
    NullArgument => LD_NULL_ARGUMENT,
    Busy => LD_BUSY,
    Panic => LD_PANIC,
    SignalSetup => LD_SIGNAL_SETUP,
    Timeout => LD_TIMEOUT,
    NotRunning => LD_NOT_RUNNING,
    System => LD_SYSTEM,
    UpgradeFailed => LD_UPGRADE_FAILED,
    GateClosed => LD_GATE_CLOSED,
}

impl ld_status {
    pub(crate) fn of(result: Result<(), Error>) -> ld_status {
        match result {
            Ok(()) => ld_status::LD_OK,
            Err(e) => ld_status::from_kind(e.kind()),
        }
    }
}

/// Details of a failure: the status, the failing hook's own return code, a message, and
/// whether a hook was abandoned. Made by the library (through `error_out` parameters);
/// free it with `ld_error_free`. Immutable: may be read from any thread.
pub struct ld_error {
    status: ld_status,
    code: c_int,
    message: CString,
    abandoned: bool,
}

/// Writes `error` (or NULL) to `error_out` if the caller gave one.
pub(crate) fn write_error(error_out: *mut *mut ld_error, error: Option<Error>) {
    if error_out.is_null() {
        return;
    }
    let boxed = error.map_or(std::ptr::null_mut(), |e| {
        let message = CString::new(e.message().replace('\0', " ")).unwrap_or_default();
        Box::into_raw(Box::new(ld_error {
            status: ld_status::from_kind(e.kind()),
            code: e.code(),
            message,
            abandoned: e.abandoned(),
        }))
    });
    // SAFETY: the caller passes either NULL (checked above) or a valid `ld_error **`.
    unsafe { *error_out = boxed };
}

fn with_error<T>(error: *const ld_error, absent: T, f: impl FnOnce(&ld_error) -> T) -> T {
    // SAFETY: NULL is checked; otherwise the caller passes an `ld_error` made by this library
    // and not yet freed.
    match unsafe { error.as_ref() } {
        Some(e) => f(e),
        None => absent,
    }
}

/// The error's status (never `LD_OK` for a real error). NULL gives `LD_OK`: no error.
#[no_mangle]
pub extern "C" fn ld_error_status(error: *const ld_error) -> ld_status {
    guard(ld_status::LD_PANIC, || with_error(error, ld_status::LD_OK, |e| e.status))
}

/// The failing hook's own return code: serve's for `LD_FAILED`, shutdown's for
/// `LD_SHUTDOWN_FAILED`, close's for `LD_EXPIRED`/`LD_FORCED` (0 when close succeeded or was
/// not called). 0 for other statuses and for NULL.
#[no_mangle]
pub extern "C" fn ld_error_code(error: *const ld_error) -> c_int {
    guard(0, || with_error(error, 0, |e| e.code))
}

/// The human-readable message (Go's texts, e.g. `Lame-duck period has expired + close hook
/// returned 3`). Owned by `error`: valid until `ld_error_free(error)`. NULL gives "".
#[no_mangle]
pub extern "C" fn ld_error_message(error: *const ld_error) -> *const c_char {
    guard(c"".as_ptr(), || with_error(error, c"".as_ptr(), |e| e.message.as_ptr()))
}

/// True when a hook did not return within the close timeout and was left running on its
/// thread (that thread, and the server's `user_data`, stay alive until the hook returns).
/// NULL gives false.
#[no_mangle]
pub extern "C" fn ld_error_abandoned(error: *const ld_error) -> bool {
    guard(false, || with_error(error, false, |e| e.abandoned))
}

/// Frees an error. NULL does nothing.
///
/// # Safety
/// `error` must be NULL or an error from this library not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ld_error_free(error: *mut ld_error) {
    guard((), || {
        if !error.is_null() {
            // SAFETY: per the contract above, `error` came from Box::into_raw in write_error.
            drop(unsafe { Box::from_raw(error) });
        }
    })
}

/// Static English text for a status (any int; unknown values give "unknown status").
/// Never NULL, never to be freed.
#[no_mangle]
pub extern "C" fn ld_status_str(status: c_int) -> *const c_char {
    guard(c"unknown status".as_ptr(), || {
        let text = match ErrorKind::from_code(status) {
            _ if status == ld_status::LD_OK as c_int => c"ok",
            Some(kind) => kind.description(),
            None => c"unknown status",
        };
        text.as_ptr()
    })
}
