//! `ld_server` (three C hooks and their `user_data`) and `ld_context` (what hooks can ask).

use std::ffi::{c_int, c_void};
use std::sync::Arc;
use std::time::Duration;

use super::boundary::{guard, guard_result, null_arg};
use super::error::{ld_error, ld_status};
use crate::context::Context;
use crate::error::HookError;
use crate::server::Server;

/// What a `shutdown` hook returns when its deadline passed before it finished (Go's
/// `context.DeadlineExceeded`): the runner then calls close and reports `LD_EXPIRED`.
/// Equal to -ETIMEDOUT on Linux. Any other non-zero return is the hook's own error code.
pub const LD_DEADLINE_EXCEEDED: c_int = -110;
const _: () = assert!(LD_DEADLINE_EXCEEDED == crate::DEADLINE_EXCEEDED);

/// The longest period, drain delay or close timeout accepted, in milliseconds (24 h).
pub const LD_MAX_DURATION_MS: u64 = 86_400_000;
const _: () = assert!(LD_MAX_DURATION_MS as u128 == crate::MAX_DURATION.as_millis());

/// The context of a run, passed to serve and shutdown. Borrowed: valid only until the hook it
/// was passed to returns (serve may hand it to its own threads until serve returns). All
/// `ld_context_*` functions may be called from any thread.
pub struct ld_context {
    ctx: Context,
}

/// The serve hook: serve until shutdown or close makes you return. Return 0 when stopped as
/// asked; any other value is your error code and comes back as `LD_FAILED` with that code.
/// Called once per run on a thread the runner owns ("lameduck-serve").
pub type ld_serve_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, ctx: *const ld_context) -> c_int>;

/// The shutdown hook: stop accepting, finish in-flight work, return 0 before the deadline
/// (`ld_context_remaining_ms`). Return `LD_DEADLINE_EXCEEDED` if time ran out (close is then
/// called); any other non-zero value is your error code (`LD_SHUTDOWN_FAILED`). Called at most
/// once per run, on its own thread ("lameduck-shutdown"), while serve is still running.
/// A shutdown that ignores its deadline does not hang the run: close is called at the deadline.
pub type ld_shutdown_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, ctx: *const ld_context) -> c_int>;

/// The close hook: close everything now, so serve returns. Called at most once per run, on
/// its own thread ("lameduck-close"), when the period expired or a repeated signal forced it.
/// Its return code is reported with `LD_EXPIRED`/`LD_FORCED` (`ld_error_code`).
pub type ld_close_fn = Option<unsafe extern "C" fn(user_data: *mut c_void) -> c_int>;

/// Frees a server's `user_data` once nothing uses it any more.
pub type ld_free_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// A server: three hooks and a `user_data` pointer passed to each. Made by `ld_server_new`,
/// freed by `ld_server_free`. Immutable and thread-safe; one server may back several runners
/// (one after another, or at once if your hooks allow it).
pub struct ld_server {
    pub(crate) inner: Arc<CServer>,
}

pub(crate) struct CServer {
    serve: unsafe extern "C" fn(*mut c_void, *const ld_context) -> c_int,
    shutdown: unsafe extern "C" fn(*mut c_void, *const ld_context) -> c_int,
    close: unsafe extern "C" fn(*mut c_void) -> c_int,
    user_data: *mut c_void,
    free_user_data: ld_free_fn,
}

// SAFETY: the header documents that the hooks are called on runner-owned threads, possibly
// concurrently (serve with shutdown, close with both), with this `user_data`. By registering
// them the caller promises that this is safe; we never touch `user_data` ourselves.
unsafe impl Send for CServer {}
// SAFETY: as above.
unsafe impl Sync for CServer {}

impl Drop for CServer {
    fn drop(&mut self) {
        if let Some(free) = self.free_user_data {
            // SAFETY: called exactly once, when the last reference (server handle, runners,
            // hook threads) is gone, as the header promises.
            unsafe { free(self.user_data) }
        }
    }
}

fn hook_result(code: c_int) -> Result<(), HookError> {
    match code {
        0 => Ok(()),
        LD_DEADLINE_EXCEEDED => Err(HookError::deadline_exceeded()),
        other => Err(HookError::new(other, String::new())),
    }
}

impl Server for CServer {
    fn serve(&self, ctx: &Context) -> Result<(), HookError> {
        let c = ld_context { ctx: ctx.clone() };
        // SAFETY: a hook the caller registered, with its user_data; `c` outlives the call.
        hook_result(unsafe { (self.serve)(self.user_data, &c) })
    }

    fn shutdown(&self, ctx: &Context) -> Result<(), HookError> {
        let c = ld_context { ctx: ctx.clone() };
        // SAFETY: as above.
        hook_result(unsafe { (self.shutdown)(self.user_data, &c) })
    }

    fn close(&self) -> Result<(), HookError> {
        // SAFETY: as above.
        hook_result(unsafe { (self.close)(self.user_data) })
    }
}

/// Makes a server from three hooks and a `user_data` pointer.
///
/// Ownership: on success the server owns `user_data` and calls `free_user_data(user_data)`
/// (if not NULL) exactly once, when the server has been freed and no runner or hook uses it
/// any more (a hook abandoned after the close timeout keeps it alive until it returns).
/// On failure nothing is taken and `free_user_data` is not called.
/// Errors: `LD_NULL_ARGUMENT` when a hook or `server_out` is NULL (the message names it).
#[no_mangle]
pub extern "C" fn ld_server_new(
    serve: ld_serve_fn,
    shutdown: ld_shutdown_fn,
    close: ld_close_fn,
    user_data: *mut c_void,
    free_user_data: ld_free_fn,
    server_out: *mut *mut ld_server,
    error_out: *mut *mut ld_error,
) -> ld_status {
    guard_result(error_out, || {
        if server_out.is_null() {
            return Err(null_arg("server_out"));
        }
        let serve = serve.ok_or_else(|| null_arg("serve hook"))?;
        let shutdown = shutdown.ok_or_else(|| null_arg("shutdown hook"))?;
        let close = close.ok_or_else(|| null_arg("close hook"))?;
        let server = CServer { serve, shutdown, close, user_data, free_user_data };
        let handle = Box::into_raw(Box::new(ld_server { inner: Arc::new(server) }));
        // SAFETY: checked non-NULL above; the caller passes a writable `ld_server **`.
        unsafe { *server_out = handle };
        Ok(())
    })
}

/// Releases the caller's reference to a server. Runners made from it keep working; the
/// `user_data` destructor runs when the last of them is gone. NULL does nothing.
///
/// # Safety
/// `server` must be NULL or from `ld_server_new`, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ld_server_free(server: *mut ld_server) {
    guard((), || {
        if !server.is_null() {
            // SAFETY: per the contract, it came from Box::into_raw in ld_server_new.
            drop(unsafe { Box::from_raw(server) });
        }
    })
}

pub(super) fn with_context<T>(ctx: *const ld_context, absent: T, f: impl FnOnce(&Context) -> T) -> T {
    // SAFETY: NULL is checked; otherwise a context passed to a hook that has not returned.
    match unsafe { ctx.as_ref() } {
        Some(c) => f(&c.ctx),
        None => absent,
    }
}

/// Milliseconds left until the lame-duck deadline (rounded up, so 0 means "time is up"); -1
/// while there is no deadline yet (in serve, before lame-duck). NULL gives 0.
#[no_mangle]
pub extern "C" fn ld_context_remaining_ms(ctx: *const ld_context) -> i64 {
    guard(0, || {
        with_context(ctx, 0, |c| match c.remaining() {
            None => -1,
            Some(left) => i64::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX),
        })
    })
}

/// True once the deadline has passed or a repeated signal forced the close: stop now.
/// NULL gives true.
#[no_mangle]
pub extern "C" fn ld_context_done(ctx: *const ld_context) -> bool {
    guard(true, || with_context(ctx, true, Context::is_done))
}

/// Blocks until the context is done or `timeout_ms` passes (a negative timeout waits until
/// done, which never happens before lame-duck). Returns `ld_context_done`. NULL gives true
/// at once.
#[no_mangle]
pub extern "C" fn ld_context_wait(ctx: *const ld_context, timeout_ms: i64) -> bool {
    guard(true, || {
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        with_context(ctx, true, |c| c.wait(timeout))
    })
}

/// Reports that serve is bound and accepting. With `ld_options_set_explicit_ready(true)` the
/// run becomes ready only after this call; otherwise it is harmless. Any thread.
/// Errors: `LD_NULL_ARGUMENT`.
#[no_mangle]
pub extern "C" fn ld_context_ready(ctx: *const ld_context) -> ld_status {
    guard(ld_status::LD_PANIC, || {
        with_context(ctx, ld_status::LD_NULL_ARGUMENT, |c| {
            c.ready();
            ld_status::LD_OK
        })
    })
}
