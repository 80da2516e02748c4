//! The lame-duck lifecycle: Go's `lameduck.Runner`, with its hangs and races fixed.
//!
//! The thread that calls [`Runner::run`] coordinates; hooks run on threads of their own
//! (`serve`, `shutdown`, `close`), so the coordinator can always enforce the deadline and the
//! close timeout. The coordinator is the only writer of the state and the only caller of the
//! logger and the state observer, so those see events in order, on one thread.
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

use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::context::Context;
use crate::error::{Error, ErrorKind, HookError};
use crate::format::{go_duration, signal_list, signal_name};
use crate::generation::{Outcome, Report};
use crate::options::{Level, Options, RepeatSignalPolicy, SignalOwner};
use crate::server::Server;
use crate::signals::{self, die_by_signal, Subscription};
use crate::state::{State, StateCell};
use crate::trigger::{Escalation, Trigger, CAUSE_STOP};
use crate::upgrade::{CancelPipe, Candidate};
use crate::{generation, listener, notify, pidfile};

/// Runs one server once under lame-duck coordination. `Send + Sync`: share it (in an `Arc`) to
/// call [`Runner::stop`], [`Runner::state`] or [`Runner::wait_ready`] from other threads.
pub struct Runner {
    shared: Arc<Shared>,
}

struct Shared {
    server: Arc<dyn Server>,
    options: Options,
    trigger: Arc<Trigger>,
    state: StateCell,
    claimed: AtomicBool,
    running: AtomicBool,
    readiness: Mutex<Readiness>,
    readiness_changed: Condvar,
    /// The run's context (a runner runs once), shared so [`Runner::state`] can see readiness.
    ctx: Context,
    /// Set by the serve thread just before it calls the hook.
    serve_called: AtomicBool,
    /// Set when `run` has returned (it may still have abandoned hooks running).
    finished: AtomicBool,
    live_hooks: Arc<LiveHooks>,
    upgrade_requests: Mutex<UpgradeRequests>,
}

#[derive(Default)]
struct Readiness {
    became_ready: bool,
    ended: bool,
}

/// Calls to [`Runner::upgrade`] waiting for the coordinator to take them.
#[derive(Default)]
struct UpgradeRequests {
    /// True while the coordinator runs and will answer.
    accepting: bool,
    pending: Vec<Arc<UpgradeWaiter>>,
}

/// Where a [`Runner::upgrade`] call waits for its outcome.
#[derive(Default)]
struct UpgradeWaiter {
    outcome: Mutex<Option<Result<u32, Error>>>,
    settled: Condvar,
}

impl UpgradeWaiter {
    fn settle(&self, outcome: Result<u32, Error>) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
        self.settled.notify_all();
    }

    fn wait(&self) -> Result<u32, Error> {
        let mut outcome = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(outcome) = outcome.take() {
                return outcome;
            }
            outcome = self.settled.wait(outcome).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Runner {
    /// Validates `options` and prepares a run. Nothing is started and no handler is installed.
    pub fn new(server: Arc<dyn Server>, options: Options) -> Result<Runner, Error> {
        options.validate()?;
        let trigger = Trigger::new(&options.signals, &options.upgrade_signals, options.repeat_signal)
            .map_err(|e| Error::new(ErrorKind::System, format!("could not create the wake pipe: {e}")))?;
        let trigger = Arc::new(trigger);
        Ok(Runner {
            shared: Arc::new(Shared {
                server,
                options,
                ctx: Context::new(Arc::clone(&trigger)),
                serve_called: AtomicBool::new(false),
                finished: AtomicBool::new(false),
                live_hooks: Arc::default(),
                trigger,
                state: StateCell::new(),
                claimed: AtomicBool::new(false),
                running: AtomicBool::new(false),
                readiness: Mutex::new(Readiness::default()),
                readiness_changed: Condvar::new(),
                upgrade_requests: Mutex::new(UpgradeRequests::default()),
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
        Run::new(Arc::clone(shared)).execute()
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
        let waiter = Arc::new(UpgradeWaiter::default());
        {
            let mut requests = self.shared.upgrade_requests.lock().unwrap_or_else(PoisonError::into_inner);
            if !requests.accepting {
                return Err(Error::new(
                    ErrorKind::NotRunning,
                    format!("cannot upgrade: the runner is not running (state {})", self.state()),
                ));
            }
            requests.pending.push(Arc::clone(&waiter));
        }
        self.shared.trigger.wake();
        waiter.wait()
    }

    /// The current state; any thread, any time.
    ///
    /// `Ready` as soon as the run is ready, even before the coordinating thread has published
    /// it: `serve` may accept (and answer a health check) the moment it has said it is ready,
    /// and a new generation answering "not ready" there would make a balancer pull a port that
    /// is serving. The observer still sees the transition, in order, a moment later.
    pub fn state(&self) -> State {
        let state = self.shared.state.get();
        if state == State::Serving && self.shared.is_ready() && !self.shared.trigger.triggered() {
            return State::Ready;
        }
        state
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
    /// Ready: handlers are installed (before serve was spawned), serve has been called, and
    /// with explicit readiness serve has said it is accepting.
    fn is_ready(&self) -> bool {
        if self.options.explicit_ready {
            self.ctx.ready_reported()
        } else {
            self.serve_called.load(Ordering::SeqCst)
        }
    }
}

/// Why `close` was called.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CloseReason {
    Expired,
    Forced,
    ShutdownFailed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    Draining { until: Instant },
    ShuttingDown { deadline: Instant },
    Closing { give_up: Instant },
}

/// Work deferred until no hook of the runner is running any more.
type AfterHooks = Box<dyn FnOnce() + Send>;

/// Counts the hook threads still running, including hooks the run abandoned (a shutdown that
/// ignored its deadline is still running after `run` returned), so that what such a hook may
/// still use (the C handle it was given) is freed only once it has returned.
#[derive(Default)]
pub(crate) struct LiveHooks {
    state: Mutex<(usize, Vec<AfterHooks>)>,
}

impl LiveHooks {
    fn started(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 += 1;
    }

    /// The last hook to return runs the deferred work.
    fn ended(&self) {
        let deferred = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.0 = state.0.saturating_sub(1);
            if state.0 > 0 {
                return;
            }
            std::mem::take(&mut state.1)
        };
        for work in deferred {
            let _ = catch_unwind(AssertUnwindSafe(work));
        }
    }

    /// Runs `work` now if no hook is running, otherwise once the last one returns (never, if
    /// that hook never returns).
    #[cfg(feature = "capi")]
    pub(crate) fn after(&self, work: AfterHooks) {
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.0 > 0 {
                state.1.push(work);
                return;
            }
        }
        work();
    }
}

/// A hook running on its own thread, and its result once it returned.
struct HookThread {
    name: &'static str,
    slot: Arc<Mutex<Option<Result<(), HookError>>>>,
    handle: Option<JoinHandle<()>>,
    result: Option<Result<(), HookError>>,
    returned: bool,
}

impl HookThread {
    fn spawn<F>(name: &'static str, shared: &Shared, hook: F) -> Result<HookThread, Error>
    where
        F: FnOnce() -> Result<(), HookError> + Send + 'static,
    {
        let slot = Arc::new(Mutex::new(None));
        let slot_in_thread = Arc::clone(&slot);
        let (trigger, live) = (Arc::clone(&shared.trigger), Arc::clone(&shared.live_hooks));
        live.started();
        let spawned = std::thread::Builder::new().name(format!("lameduck-{name}")).spawn(move || {
            let result = catch_unwind(AssertUnwindSafe(hook)).unwrap_or_else(|p| Err(HookError::panic(panic_text(&*p))));
            *slot_in_thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
            trigger.wake();
            drop(trigger);
            live.ended();
        });
        let handle = spawned.map_err(|e| {
            shared.live_hooks.ended();
            Error::new(ErrorKind::System, format!("could not start the {name} thread: {e}"))
        })?;
        Ok(HookThread { name, slot, handle: Some(handle), result: None, returned: false })
    }

    /// Picks up the result if the hook has returned (and joins its thread). True once returned.
    fn poll(&mut self) -> bool {
        if !self.returned {
            if let Some(result) = self.slot.lock().unwrap_or_else(PoisonError::into_inner).take() {
                self.result = Some(result);
                self.returned = true;
                if let Some(handle) = self.handle.take() {
                    let _ = handle.join();
                }
            }
        }
        self.returned
    }
}

pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}

/// One execution of a runner: the coordinator's state machine.
struct Run {
    shared: Arc<Shared>,
    ctx: Context,
    phase: Phase,
    serve: Option<HookThread>,
    shutdown: Option<HookThread>,
    close: Option<HookThread>,
    /// Trigger signals already acted on.
    handled_signals: u32,
    triggered: bool,
    shutdown_examined: bool,
    shutdown_error: Option<HookError>,
    close_reason: Option<CloseReason>,
    abandoned: Vec<&'static str>,
    /// `serve` failed (or could not start): the run ends in `Failed` rather than `Stopped`.
    serve_failed: bool,
    /// The upgrade in flight, if any.
    upgrade: Option<InFlight>,
    /// Upgrade signals already acted on.
    handled_upgrade_signals: u32,
    /// The pid of the new generation this run handed its listeners to.
    handed_off: Option<u32>,
    /// Started by an upgrade: until when `listen` calls may take the listeners handed over
    /// before the upgrade fails (set once the run is ready and some are still untaken).
    listen_deadline: Option<Instant>,
    /// Started by an upgrade: the listeners were not all taken in time (reported as a failure).
    listen_failed: bool,
    /// Started by an upgrade whose old process died before it handed over: we tell systemd
    /// our own `MAINPID`.
    orphaned: bool,
}

/// An upgrade whose new process has started and is being watched.
struct InFlight {
    candidate: Arc<Candidate>,
    cancel: Arc<CancelPipe>,
    outcome: Arc<Mutex<Option<Result<(), Error>>>>,
    watcher: Option<JoinHandle<()>>,
    waiters: Vec<Arc<UpgradeWaiter>>,
}

impl Run {
    fn new(shared: Arc<Shared>) -> Run {
        let ctx = shared.ctx.clone();
        Run {
            shared,
            ctx,
            phase: Phase::Serving,
            serve: None,
            shutdown: None,
            close: None,
            handled_signals: 0,
            triggered: false,
            shutdown_examined: false,
            shutdown_error: None,
            close_reason: None,
            abandoned: Vec::new(),
            serve_failed: false,
            upgrade: None,
            handled_upgrade_signals: 0,
            handed_off: None,
            listen_deadline: None,
            listen_failed: false,
            orphaned: false,
        }
    }

    fn log(&self, level: Level, message: &str) {
        if let Some(logger) = &self.shared.options.logger {
            let _ = catch_unwind(AssertUnwindSafe(|| logger(level, message)));
        }
    }

    fn transition(&self, new: State) {
        let old = self.shared.state.swap(new);
        if old == new {
            return;
        }
        if let Some(observer) = &self.shared.options.state_observer {
            if catch_unwind(AssertUnwindSafe(|| observer(old, new))).is_err() {
                self.log(Level::Warn, "the state observer panicked; the run goes on");
            }
        }
        if new == State::Ready || new.is_final() {
            let mut readiness = self.shared.readiness.lock().unwrap_or_else(PoisonError::into_inner);
            readiness.became_ready |= new == State::Ready;
            readiness.ended |= new.is_final();
            self.shared.readiness_changed.notify_all();
        }
    }

    fn execute(mut self) -> Result<(), Error> {
        let options = &self.shared.options;
        if self.shared.trigger.triggered() {
            self.log(Level::Info, "Stop requested before the run started; not starting server");
            self.transition(State::Stopped);
            return Err(Error::new(ErrorKind::Canceled, "the runner was stopped before it started; no hook was called"));
        }
        self.transition(State::Starting);
        if let Some(problem) = &generation::get().problem {
            self.log(Level::Warn, problem);
        }
        self.shared.upgrade_requests.lock().unwrap_or_else(PoisonError::into_inner).accepting = true;
        let mut subscription: Option<Subscription> = None;
        if options.signal_owner == SignalOwner::Library {
            let all: Vec<i32> = options.signals.iter().chain(&options.upgrade_signals).copied().collect();
            match signals::subscribe(&self.shared.trigger, &all) {
                Ok(s) => subscription = Some(s),
                Err(err) => {
                    self.log(Level::Error, err.message());
                    self.close_upgrade_requests();
                    self.transition(State::Failed);
                    return Err(err);
                }
            }
        }
        if !options.signals.is_empty() {
            self.log(Level::Info, &format!("Waiting for signals: {}", signal_list(&options.signals)));
        }
        if !options.upgrade_signals.is_empty() {
            self.log(Level::Info, &format!("Upgrade on signals: {}", signal_list(&options.upgrade_signals)));
        }
        self.log(Level::Info, "Starting server");
        let (server, ctx) = (Arc::clone(&self.shared.server), self.ctx.clone());
        let shared = Arc::clone(&self.shared);
        let trigger = Arc::clone(&self.shared.trigger);
        let result = match HookThread::spawn("serve", &self.shared, move || {
            shared.serve_called.store(true, Ordering::SeqCst);
            trigger.wake();
            server.serve(&ctx)
        }) {
            Ok(serve) => {
                self.serve = Some(serve);
                self.transition(State::Serving);
                self.drive()
            }
            Err(err) => {
                self.serve_failed = true;
                Err(err)
            }
        };
        self.finish_upgrade_in_flight();
        self.close_upgrade_requests();
        if let Some(mut subscription) = subscription {
            for warning in subscription.release() {
                self.log(Level::Warn, &warning);
            }
        }
        if self.handed_off.is_none() && generation::get().is_current() {
            // The final stop of the last generation cleans up after the whole line.
            if let Some(path) = &self.shared.options.pid_file {
                pidfile::remove_if_ours(path, std::process::id());
            }
            listener::remove_owned_paths();
        }
        match &result {
            Ok(()) => self.log(Level::Info, "Server stopped"),
            Err(err) => self.log(Level::Error, &format!("Run ended: {}", err.message())),
        }
        self.transition(if self.serve_failed { State::Failed } else { State::Stopped });
        result
    }

    /// The coordinator loop: absorb events, act, sleep until the next event or timer.
    fn drive(&mut self) -> Result<(), Error> {
        loop {
            for hook in [&mut self.serve, &mut self.shutdown, &mut self.close].into_iter().flatten() {
                hook.poll();
            }
            if let Some(result) = self.step(Instant::now()) {
                return result;
            }
            let wake_at = match self.phase {
                Phase::Serving => None,
                Phase::Draining { until } => Some(until),
                Phase::ShuttingDown { deadline } => Some(deadline),
                Phase::Closing { give_up } => Some(give_up),
            };
            let listen_deadline = self.listen_deadline.filter(|_| !self.listen_failed);
            let wake_at = [wake_at, listen_deadline].into_iter().flatten().min();
            // The handover channel: readable when the previous generation hands over or dies.
            self.shared.trigger.wait(wake_at, &generation::get().watch_fds());
        }
    }

    fn returned(hook: &Option<HookThread>) -> bool {
        hook.as_ref().is_some_and(|h| h.returned)
    }

    fn step(&mut self, now: Instant) -> Option<Result<(), Error>> {
        if self.phase == Phase::Serving && self.shared.state.get() == State::Serving && self.shared.is_ready() {
            if generation::get().is_current() {
                self.write_pid_file(); // a new generation's is written when the old one hands over
            }
            self.transition(State::Ready);
            self.announce_ready();
        }
        self.advance_handover(now);
        // An upgrade that just succeeded is settled before a stop signal is looked at, so the
        // lame-duck that follows knows its sockets are shared.
        self.poll_upgrade(now);
        self.absorb_trigger_events(now);
        self.absorb_upgrade_requests();
        match self.phase {
            Phase::Serving => {
                if Self::returned(&self.serve) {
                    return Some(self.serve_returned_before_trigger());
                }
            }
            Phase::Draining { until } => {
                if Self::returned(&self.serve) || now >= until {
                    self.start_shutdown(Instant::now());
                }
            }
            Phase::ShuttingDown { deadline } => {
                if Self::returned(&self.shutdown) && !self.shutdown_examined {
                    self.examine_shutdown(now);
                }
                if let Phase::ShuttingDown { .. } = self.phase {
                    if Self::returned(&self.shutdown) && Self::returned(&self.serve) {
                        return Some(self.finish());
                    }
                    if now >= deadline {
                        self.ctx.set_done();
                        if self.shutdown_error.is_some() {
                            self.log(Level::Info, "Lame-duck period has expired while serve was still running");
                            self.start_close(CloseReason::ShutdownFailed, now);
                        } else {
                            self.log(Level::Info, "Lame-duck period has expired");
                            self.start_close(CloseReason::Expired, now);
                        }
                    }
                }
            }
            Phase::Closing { give_up } => {
                let waiting: Vec<&'static str> = [&self.close, &self.serve, &self.shutdown]
                    .into_iter()
                    .flatten()
                    .filter(|h| !h.returned)
                    .map(|h| h.name)
                    .collect();
                if waiting.is_empty() {
                    return Some(self.finish());
                }
                if now >= give_up {
                    for name in &waiting {
                        self.log(
                            Level::Warn,
                            &format!(
                                "{name} did not return within the close timeout ({}); abandoning it",
                                go_duration(self.shared.options.close_timeout)
                            ),
                        );
                    }
                    self.abandoned = waiting;
                    return Some(self.finish());
                }
            }
        }
        None
    }

    fn absorb_trigger_events(&mut self, now: Instant) {
        let (signals, first_cause) = self.shared.trigger.snapshot();
        let mut a_signal_started_it = false;
        if !self.triggered && first_cause != 0 {
            self.triggered = true;
            if let Some(upgrade) = &self.upgrade {
                upgrade.cancel.cancel();
            }
            a_signal_started_it = first_cause != CAUSE_STOP;
            let cause = if a_signal_started_it {
                format!("Received signal [{}]", signal_name(first_cause as i32))
            } else {
                "Stop requested".to_string()
            };
            self.begin_lame_duck(&cause, now);
        }
        if signals <= self.handled_signals {
            return;
        }
        let before = self.handled_signals;
        self.handled_signals = signals;
        let signal = signal_name(self.shared.trigger.last_signal());
        if before == 0 && !a_signal_started_it {
            // The first signal after a stop or a hand-off is the same event (the supervisor's
            // ordinary stop), never a repeat.
            let since = match self.handed_off {
                Some(pid) => format!("since new process {pid} took over"),
                None => "since the stop request".to_string(),
            };
            self.log(Level::Info, &format!("Received signal [{signal}]; already in lame-duck mode {since}"));
        }
        // Every signal after the first one is a repeat.
        if signals - before.max(1) == 0 {
            return;
        }
        match self.shared.options.repeat_signal {
            RepeatSignalPolicy::Ignore => {
                self.log(Level::Info, &format!("Received signal [{signal}] again; ignoring it (repeat-signal policy: ignore)"))
            }
            RepeatSignalPolicy::Force | RepeatSignalPolicy::ExitNow => match self.phase {
                Phase::Draining { .. } | Phase::ShuttingDown { .. } => {
                    self.log(
                        Level::Info,
                        &format!("Received signal [{signal}] again; forcing close now (another one exits at once)"),
                    );
                    self.ctx.set_done();
                    self.start_close(CloseReason::Forced, now);
                }
                _ => self
                    .log(Level::Info, &format!("Received signal [{signal}] again; already closing (another one exits at once)")),
            },
        }
    }

    fn begin_lame_duck(&mut self, cause: &str, now: Instant) {
        let options = &self.shared.options;
        if self.handed_off.is_none() {
            notify::systemd("STOPPING=1");
        }
        let period = go_duration(options.period);
        if Self::returned(&self.serve) {
            // serve already returned on its own; its result is handled by the Serving phase.
            self.log(Level::Info, &format!("{cause}; entering lame-duck mode for {period}"));
            self.start_shutdown(now);
        } else if let Some(pid) = self.handed_off {
            // A hand-over is not a drain: new process `pid` accepts on the same sockets, so this
            // one stops accepting at once rather than answering a balancer's checks "not ready".
            self.log(
                Level::Info,
                &format!("{cause}; entering lame-duck mode for {period} (no drain delay: process {pid} serves the listeners)"),
            );
            self.start_shutdown(now);
        } else if options.drain_delay.is_zero() {
            self.log(Level::Info, &format!("{cause}; entering lame-duck mode for {period}"));
            self.start_shutdown(now);
        } else {
            self.log(
                Level::Info,
                &format!("{cause}; draining for {}, then entering lame-duck mode for {period}", go_duration(options.drain_delay)),
            );
            self.transition(State::Draining);
            self.phase = Phase::Draining { until: now + options.drain_delay };
        }
    }

    /// Points the pid file at this process, just before the run is first ready: whoever sees
    /// READY (the observer, the previous generation, systemd) finds it naming us. A failure is a
    /// warning: the run goes on.
    fn write_pid_file(&self) {
        if let Err(err) = self.point_pid_file_at(std::process::id()) {
            self.log(Level::Warn, &err);
        }
    }

    /// Points the pid file (if any) at `pid`: this process, or the new one it hands over to.
    fn point_pid_file_at(&self, pid: u32) -> Result<(), String> {
        match &self.shared.options.pid_file {
            Some(path) => {
                pidfile::write(path, pid).map_err(|err| format!("could not write the pid file {}: {err}", path.display()))
            }
            None => Ok(()),
        }
    }

    /// The first time the run is ready: tell systemd, unless an upgrade started us (then the
    /// previous generation tells it `MAINPID` + `READY=1` when it hands over, or, if it died
    /// first, we do).
    fn announce_ready(&self) {
        if self.orphaned {
            notify::systemd(&format!("MAINPID={}\nREADY=1", std::process::id()));
        } else if generation::get().is_current() {
            notify::systemd("READY=1");
        }
    }

    /// In a process started by an upgrade: reports ready to the previous generation once the
    /// run is ready *and* every listener it handed over has been taken by a `listen` call (a
    /// server that bound its own socket instead would fight the old process for the port), or
    /// reports a failure naming the listeners nobody took after the listen timeout. Then learns
    /// when the previous generation hands over, or that it is gone.
    fn advance_handover(&mut self, now: Instant) {
        let generation = generation::get();
        match generation.poll_handover() {
            Some(Outcome::HandedOver) => {
                self.log(Level::Info, "The previous generation handed over; this process is the current generation");
                self.write_pid_file(); // the previous one wrote our pid already; this confirms it
                return;
            }
            Some(Outcome::PredecessorGone) => return self.carry_on_alone(),
            None => {}
        }
        if !generation.must_report() || self.listen_failed || self.triggered || self.shared.state.get() != State::Ready {
            return;
        }
        let mut untaken = listener::untaken();
        if untaken.len() > 8 {
            // The report is one line the old process reads: name a few, count the rest.
            let more = untaken.len() - 8;
            untaken.truncate(8);
            untaken.push(format!("and {more} more"));
        }
        if untaken.is_empty() {
            match generation.report_ready() {
                Report::Reported => {
                    self.log(Level::Info, "Reported ready to the previous generation");
                    if generation.is_current() {
                        self.write_pid_file(); // an older generation's pipe: reporting was all
                    }
                }
                Report::PredecessorGone => self.carry_on_alone(),
                Report::NotSent(err) => self.log(
                    Level::Warn,
                    &format!("Could not report ready to the previous generation ({err}); it will stop this process"),
                ),
                Report::NobodyToTell => {}
            }
            return;
        }
        let timeout = self.shared.options.listen_timeout;
        let deadline = match self.listen_deadline {
            Some(deadline) => deadline,
            None => {
                listener::watch_takes(&self.shared.trigger);
                self.log(
                    Level::Info,
                    &format!(
                        "Ready, but waiting up to {} for listen() to take the listener(s) the previous generation handed over: {}",
                        go_duration(timeout),
                        untaken.join(", ")
                    ),
                );
                *self.listen_deadline.insert(now + timeout)
            }
        };
        if now >= deadline {
            self.listen_failed = true;
            let why = format!(
                "no listen() call took {} within {}; bind through lameduck's listen() with the same address \
                 (ld_listen, lameduck.listen, listen) or register the socket with adopt",
                untaken.join(", "),
                go_duration(timeout)
            );
            self.log(Level::Error, &format!("Not reporting ready to the previous generation: {why}"));
            if !generation.report_failure(&why) {
                self.carry_on_alone();
            }
        }
    }

    /// The previous generation went away (killed, crashed) before it handed over: this process
    /// is all that serves now, so it takes over what the previous one would have handed on.
    fn carry_on_alone(&mut self) {
        self.log(Level::Warn, "The previous generation is gone before it handed over; carrying on as the current generation");
        self.orphaned = true;
        // Not ready yet: the first READY writes the pid file and tells systemd (see
        // announce_ready). In lame-duck already: nothing to announce.
        if self.shared.state.get() == State::Ready && !self.triggered {
            self.write_pid_file();
            self.announce_ready(); // MAINPID + READY=1, now that we are orphaned
        }
    }

    /// Upgrade signals and [`Runner::upgrade`] calls that arrived since the last look.
    fn absorb_upgrade_requests(&mut self) {
        let (signals, last) = self.shared.trigger.upgrade_snapshot();
        while self.handled_upgrade_signals < signals {
            self.handled_upgrade_signals += 1;
            self.request_upgrade(&format!("Received signal [{}]", signal_name(last)), None);
        }
        let pending = std::mem::take(&mut self.shared.upgrade_requests.lock().unwrap_or_else(PoisonError::into_inner).pending);
        for waiter in pending {
            self.request_upgrade("Upgrade requested", Some(waiter));
        }
    }

    /// Starts an upgrade if the run is serving and none is in flight; otherwise says why not
    /// (to the caller, or in the log for a signal).
    fn request_upgrade(&mut self, cause: &str, waiter: Option<Arc<UpgradeWaiter>>) {
        let refusal = if let Some(upgrade) = &self.upgrade {
            Some(Error::new(
                ErrorKind::Busy,
                format!("an upgrade is already in progress (new process {})", upgrade.candidate.pid),
            ))
        } else if self.shared.state.get() != State::Ready || self.triggered {
            Some(Error::new(
                ErrorKind::NotRunning,
                format!("cannot upgrade: the server is not serving (state {})", self.shared.state.get()),
            ))
        } else {
            self.upgrade_refusal()
        };
        if let Some(refusal) = refusal {
            match waiter {
                Some(waiter) => waiter.settle(Err(refusal)),
                None => self.log(Level::Warn, &format!("{cause}; not upgrading: {}", refusal.message())),
            }
            return;
        }
        self.log(Level::Info, &format!("{cause}; upgrading: starting a new process"));
        notify::systemd(&format!("RELOADING=1\nMONOTONIC_USEC={}", notify::monotonic_usec()));
        self.transition(State::Upgrading);
        let waiters: Vec<Arc<UpgradeWaiter>> = waiter.into_iter().collect();
        let candidate = match crate::upgrade::start(&self.shared.options) {
            Ok(candidate) => Arc::new(candidate),
            Err(err) => return self.upgrade_failed(err, waiters),
        };
        let (timeout, confirm) = (self.shared.options.upgrade_timeout, self.shared.options.upgrade_confirm);
        self.log(
            Level::Info,
            &format!(
                "Started new process {} ({}) with {} listener(s); waiting up to {} for it to be ready",
                candidate.pid,
                candidate.program.display(),
                candidate.handed.len(),
                go_duration(timeout)
            ),
        );
        let cancel = match CancelPipe::new() {
            Ok(cancel) => Arc::new(cancel),
            Err(e) => {
                let how = candidate.abort();
                drop(candidate);
                let err = Error::new(ErrorKind::System, format!("could not create a pipe: {e}; {how}"));
                return self.upgrade_failed(err, waiters);
            }
        };
        let outcome = Arc::new(Mutex::new(None));
        let (watched, cancel_fd, slot, trigger) =
            (Arc::clone(&candidate), cancel.read.as_raw_fd(), Arc::clone(&outcome), Arc::clone(&self.shared.trigger));
        let keep_cancel = Arc::clone(&cancel);
        let watcher = std::thread::Builder::new().name("lameduck-upgrade".into()).spawn(move || {
            let _cancel = keep_cancel; // the descriptor stays open while we poll it
            let result = watched.watch(timeout, confirm, cancel_fd);
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
            trigger.wake();
        });
        match watcher {
            Ok(watcher) => {
                // Shared from now on: a lame-duck that starts before the outcome is known must
                // not drain sockets the new process may already be accepting on.
                listener::set_handed_on(&candidate.handed, true);
                self.upgrade = Some(InFlight { candidate, cancel, outcome, watcher: Some(watcher), waiters });
            }
            Err(e) => {
                let how = candidate.abort();
                drop((candidate, cancel, outcome));
                let err = Error::new(ErrorKind::System, format!("could not start the upgrade thread: {e}; {how}"));
                self.upgrade_failed(err, waiters);
            }
        }
    }

    /// Why this process must not start a new generation now, if it must not.
    fn upgrade_refusal(&self) -> Option<Error> {
        if let Some(path) = &self.shared.options.pid_file {
            // The hand-over points the pid file at the new process: if that cannot work, say so
            // before a process is started (and has served, and must be terminated).
            if let Err(err) = pidfile::check_writable(path) {
                return Some(Error::new(
                    ErrorKind::UpgradeFailed,
                    format!("could not write the pid file {}: {err}; no new process started", path.display()),
                ));
            }
        }
        let generation = generation::get();
        if generation.supervised {
            return Some(Error::new(
                ErrorKind::UpgradeFailed,
                "this process is a start_server worker (SERVER_STARTER_PORT): start_server replaces its workers \
                 (send SIGHUP to start_server); a worker that re-executed itself would escape its supervisor",
            ));
        }
        if !generation.is_current() {
            return Some(Error::new(
                ErrorKind::Busy,
                "an upgrade is already in progress: the previous generation has not handed over to this process yet",
            ));
        }
        if !self.shared.options.upgrade_without_listeners && !listener::any_known() {
            return Some(Error::new(
                ErrorKind::UpgradeFailed,
                "this process has no listener known to lameduck, so a new process could not take over its port: \
                 bind with listen() (ld_listen, lameduck.listen, listen) or register a bound socket with adopt \
                 (ld_listen_adopt, lameduck.adopt, adopt); a worker without sockets sets upgrade_without_listeners",
            ));
        }
        None
    }

    /// The upgrade's outcome, once the watcher has one.
    fn poll_upgrade(&mut self, now: Instant) {
        let Some(upgrade) = &self.upgrade else { return };
        let Some(outcome) = upgrade.outcome.lock().unwrap_or_else(PoisonError::into_inner).take() else { return };
        let mut upgrade = self.upgrade.take().expect("checked above");
        if let Some(watcher) = upgrade.watcher.take() {
            let _ = watcher.join();
        }
        self.settle_upgrade(upgrade, outcome, now);
    }

    fn settle_upgrade(&mut self, upgrade: InFlight, outcome: Result<(), Error>, now: Instant) {
        // Release the pipes and the pidfd before anyone hears the outcome, so a caller that
        // counts descriptors right after `upgrade` returns sees none of ours.
        let InFlight { candidate, cancel, waiters, .. } = upgrade;
        let (pid, handed) = (candidate.pid, candidate.handed.clone());
        let outcome = outcome.and_then(|()| {
            // Before anyone hears the new process took over. A pid file that cannot name it
            // would name this process for ever after it exits (a supervisor would think the
            // service dead, or signal a reused pid): that upgrade fails instead.
            if let Err(err) = self.point_pid_file_at(pid) {
                let how = candidate.abort();
                return Err(Error::new(ErrorKind::UpgradeFailed, format!("{err}; new process {pid} not used: {how}")));
            }
            candidate.hand_over();
            Ok(())
        });
        drop((candidate, cancel));
        match outcome {
            Ok(()) => {
                notify::systemd(&format!("MAINPID={pid}\nREADY=1"));
                self.handed_off = Some(pid);
                for waiter in waiters {
                    waiter.settle(Ok(pid));
                }
                if self.triggered {
                    self.log(Level::Info, &format!("New process {pid} became ready during lame-duck; it goes on serving"));
                } else {
                    self.triggered = true;
                    self.begin_lame_duck(&format!("New process {pid} is ready"), now);
                }
            }
            Err(err) if self.triggered => {
                listener::set_handed_on(&handed, false);
                self.log(Level::Info, err.message());
                for waiter in waiters {
                    waiter.settle(Err(Error::new(err.kind(), err.message())));
                }
            }
            Err(err) => {
                listener::set_handed_on(&handed, false);
                self.upgrade_failed(err, waiters)
            }
        }
    }

    /// A failed upgrade leaves the run exactly as it was, serving.
    fn upgrade_failed(&mut self, err: Error, waiters: Vec<Arc<UpgradeWaiter>>) {
        self.log(Level::Error, &format!("Upgrade failed: {}; still serving", err.message()));
        self.write_pid_file(); // the failed process may have written its own pid there
        notify::systemd(&format!("READY=1\nSTATUS=upgrade failed: {}", err.message()));
        if self.shared.state.get() == State::Upgrading {
            self.transition(State::Ready);
        }
        for waiter in waiters {
            waiter.settle(Err(Error::new(err.kind(), err.message())));
        }
    }

    /// At the end of the run: an upgrade still in flight is canceled (its process terminated)
    /// and waited for, so no half-started generation outlives the run unnoticed.
    fn finish_upgrade_in_flight(&mut self) {
        let Some(mut upgrade) = self.upgrade.take() else { return };
        upgrade.cancel.cancel();
        if let Some(watcher) = upgrade.watcher.take() {
            let _ = watcher.join();
        }
        let outcome = upgrade.outcome.lock().unwrap_or_else(PoisonError::into_inner).take();
        let outcome = outcome.unwrap_or_else(|| Err(Error::new(ErrorKind::Canceled, "upgrade canceled: the run ended")));
        self.triggered = true;
        self.settle_upgrade(upgrade, outcome, Instant::now());
    }

    /// Stops taking [`Runner::upgrade`] calls and answers those still waiting.
    fn close_upgrade_requests(&self) {
        let pending = {
            let mut requests = self.shared.upgrade_requests.lock().unwrap_or_else(PoisonError::into_inner);
            requests.accepting = false;
            std::mem::take(&mut requests.pending)
        };
        for waiter in pending {
            waiter.settle(Err(Error::new(ErrorKind::NotRunning, "cannot upgrade: the run has ended")));
        }
    }

    fn start_shutdown(&mut self, now: Instant) {
        let deadline = now + self.shared.options.period;
        self.ctx.set_deadline(deadline);
        self.transition(if self.handed_off.is_some() { State::HandingOver } else { State::ShuttingDown });
        self.phase = Phase::ShuttingDown { deadline };
        let (server, ctx) = (Arc::clone(&self.shared.server), self.ctx.clone());
        match HookThread::spawn("shutdown", &self.shared, move || server.shutdown(&ctx)) {
            Ok(thread) => self.shutdown = Some(thread),
            Err(err) => {
                self.log(Level::Error, err.message());
                self.shutdown_error = Some(HookError::new(-1, err.message().to_string()));
                self.shutdown_examined = true;
                self.start_close(CloseReason::ShutdownFailed, now);
            }
        }
    }

    fn examine_shutdown(&mut self, now: Instant) {
        self.shutdown_examined = true;
        match self.shutdown.as_mut().and_then(|h| h.result.take()) {
            Some(Ok(())) | None => self.log(Level::Info, "Completed lame-duck mode"),
            Some(Err(err)) if err.is_deadline_exceeded() => {
                self.log(Level::Info, "Lame-duck period has expired");
                self.ctx.set_done();
                self.start_close(CloseReason::Expired, now);
            }
            Some(Err(err)) => {
                self.log(Level::Error, &format!("error shutting down server: {}", err.describe("shutdown")));
                self.shutdown_error = Some(err);
            }
        }
    }

    fn start_close(&mut self, reason: CloseReason, now: Instant) {
        self.close_reason = Some(reason);
        self.transition(State::Closing);
        self.phase = Phase::Closing { give_up: now + self.shared.options.close_timeout };
        let server = Arc::clone(&self.shared.server);
        match HookThread::spawn("close", &self.shared, move || server.close()) {
            Ok(thread) => self.close = Some(thread),
            Err(err) => {
                // Without a close thread there is nothing left to wait for but the deadline.
                self.log(Level::Error, err.message());
            }
        }
    }

    fn serve_returned_before_trigger(&mut self) -> Result<(), Error> {
        match self.serve.as_mut().and_then(|h| h.result.take()) {
            Some(Err(err)) => Err(self.serve_error(err, "")),
            _ => {
                self.log(Level::Info, "Server returned before any signal; no lame-duck needed");
                Ok(())
            }
        }
    }

    /// `serve` failed (Go's `Failed`): logs it and builds the error.
    fn serve_error(&mut self, err: HookError, note: &str) -> Error {
        let message = err.describe("serve");
        self.log(Level::Error, &format!("Server failed: {message}"));
        self.serve_failed = true;
        let kind = if err.is_panic() { ErrorKind::Panic } else { ErrorKind::Failed };
        Error::new(kind, format!("{message}{note}")).with_cause(err.code(), Some(err))
    }

    /// Puts the outcome together, in order of precedence: forced, expired, shutdown failed,
    /// serve failed during lame-duck, success.
    fn finish(&mut self) -> Result<(), Error> {
        let abandoned = !self.abandoned.is_empty();
        let abandoned_note = self
            .abandoned
            .iter()
            .map(|name| format!(" + {name} did not return within {} (abandoned)", go_duration(self.shared.options.close_timeout)))
            .collect::<String>();
        let close_result = self.close.as_mut().and_then(|h| h.result.take());
        let (close_code, close_note, close_cause) = match close_result {
            Some(Err(err)) => (err.code(), format!(" + {}", err.describe("close")), Some(err)),
            _ => (0, String::new(), None),
        };
        let serve_error = self.serve.as_mut().and_then(|h| h.result.take()).and_then(Result::err);
        let result = match (self.close_reason, self.shutdown_error.take()) {
            (Some(CloseReason::Forced), _) => Err(Error::new(
                ErrorKind::Forced,
                format!("Lame-duck period was cut short by a repeated signal{close_note}{abandoned_note}"),
            )
            .with_cause(close_code, close_cause)),
            (Some(CloseReason::Expired), _) => {
                Err(Error::new(ErrorKind::Expired, format!("Lame-duck period has expired{close_note}{abandoned_note}"))
                    .with_cause(close_code, close_cause))
            }
            (_, Some(err)) => {
                let kind = if err.is_panic() { ErrorKind::Panic } else { ErrorKind::ShutdownFailed };
                Err(Error::new(kind, format!("{}{close_note}{abandoned_note}", err.describe("shutdown")))
                    .with_cause(err.code(), Some(err)))
            }
            (_, None) => match serve_error {
                Some(err) => Err(self.serve_error(err, &abandoned_note)),
                None => Ok(()),
            },
        };
        result.map_err(|e| e.with_abandoned(abandoned))
    }
}
