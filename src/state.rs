//! The one lifecycle every run goes through, as a single atomic value.
//!
//! `NotStarted → Starting → Serving → Ready → Draining → ShuttingDown → Closing → Stopped`,
//! or `Failed` when `serve` fails; `Ready ⇄ Upgrading` while a new process starts, and
//! `Upgrading → HandingOver` (instead of `Draining`/`ShuttingDown`) once it took over. Any thread may read it at any time; only the thread running
//! the runner writes it, and it reports every transition to the observer, in order.

use std::sync::atomic::{AtomicU8, Ordering};

/// A runner's lifecycle state. The numbers are the C ABI's `ld_state` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Created; `run` has not been called.
    NotStarted = 1,
    /// `run` was called: validating, installing signal handlers.
    Starting = 2,
    /// `serve` is running; with explicit readiness it has not yet reported ready.
    Serving = 3,
    /// Handlers installed, `serve` running (and, with explicit readiness, accepting).
    Ready = 4,
    /// Triggered; `serve` keeps serving for the drain delay while reporting not ready.
    Draining = 5,
    /// `shutdown` has been called with its deadline.
    ShuttingDown = 6,
    /// `close` has been called (deadline passed or forced).
    Closing = 7,
    /// The run is over (successfully or not, except a `serve` failure).
    Stopped = 8,
    /// `serve` failed.
    Failed = 9,
    /// Still fully serving, as in `Ready`, while a new process (an upgrade) starts. Back to
    /// `Ready` if the upgrade fails; on to lame-duck once the new process is ready.
    Upgrading = 10,
    /// Lame-duck after a hand-over: `shutdown` is running and this process no longer accepts,
    /// but the new process serves the same sockets, so the port is fine: a health check should
    /// still report healthy (a balancer must not pull a port that is serving).
    HandingOver = 11,
}

impl State {
    /// The state's name, the same in C, Python and Node: `NOT_STARTED`, `READY`, …
    pub fn name(self) -> &'static str {
        match self {
            State::NotStarted => "NOT_STARTED",
            State::Starting => "STARTING",
            State::Serving => "SERVING",
            State::Ready => "READY",
            State::Draining => "DRAINING",
            State::ShuttingDown => "SHUTTING_DOWN",
            State::Closing => "CLOSING",
            State::Stopped => "STOPPED",
            State::Failed => "FAILED",
            State::Upgrading => "UPGRADING",
            State::HandingOver => "HANDING_OVER",
        }
    }

    /// True while the server accepts and answers as usual: `Ready`, or `Upgrading`.
    pub fn is_serving(self) -> bool {
        matches!(self, State::Ready | State::Upgrading)
    }

    /// What a health check should report: `Ready`, `Upgrading`, and `HandingOver` (the port
    /// is served by the new process).
    pub fn is_healthy(self) -> bool {
        self.is_serving() || self == State::HandingOver
    }

    /// True once the run is over.
    pub fn is_final(self) -> bool {
        matches!(self, State::Stopped | State::Failed)
    }

    fn from_u8(value: u8) -> State {
        match value {
            2 => State::Starting,
            3 => State::Serving,
            4 => State::Ready,
            5 => State::Draining,
            6 => State::ShuttingDown,
            7 => State::Closing,
            8 => State::Stopped,
            9 => State::Failed,
            10 => State::Upgrading,
            11 => State::HandingOver,
            _ => State::NotStarted,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The atomic cell behind [`State`].
#[derive(Debug)]
pub(crate) struct StateCell(AtomicU8);

impl StateCell {
    pub(crate) fn new() -> Self {
        StateCell(AtomicU8::new(State::NotStarted as u8))
    }

    pub(crate) fn get(&self) -> State {
        State::from_u8(self.0.load(Ordering::SeqCst))
    }

    /// Stores `new` and returns the previous state.
    pub(crate) fn swap(&self, new: State) -> State {
        State::from_u8(self.0.swap(new as u8, Ordering::SeqCst))
    }
}
