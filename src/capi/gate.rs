//! The connection gate in C: `ld_permit`, the limit and the counts (see `crate::gate`).
//!
//! A C server acquires a permit before each `accept(2)` and releases it when the connection
//! is closed; while the gate is full it does not accept, so clients wait in the kernel backlog.

use std::ffi::c_int;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::boundary::{guard, guard_result, null_arg};
use super::error::{ld_error, ld_status};
use super::runner::{ld_runner, with_runner};
use super::server::{ld_context, with_context};
use crate::error::Error;
use crate::gate::{Gate, GatePhase, GateStats, Permit};

/// Where the gate stands in the run.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ld_gate_phase {
    /// Serving (the drain delay included): admits up to the limit.
    LD_GATE_PHASE_OPEN = 0,
    /// Lame-duck (shutdown was called): admits only connections already in the accept queue
    /// (`ld_context_acquire_queued_connection`).
    LD_GATE_PHASE_DRAINING = 1,
    /// close was called, or the run is over: admits nothing.
    LD_GATE_PHASE_CLOSED = 2,
}

/// The gate's counts, each read without a lock.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ld_connection_stats {
    /// The limit; 0 when unlimited.
    pub limit: u64,
    /// Connections admitted and not yet released.
    pub admitted: u64,
    /// Callers blocked in an acquire now.
    pub waiting: u64,
    /// Connections admitted since the run was made.
    pub total: u64,
    /// The most connections admitted at once.
    pub peak: u64,
    /// Open, draining or closed.
    pub phase: ld_gate_phase,
}

impl From<GateStats> for ld_connection_stats {
    fn from(s: GateStats) -> Self {
        ld_connection_stats {
            limit: s.limit.unwrap_or(0) as u64,
            admitted: s.admitted as u64,
            waiting: s.waiting as u64,
            total: s.total,
            peak: s.peak as u64,
            phase: match s.phase {
                GatePhase::Open => ld_gate_phase::LD_GATE_PHASE_OPEN,
                GatePhase::Draining => ld_gate_phase::LD_GATE_PHASE_DRAINING,
                GatePhase::Closed => ld_gate_phase::LD_GATE_PHASE_CLOSED,
            },
        }
    }
}

/// One admitted connection's slot. Made by `ld_context_acquire_connection` (or the queued
/// form), given back by `ld_permit_release`. May move to any thread.
pub struct ld_permit {
    permit: Permit,
}

fn gate_of_runner(runner: *const ld_runner) -> Result<Arc<Gate>, Error> {
    with_runner(runner, Err(null_arg("runner")), |r| Ok(Arc::clone(r.gate())))
}

fn gate_of_context(ctx: *const ld_context) -> Result<Arc<Gate>, Error> {
    with_context(ctx, Err(null_arg("ctx")), |c| Ok(Arc::clone(c.gate())))
}

fn set_limit(gate: Result<Arc<Gate>, Error>, max: u64, free_before_out: *mut i64) -> Result<(), Error> {
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let before = gate?.set_limit(Some(limit))?;
    if !free_before_out.is_null() {
        // SAFETY: checked non-NULL; the caller passes a writable int64_t.
        unsafe { *free_before_out = before.map_or(-1, |n| n as i64) };
    }
    Ok(())
}

fn write_stats(gate: Result<Arc<Gate>, Error>, stats_out: *mut ld_connection_stats) -> ld_status {
    let gate = match gate {
        Ok(gate) => gate,
        Err(_) => return ld_status::LD_NULL_ARGUMENT,
    };
    if stats_out.is_null() {
        return ld_status::LD_NULL_ARGUMENT;
    }
    // SAFETY: checked non-NULL; the caller passes a writable ld_connection_stats.
    unsafe { *stats_out = gate.stats().into() };
    ld_status::LD_OK
}

/// Sets the connection limit while the server runs (or before `ld_runner_run`): `max`
/// connections at once, 0 for unlimited. Raising admits waiting connections at once; lowering
/// closes none, and no new one is admitted until fewer than `max` are open. Writes the free
/// slots before the change to `free_before_out` (may be NULL; -1 when it was unlimited), as
/// nserv's `MaxConns(n)`. Any thread, a hook included; not async-signal-safe (it takes a lock:
/// from a signal handler, wake your own loop and call it there).
/// Errors (nothing changes): `LD_NULL_ARGUMENT`; `LD_INVALID_ARGUMENT` above 2147483647.
#[no_mangle]
pub extern "C" fn ld_runner_set_max_connections(
    runner: *const ld_runner,
    max: u64,
    free_before_out: *mut i64,
    error_out: *mut *mut ld_error,
) -> ld_status {
    guard_result(error_out, || set_limit(gate_of_runner(runner), max, free_before_out))
}

/// `ld_runner_set_max_connections` for a hook, which has the context rather than the runner.
#[no_mangle]
pub extern "C" fn ld_context_set_max_connections(
    ctx: *const ld_context,
    max: u64,
    free_before_out: *mut i64,
    error_out: *mut *mut ld_error,
) -> ld_status {
    guard_result(error_out, || set_limit(gate_of_context(ctx), max, free_before_out))
}

/// Writes the gate's counts (limit, admitted, waiting, total, peak, phase) to `*stats_out`.
/// Lock-free reads; any thread, any time. Errors: `LD_NULL_ARGUMENT`.
#[no_mangle]
pub extern "C" fn ld_runner_connection_stats(runner: *const ld_runner, stats_out: *mut ld_connection_stats) -> ld_status {
    guard(ld_status::LD_PANIC, || write_stats(gate_of_runner(runner), stats_out))
}

/// `ld_runner_connection_stats` through a hook's context.
#[no_mangle]
pub extern "C" fn ld_context_connection_stats(ctx: *const ld_context, stats_out: *mut ld_connection_stats) -> ld_status {
    guard(ld_status::LD_PANIC, || write_stats(gate_of_context(ctx), stats_out))
}

fn acquire(
    ctx: *const ld_context,
    timeout_ms: i64,
    permit_out: *mut *mut ld_permit,
    error_out: *mut *mut ld_error,
    queued: bool,
) -> ld_status {
    guard_result(error_out, || {
        if permit_out.is_null() {
            return Err(null_arg("permit_out"));
        }
        // SAFETY: checked non-NULL; NULL until a permit is made, whatever happens below.
        unsafe { *permit_out = std::ptr::null_mut() };
        let gate = gate_of_context(ctx)?;
        let permit = match (timeout_ms, queued) {
            (0, false) => gate.try_acquire(),
            (0, true) => gate.try_acquire_queued(),
            (t, queued) => {
                let deadline = u64::try_from(t).ok().and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
                if queued {
                    gate.acquire_queued(deadline)
                } else {
                    gate.acquire(deadline)
                }
            }
        }?;
        // SAFETY: checked non-NULL above.
        unsafe { *permit_out = Box::into_raw(Box::new(ld_permit { permit })) };
        Ok(())
    })
}

/// Admits one new connection: call it *before* `accept(2)`, and accept only when it returns
/// `LD_OK`. Waits for a free slot for at most `timeout_ms` (negative: without limit; 0: does
/// not wait). On success writes a permit to `*permit_out` (always written: NULL on failure);
/// give it back with `ld_permit_release` when the connection is closed.
///
/// Any thread, while the context is valid. In lame-duck it returns `LD_GATE_CLOSED` at once,
/// including to a caller already waiting: an accept loop blocked on a full gate stops promptly.
/// Errors: `LD_GATE_CLOSED`; `LD_TIMEOUT` (no slot within `timeout_ms`); `LD_BUSY` (full, with
/// `timeout_ms` 0); `LD_NULL_ARGUMENT`.
#[no_mangle]
pub extern "C" fn ld_context_acquire_connection(
    ctx: *const ld_context,
    timeout_ms: i64,
    permit_out: *mut *mut ld_permit,
    error_out: *mut *mut ld_error,
) -> ld_status {
    acquire(ctx, timeout_ms, permit_out, error_out, false)
}

/// `ld_context_acquire_connection` for a connection already waiting in the accept queue (or
/// taken from it by `ld_listen_shut`): it also admits (within the limit) during lame-duck, so
/// that a shutdown that drains its queue answers those clients instead of resetting them.
/// `LD_GATE_CLOSED` once close is called.
#[no_mangle]
pub extern "C" fn ld_context_acquire_queued_connection(
    ctx: *const ld_context,
    timeout_ms: i64,
    permit_out: *mut *mut ld_permit,
    error_out: *mut *mut ld_error,
) -> ld_status {
    acquire(ctx, timeout_ms, permit_out, error_out, true)
}

/// Records `fd` as the permit's connection, so `ld_runner_open_connections` lists it (a close
/// hook can then `shutdown(2)` what is still open). Release the permit before you `close(2)`
/// the descriptor. Errors: `LD_NULL_ARGUMENT`.
#[no_mangle]
pub extern "C" fn ld_permit_set_fd(permit: *mut ld_permit, fd: c_int) -> ld_status {
    guard(ld_status::LD_PANIC, || {
        // SAFETY: NULL is checked; otherwise a live permit from an acquire.
        match unsafe { permit.as_mut() } {
            Some(p) => {
                p.permit.attach_fd(fd);
                ld_status::LD_OK
            }
            None => ld_status::LD_NULL_ARGUMENT,
        }
    })
}

/// Gives a permit's slot back and frees it, then sets `*permit` to NULL, so a second call with
/// the same variable does nothing (release is idempotent). `permit` NULL, or `*permit` NULL,
/// does nothing. Any thread. When the run is in lame-duck and this was the last open
/// connection, the run's shutdown phase may end now.
///
/// # Safety
/// `*permit` must be NULL or a permit from an acquire that no other variable still releases.
#[no_mangle]
pub unsafe extern "C" fn ld_permit_release(permit: *mut *mut ld_permit) {
    guard((), || {
        if permit.is_null() {
            return;
        }
        // SAFETY: the caller passes a valid `ld_permit **`; we take the pointer out of it.
        let taken = unsafe { std::mem::replace(&mut *permit, std::ptr::null_mut()) };
        if !taken.is_null() {
            // SAFETY: per the contract, from Box::into_raw in an acquire, released once.
            drop(unsafe { Box::from_raw(taken) });
        }
    })
}

fn open_connections(gate: Result<Arc<Gate>, Error>, fds_out: *mut c_int, capacity: usize) -> usize {
    let Ok(gate) = gate else { return 0 };
    let fds = gate.open_fds();
    if !fds_out.is_null() {
        for (i, fd) in fds.iter().take(capacity).enumerate() {
            // SAFETY: the caller passes `capacity` writable ints at `fds_out`.
            unsafe { *fds_out.add(i) = *fd };
        }
    }
    fds.len()
}

/// Writes the descriptors of the open connections whose permits were tagged
/// (`ld_permit_set_fd`), in admission order, to `fds_out[0..capacity]` (may be NULL with
/// capacity 0), and returns how many there are (which may exceed `capacity`: call again with
/// more room). For a close hook that must cut what is still open. NULL runner gives 0.
#[no_mangle]
pub extern "C" fn ld_runner_open_connections(runner: *const ld_runner, fds_out: *mut c_int, capacity: usize) -> usize {
    guard(0, || open_connections(gate_of_runner(runner), fds_out, capacity))
}

/// `ld_runner_open_connections` through a hook's context.
#[no_mangle]
pub extern "C" fn ld_context_open_connections(ctx: *const ld_context, fds_out: *mut c_int, capacity: usize) -> usize {
    guard(0, || open_connections(gate_of_context(ctx), fds_out, capacity))
}
