//! One execution of a runner: the coordinator's loop over a [`Phase`] that carries its own
//! data. It absorbs events (hook returns, trigger signals and stops, upgrade requests and
//! outcomes, the previous generation's handover), acts, and sleeps until the next event or
//! timer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use super::hooks::HookThread;
use super::outcome::{self, CloseReason, Ending, Facts};
use super::{log, Shared};
use crate::context::Context;
use crate::error::{Error, ErrorKind, HookError};
use crate::format::{go_duration, signal_list, signal_name};
use crate::generation;
use crate::lineage::Lineage;
use crate::options::{Level, RepeatSignalPolicy, SignalOwner};
use crate::signals::{self, Subscription};
use crate::state::State;
use crate::trigger::CAUSE_STOP;
use crate::upgrade::{self, Request, Waiters};

/// Where the lame-duck sequence stands. Every phase after `Serving` is lame-duck: the run was
/// triggered (a signal, a stop, or a new process that took over).
enum Phase {
    /// `serve` runs; no trigger yet.
    Serving,
    /// Triggered with a drain delay: still serving, reported not ready, until `until` (or,
    /// with the adaptive drain, once the balancer has clearly stopped sending).
    Draining {
        until: Instant,
        /// When the drain began.
        since: Instant,
        /// The gate's admissions count when last looked at, and when it last changed.
        admitted_total: u64,
        quiet_since: Instant,
        /// Failed readiness probes before the drain began.
        failed_probes_before: u64,
    },
    /// `shutdown` runs (or has returned) with this deadline.
    ShuttingDown {
        deadline: Instant,
        /// `shutdown`'s result has been looked at.
        examined: bool,
        /// `shutdown` failed (or could not start); `serve` may still be running.
        error: Option<HookError>,
        /// "Waiting for N connections" has been logged (the hooks returned, the gate had not
        /// emptied yet).
        told_waiting: bool,
    },
    /// `close` runs; the hooks still running are abandoned at `give_up`.
    Closing { give_up: Instant, reason: CloseReason, shutdown_error: Option<HookError> },
}

/// The three hooks, each on its own thread once the run has started.
#[derive(Default)]
struct Hooks {
    serve: Option<HookThread>,
    shutdown: Option<HookThread>,
    close: Option<HookThread>,
}

fn returned(hook: &Option<HookThread>) -> bool {
    hook.as_ref().is_some_and(HookThread::returned)
}

/// One execution of a runner, owned by the thread that called `run`: the only writer of the
/// state and the only caller of the logger and the observer.
pub(super) struct Run {
    shared: Arc<Shared>,
    ctx: Context,
    phase: Phase,
    hooks: Hooks,
    /// Trigger signals already acted on.
    handled_signals: u32,
    upgrade: upgrade::Coordinator,
    lineage: Lineage,
}

impl Run {
    pub(super) fn new(shared: Arc<Shared>) -> Run {
        let ctx = shared.ctx.clone();
        Run {
            shared,
            ctx,
            phase: Phase::Serving,
            hooks: Hooks::default(),
            handled_signals: 0,
            upgrade: upgrade::Coordinator::default(),
            lineage: Lineage::default(),
        }
    }

    fn log(&self, level: Level, message: &str) {
        log(&self.shared.options, level, message);
    }

    fn in_lame_duck(&self) -> bool {
        !matches!(self.phase, Phase::Serving)
    }

    /// Ready and not in lame-duck: an upgrade may start, the previous generation may hear we
    /// are ready.
    fn serving(&self) -> bool {
        self.shared.state.get() == State::Ready && !self.in_lame_duck()
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

    pub(super) fn execute(mut self) -> Result<(), Error> {
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
        if let Some(address) = &options.health_address {
            if let Err(err) = super::health::start(&self.shared, address) {
                self.log(Level::Error, err.message());
                self.transition(State::Failed);
                return Err(err);
            }
            if let Some(bound) = self.shared.health.address() {
                self.log(Level::Info, &format!("Health checks on {bound}: /ready, /live, /health"));
            }
        }
        self.shared.upgrade_requests.open();
        let mut subscription: Option<Subscription> = None;
        if options.signal_owner == SignalOwner::Library {
            let all: Vec<i32> = options.signals.iter().chain(&options.upgrade_signals).copied().collect();
            match signals::subscribe(&self.shared.trigger, &all) {
                Ok(s) => subscription = Some(s),
                Err(err) => {
                    self.log(Level::Error, err.message());
                    self.shared.upgrade_requests.close();
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
        // Parked now, so the trigger and the deadline only wake them. Should a thread not be
        // created here, it is tried again when its hook is due (and that failure handled there).
        self.hooks.shutdown = self.shutdown_thread().ok();
        self.hooks.close = self.close_thread().ok();
        let (server, ctx) = (Arc::clone(&self.shared.server), self.ctx.clone());
        let shared = Arc::clone(&self.shared);
        let mut serve_failed = false;
        let result = match HookThread::spawn("serve", &self.shared.trigger, &self.shared.live_hooks, move || {
            shared.serve_called.store(true, Ordering::SeqCst);
            shared.trigger.wake();
            server.serve(&ctx)
        }) {
            Ok(serve) => {
                self.hooks.serve = Some(serve);
                self.transition(State::Serving);
                let ending = self.drive();
                if let Some(line) = &ending.serve_failure {
                    self.log(Level::Error, &format!("Server failed: {line}"));
                    serve_failed = true;
                }
                ending.result
            }
            Err(err) => {
                serve_failed = true;
                Err(err)
            }
        };
        // Hooks never started are dismissed (their parked threads exit); running ones the run
        // abandoned keep their threads.
        self.hooks = Hooks::default();
        self.shared.gate.close();
        let options = &self.shared.options;
        if let Some(outcome) = self.upgrade.finish(|pid| Lineage::point_pid_file_at(options, pid)) {
            self.settle_upgrade(outcome, true);
        }
        self.shared.upgrade_requests.close();
        if let Some(mut subscription) = subscription {
            for warning in subscription.release() {
                self.log(Level::Warn, &warning);
            }
        }
        if !self.shared.health.abandoned.load(Ordering::SeqCst) {
            // With hooks abandoned it stays, answering "not live", until the runner is freed.
            self.shared.health.stop();
        }
        self.lineage.clean_up(&self.shared.options);
        match &result {
            Ok(()) => self.log(Level::Info, "Server stopped"),
            Err(err) => self.log(Level::Error, &format!("Run ended: {}", err.message())),
        }
        self.transition(if serve_failed { State::Failed } else { State::Stopped });
        result
    }

    fn shutdown_thread(&self) -> Result<HookThread, Error> {
        let (server, ctx) = (Arc::clone(&self.shared.server), self.ctx.clone());
        HookThread::park("shutdown", &self.shared.trigger, &self.shared.live_hooks, move || server.shutdown(&ctx))
    }

    fn close_thread(&self) -> Result<HookThread, Error> {
        let server = Arc::clone(&self.shared.server);
        HookThread::park("close", &self.shared.trigger, &self.shared.live_hooks, move || server.close())
    }

    /// The coordinator loop: absorb events, act, sleep until the next event or timer.
    fn drive(&mut self) -> Ending {
        loop {
            for hook in [&mut self.hooks.serve, &mut self.hooks.shutdown, &mut self.hooks.close].into_iter().flatten() {
                hook.poll();
            }
            if let Some(ending) = self.step(Instant::now()) {
                return ending;
            }
            let wake_at = match self.phase {
                Phase::Serving => None,
                Phase::Draining { until, quiet_since, .. } => Some(self.next_drain_look(until, quiet_since)),
                Phase::ShuttingDown { deadline, .. } => Some(deadline),
                Phase::Closing { give_up, .. } => Some(give_up),
            };
            let wake_at = [wake_at, self.lineage.wake_at()].into_iter().flatten().min();
            // The handover channel: readable when the previous generation hands over or dies.
            self.shared.trigger.wait(wake_at, &generation::get().watch_fds());
        }
    }

    fn step(&mut self, now: Instant) -> Option<Ending> {
        if !self.in_lame_duck() && self.shared.state.get() == State::Serving && self.shared.is_ready() {
            self.lineage.became_ready(&self.shared.options);
            self.transition(State::Ready);
            self.shared.health.serve();
            self.lineage.announce_ready();
        }
        let serving = self.serving();
        self.lineage.advance(&self.shared.options, &self.shared.trigger, serving, now);
        // An upgrade that just succeeded is settled before a stop signal is looked at, so the
        // lame-duck that follows knows its sockets are shared.
        let options = &self.shared.options;
        if let Some(outcome) = self.upgrade.poll(|pid| Lineage::point_pid_file_at(options, pid)) {
            let in_lame_duck = self.in_lame_duck();
            self.settle_upgrade(outcome, in_lame_duck);
        }
        self.absorb_trigger_events(now);
        self.absorb_upgrade_requests();
        match self.phase {
            Phase::Serving => {
                if returned(&self.hooks.serve) {
                    return Some(self.serve_returned_before_trigger());
                }
            }
            Phase::Draining { until, .. } => {
                if returned(&self.hooks.serve) || now >= until {
                    self.start_shutdown(Instant::now());
                } else if let Some(why) = self.drained_early(now) {
                    self.log(Level::Info, &why);
                    self.start_shutdown(Instant::now());
                }
            }
            Phase::ShuttingDown { deadline, examined, .. } => {
                if returned(&self.hooks.shutdown) && !examined {
                    self.examine_shutdown(now);
                }
                if let Phase::ShuttingDown { .. } = self.phase {
                    if returned(&self.hooks.shutdown) && returned(&self.hooks.serve) {
                        // The gate's release wakes the coordinator when the last permit is back.
                        let open = self.shared.gate.admitted();
                        if open == 0 {
                            let shutdown_error = self.take_shutdown_error();
                            return Some(self.finish(None, shutdown_error, Vec::new()));
                        }
                        if let Phase::ShuttingDown { told_waiting: told @ false, .. } = &mut self.phase {
                            *told = true;
                            self.log(Level::Info, &format!("Waiting for {open} open connection(s) to close"));
                        }
                    }
                    if now >= deadline {
                        let shutdown_error = self.take_shutdown_error();
                        if shutdown_error.is_some() {
                            let still = if returned(&self.hooks.serve) {
                                format!("{} connection(s) were still open", self.shared.gate.admitted())
                            } else {
                                "serve was still running".to_string()
                            };
                            self.log(Level::Info, &format!("Lame-duck period has expired while {still}"));
                            self.start_close(CloseReason::ShutdownFailed, shutdown_error, now);
                        } else {
                            self.log(Level::Info, "Lame-duck period has expired");
                            self.start_close(CloseReason::Expired, None, now);
                        }
                    }
                }
            }
            Phase::Closing { give_up, reason, .. } => {
                let waiting: Vec<&'static str> = [&self.hooks.close, &self.hooks.serve, &self.hooks.shutdown]
                    .into_iter()
                    .flatten()
                    .filter(|h| h.pending())
                    .map(|h| h.name)
                    .collect();
                if waiting.is_empty() {
                    let shutdown_error = self.take_shutdown_error();
                    return Some(self.finish(Some(reason), shutdown_error, Vec::new()));
                }
                if now >= give_up {
                    let shutdown_error = self.take_shutdown_error();
                    for name in &waiting {
                        self.log(
                            Level::Warn,
                            &format!(
                                "{name} did not return within the close timeout ({}); abandoning it",
                                go_duration(self.shared.options.close_timeout)
                            ),
                        );
                    }
                    return Some(self.finish(Some(reason), shutdown_error, waiting));
                }
            }
        }
        None
    }

    fn absorb_trigger_events(&mut self, now: Instant) {
        let (signals, first_cause) = self.shared.trigger.snapshot();
        let mut a_signal_started_it = false;
        if !self.in_lame_duck() && first_cause != 0 {
            self.upgrade.cancel();
            a_signal_started_it = first_cause != CAUSE_STOP;
            let cause = if a_signal_started_it {
                format!("Received signal [{}]", signal_name(first_cause as i32))
            } else {
                "Stop requested".to_string()
            };
            // Not the `now` of this step: the signal may have come after it was read, and the
            // drain delay and the deadline count from when it was seen (after the snapshot).
            self.begin_lame_duck(&cause, Instant::now());
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
            let since = match self.lineage.successor() {
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
                    let shutdown_error = self.take_shutdown_error();
                    self.log(
                        Level::Info,
                        &format!("Received signal [{signal}] again; forcing close now (another one exits at once)"),
                    );
                    self.start_close(CloseReason::Forced, shutdown_error, now);
                }
                _ => self
                    .log(Level::Info, &format!("Received signal [{signal}] again; already closing (another one exits at once)")),
            },
        }
    }

    /// Leaves `Serving`: drains first when there is a drain delay and nobody else serves the
    /// listeners, otherwise calls `shutdown` at once.
    fn begin_lame_duck(&mut self, cause: &str, now: Instant) {
        let options = &self.shared.options;
        self.lineage.stopping();
        if generation::get().supervised && self.shared.health.shared_socket.load(Ordering::SeqCst) {
            // start_server gives the health port to the next worker too: it answers now.
            self.shared.health.release();
        }
        let period = go_duration(options.period);
        if returned(&self.hooks.serve) {
            // serve already returned on its own; its result is handled by the Serving phase.
            self.log(Level::Info, &format!("{cause}; entering lame-duck mode for {period}"));
            self.start_shutdown(now);
        } else if let Some(pid) = self.lineage.successor() {
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
            let adaptive = if options.drain_quiet.is_zero() {
                String::new()
            } else {
                format!(" (less once no new connection came for {})", go_duration(options.drain_quiet))
            };
            self.log(
                Level::Info,
                &format!(
                    "{cause}; draining for {}{adaptive}, then entering lame-duck mode for {period}",
                    go_duration(options.drain_delay)
                ),
            );
            self.transition(State::Draining);
            self.phase = Phase::Draining {
                until: now + options.drain_delay,
                since: now,
                admitted_total: self.shared.gate.stats().total,
                quiet_since: now,
                failed_probes_before: self.shared.health.failed_ready_probes.load(Ordering::SeqCst),
            };
        }
    }

    /// The adaptive drain ([`crate::Options::drain_quiet`]): why the drain may end now, if it
    /// may. The balancer has stopped sending once no connection was admitted for the quiet
    /// time and, if it probes readiness here at all, it has seen a "not ready".
    fn drained_early(&mut self, now: Instant) -> Option<String> {
        let quiet = self.shared.options.drain_quiet;
        let health = &self.shared.health;
        let total = self.shared.gate.stats().total;
        let Phase::Draining { since, admitted_total, quiet_since, failed_probes_before, .. } = &mut self.phase else {
            return None;
        };
        if quiet.is_zero() {
            return None;
        }
        if total != *admitted_total {
            *admitted_total = total;
            *quiet_since = now;
            return None;
        }
        if now < *quiet_since + quiet {
            return None;
        }
        let failed = health.failed_ready_probes.load(Ordering::SeqCst) - *failed_probes_before;
        let probed = self.shared.options.health_address.is_some() || health.ready_probes.load(Ordering::SeqCst) > 0;
        if probed && failed == 0 {
            return None; // the balancer probes us and has not seen "not ready" yet
        }
        let probes = if probed { format!(" and {failed} readiness probe(s) answered not ready") } else { String::new() };
        Some(format!(
            "Drain ended after {}: no new connection for {}{probes}",
            go_duration(now.saturating_duration_since(*since)),
            go_duration(quiet)
        ))
    }

    /// When the coordinator looks at the drain again: its end, or with the adaptive drain the
    /// end of the quiet time, looking at the gate's count a few times per quiet time meanwhile
    /// (an admission does not wake the coordinator; a failed probe does).
    fn next_drain_look(&self, until: Instant, quiet_since: Instant) -> Instant {
        let quiet = self.shared.options.drain_quiet;
        if quiet.is_zero() {
            return until;
        }
        let now = Instant::now();
        let poll = (quiet / 4).clamp(std::time::Duration::from_millis(1), std::time::Duration::from_millis(50));
        let quiet_end = quiet_since + quiet;
        let next = if quiet_end > now { quiet_end.min(now + poll) } else { now + poll };
        until.min(next)
    }

    /// Upgrade signals and [`super::Runner::upgrade`] calls that arrived since the last look.
    fn absorb_upgrade_requests(&mut self) {
        for request in self.upgrade.requests(&self.shared.trigger, &self.shared.upgrade_requests) {
            self.request_upgrade(request);
        }
    }

    /// Starts an upgrade if the run is serving and none is in flight; otherwise says why not
    /// (to the caller, or in the log for a signal).
    fn request_upgrade(&mut self, request: Request) {
        let options = &self.shared.options;
        if let Some(refusal) = self.upgrade.refusal(options, self.serving(), self.shared.state.get()) {
            let (kind, why) = (refusal.kind(), refusal.message().to_string());
            if let Some(line) = request.refuse(refusal) {
                self.log(Level::Warn, &line);
                // A signal, which systemd may have sent (Type=notify-reload) and be waiting on.
                // Not when busy or stopping: a reload cycle is under way, or a stop.
                if kind == ErrorKind::UpgradeFailed {
                    self.lineage.reload_refused(&why);
                }
            }
            return;
        }
        self.log(Level::Info, &format!("{}; upgrading: starting a new process", request.cause));
        crate::notify::systemd(&format!("RELOADING=1\nMONOTONIC_USEC={}", crate::notify::monotonic_usec()));
        self.transition(State::Upgrading);
        let started = |started: &upgrade::Started<'_>| {
            log(
                options,
                Level::Info,
                &format!(
                    "Started new process {} ({}) with {} listener(s); waiting up to {} for it to be ready",
                    started.pid,
                    started.program.display(),
                    started.listeners,
                    go_duration(started.timeout)
                ),
            )
        };
        if let Err((err, waiters)) = self.upgrade.start(options, &self.shared.trigger, request.waiter, started) {
            self.upgrade_failed(err, waiters);
        }
    }

    /// Acts on an upgrade's outcome. `in_lame_duck`: the run is already stopping (or over), so
    /// a new process that took over simply goes on serving, and a failure changes nothing.
    fn settle_upgrade(&mut self, outcome: upgrade::Outcome, in_lame_duck: bool) {
        let upgrade::Outcome { pid, result, waiters } = outcome;
        match result {
            Ok(()) => {
                self.lineage.handed_over(pid);
                waiters.took_over(pid);
                if in_lame_duck {
                    self.log(Level::Info, &format!("New process {pid} became ready during lame-duck; it goes on serving"));
                } else {
                    self.begin_lame_duck(&format!("New process {pid} is ready"), Instant::now());
                }
            }
            Err(err) if in_lame_duck => {
                self.log(Level::Info, err.message());
                waiters.failed(&err);
            }
            Err(err) => self.upgrade_failed(err, waiters),
        }
    }

    /// A failed upgrade leaves the run exactly as it was, serving.
    fn upgrade_failed(&mut self, err: Error, waiters: Waiters) {
        self.log(Level::Error, &format!("Upgrade failed: {}; still serving", err.message()));
        self.lineage.write_pid_file(&self.shared.options); // the failed process may have written its own pid there
        crate::notify::systemd(&format!("READY=1\nSTATUS=upgrade failed: {}", err.message()));
        if self.shared.state.get() == State::Upgrading {
            self.transition(State::Ready);
        }
        waiters.failed(&err);
    }

    fn start_shutdown(&mut self, now: Instant) {
        let deadline = now + self.shared.options.period;
        self.ctx.set_deadline(deadline);
        // Accept loops blocked on a full gate return now; the accept queue may still be drained.
        // Before the transition: an observer (Node's gate wakes its waiters on this event) must
        // find the gate draining already.
        self.shared.gate.drain();
        if self.lineage.successor().is_some() {
            self.shared.health.release(); // the new process answers for the port now
        }
        self.transition(if self.lineage.successor().is_some() { State::HandingOver } else { State::ShuttingDown });
        self.phase = Phase::ShuttingDown { deadline, examined: false, error: None, told_waiting: false };
        match started(self.hooks.shutdown.take(), || self.shutdown_thread()) {
            Ok(thread) => self.hooks.shutdown = Some(thread),
            Err(err) => {
                self.log(Level::Error, err.message());
                let shutdown_error = Some(HookError::new(-1, err.message().to_string()));
                self.start_close(CloseReason::ShutdownFailed, shutdown_error, now);
            }
        }
    }

    fn examine_shutdown(&mut self, now: Instant) {
        let result = self.hooks.shutdown.as_mut().and_then(HookThread::take_result);
        if let Phase::ShuttingDown { examined, .. } = &mut self.phase {
            *examined = true;
        }
        match result {
            Some(Ok(())) | None => self.log(Level::Info, "Completed lame-duck mode"),
            Some(Err(err)) if err.is_deadline_exceeded() => {
                self.log(Level::Info, "Lame-duck period has expired");
                self.start_close(CloseReason::Expired, None, now);
            }
            Some(Err(err)) => {
                self.log(Level::Error, &format!("error shutting down server: {}", err.describe("shutdown")));
                if let Phase::ShuttingDown { error, .. } = &mut self.phase {
                    *error = Some(err);
                }
            }
        }
    }

    fn start_close(&mut self, reason: CloseReason, shutdown_error: Option<HookError>, now: Instant) {
        self.shared.gate.close();
        self.shared.health.close_started(now);
        self.transition(State::Closing);
        self.phase = Phase::Closing { give_up: now + self.shared.options.close_timeout, reason, shutdown_error };
        match started(self.hooks.close.take(), || self.close_thread()) {
            Ok(thread) => self.hooks.close = Some(thread),
            // Without a close thread there is nothing left to wait for but the deadline.
            Err(err) => self.log(Level::Error, err.message()),
        }
        // The context is done from here on. Set after close is woken, not before: setting it
        // wakes every thread waiting on the context (shutdown's, typically), which would
        // otherwise take a CPU ahead of close.
        self.ctx.set_done();
    }

    fn serve_returned_before_trigger(&mut self) -> Ending {
        let ending = outcome::before_trigger(self.hooks.serve.as_mut().and_then(HookThread::take_result));
        if ending.result.is_ok() {
            self.log(Level::Info, "Server returned before any signal; no lame-duck needed");
        }
        ending
    }

    /// The error `shutdown` ended with, taken from the phase (for the close and the outcome).
    fn take_shutdown_error(&mut self) -> Option<HookError> {
        match &mut self.phase {
            Phase::ShuttingDown { error, .. } => error.take(),
            Phase::Closing { shutdown_error, .. } => shutdown_error.take(),
            Phase::Serving | Phase::Draining { .. } => None,
        }
    }

    /// The run's result, from what the hooks returned (see [`outcome::decide`]).
    fn finish(
        &mut self,
        close_reason: Option<CloseReason>,
        shutdown_error: Option<HookError>,
        abandoned: Vec<&'static str>,
    ) -> Ending {
        if !abandoned.is_empty() {
            self.shared.health.abandoned.store(true, Ordering::SeqCst);
        }
        outcome::decide(Facts {
            close_reason,
            shutdown_error,
            serve: self.hooks.serve.as_mut().and_then(HookThread::take_result),
            close: self.hooks.close.as_mut().and_then(HookThread::take_result),
            abandoned,
            close_timeout: self.shared.options.close_timeout,
        })
    }
}

/// Starts a hook: wakes its `parked` thread, or (should parking have failed at the start of the
/// run) a thread made now by `spawn`.
fn started(parked: Option<HookThread>, spawn: impl FnOnce() -> Result<HookThread, Error>) -> Result<HookThread, Error> {
    let mut thread = match parked {
        Some(thread) => thread,
        None => spawn()?,
    };
    thread.start();
    Ok(thread)
}
