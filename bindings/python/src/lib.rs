//! `lameduck._lameduck`: the native half of the Python package.
//!
//! It converts and nothing more: Python objects become a `lameduck::Server`, seconds become
//! `Duration`s, keyword options become `lameduck::Options` (validated by the core alone, whose
//! errors name the `OptionField`, spelled here by [`python_name`]), core errors become a
//! `RunFailure` the Python half turns into `LameDuckError` subclasses (with the hook's own
//! exception as `__cause__`). The lifecycle is the core's.
//! Signals are owned by the Python half (`signal.signal` / `loop.add_signal_handler`), which
//! forwards them with `NativeRunner.deliver_signal`; the core installs no handler here.
//!
//! The core's threads (hook threads, the coordinator) never run Python code that may block:
//! CPython (3.9–3.13) ends a thread that wants the GIL back while the interpreter finalizes
//! with `pthread_exit`, whose unwinding through Rust frames aborts the process (SIGABRT in
//! `PyGILState_Release`). So a hook runs on a thread Python starts (`_thread`), and the core's
//! hook thread only waits for its outcome, holding no GIL and touching no Python object; once
//! `atexit` ran, no native thread enters Python at all.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lameduck::{Context, HookError, Level, OptionField, Options, RepeatSignalPolicy, Runner, Server, SignalOwner, State};
use pyo3::exceptions::{PyBaseException, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::BoundObject;

/// Keeps the core's threads out of Python once the interpreter exits. `exiting` is set by an
/// `atexit` callback, which runs before the interpreter starts finalizing and waits until no
/// core thread is `inside` Python: so none can be there, or be waiting for the GIL, once
/// finalizing began (on 3.13+ pyo3's `try_attach` also checks `Py_IsFinalizing`).
struct ExitGate {
    exiting: bool,
    inside: usize,
}

static EXIT_GATE: Mutex<ExitGate> = Mutex::new(ExitGate { exiting: false, inside: 0 });
static EXIT_GATE_LEFT: Condvar = Condvar::new();

fn exit_gate() -> std::sync::MutexGuard<'static, ExitGate> {
    EXIT_GATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registered with `atexit` when the module is imported. The wait is bounded: a log handler or
/// state callback stuck at exit (say, on a loop that no longer runs) must not hang the exit.
#[pyfunction]
fn _interpreter_exiting(py: Python<'_>) {
    py.detach(|| {
        let mut gate = exit_gate();
        gate.exiting = true;
        let _ = EXIT_GATE_LEFT.wait_timeout_while(gate, Duration::from_secs(2), |g| g.inside > 0);
    });
}

/// Runs `f` attached to the interpreter, unless it is exiting (then None). Only for the core's
/// threads (which otherwise never touch Python); `f` must not block for long, since the
/// interpreter's exit waits for it.
fn attach_unless_exiting<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    {
        let mut gate = exit_gate();
        if gate.exiting {
            return None;
        }
        gate.inside += 1;
    }
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            exit_gate().inside -= 1;
            EXIT_GATE_LEFT.notify_all();
        }
    }
    let _leave = Leave;
    Python::try_attach(f)
}

/// A value as Python's `repr` writes it (`nan`, `1e+20`, `'text'`, `['a', 'b']`), for messages.
fn py_repr<'py, T: IntoPyObject<'py>>(py: Python<'py>, value: T) -> String {
    value
        .into_pyobject(py)
        .map_err(Into::into)
        .and_then(|v| v.into_any().into_bound().repr().map(|r| r.to_string()))
        .unwrap_or_else(|_| "<unprintable>".into())
}

/// Seconds (a float from Python) as a `Duration`, or a ValueError naming the argument.
fn seconds(py: Python<'_>, name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!(
            "{name}={} is invalid: it must be a finite, non-negative number of seconds",
            py_repr(py, value)
        ))
    })
}

/// The keyword argument of `lameduck.Runner` for each option: the one table of this binding's
/// spellings. `None` for an option Python does not offer (the Python half owns the signals).
fn python_name(field: OptionField) -> Option<&'static str> {
    Some(match field {
        OptionField::Period => "period",
        OptionField::Signals => "signals",
        OptionField::DrainDelay => "drain_delay",
        OptionField::CloseTimeout => "close_timeout",
        OptionField::Logger => "logger",
        OptionField::RepeatSignal => "repeat_signal",
        OptionField::StateObserver => "on_state_change",
        OptionField::ExplicitReady => "explicit_ready",
        OptionField::SignalOwner => return None,
        OptionField::UpgradeSignals => "upgrade_signals",
        OptionField::UpgradeTimeout => "upgrade_timeout",
        OptionField::UpgradeCommand => "upgrade_command",
        OptionField::PidFile => "pid_file",
        OptionField::ListenTimeout => "listen_timeout",
        OptionField::UpgradeConfirm => "upgrade_confirm",
        OptionField::UpgradeWithoutListeners => "upgrade_without_listeners",
        OptionField::MaxConnections => "max_connections",
        OptionField::HealthAddress => "health",
        OptionField::DrainQuiet => "drain_quiet",
    })
}

/// The keyword options given to `NativeRunner`, read by [`OptionField`] through
/// [`python_name`]. An option that is absent keeps the core's default.
struct Given<'a, 'py> {
    options: Option<&'a Bound<'py, PyDict>>,
}

impl<'py> Given<'_, 'py> {
    /// Refuses a keyword that names no option (a typo in the Python half).
    fn check_names(&self) -> PyResult<()> {
        for key in self.options.iter().flat_map(|d| d.keys()) {
            let key: String = key.extract()?;
            if !OptionField::ALL.iter().any(|f| python_name(*f) == Some(key.as_str())) {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!("{key:?} is not an option")));
            }
        }
        Ok(())
    }

    fn raw(&self, field: OptionField) -> PyResult<Option<Bound<'py, PyAny>>> {
        match (self.options, python_name(field)) {
            (Some(options), Some(name)) => options.get_item(name),
            _ => Ok(None),
        }
    }

    fn get<T: FromPyObjectOwned<'py>>(&self, field: OptionField) -> PyResult<Option<T>> {
        self.raw(field)?.map(|v| v.extract::<T>().map_err(Into::into)).transpose()
    }

    /// Stores the option in `target` when it was given.
    fn set<T: FromPyObjectOwned<'py>>(&self, field: OptionField, target: &mut T) -> PyResult<()> {
        if let Some(value) = self.get(field)? {
            *target = value;
        }
        Ok(())
    }

    /// Stores the option, a number of seconds, in `target` when it was given.
    fn set_seconds(&self, py: Python<'py>, field: OptionField, target: &mut Duration) -> PyResult<()> {
        if let Some(value) = self.get::<f64>(field)? {
            *target = seconds(py, python_name(field).unwrap_or_default(), value)?;
        }
        Ok(())
    }

    /// A core error as a ValueError; one about an option names the argument and its value.
    fn invalid(&self, err: lameduck::Error) -> PyErr {
        let named = err.field().and_then(|f| Some((python_name(f)?, self.raw(f).ok()??)));
        match named {
            Some((name, value)) => PyValueError::new_err(format!("{name}={}: {}", py_repr(value.py(), value), err.message())),
            None => PyValueError::new_err(err.message().to_string()),
        }
    }
}

fn optional_seconds(py: Python<'_>, name: &str, value: Option<f64>) -> PyResult<Option<Duration>> {
    value.map(|v| seconds(py, name, v)).transpose()
}

/// `time.monotonic()` for an `Instant`: both read CLOCK_MONOTONIC on Linux.
fn monotonic_seconds(at: Instant) -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let now_secs = now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9;
    let instant_now = Instant::now();
    if at >= instant_now {
        now_secs + (at - instant_now).as_secs_f64()
    } else {
        now_secs - (instant_now - at).as_secs_f64()
    }
}

/// The run's context as hooks see it (wrapped by `lameduck.Context` in Python).
#[pyclass(frozen, name = "NativeContext", module = "lameduck._lameduck")]
struct PyContext {
    ctx: Context,
}

#[pymethods]
impl PyContext {
    /// Seconds left until the deadline; None before lame-duck; 0.0 once done.
    fn remaining(&self) -> Option<f64> {
        self.ctx.remaining().map(|d| d.as_secs_f64())
    }

    /// The deadline as a `time.monotonic()` value, or None before lame-duck.
    #[getter]
    fn deadline(&self) -> Option<f64> {
        self.ctx.deadline().map(monotonic_seconds)
    }

    /// True once the deadline passed or a repeated signal forced the close.
    #[getter]
    fn done(&self) -> bool {
        self.ctx.is_done()
    }

    /// Blocks (without holding the GIL) until done or `timeout` seconds pass; returns `done`.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = optional_seconds(py, "timeout", timeout)?;
        Ok(py.detach(|| self.ctx.wait(timeout)))
    }

    /// Reports that serve is bound and accepting.
    fn ready(&self) {
        self.ctx.ready();
    }

    /// The run's connection gate (the runner's).
    #[getter]
    fn gate(&self) -> PyGate {
        PyGate { gate: Arc::clone(self.ctx.gate()) }
    }
}

/// The gate's `GATE_CLOSED` refusal as `lameduck.GateClosedError` (defined by the Python half,
/// so that it is a `LameDuckError` like every other error of a run).
fn gate_closed(py: Python<'_>) -> PyErr {
    let make = || -> PyResult<PyErr> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("kind", lameduck::ErrorKind::GateClosed.name())?;
        let class = py.import("lameduck.errors")?.getattr("GateClosedError")?;
        let message = lameduck::GateError::Closed.to_string();
        Ok(PyErr::from_value(class.call((message,), Some(&kwargs))?))
    };
    make().unwrap_or_else(|err| err)
}

/// A gate error as the Python exception `lameduck.Gate` documents.
fn gate_error(py: Python<'_>, err: lameduck::GateError, timeout: Option<f64>) -> PyErr {
    use lameduck::GateError;
    match err {
        GateError::Closed => gate_closed(py),
        GateError::TimedOut => PyTimeoutError::new_err(format!(
            "no connection slot became free within {}s",
            timeout.map(|t| py_repr(py, t)).unwrap_or_else(|| "the timeout".into())
        )),
        GateError::Full => pyo3::exceptions::PyBlockingIOError::new_err(err.to_string()),
        GateError::InvalidLimit(_) => PyValueError::new_err(format!("max_connections: {err}")),
    }
}

/// True on the process's main thread (its thread id is the pid), where Python runs signal
/// handlers: a blocking acquire there wakes now and then to let them run.
fn on_main_thread() -> bool {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() == lameduck::sys::thread_id() }
}

/// How often a blocking acquire on the main thread checks for Python signal handlers to run.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// How long one native wait may last: until `deadline`, and on the main thread at most
/// [`SIGNAL_CHECK`], so that Python's signal handlers (and Ctrl-C) run in between.
fn next_wake(main: bool, deadline: Option<Instant>) -> Option<Instant> {
    if !main {
        return deadline;
    }
    let tick = Instant::now() + SIGNAL_CHECK;
    Some(deadline.map_or(tick, |d| d.min(tick)))
}

/// The run's connection gate (wrapped by `lameduck.Gate` in Python): the limit, the counts, and
/// permits. Every method may be called from any thread; the blocking ones release the GIL.
#[pyclass(frozen, name = "NativeGate", module = "lameduck._lameduck")]
struct PyGate {
    gate: Arc<lameduck::Gate>,
}

#[pymethods]
impl PyGate {
    /// The limit, or None when unlimited. Lock-free.
    #[getter]
    fn limit(&self) -> Option<usize> {
        self.gate.limit()
    }

    /// Free slots now, or None when unlimited. Lock-free.
    #[getter]
    fn free(&self) -> Option<usize> {
        self.gate.free()
    }

    /// Connections admitted and not yet released. Lock-free.
    #[getter]
    fn admitted(&self) -> usize {
        self.gate.admitted()
    }

    /// `open`, `draining` (lame-duck) or `closed`. Lock-free.
    #[getter]
    fn phase(&self) -> &'static str {
        self.gate.phase().name()
    }

    /// Sets the limit (None or 0: unlimited); returns the free slots before the change (None:
    /// it was unlimited). The Python half checks the type and the range first.
    #[pyo3(signature = (limit))]
    fn set_limit(&self, py: Python<'_>, limit: Option<usize>) -> PyResult<Option<usize>> {
        self.gate.set_limit(limit).map_err(|e| gate_error(py, e, None))
    }

    /// `(limit, admitted, waiting, total, peak, phase)`, read without the lock.
    fn stats(&self) -> (Option<usize>, usize, usize, u64, usize, &'static str) {
        let s = self.gate.stats();
        (s.limit, s.admitted, s.waiting, s.total, s.peak, s.phase.name())
    }

    /// Waits (without the GIL) for a free slot, at most `timeout` seconds (None: no limit);
    /// `queued` admits a connection already in the accept queue during lame-duck too.
    /// TimeoutError, or GateClosedError (at once in lame-duck for a new connection).
    #[pyo3(signature = (timeout=None, queued=false))]
    fn acquire(&self, py: Python<'_>, timeout: Option<f64>, queued: bool) -> PyResult<PyPermit> {
        let wait = optional_seconds(py, "timeout", timeout)?;
        let deadline = wait.and_then(|w| Instant::now().checked_add(w));
        let gate = &self.gate;
        let admit = |until: Option<Instant>| if queued { gate.acquire_queued(until) } else { gate.acquire(until) };
        if let Ok(permit) = if queued { gate.try_acquire_queued() } else { gate.try_acquire() } {
            return Ok(PyPermit::new(permit));
        }
        let main = on_main_thread();
        loop {
            let until = next_wake(main, deadline);
            match py.detach(|| admit(until)) {
                Ok(permit) => return Ok(PyPermit::new(permit)),
                Err(lameduck::GateError::TimedOut) if deadline.is_none_or(|d| Instant::now() < d) => py.check_signals()?,
                Err(err) => return Err(gate_error(py, err, timeout)),
            }
        }
    }

    /// A permit if a slot is free now, else None. GateClosedError in lame-duck (for a new
    /// connection; `queued` admits one already in the accept queue while draining).
    #[pyo3(signature = (queued=false))]
    fn try_acquire(&self, py: Python<'_>, queued: bool) -> PyResult<Option<PyPermit>> {
        match if queued { self.gate.try_acquire_queued() } else { self.gate.try_acquire() } {
            Ok(permit) => Ok(Some(PyPermit::new(permit))),
            Err(lameduck::GateError::Full) => Ok(None),
            Err(err) => Err(gate_error(py, err, None)),
        }
    }

    /// Waits (without the GIL) until no permit is out, at most `timeout` seconds; True when
    /// empty.
    #[pyo3(signature = (timeout=None))]
    fn wait_empty(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let wait = optional_seconds(py, "timeout", timeout)?;
        let deadline = wait.and_then(|w| Instant::now().checked_add(w));
        if self.gate.admitted() == 0 {
            return Ok(true);
        }
        let main = on_main_thread();
        loop {
            let until = next_wake(main, deadline);
            if py.detach(|| self.gate.wait_empty(until)) {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            py.check_signals()?;
        }
    }

    /// The descriptors of the open connections whose permits were tagged (`Permit.attach_fd`),
    /// in admission order.
    fn open_fds(&self) -> Vec<i32> {
        self.gate.open_fds()
    }

    fn __repr__(&self) -> String {
        let s = self.gate.stats();
        let limit = s.limit.map_or_else(|| "None".to_string(), |l| l.to_string());
        format!("<lameduck.Gate limit={limit} admitted={} waiting={} phase={}>", s.admitted, s.waiting, s.phase.name())
    }
}

/// One admitted connection's slot, given back by `release()` (idempotent), by leaving a `with`
/// block, or when the object is garbage-collected.
#[pyclass(frozen, name = "Permit", module = "lameduck")]
struct PyPermit {
    permit: Mutex<Option<lameduck::Permit>>,
}

impl PyPermit {
    fn new(permit: lameduck::Permit) -> PyPermit {
        PyPermit { permit: Mutex::new(Some(permit)) }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<lameduck::Permit>> {
        self.permit.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[pymethods]
impl PyPermit {
    /// Gives the slot back; True the first time, False afterwards.
    fn release(&self) -> bool {
        let permit = self.slot().take();
        permit.map(lameduck::Permit::release).is_some()
    }

    /// True once the slot was given back.
    #[getter]
    fn released(&self) -> bool {
        self.slot().is_none()
    }

    /// Records `fd` as this connection's descriptor, for `Gate.open_fds()`. Release the permit
    /// before closing the descriptor. ValueError once released.
    fn attach_fd(&self, fd: i32) -> PyResult<()> {
        match self.slot().as_mut() {
            Some(permit) => {
                permit.attach_fd(fd);
                Ok(())
            }
            None => Err(PyValueError::new_err("attach_fd: the permit was already released")),
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> bool {
        self.release();
        false
    }

    fn __repr__(&self) -> String {
        format!("<lameduck.Permit {}>", if self.released() { "released" } else { "held" })
    }
}

/// One hook call's outcome: set once (by the Python thread that ran the hook, or by the event
/// loop for a coroutine), awaited by the core's hook thread without the GIL.
struct Outcome {
    /// `(reported, result)`: the first report wins; `wait` takes the result.
    slot: Mutex<(bool, Option<Result<(), HookError>>)>,
    set: Condvar,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome { slot: Mutex::new((false, None)), set: Condvar::new() }
    }

    fn set(&self, result: Result<(), HookError>) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if !slot.0 {
            *slot = (true, Some(result));
            self.set.notify_all();
        }
    }

    fn wait(&self) -> Result<(), HookError> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(result) = slot.1.take() {
                return result;
            }
            slot = self.set.wait(slot).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// What the Python half calls once a hook is over: `done(None)` when it returned, `done(exc)`
/// with what it raised. Dropped uncalled (a coroutine's task destroyed while pending), it
/// reports that instead of leaving the core waiting.
#[pyclass(frozen, name = "HookDone", module = "lameduck._lameduck")]
struct PyHookDone {
    hook: &'static str,
    outcome: Arc<Outcome>,
}

#[pymethods]
impl PyHookDone {
    #[pyo3(signature = (error))]
    fn __call__(&self, py: Python<'_>, error: Option<Bound<'_, PyBaseException>>) {
        self.outcome.set(match error {
            None => Ok(()),
            Some(exc) => Err(hook_error(py, self.hook, PyErr::from_value(exc.into_any()))),
        });
    }
}

impl Drop for PyHookDone {
    fn drop(&mut self) {
        self.outcome.set(Err(HookError::new(1, format!("{} ended without reporting an outcome", self.hook))));
    }
}

/// A Python object with `serve(ctx)`, `shutdown(ctx)` and `close()`, reached through the Python
/// half's bridge (`_Bridge.run_hook`, which also runs coroutine hooks on the event loop).
struct PyServer {
    bridge: Py<PyAny>,
}

impl PyServer {
    /// Starts the hook on a new Python thread and waits for its outcome without touching Python,
    /// so a hook abandoned past the close timeout leaves nothing here that could need the GIL
    /// while the interpreter finalizes.
    fn call(&self, hook: &'static str, ctx: Option<&Context>) -> Result<(), HookError> {
        let outcome = Arc::new(Outcome::new());
        let started = attach_unless_exiting(|py| {
            let start = || -> PyResult<()> {
                let done = Py::new(py, PyHookDone { hook, outcome: Arc::clone(&outcome) })?;
                let ctx = ctx.map(|ctx| Py::new(py, PyContext { ctx: ctx.clone() })).transpose()?;
                let target = self.bridge.bind(py).getattr("run_hook")?;
                // A builtin, so no Python bytecode (which could give the GIL away) runs here.
                py.import("_thread")?.getattr("start_new_thread")?.call1((target, (hook, ctx, done)))?;
                Ok(())
            };
            start().map_err(|err| hook_error(py, hook, err))
        });
        match started {
            None => Err(HookError::new(1, format!("{hook} was not called: the Python interpreter is exiting"))),
            Some(Err(err)) => Err(err),
            Some(Ok(())) => outcome.wait(),
        }
    }
}

/// A Python exception from a hook, kept whole (traceback included) as the error's payload.
/// In `shutdown`, `TimeoutError` means "the deadline passed" (Go's DeadlineExceeded).
fn hook_error(py: Python<'_>, hook: &str, err: PyErr) -> HookError {
    if hook == "shutdown" && err.is_instance_of::<PyTimeoutError>(py) {
        return HookError::deadline_exceeded().with_payload(Box::new(err));
    }
    let type_name = err.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
    let text = err.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    let message = if text.is_empty() { type_name } else { format!("{type_name}: {text}") };
    HookError::new(1, message).with_payload(Box::new(err))
}

impl Server for PyServer {
    fn serve(&self, ctx: &Context) -> Result<(), HookError> {
        self.call("serve", Some(ctx))
    }
    fn shutdown(&self, ctx: &Context) -> Result<(), HookError> {
        self.call("shutdown", Some(ctx))
    }
    fn close(&self) -> Result<(), HookError> {
        self.call("close", None)
    }
}

/// Python's logging levels for the core's.
fn python_level(level: Level) -> i32 {
    match level {
        Level::Debug => 10,
        Level::Info => 20,
        Level::Warn => 30,
        Level::Error => 40,
    }
}

/// The logger option: log lines go to `logger.log(level, message)`, on the core's coordinator
/// thread (the one in `NativeRunner.run`, without the GIL).
fn python_logger(logger: Py<PyAny>) -> lameduck::Logger {
    Arc::new(move |level: Level, message: &str| {
        attach_unless_exiting(|py| {
            if let Err(err) = logger.bind(py).call_method1("log", (python_level(level), message)) {
                err.write_unraisable(py, None);
            }
        });
    })
}

/// The `on_state_change` option: called with `(old, new)` state names, on the coordinator thread.
fn python_observer(callback: Py<PyAny>) -> lameduck::StateObserver {
    Arc::new(move |old: State, new: State| {
        attach_unless_exiting(|py| {
            if let Err(err) = callback.bind(py).call1((old.name(), new.name())) {
                err.write_unraisable(py, None);
            }
        });
    })
}

/// The core runner, driven by `lameduck.Runner`.
#[pyclass(frozen, name = "NativeRunner", module = "lameduck._lameduck")]
struct PyRunner {
    runner: Runner,
}

/// A failed run or upgrade as the Python half receives it (`lameduck.errors._from_native`
/// makes the exception): the core's `Error`, field by field, with the hook's own exception.
#[pyclass(frozen, get_all, name = "RunFailure", module = "lameduck._lameduck")]
struct RunFailure {
    /// The `ErrorKind` name: `EXPIRED`, `FAILED`, …
    kind: &'static str,
    /// The failing hook's return code (1 for a Python hook that raised; 0 when none failed).
    code: i32,
    /// The core's message (Go's texts).
    message: String,
    /// True when a hook was left running past the close timeout.
    abandoned: bool,
    /// The hook's own exception, if the failure came from one.
    cause: Option<Py<PyAny>>,
}

impl RunFailure {
    fn from_error(py: Python<'_>, mut err: lameduck::Error) -> RunFailure {
        let cause = err
            .take_cause()
            .and_then(|mut c| c.take_payload())
            .and_then(|p| p.downcast::<PyErr>().ok())
            .map(|e| e.into_value(py).into_any());
        RunFailure {
            kind: err.kind().name(),
            code: err.code(),
            message: err.message().to_string(),
            abandoned: err.abandoned(),
            cause,
        }
    }
}

#[pymethods]
impl RunFailure {
    fn __repr__(&self) -> String {
        format!("RunFailure(kind={:?}, code={}, message={:?}, abandoned={})", self.kind, self.code, self.message, self.abandoned)
    }
}

#[pymethods]
impl PyRunner {
    /// `options` are the keywords of `lameduck.Runner` (see [`python_name`]), already checked
    /// for their Python types by the Python half; the core checks their values.
    #[new]
    #[pyo3(signature = (bridge, **options))]
    fn new(py: Python<'_>, bridge: Py<PyAny>, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let given = Given { options };
        given.check_names()?;
        let mut o = Options { signal_owner: SignalOwner::Host, ..Options::default() };
        given.set_seconds(py, OptionField::Period, &mut o.period)?;
        given.set(OptionField::Signals, &mut o.signals)?;
        given.set_seconds(py, OptionField::DrainDelay, &mut o.drain_delay)?;
        given.set_seconds(py, OptionField::CloseTimeout, &mut o.close_timeout)?;
        if let Some(v) = given.get::<Option<Py<PyAny>>>(OptionField::Logger)? {
            o.logger = v.map(python_logger);
        }
        if let Some(v) = given.get::<String>(OptionField::RepeatSignal)? {
            o.repeat_signal = RepeatSignalPolicy::from_name(&v).map_err(|e| given.invalid(e))?;
        }
        if let Some(v) = given.get::<Option<Py<PyAny>>>(OptionField::StateObserver)? {
            o.state_observer = v.map(python_observer);
        }
        given.set(OptionField::ExplicitReady, &mut o.explicit_ready)?;
        given.set(OptionField::UpgradeSignals, &mut o.upgrade_signals)?;
        given.set_seconds(py, OptionField::UpgradeTimeout, &mut o.upgrade_timeout)?;
        if let Some(argv) = given.get::<Option<Vec<std::path::PathBuf>>>(OptionField::UpgradeCommand)? {
            o.upgrade_command = argv.map(|argv| {
                let program = argv.first().cloned().unwrap_or_default();
                lameduck::UpgradeCommand { program, args: argv.into_iter().map(Into::into).collect() }
            });
        }
        given.set(OptionField::PidFile, &mut o.pid_file)?;
        given.set_seconds(py, OptionField::ListenTimeout, &mut o.listen_timeout)?;
        given.set_seconds(py, OptionField::UpgradeConfirm, &mut o.upgrade_confirm)?;
        given.set(OptionField::UpgradeWithoutListeners, &mut o.upgrade_without_listeners)?;
        if let Some(limit) = given.get::<Option<usize>>(OptionField::MaxConnections)? {
            o.max_connections = limit;
        }
        if let Some(address) = given.get::<Option<String>>(OptionField::HealthAddress)? {
            o.health_address = address;
        }
        given.set_seconds(py, OptionField::DrainQuiet, &mut o.drain_quiet)?;
        let runner = Runner::new(Arc::new(PyServer { bridge }), o).map_err(|e| given.invalid(e))?;
        Ok(PyRunner { runner })
    }

    /// Runs to the end without holding the GIL. None on success, else a `RunFailure`.
    fn run(&self, py: Python<'_>) -> Option<RunFailure> {
        let result = py.detach(|| self.runner.run());
        result.err().map(|err| RunFailure::from_error(py, err))
    }

    /// Upgrades without holding the GIL: `(new pid, None)` once the new process is ready, or
    /// `(0, RunFailure)` when it did not happen.
    fn upgrade(&self, py: Python<'_>) -> (u32, Option<RunFailure>) {
        match py.detach(|| self.runner.upgrade()) {
            Ok(pid) => (pid, None),
            Err(err) => (0, Some(RunFailure::from_error(py, err))),
        }
    }

    /// Starts lame-duck like a trigger signal. Thread-safe; fine inside a signal handler.
    fn stop(&self) {
        self.runner.stop();
    }

    /// Hands the core a trigger signal caught by Python (this may end the process, per the
    /// repeat-signal policy).
    fn deliver_signal(&self, signal: i32) -> PyResult<()> {
        self.runner.deliver_signal(signal).map_err(|e| PyValueError::new_err(e.message().to_string()))
    }

    /// True once ready; False on timeout or when the run ended without becoming ready.
    #[pyo3(signature = (timeout=None))]
    fn wait_ready(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = optional_seconds(py, "timeout", timeout)?;
        Ok(py.detach(|| self.runner.wait_ready(timeout)).is_ok())
    }

    /// The state's name: NOT_STARTED, STARTING, SERVING, READY, UPGRADING, DRAINING,
    /// SHUTTING_DOWN, CLOSING, STOPPED or FAILED.
    #[getter]
    fn state(&self) -> &'static str {
        self.runner.state().name()
    }

    /// True while `run` executes.
    #[getter]
    fn running(&self) -> bool {
        self.runner.is_running()
    }

    /// The health answer for a request path: `(status, content_type, body)` (see
    /// `lameduck::health`). Never blocks.
    fn health(&self, path: &str) -> (u16, &'static str, String) {
        let report = self.runner.health(path);
        (report.status, report.content_type, report.body)
    }

    /// Where the built-in health listener listens, while it does.
    #[getter]
    fn health_address(&self) -> Option<String> {
        self.runner.health_address()
    }

    /// The run's connection gate (the context's).
    #[getter]
    fn gate(&self) -> PyGate {
        PyGate { gate: Arc::clone(self.runner.gate()) }
    }
}

/// Makes the listening socket `fd` drop new connection attempts while queued ones can still be
/// accepted (see `lameduck::listener`). Only for sockets this process owns alone.
#[pyfunction]
fn stop_accepting(fd: i32) -> PyResult<()> {
    lameduck::listener::stop_accepting(fd)
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("stop_accepting(fd={fd}): {e}")))
}

/// True when the listening socket `fd` has a connection waiting to be accepted.
#[pyfunction]
fn has_pending_connection(fd: i32) -> PyResult<bool> {
    lameduck::listener::has_pending_connection(fd)
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("has_pending_connection(fd={fd}): {e}")))
}

/// Stops the listening socket `fd` at once (see `lameduck::listener::shut`): accepts what is
/// still queued, then stops it listening, so new connection attempts are refused at once and
/// none was reset. Returns the accepted connections' descriptors, in queue order, the caller's
/// to serve and close. Only for sockets this process owns alone, once nothing else accepts on
/// them. OSError for a descriptor that is not a listening socket.
#[pyfunction]
fn shut(fd: i32) -> PyResult<Vec<i32>> {
    use std::os::fd::IntoRawFd;
    let taken = lameduck::listener::shut(fd).map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("shut(fd={fd}): {e}")))?;
    Ok(taken.into_iter().map(IntoRawFd::into_raw_fd).collect())
}

/// A listening socket's descriptor for `address`: inherited (systemd LISTEN_FDS, Server::Starter)
/// or fresh. The caller owns it. ValueError for bad input (naming it), OSError for bind errors.
#[pyfunction]
#[pyo3(signature = (address, name=None))]
fn listen(address: &str, name: Option<&str>) -> PyResult<i32> {
    use std::os::fd::IntoRawFd;
    match lameduck::listener::listen(address, name) {
        Ok(fd) => Ok(fd.into_raw_fd()),
        Err(e) if e.kind() == lameduck::ErrorKind::InvalidArgument => Err(PyValueError::new_err(e.message().to_string())),
        Err(e) => Err(pyo3::exceptions::PyOSError::new_err(e.message().to_string())),
    }
}

/// Registers the listening socket `fd`, bound by other means, so that an upgrade hands it on
/// like one from `listen`. The fd stays the caller's. ValueError for bad input (naming it).
#[pyfunction]
#[pyo3(signature = (fd, name=None))]
fn adopt(fd: i32, name: Option<&str>) -> PyResult<()> {
    match lameduck::listener::adopt(fd, name) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == lameduck::ErrorKind::InvalidArgument => Err(PyValueError::new_err(e.message().to_string())),
        Err(e) => Err(pyo3::exceptions::PyOSError::new_err(e.message().to_string())),
    }
}

/// True when `fd` was inherited through `listen` (shared with other processes).
#[pyfunction]
fn is_inherited(fd: i32) -> bool {
    lameduck::listener::is_inherited(fd)
}

/// True when `fd` is shared with other processes: inherited, or handed on by an upgrade.
#[pyfunction]
fn is_shared(fd: i32) -> bool {
    lameduck::listener::is_shared(fd)
}

/// True when this process owns the listening socket `fd` alone, so shutdown should drain it
/// (the core's one answer; `is_shared` is its negation).
#[pyfunction]
fn should_drain(fd: i32) -> bool {
    lameduck::listener::should_drain(fd)
}

/// `(major, minor, patch)` of the core.
fn version_tuple<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
    let v: Vec<u32> = env!("CARGO_PKG_VERSION").split('.').filter_map(|p| p.parse().ok()).collect();
    PyTuple::new(py, v)
}

#[pymodule]
fn _lameduck(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRunner>()?;
    m.add_class::<PyContext>()?;
    m.add_class::<PyHookDone>()?;
    m.add_class::<RunFailure>()?;
    m.add_class::<PyGate>()?;
    m.add_class::<PyPermit>()?;
    m.add_function(wrap_pyfunction!(stop_accepting, m)?)?;
    m.add_function(wrap_pyfunction!(has_pending_connection, m)?)?;
    m.add_function(wrap_pyfunction!(shut, m)?)?;
    m.add_function(wrap_pyfunction!(listen, m)?)?;
    m.add_function(wrap_pyfunction!(adopt, m)?)?;
    m.add_function(wrap_pyfunction!(is_inherited, m)?)?;
    m.add_function(wrap_pyfunction!(is_shared, m)?)?;
    m.add_function(wrap_pyfunction!(should_drain, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("VERSION", version_tuple(m.py())?)?;
    let exiting = wrap_pyfunction!(_interpreter_exiting, m)?;
    m.py().import("atexit")?.call_method1("register", (exiting,))?;
    Ok(())
}
