//! The lame-duck lifecycle: Go's `lameduck.Runner`, with its hangs and races fixed.
//!
//! The thread that calls [`Runner::run`] coordinates ([`run`]); hooks run on threads of their
//! own ([`hooks`]), so the coordinator can always enforce the deadline and the close timeout.
//! The coordinator is the only writer of the state and the only caller of the logger and the
//! state observer, so those see events in order, on one thread. How the run ends is decided in
//! one place ([`outcome`]); upgrades are driven through [`crate::upgrade::Coordinator`], and
//! the pid file, sd_notify and the handshake with the previous generation through
//! [`crate::lineage`].
//!
//! ```text
//! NotStarted → Starting → Serving → Ready ─trigger→ Draining ─drain delay→ ShuttingDown
//!     ShuttingDown ─shutdown ok & serve returned→ Stopped
//!     ShuttingDown ─deadline / DEADLINE_EXCEEDED / forced→ Closing ─close returned→ Stopped
//!     Serving|Ready ─serve failed→ Failed
//!     Ready ─upgrade signal / Runner::upgrade→ Upgrading ─new process ready→ HandingOver (as ShuttingDown)
//!     Upgrading ─new process failed (terminated)→ Ready
//! ```
//!
//! An upgrade runs beside the coordinator: the new process is started on the coordinator's
//! thread (a fork and exec, milliseconds), then a watcher thread waits for its readiness report,
//! its exit, the upgrade timeout or a cancel, and wakes the coordinator with the outcome.

mod health;
mod hooks;
mod outcome;
mod run;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::context::Context;
use crate::error::{Error, ErrorKind};
use crate::format::{go_duration, signal_list, signal_name};
use crate::gate::Gate;
use crate::options::{Level, Options};
use crate::server::Server;
use crate::signals::die_by_signal;
use crate::state::{State, StateCell};
use crate::trigger::{Escalation, Trigger};
use crate::upgrade;

#[cfg(feature = "capi")]
pub(crate) use hooks::panic_text;
#[cfg(feature = "capi")]
pub(crate) use hooks::LiveHooks;
#[cfg(not(feature = "capi"))]
use hooks::LiveHooks;

/// Runs one server once under lame-duck coordination. `Send + Sync`: share it (in an `Arc`) to
/// call [`Runner::stop`], [`Runner::state`] or [`Runner::wait_ready`] from other threads.
pub struct Runner {
    shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) server: Arc<dyn Server>,
    pub(super) options: Options,
    pub(super) trigger: Arc<Trigger>,
    pub(super) state: StateCell,
    pub(super) claimed: AtomicBool,
    pub(super) running: AtomicBool,
    pub(super) readiness: Mutex<Readiness>,
    pub(super) readiness_changed: Condvar,
    /// The run's context (a runner runs once), shared so [`Runner::state`] can see readiness.
    pub(super) ctx: Context,
    /// Set by the serve thread just before it calls the hook.
    pub(super) serve_called: AtomicBool,
    /// Set when `run` has returned (it may still have abandoned hooks running).
    pub(super) finished: AtomicBool,
    pub(super) live_hooks: Arc<LiveHooks>,
    pub(super) upgrade_requests: upgrade::Requests,
    /// The connection gate (also reachable through the context).
    pub(super) gate: Arc<Gate>,
    /// Health answers: probe counts, liveness, the built-in listener.
    pub(super) health: health::HealthState,
}

#[derive(Default)]
pub(super) struct Readiness {
    pub(super) became_ready: bool,
    pub(super) ended: bool,
}

impl Runner {
    /// Validates `options` and prepares a run. Nothing is started and no handler is installed.
    pub fn new(server: Arc<dyn Server>, options: Options) -> Result<Runner, Error> {
        options.validate()?;
        let trigger = Trigger::new(&options.signals, &options.upgrade_signals, options.repeat_signal)
            .map_err(|e| Error::new(ErrorKind::System, format!("could not create the wake pipe: {e}")))?;
        let trigger = Arc::new(trigger);
        let gate = Gate::new(options.max_connections).map_err(Error::from)?;
        let waker = Arc::clone(&trigger);
        gate.on_empty(Box::new(move || waker.wake()));
        Ok(Runner {
            shared: Arc::new(Shared {
                server,
                options,
                ctx: Context::new(Arc::clone(&trigger), Arc::clone(&gate)),
                gate,
                serve_called: AtomicBool::new(false),
                finished: AtomicBool::new(false),
                live_hooks: Arc::default(),
                trigger,
                state: StateCell::new(),
                claimed: AtomicBool::new(false),
                running: AtomicBool::new(false),
                readiness: Mutex::new(Readiness::default()),
                readiness_changed: Condvar::new(),
                upgrade_requests: upgrade::Requests::default(),
                health: health::HealthState::default(),
            }),
        })
    }

    /// Runs the server until it stops; see the crate docs for the outcomes. A runner runs once:
    /// a second call returns [`ErrorKind::Busy`]. If [`Runner::stop`] (or a delivered signal)
    /// came before `run`, no hook is called and the result is [`ErrorKind::Canceled`].
    pub fn run(&self) -> Result<(), Error> {
        let shared = &self.shared;
        if shared.claimed.swap(true, Ordering::SeqCst) {
            let message = if shared.running.load(Ordering::SeqCst) {
                "the runner is already running"
            } else {
                "the runner has already run; create a new runner for another run"
            };
            return Err(Error::new(ErrorKind::Busy, message));
        }
        /// Marks the run over however `execute` ends (a panic included), so the runner can be
        /// freed afterwards.
        struct Over<'a>(&'a Shared);
        impl Drop for Over<'_> {
            fn drop(&mut self) {
                self.0.running.store(false, Ordering::SeqCst);
                self.0.finished.store(true, Ordering::SeqCst);
            }
        }
        shared.running.store(true, Ordering::SeqCst);
        let _over = Over(shared);
        run::Run::new(Arc::clone(shared)).execute()
    }

    /// Starts lame-duck exactly like a trigger signal (drain delay, `shutdown`, …). Idempotent,
    /// and never counts as a repeated signal. Safe from any thread, from inside a hook, and from
    /// a signal handler (it is an atomic update and a `write(2)`).
    pub fn stop(&self) {
        self.shared.trigger.request_stop();
    }

    /// Hands the runner a trigger signal caught by the host (Python's `signal`, Node's
    /// `process.on`, a C event loop). Same effect as when the library catches it itself,
    /// including the repeat-signal policy (which may end the process). Async-signal-safe when
    /// it succeeds. Fails when `signal` is not one of the configured trigger signals.
    pub fn deliver_signal(&self, signal: i32) -> Result<(), Error> {
        if self.shared.trigger.wants_upgrade(signal) {
            self.shared.trigger.on_upgrade_signal(signal);
            return Ok(());
        }
        if !self.shared.trigger.wants(signal) {
            return Err(Error::invalid(format!(
                "signal {signal} ({}) is not one of this runner's trigger signals {} or upgrade signals {}",
                signal_name(signal),
                signal_list(&self.shared.options.signals),
                signal_list(&self.shared.options.upgrade_signals)
            )));
        }
        if self.shared.trigger.on_signal(signal) == Escalation::Die {
            die_by_signal(signal);
        }
        Ok(())
    }

    /// Upgrades now, like an upgrade signal, and waits for the outcome: the new process's pid
    /// once it reported ready (this run then enters lame-duck, exactly as for a stop signal),
    /// or why not. Any thread; blocks for at most the upgrade timeout plus the kill grace.
    ///
    /// Errors: [`ErrorKind::UpgradeFailed`] (the new process could not start, exited, or was
    /// not ready in time; it was terminated and this run goes on serving),
    /// [`ErrorKind::Busy`] (an upgrade is already in flight), [`ErrorKind::NotRunning`] (the
    /// run is not serving: not started, still starting, in lame-duck or over),
    /// [`ErrorKind::Canceled`] (lame-duck began before the new process was ready).
    pub fn upgrade(&self) -> Result<u32, Error> {
        let waiter = Arc::new(upgrade::Waiter::default());
        if !self.shared.upgrade_requests.submit(&waiter) {
            return Err(Error::new(
                ErrorKind::NotRunning,
                format!("cannot upgrade: the runner is not running (state {})", self.state()),
            ));
        }
        self.shared.trigger.wake();
        waiter.wait()
    }

    /// The run's connection gate: its limit, its counts, and permits for servers that accept
    /// through it (see [`crate::gate`]). The same gate as [`Context::gate`].
    pub fn gate(&self) -> &Arc<Gate> {
        &self.shared.gate
    }

    /// Sets the connection limit while the server runs (or before): `None` or `Some(0)` is
    /// unlimited. Returns the free slots before the change (`None`: it was unlimited), as
    /// nserv's `MaxConns(n)`. Raising admits waiting connections at once; lowering closes none
    /// and takes effect as they close. Any thread, a hook included; not async-signal-safe.
    /// Errors: [`ErrorKind::InvalidArgument`] for a limit above `i32::MAX` (nothing changes).
    pub fn set_max_connections(&self, limit: Option<usize>) -> Result<Option<usize>, Error> {
        self.shared.gate.set_limit(limit).map_err(Error::from)
    }

    /// The current state; any thread, any time.
    ///
    /// `Ready` as soon as the run is ready, even before the coordinating thread has published
    /// it: `serve` may accept (and answer a health check) the moment it has said it is ready,
    /// and a new generation answering "not ready" there would make a balancer pull a port that
    /// is serving. The observer still sees the transition, in order, a moment later.
    pub fn state(&self) -> State {
        self.shared.public_state()
    }

    /// The health answer for `path` (`/ready`, `/live`, `/health`; 404 for any other), for a
    /// route on the server's own port: the same answers as the built-in health listener
    /// ([`Options::health_address`]), by the rules in [`crate::health`]. `/ready` answers
    /// count as probes for the adaptive drain ([`Options::drain_quiet`]). Any thread, any time;
    /// never blocks.
    pub fn health(&self, path: &str) -> crate::health::Report {
        self.shared.health_report(path)
    }

    /// Where the built-in health listener listens (`127.0.0.1:8081`, with the port the kernel
    /// picked for port 0), once the run has started it; `None` without one.
    pub fn health_address(&self) -> Option<String> {
        self.shared.health.address()
    }

    /// True from the moment `run` is called until it returns.
    pub fn is_running(&self) -> bool {
        self.shared.claimed.load(Ordering::SeqCst) && !self.shared.finished.load(Ordering::SeqCst)
    }

    /// The count of this runner's hook threads still running, including hooks the run
    /// abandoned: for handles a hook may still use after the run (the C `ld_runner`).
    #[cfg(feature = "capi")]
    pub(crate) fn live_hooks(&self) -> Arc<LiveHooks> {
        Arc::clone(&self.shared.live_hooks)
    }

    /// The options this runner was made with.
    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    /// Waits until the run is ready: signal handlers installed and `serve` called (and, with
    /// explicit readiness, `serve` has called [`Context::ready`]). `None` waits forever.
    /// Errors: [`ErrorKind::Timeout`], or [`ErrorKind::NotRunning`] when the run ended without
    /// ever becoming ready. Returns `Ok` if the run was ready at some point, even if it is over.
    pub fn wait_ready(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let until = timeout.and_then(|t| Instant::now().checked_add(t));
        let shared = &self.shared;
        let mut readiness = shared.readiness.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if readiness.became_ready {
                return Ok(());
            }
            if readiness.ended {
                return Err(Error::new(ErrorKind::NotRunning, "the run ended before the server became ready"));
            }
            readiness = match until {
                None => shared.readiness_changed.wait(readiness).unwrap_or_else(PoisonError::into_inner),
                Some(until) => {
                    let now = Instant::now();
                    if now >= until {
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            format!("the server did not become ready within {}", go_duration(timeout.unwrap_or_default())),
                        ));
                    }
                    shared.readiness_changed.wait_timeout(readiness, until - now).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    }
}

impl Shared {
    /// The state as [`Runner::state`] reports it.
    pub(super) fn public_state(&self) -> State {
        let state = self.state.get();
        if state == State::Serving && self.is_ready() && !self.trigger.triggered() {
            return State::Ready;
        }
        state
    }

    /// Ready: handlers are installed (before serve was spawned), serve has been called, and
    /// with explicit readiness serve has said it is accepting.
    pub(super) fn is_ready(&self) -> bool {
        if self.options.explicit_ready {
            self.ctx.ready_reported()
        } else {
            self.serve_called.load(Ordering::SeqCst)
        }
    }
}

/// Logs through the options' logger, if any; a logger that panics is ignored.
pub(crate) fn log(options: &Options, level: Level, message: &str) {
    if let Some(logger) = &options.logger {
        let _ = catch_unwind(AssertUnwindSafe(|| logger(level, message)));
    }
}
