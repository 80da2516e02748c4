//! Health answers for a route on the server's own port, and where the built-in health
//! listener listens (see [`crate::health`]).

use std::ffi::{c_char, c_int, CStr};

use super::boundary::guard;
use super::error::ld_status;
use super::runner::{ld_runner, with_runner};

/// Copies `text` into `buffer[0..size]` as a NUL-terminated string, truncated if it must be
/// (as `snprintf`); `*len_out` (if not NULL) gets its whole length without the NUL.
fn write_text(text: &str, buffer: *mut c_char, size: usize, len_out: *mut usize) {
    if !len_out.is_null() {
        // SAFETY: checked non-NULL; the caller passes a writable size_t.
        unsafe { *len_out = text.len() };
    }
    if buffer.is_null() || size == 0 {
        return;
    }
    let n = text.len().min(size - 1);
    // SAFETY: the caller passes `size` writable bytes at `buffer`; we write n + 1 <= size.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buffer.cast::<u8>(), n);
        *buffer.add(n) = 0;
    }
}

/// The health answer for the request path `path` (`"/ready"`, `"/live"`, `"/health"`; a query
/// string is ignored; any other path is 404), for serving it on your own port: the same
/// answers as the built-in listener (`ld_options_set_health_address`). `*status_out` gets the
/// HTTP status (200, 503 or 404); the body (a line of text, or JSON for `/health`:
/// `{"state":"READY","ready":true,"live":true,"pid":…,"generation":1,"connections":{…}}`) is
/// copied into `body[0..body_size]`, NUL-terminated and truncated like `snprintf`, and its
/// whole length goes to `*body_len_out` (either may be NULL/0 to skip the body). `/ready`
/// answers count as probes for the adaptive drain (`ld_options_set_drain_quiet_ms`).
/// Any thread, any time, before, during or after the run; never blocks (not async-signal-safe:
/// it formats into memory it allocates). A body is `text/plain; charset=utf-8`, or
/// `application/json` for `/health`.
/// Errors: `LD_NULL_ARGUMENT` when runner, path or status_out is NULL.
#[no_mangle]
pub extern "C" fn ld_runner_health(
    runner: *const ld_runner,
    path: *const c_char,
    status_out: *mut c_int,
    body: *mut c_char,
    body_size: usize,
    body_len_out: *mut usize,
) -> ld_status {
    guard(ld_status::LD_PANIC, || {
        if path.is_null() || status_out.is_null() {
            return ld_status::LD_NULL_ARGUMENT;
        }
        with_runner(runner, ld_status::LD_NULL_ARGUMENT, |r| {
            // SAFETY: non-NULL and NUL-terminated per the contract.
            let path = unsafe { CStr::from_ptr(path) }.to_string_lossy();
            let report = r.health(&path);
            // SAFETY: checked non-NULL; the caller passes a writable int.
            unsafe { *status_out = c_int::from(report.status) };
            write_text(&report.body, body, body_size, body_len_out);
            ld_status::LD_OK
        })
    })
}

/// Writes where the built-in health listener listens (`"127.0.0.1:8081"`, with the port the
/// kernel picked for port 0) into `buffer[0..size]`, NUL-terminated and truncated like
/// `snprintf`; its whole length goes to `*len_out` (may be NULL). Available from when the run
/// has started it (before `ready`) until the run ends. Any thread.
/// Errors: `LD_NULL_ARGUMENT` when runner is NULL; `LD_NOT_RUNNING` when there is no health
/// listener (none configured, or the run has not started it or is over).
#[no_mangle]
pub extern "C" fn ld_runner_health_address(
    runner: *const ld_runner,
    buffer: *mut c_char,
    size: usize,
    len_out: *mut usize,
) -> ld_status {
    guard(ld_status::LD_PANIC, || {
        with_runner(runner, ld_status::LD_NULL_ARGUMENT, |r| match r.health_address() {
            Some(address) => {
                write_text(&address, buffer, size, len_out);
                ld_status::LD_OK
            }
            None => ld_status::LD_NOT_RUNNING,
        })
    })
}
