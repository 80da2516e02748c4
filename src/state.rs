//! The one lifecycle every run goes through, as a single atomic value.
//!
//! `NotStarted → Starting → Serving → Ready → Draining → ShuttingDown → Closing → Stopped`,
//! or `Failed` when `serve` fails; `Ready ⇄ Upgrading` while a new process starts, and
//! `Upgrading → HandingOver` (instead of `Draining`/`ShuttingDown`) once it took over. Any thread may read it at any time; only the thread running
//! the runner writes it, and it reports every transition to the observer, in order.

use std::ffi::CStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// Defines [`State`] from one table: each state's `ld_state` number and its name (the same in C,
/// Python and Node) are written once, side by side. The C enum (`capi::runner::ld_state`) is
/// checked against this table at compile time.
macro_rules! states {
    ($( $(#[$doc:meta])* $state:ident = $number:literal, $name:literal; )*) => {
        /// A runner's lifecycle state. The numbers are the C ABI's `ld_state` values.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum State {
            $( $(#[$doc])* $state = $number, )*
        }

        impl State {
            /// Every state, in `ld_state` order.
            pub const ALL: &'static [State] = &[$(State::$state),*];

            /// The state's name as a C string (what `ld_state_str` returns).
            pub const fn c_name(self) -> &'static CStr {
                match self {
                    $( State::$state => match CStr::from_bytes_with_nul(concat!($name, "\0").as_bytes()) {
                        Ok(name) => name,
                        Err(_) => panic!("a state name has a NUL byte"),
                    }, )*
                }
            }

            /// The state's name, the same in C, Python and Node: `NOT_STARTED`, `READY`, …
            pub const fn name(self) -> &'static str {
                match self {
                    $( State::$state => $name, )*
                }
            }
        }
    };
}

states! {
    /// Created; `run` has not been called.
    NotStarted = 1, "NOT_STARTED";
    /// `run` was called: validating, installing signal handlers.
    Starting = 2, "STARTING";
    /// `serve` is running; with explicit readiness it has not yet reported ready.
    Serving = 3, "SERVING";
    /// Handlers installed, `serve` running (and, with explicit readiness, accepting).
    Ready = 4, "READY";
    /// Triggered; `serve` keeps serving for the drain delay while reporting not ready.
    Draining = 5, "DRAINING";
    /// `shutdown` has been called with its deadline.
    ShuttingDown = 6, "SHUTTING_DOWN";
    /// `close` has been called (deadline passed or forced).
    Closing = 7, "CLOSING";
    /// The run is over (successfully or not, except a `serve` failure).
    Stopped = 8, "STOPPED";
    /// `serve` failed.
    Failed = 9, "FAILED";
    /// Still fully serving, as in `Ready`, while a new process (an upgrade) starts. Back to
    /// `Ready` if the upgrade fails; on to lame-duck once the new process is ready.
    Upgrading = 10, "UPGRADING";
    /// Lame-duck after a hand-over: `shutdown` is running and this process no longer accepts,
    /// but the new process serves the same sockets, so the port is fine: a health check should
    /// still report healthy (a balancer must not pull a port that is serving).
    HandingOver = 11, "HANDING_OVER";
}

impl State {
    /// The state with this `ld_state` number, if any.
    pub fn from_code(code: i32) -> Option<State> {
        State::ALL.iter().copied().find(|s| *s as i32 == code)
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

    /// The cell only ever holds values stored from a `State`, so the fallback is unreachable.
    fn from_u8(value: u8) -> State {
        State::from_code(i32::from(value)).unwrap_or(State::NotStarted)
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
