//! # lameduck
//!
//! Coordinated lame-duck shutdown for any server, after Go's `toolman.org/net/lameduck`:
//! [`Runner::run`] runs `serve`; on the first trigger signal (SIGINT or SIGTERM by default) or
//! [`Runner::stop`] it optionally drains (keeps serving while reporting not ready), then calls
//! `shutdown` with a deadline of now + the lame-duck period (3 s by default); when `shutdown`
//! runs out of time, or the deadline passes with `serve` still running, or a second signal
//! forces it, it calls `close`. The result says which of these happened ([`Error`]).
//!
//! Unlike the Go original the run never hangs (`close` is a watchdog, and `close` itself is
//! bounded by a close timeout), readiness comes only after the signal handlers are installed,
//! a repeated signal has a policy, the state is one atomic, and a programmatic stop takes the
//! same graceful path as a signal.
//!
//! This crate is the one implementation: the C ABI (`capi` feature, `include/lameduck.h`) and
//! the Python and Node packages are thin layers over [`Runner`].

#![deny(missing_docs)]

mod context;
mod error;
mod format;
pub mod gate;
mod generation;
pub mod health;
mod lifecycle;
mod lineage;
pub mod listener;
pub mod notify;
mod options;
mod pidfile;
mod server;
mod signals;
mod state;
#[doc(hidden)]
pub mod sys;
mod trigger;
mod upgrade;

#[cfg(feature = "capi")]
pub mod capi;

pub use context::Context;
pub use error::{Error, ErrorKind, HookError, HookFailure};
pub use format::{go_duration, signal_list, signal_name};
pub use gate::{Gate, GateError, GatePhase, GateStats, Permit};
pub use generation::READY_FD_ENV;
pub use lifecycle::Runner;
pub use options::{
    stderr_logger, validate_close_timeout, validate_drain_delay, validate_drain_quiet, validate_health_address,
    validate_listen_timeout, validate_max_connections, validate_period, validate_pid_file, validate_signal, validate_signals,
    validate_upgrade_command, validate_upgrade_confirm, validate_upgrade_signals, validate_upgrade_timeout, Level, Logger,
    OptionField, Options, RepeatSignalPolicy, SignalOwner, StateObserver, UpgradeCommand, MAX_DURATION,
};
pub use server::Server;
pub use state::State;

/// The code a `shutdown` hook returns to say "I ran out of time" (Go's
/// `context.DeadlineExceeded`). Equal to `-ETIMEDOUT` on Linux, so a hook that returns
/// `-errno` means the same thing.
pub const DEADLINE_EXCEEDED: i32 = -110;

/// Runs `server` once with `options`: Go's `lameduck.Run`.
pub fn run(server: std::sync::Arc<dyn Server>, options: Options) -> Result<(), Error> {
    Runner::new(server, options)?.run()
}
