//! The native half of the Node package (napi-rs).
//!
//! It converts; the lifecycle is the core's, and so is validation: an option the core rejects is
//! named in JS's spelling by [`js_option`], the one table of JS names. Everything the core does
//! that JS must see goes through one ThreadsafeFunction per run, in order, as an [`Event`]: log
//! lines, state changes, hook calls and the final result. That function keeps the event loop
//! alive while the run is active and is released when the run ends, so nothing of lameduck keeps
//! the process alive afterwards. A hook call blocks its core thread (never the JS thread) until
//! JS settles it with `settle()`. Signals are taken by JS with `process.on` and forwarded with
//! `deliverSignal()`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lameduck::{
    Context, Gate, GateError, HookError, OptionField, Options, RepeatSignalPolicy, Runner, Server, SignalOwner, State,
    UpgradeCommand,
};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

/// The options of one run, in JS's spelling and units (milliseconds, signal numbers). lib/runner.js
/// has checked their types and filled in the defaults; the values are the core's to judge.
#[napi(object)]
pub struct RunnerOptions {
    pub period: f64,
    pub signals: Vec<i32>,
    pub drain_delay: f64,
    pub close_timeout: f64,
    /// `force`, `ignore` or `exit`.
    pub repeat_signal: String,
    pub explicit_ready: bool,
    /// False when the JS logger is `false`: the core then has no logger at all (no log events).
    pub logging: bool,
    pub upgrade_signals: Vec<i32>,
    pub upgrade_timeout: f64,
    pub upgrade_command: Option<Vec<String>>,
    pub pid_file: Option<String>,
    pub listen_timeout: f64,
    pub upgrade_confirm: f64,
    pub upgrade_without_listeners: bool,
    /// The connection gate's initial limit; absent or 0: unlimited.
    pub max_connections: Option<u32>,
    /// The built-in health listener's address; absent: none.
    pub health: Option<String>,
    /// The adaptive drain's quiet time; 0: off.
    pub drain_quiet: f64,
}

/// One health answer, for a route on the server's own port.
#[napi(object)]
pub struct HealthReport {
    pub status: u32,
    pub content_type: String,
    pub body: String,
}

/// The method of JS's logger a line goes to (the core's `Level`).
#[napi(string_enum = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl From<lameduck::Level> for LogLevel {
    fn from(level: lameduck::Level) -> Self {
        match level {
            lameduck::Level::Debug => LogLevel::Debug,
            lameduck::Level::Info => LogLevel::Info,
            lameduck::Level::Warn => LogLevel::Warn,
            lameduck::Level::Error => LogLevel::Error,
        }
    }
}

/// The server hook the core calls.
#[napi(string_enum = "lowercase")]
pub enum Hook {
    Serve,
    Shutdown,
    Close,
}

impl Hook {
    fn name(&self) -> &'static str {
        match self {
            Hook::Serve => "serve",
            Hook::Shutdown => "shutdown",
            Hook::Close => "close",
        }
    }
}

/// Why a run failed: the core's error, for lib/runner.js to turn into a LameDuckError subclass.
#[napi(object)]
pub struct RunError {
    /// The core's error kind (`EXPIRED`, `FAILED`, …); the JS code is `LD_` + kind.
    pub kind: String,
    pub message: String,
    /// A hook did not settle within the close timeout and was left running.
    pub abandoned: bool,
    /// The id under which JS keeps the error a hook threw, when that is the cause.
    pub cause: Option<u32>,
}

impl From<lameduck::Error> for RunError {
    fn from(mut err: lameduck::Error) -> Self {
        // A hook's error carries the id JS keeps the thrown value under (see `settle`).
        let cause = err.take_cause().and_then(|mut c| c.take_payload()).and_then(|p| p.downcast::<u32>().ok()).map(|id| *id);
        RunError { kind: err.kind().name().into(), message: err.message().to_string(), abandoned: err.abandoned(), cause }
    }
}

/// What the core tells JS, one shape per kind (`event.kind` tells them apart).
#[napi(discriminant = "kind", discriminant_case = "lowercase")]
pub enum Event {
    /// A log line for the JS logger.
    Log { level: LogLevel, message: String },
    /// A state change, as the states' names.
    State { from: String, to: String },
    /// A hook call, to be answered with `settle(token, …)`.
    Hook { hook: Hook, token: u32 },
    /// The run is over: `error` is absent when it succeeded.
    Done { error: Option<RunError> },
}

/// What a hook threw (or rejected with), as `settle()` takes it.
#[napi(object)]
pub struct HookFailure {
    /// How JS describes the error (`Name: message`).
    pub message: String,
    /// The id under which JS keeps the error, handed back as the run's `RunError.cause`.
    pub cause: u32,
    /// True when shutdown reported that it ran out of time (a `TimeoutError`).
    pub deadline_exceeded: bool,
}

type Dispatch = ThreadsafeFunction<Event, (), Event, Status, false>;

/// What a hook thread waits for: JS's verdict on the hook call.
type Verdict = std::result::Result<(), HookError>;

/// State shared by the runner's threads: the dispatch function of the current run, the hook
/// calls waiting for JS, and the run's context (for `remaining()` and friends).
#[derive(Default)]
struct Bridge {
    dispatch: Mutex<Option<Arc<Dispatch>>>,
    pending: Mutex<HashMap<u32, Sender<Verdict>>>,
    next_token: AtomicU32,
    context: Mutex<Option<Context>>,
}

impl Bridge {
    fn send(&self, event: Event) -> bool {
        let dispatch = self.dispatch.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match dispatch {
            Some(d) => d.call(event, ThreadsafeFunctionCallMode::NonBlocking) == Status::Ok,
            None => false,
        }
    }

    /// Calls the JS hook and blocks this (core) thread until JS settles it.
    fn call_hook(&self, hook: Hook, ctx: Option<&Context>) -> Verdict {
        if let Some(ctx) = ctx {
            *self.context.lock().unwrap_or_else(PoisonError::into_inner) = Some(ctx.clone());
        }
        let name = hook.name();
        let token = self.next_token.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = channel();
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).insert(token, tx);
        if !self.send(Event::Hook { hook, token }) {
            self.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&token);
            return Err(HookError::new(1, format!("{name}: the JavaScript side is gone")));
        }
        rx.recv().unwrap_or_else(|_| Err(HookError::new(1, format!("{name}: abandoned by the JavaScript side"))))
    }
}

struct JsServer {
    bridge: Arc<Bridge>,
}

impl Server for JsServer {
    fn serve(&self, ctx: &Context) -> Verdict {
        self.bridge.call_hook(Hook::Serve, Some(ctx))
    }
    fn shutdown(&self, ctx: &Context) -> Verdict {
        self.bridge.call_hook(Hook::Shutdown, Some(ctx))
    }
    fn close(&self) -> Verdict {
        self.bridge.call_hook(Hook::Close, None)
    }
}

/// Milliseconds as a `Duration`. Only the conversion can fail here (JS checked that the value is
/// a finite, non-negative number; this keeps a NaN from panicking): a value too large for a
/// `Duration` saturates, and the core rejects it as above its maximum.
fn millis(name: &str, value: f64) -> Result<Duration> {
    if !value.is_finite() || value < 0.0 {
        return Err(Error::new(
            Status::InvalidArg,
            format!("{name}={value} is invalid: it must be a finite, non-negative number of milliseconds"),
        ));
    }
    Ok(Duration::try_from_secs_f64(value / 1000.0).unwrap_or(Duration::MAX))
}

/// `s` as `JSON.stringify` writes it, for messages (never Rust's Debug form).
fn json_string(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The JS name and value of the option a core validation error is about (the core names it by
/// [`OptionField`]), or None when the error names no option. This is the one table of JS
/// spellings; it is exhaustive, so a new core option does not build until it has a JS name.
fn js_option(err: &lameduck::Error, o: &RunnerOptions) -> Option<(&'static str, String)> {
    let list = |signals: &[i32]| format!("[{}]", signals.iter().map(i32::to_string).collect::<Vec<_>>().join(","));
    Some(match err.field()? {
        OptionField::Period => ("period", o.period.to_string()),
        OptionField::Signals => ("signals", list(&o.signals)),
        OptionField::DrainDelay => ("drainDelay", o.drain_delay.to_string()),
        OptionField::CloseTimeout => ("closeTimeout", o.close_timeout.to_string()),
        OptionField::RepeatSignal => ("repeatSignal", json_string(&o.repeat_signal)),
        OptionField::ExplicitReady => ("explicitReady", o.explicit_ready.to_string()),
        OptionField::UpgradeSignals => ("upgradeSignals", list(&o.upgrade_signals)),
        OptionField::UpgradeTimeout => ("upgradeTimeout", o.upgrade_timeout.to_string()),
        OptionField::UpgradeCommand => {
            let argv: Vec<String> = o.upgrade_command.iter().flatten().map(|a| json_string(a)).collect();
            ("upgradeCommand", format!("[{}]", argv.join(",")))
        }
        OptionField::PidFile => ("pidFile", json_string(o.pid_file.as_deref().unwrap_or_default())),
        OptionField::ListenTimeout => ("listenTimeout", o.listen_timeout.to_string()),
        OptionField::UpgradeConfirm => ("upgradeConfirm", o.upgrade_confirm.to_string()),
        OptionField::UpgradeWithoutListeners => ("upgradeWithoutListeners", o.upgrade_without_listeners.to_string()),
        OptionField::MaxConnections => {
            ("maxConnections", o.max_connections.map_or_else(|| "undefined".into(), |n| n.to_string()))
        }
        OptionField::HealthAddress => ("health", json_string(o.health.as_deref().unwrap_or_default())),
        OptionField::DrainQuiet => ("drainQuiet", o.drain_quiet.to_string()),
        // Set by the JS half itself (a function, or always host-owned signals): never invalid.
        OptionField::Logger | OptionField::StateObserver | OptionField::SignalOwner => return None,
    })
}

/// A core error on the options as a JS one (InvalidArg), naming the option as JS spells it.
fn invalid_option(err: lameduck::Error, o: &RunnerOptions) -> Error {
    match js_option(&err, o) {
        Some((name, value)) => Error::new(Status::InvalidArg, format!("{name}={value}: {}", err.message())),
        None => Error::new(Status::InvalidArg, err.message().to_string()),
    }
}

/// The core's options for `o`, with the JS logger and state observer going through `bridge`.
fn core_options(o: &RunnerOptions, bridge: &Arc<Bridge>) -> Result<Options> {
    let logger = o.logging.then(|| {
        let bridge = Arc::clone(bridge);
        Arc::new(move |level: lameduck::Level, message: &str| {
            bridge.send(Event::Log { level: level.into(), message: message.to_string() });
        }) as lameduck::Logger
    });
    let observer = {
        let bridge = Arc::clone(bridge);
        Arc::new(move |old: State, new: State| {
            bridge.send(Event::State { from: old.name().into(), to: new.name().into() });
        }) as lameduck::StateObserver
    };
    let upgrade_command =
        o.upgrade_command.as_ref().map(UpgradeCommand::from_argv).transpose().map_err(|e| invalid_option(e, o))?;
    Ok(Options {
        period: millis("period", o.period)?,
        signals: o.signals.clone(),
        drain_delay: millis("drainDelay", o.drain_delay)?,
        close_timeout: millis("closeTimeout", o.close_timeout)?,
        logger,
        repeat_signal: RepeatSignalPolicy::from_name(&o.repeat_signal).map_err(|e| invalid_option(e, o))?,
        state_observer: Some(observer),
        explicit_ready: o.explicit_ready,
        signal_owner: SignalOwner::Host,
        upgrade_signals: o.upgrade_signals.clone(),
        upgrade_timeout: millis("upgradeTimeout", o.upgrade_timeout)?,
        upgrade_command,
        pid_file: o.pid_file.as_ref().map(Into::into),
        listen_timeout: millis("listenTimeout", o.listen_timeout)?,
        upgrade_confirm: millis("upgradeConfirm", o.upgrade_confirm)?,
        upgrade_without_listeners: o.upgrade_without_listeners,
        max_connections: o.max_connections.map(|n| n as usize),
        health_address: o.health.clone(),
        drain_quiet: millis("drainQuiet", o.drain_quiet)?,
    })
}

/// The core runner, driven by `Runner` in lib/runner.js.
#[napi]
pub struct NativeRunner {
    runner: Arc<Runner>,
    bridge: Arc<Bridge>,
}

#[napi]
impl NativeRunner {
    /// Hands the options to the core, which validates them; throws (InvalidArg) naming the bad
    /// option as JS spells it, before anything starts.
    #[napi(constructor)]
    pub fn new(options: RunnerOptions) -> Result<Self> {
        let bridge = Arc::new(Bridge::default());
        let core = core_options(&options, &bridge)?;
        let server = Arc::new(JsServer { bridge: Arc::clone(&bridge) });
        let runner = Runner::new(server, core).map_err(|e| invalid_option(e, &options))?;
        Ok(NativeRunner { runner: Arc::new(runner), bridge })
    }

    /// Starts the run on a thread of its own; every event, then `done`, goes to `dispatch`
    /// on the JS thread. Never blocks the event loop.
    #[napi(ts_args_type = "dispatch: (event: Event) => void")]
    pub fn run(&self, dispatch: Dispatch) -> Result<()> {
        let dispatch = Arc::new(dispatch);
        {
            let mut current = self.bridge.dispatch.lock().unwrap_or_else(PoisonError::into_inner);
            if current.is_some() {
                return Err(Error::new(Status::GenericFailure, "the runner is already running"));
            }
            *current = Some(Arc::clone(&dispatch));
        }
        let (runner, bridge) = (Arc::clone(&self.runner), Arc::clone(&self.bridge));
        std::thread::Builder::new()
            .name("lameduck-run".into())
            .spawn(move || {
                bridge.send(Event::Done { error: runner.run().err().map(RunError::from) });
                // Release the run's dispatch function: from now on nothing of lameduck keeps
                // the event loop alive (an abandoned hook thread holds only the bridge).
                bridge.dispatch.lock().unwrap_or_else(PoisonError::into_inner).take();
                drop(dispatch);
            })
            .map_err(|e| Error::new(Status::GenericFailure, format!("could not start the run thread: {e}")))?;
        Ok(())
    }

    /// JS's verdict on a hook call: `failure` is absent when the hook succeeded.
    #[napi]
    pub fn settle(&self, token: u32, failure: Option<HookFailure>) {
        let sender = self.bridge.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&token);
        let Some(sender) = sender else { return };
        let verdict = match failure {
            None => Ok(()),
            Some(f) => {
                let err = if f.deadline_exceeded { HookError::deadline_exceeded() } else { HookError::new(1, f.message) };
                Err(err.with_payload(Box::new(f.cause)))
            }
        };
        let _ = sender.send(verdict);
    }

    /// Upgrades on a libuv worker thread (never blocking the event loop); resolves to the
    /// outcome, which lib/runner.js turns into the new pid or an error.
    #[napi(ts_return_type = "Promise<UpgradeOutcome>")]
    pub fn upgrade(&self) -> AsyncTask<UpgradeTask> {
        AsyncTask::new(UpgradeTask { runner: Arc::clone(&self.runner) })
    }

    /// Starts lame-duck like a trigger signal.
    #[napi]
    pub fn stop(&self) {
        self.runner.stop();
    }

    /// Hands the core a trigger signal caught with `process.on` (the repeat-signal policy may
    /// end the process).
    #[napi]
    pub fn deliver_signal(&self, signal: i32) -> Result<()> {
        self.runner.deliver_signal(signal).map_err(|e| Error::new(Status::InvalidArg, e.message().to_string()))
    }

    /// The state's name.
    #[napi(getter)]
    pub fn state(&self) -> String {
        self.runner.state().name().into()
    }

    /// The health answer for a request path (never blocks).
    #[napi]
    pub fn health(&self, path: String) -> HealthReport {
        let report = self.runner.health(&path);
        HealthReport { status: u32::from(report.status), content_type: report.content_type.into(), body: report.body }
    }

    /// Where the built-in health listener listens, while it does.
    #[napi(getter)]
    pub fn health_address(&self) -> Option<String> {
        self.runner.health_address()
    }

    /// Milliseconds left until the deadline; null before lame-duck; 0 once done.
    #[napi]
    pub fn remaining(&self) -> Option<f64> {
        self.context().and_then(|c| c.remaining()).map(|d| d.as_secs_f64() * 1000.0)
    }

    /// The deadline as a Unix timestamp in milliseconds (like `Date.now()`), or null.
    #[napi]
    pub fn deadline(&self) -> Option<f64> {
        let left = self.context()?.remaining()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Some((now + left).as_secs_f64() * 1000.0)
    }

    /// True once the deadline passed or a repeated signal forced the close.
    #[napi]
    pub fn done(&self) -> bool {
        self.context().is_some_and(|c| c.is_done())
    }

    /// Reports that serve is listening.
    #[napi]
    pub fn ready(&self) {
        if let Some(c) = self.context() {
            c.ready();
        }
    }

    /// The run's connection gate (the same one the hooks' context carries).
    #[napi]
    pub fn gate(&self) -> NativeGate {
        NativeGate { gate: Arc::clone(self.runner.gate()) }
    }

    fn context(&self) -> Option<Context> {
        self.bridge.context.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Makes the listening socket `fd` drop new connection attempts while queued ones can still
/// be accepted (see the core's `listener` module). Only for listeners this process owns alone.
#[napi]
pub fn stop_accepting(fd: i32) -> Result<()> {
    lameduck::listener::stop_accepting(fd).map_err(|e| Error::new(Status::GenericFailure, format!("stopAccepting(fd={fd}): {e}")))
}

/// True when the listening socket `fd` has a connection waiting to be accepted.
#[napi]
pub fn has_pending_connection(fd: i32) -> Result<bool> {
    lameduck::listener::has_pending_connection(fd)
        .map_err(|e| Error::new(Status::GenericFailure, format!("hasPendingConnection(fd={fd}): {e}")))
}

/// Stops the listening socket `fd` at once (see the core's `listener::shut`): accepts what is
/// still queued, then stops it listening, so new connection attempts are refused at once and
/// none was reset. Returns the accepted connections' descriptors, in queue order, JS's to serve
/// and close (lib/http.js opens a handle on each). Only for listeners this process owns alone,
/// once nothing else accepts on them.
#[napi]
pub fn shut(fd: i32) -> Result<Vec<i32>> {
    use std::os::fd::IntoRawFd;
    let taken = lameduck::listener::shut(fd).map_err(|e| Error::new(Status::GenericFailure, format!("shut(fd={fd}): {e}")))?;
    Ok(taken.into_iter().map(IntoRawFd::into_raw_fd).collect())
}

/// A listening socket's descriptor for `address`: inherited (systemd LISTEN_FDS,
/// Server::Starter) or fresh. JS owns it (lib/listen.js hands it to `server.listen({ fd })`).
#[napi]
pub fn listen(address: String, name: Option<String>) -> Result<i32> {
    use std::os::fd::IntoRawFd;
    lameduck::listener::listen(&address, name.as_deref()).map(|fd| fd.into_raw_fd()).map_err(|e| {
        let status = if e.kind() == lameduck::ErrorKind::InvalidArgument { Status::InvalidArg } else { Status::GenericFailure };
        Error::new(status, e.message().to_string())
    })
}

/// Registers the listening socket `fd`, bound by other means, so that an upgrade hands it on
/// like one from `listen`. The descriptor stays JS's (the server that listens on it).
#[napi]
pub fn adopt(fd: i32, name: Option<String>) -> Result<()> {
    lameduck::listener::adopt(fd, name.as_deref()).map_err(|e| {
        let status = if e.kind() == lameduck::ErrorKind::InvalidArgument { Status::InvalidArg } else { Status::GenericFailure };
        Error::new(status, e.message().to_string())
    })
}

/// True when `fd` was inherited through `listen` (shared with other processes).
#[napi]
pub fn is_inherited(fd: i32) -> bool {
    lameduck::listener::is_inherited(fd)
}

/// True when `fd` is shared with other processes: inherited, or handed on by an upgrade.
#[napi]
pub fn is_shared(fd: i32) -> bool {
    lameduck::listener::is_shared(fd)
}

/// True when this process owns the listening socket `fd` alone, so shutdown should drain it
/// (the core's one answer; `isShared` is its negation).
#[napi]
pub fn should_drain(fd: i32) -> bool {
    lameduck::listener::should_drain(fd)
}

/// What an upgrade came to (`outcome.kind` tells them apart).
#[napi(discriminant = "kind", discriminant_case = "lowercase")]
pub enum UpgradeOutcome {
    /// The new process took over; this run is entering lame-duck.
    Upgraded { pid: u32 },
    /// The upgrade failed or was refused: the core's error kind (`UPGRADE_FAILED`, `BUSY`, …)
    /// and message.
    Failed { error: String, message: String },
}

/// `Runner::upgrade`, which blocks, run on the libuv thread pool.
pub struct UpgradeTask {
    runner: Arc<Runner>,
}

impl Task for UpgradeTask {
    type Output = UpgradeOutcome;
    type JsValue = UpgradeOutcome;

    fn compute(&mut self) -> Result<Self::Output> {
        Ok(match self.runner.upgrade() {
            Ok(pid) => UpgradeOutcome::Upgraded { pid },
            Err(e) => UpgradeOutcome::Failed { error: e.kind().name().into(), message: e.message().to_string() },
        })
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output)
    }
}

/// The run's connection gate, for lib/gate.js. Per connection, never per request: the http
/// adapter calls `try_acquire` once when it accepts and `release` once when the socket closes.
#[napi]
pub struct NativeGate {
    gate: Arc<Gate>,
}

/// The gate's counts (`GateStats`), in JS's spelling; `limit` is null when unlimited.
#[napi(object)]
pub struct NativeGateStats {
    pub limit: Option<u32>,
    pub admitted: u32,
    pub waiting: u32,
    pub total: f64,
    pub peak: u32,
    /// `open`, `draining` or `closed`.
    pub phase: String,
}

fn saturated(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[napi]
impl NativeGate {
    /// A permit if a slot is free now; null when the gate is full. Throws an error whose code
    /// is `GATE_CLOSED` when lame-duck admits nothing (for `queued`: once close was called).
    /// `queued`: the connection is already accepted or waiting in the accept queue (see the
    /// core's `Gate::try_acquire_queued`), which lame-duck still admits within the limit.
    #[napi]
    pub fn try_acquire(&self, queued: bool) -> Result<Option<NativePermit>> {
        let attempt = if queued { self.gate.try_acquire_queued() } else { self.gate.try_acquire() };
        match attempt {
            Ok(permit) => Ok(Some(NativePermit { permit: Some(permit) })),
            Err(GateError::Full) => Ok(None),
            Err(err) => Err(Error::new(Status::GenericFailure, format!("GATE_CLOSED: {err}"))),
        }
    }

    /// Sets the limit (0: unlimited; lib/gate.js checked the value) and returns the free slots
    /// before the change, null when it was unlimited.
    #[napi]
    pub fn set_limit(&self, limit: u32) -> Result<Option<u32>> {
        let limit = (limit > 0).then_some(limit as usize);
        self.gate.set_limit(limit).map(|free| free.map(saturated)).map_err(|e| Error::new(Status::InvalidArg, e.to_string()))
    }

    /// Free slots now; null when unlimited. Lock-free.
    #[napi(getter)]
    pub fn free(&self) -> Option<u32> {
        self.gate.free().map(saturated)
    }

    /// The limit now; null when unlimited. Lock-free.
    #[napi(getter)]
    pub fn limit(&self) -> Option<u32> {
        self.gate.limit().map(saturated)
    }

    /// `open`, `draining` or `closed`. Lock-free.
    #[napi(getter)]
    pub fn phase(&self) -> String {
        self.gate.phase().name().into()
    }

    /// The counts, read without the lock.
    #[napi]
    pub fn stats(&self) -> NativeGateStats {
        let s = self.gate.stats();
        NativeGateStats {
            limit: s.limit.map(saturated),
            admitted: saturated(s.admitted),
            waiting: saturated(s.waiting),
            total: s.total as f64,
            peak: saturated(s.peak),
            phase: s.phase.name().into(),
        }
    }
}

/// One admitted connection's slot. `release` gives it back (once; later calls do nothing); a
/// permit JS drops without releasing gives it back when it is garbage-collected.
#[napi]
pub struct NativePermit {
    permit: Option<lameduck::Permit>,
}

#[napi]
impl NativePermit {
    /// Gives the slot back; true the first time, false afterwards.
    #[napi]
    pub fn release(&mut self) -> bool {
        self.permit.take().is_some()
    }
}

/// A close-on-exec copy of the descriptor `fd` (the http adapter keeps the listening socket
/// open under a number of its own while Node's handle on another copy is closed: see
/// lib/http.js).
#[napi]
pub fn dup_fd(fd: i32) -> Result<i32> {
    use std::os::fd::{BorrowedFd, IntoRawFd};
    if fd < 0 {
        return Err(Error::new(Status::InvalidArg, format!("dupFd(fd={fd}): not a descriptor")));
    }
    // SAFETY: only borrowed for the duration of the call; the copy is a new descriptor.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed
        .try_clone_to_owned()
        .map(IntoRawFd::into_raw_fd)
        .map_err(|e| Error::new(Status::GenericFailure, format!("dupFd(fd={fd}): {e}")))
}
