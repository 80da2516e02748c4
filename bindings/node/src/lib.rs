//! The native half of the Node package (napi-rs).
//!
//! It converts; the lifecycle is the core's. Everything the core does that JS must see goes
//! through one ThreadsafeFunction per run, in order: log lines, state changes, hook calls and
//! the final result. That function keeps the event loop alive while the run is active and is
//! released when the run ends, so nothing of lameduck keeps the process alive afterwards.
//! A hook call blocks its core thread (never the JS thread) until JS settles it with
//! `settle()`. Signals are taken by JS with `process.on` and forwarded with `deliverSignal()`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lameduck::{Context, HookError, Level, Options, RepeatSignalPolicy, Runner, Server, SignalOwner, State};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

/// What the core tells JS. `kind` is `log`, `state`, `hook` or `done`.
#[napi(object)]
pub struct Event {
    pub kind: String,
    /// log: 0 debug, 1 info, 2 warn, 3 error.
    pub level: Option<u32>,
    /// log: the line; done: the error message.
    pub message: Option<String>,
    /// state: the old and new state names.
    pub from: Option<String>,
    pub to: Option<String>,
    /// hook: `serve`, `shutdown` or `close`, and the token to settle it with.
    pub hook: Option<String>,
    pub token: Option<u32>,
    /// done: the error's kind (`EXPIRED`, …; absent on success), hook code, abandoned flag,
    /// and the id of the JS error a hook threw, if that is the cause.
    pub error: Option<String>,
    pub code: Option<i32>,
    pub abandoned: Option<bool>,
    pub cause: Option<u32>,
}

impl Event {
    fn new(kind: &str) -> Event {
        Event {
            kind: kind.into(),
            level: None,
            message: None,
            from: None,
            to: None,
            hook: None,
            token: None,
            error: None,
            code: None,
            abandoned: None,
            cause: None,
        }
    }
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
    fn call_hook(&self, hook: &str, ctx: Option<&Context>) -> Verdict {
        if let Some(ctx) = ctx {
            *self.context.lock().unwrap_or_else(PoisonError::into_inner) = Some(ctx.clone());
        }
        let token = self.next_token.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = channel();
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).insert(token, tx);
        let mut event = Event::new("hook");
        event.hook = Some(hook.into());
        event.token = Some(token);
        if !self.send(event) {
            self.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&token);
            return Err(HookError::new(1, format!("{hook}: the JavaScript side is gone")));
        }
        rx.recv().unwrap_or_else(|_| Err(HookError::new(1, format!("{hook}: abandoned by the JavaScript side"))))
    }
}

struct JsServer {
    bridge: Arc<Bridge>,
}

impl Server for JsServer {
    fn serve(&self, ctx: &Context) -> Verdict {
        self.bridge.call_hook("serve", Some(ctx))
    }
    fn shutdown(&self, ctx: &Context) -> Verdict {
        self.bridge.call_hook("shutdown", Some(ctx))
    }
    fn close(&self) -> Verdict {
        self.bridge.call_hook("close", None)
    }
}

fn millis(name: &str, value: f64) -> Result<Duration> {
    if !value.is_finite() || value < 0.0 {
        return Err(Error::new(
            Status::InvalidArg,
            format!("{name}={value} is invalid: it must be a finite, non-negative number of milliseconds"),
        ));
    }
    Ok(Duration::from_secs_f64(value / 1000.0))
}

/// `argv` as `JSON.stringify` writes it, for messages (never Rust's Debug form).
fn json_strings(argv: &[String]) -> String {
    use std::fmt::Write;
    let mut out = String::from("[");
    for (i, arg) in argv.iter().enumerate() {
        out.push_str(if i == 0 { "\"" } else { ",\"" });
        for c in arg.chars() {
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
    }
    out.push(']');
    out
}

fn invalid(name: &str, value: impl std::fmt::Display, err: lameduck::Error) -> Error {
    Error::new(Status::InvalidArg, format!("{name}={value}: {}", err.message()))
}

/// The core runner, driven by `Runner` in index.js.
#[napi]
pub struct NativeRunner {
    runner: Arc<Runner>,
    bridge: Arc<Bridge>,
}

#[napi]
impl NativeRunner {
    /// Validates everything; throws (InvalidArg) naming the bad value before anything starts.
    #[napi(constructor)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        period_ms: f64,
        signals: Vec<i32>,
        drain_delay_ms: f64,
        close_timeout_ms: f64,
        repeat_signal: String,
        explicit_ready: bool,
        logging: bool,
        upgrade_signals: Vec<i32>,
        upgrade_timeout_ms: f64,
        upgrade_command: Option<Vec<String>>,
        pid_file: Option<String>,
        listen_timeout_ms: f64,
        upgrade_confirm_ms: f64,
        upgrade_without_listeners: bool,
    ) -> Result<Self> {
        let period = millis("period", period_ms)?;
        lameduck::validate_period(period).map_err(|e| invalid("period", period_ms, e))?;
        let drain_delay = millis("drainDelay", drain_delay_ms)?;
        lameduck::validate_drain_delay(drain_delay).map_err(|e| invalid("drainDelay", drain_delay_ms, e))?;
        let close_timeout = millis("closeTimeout", close_timeout_ms)?;
        lameduck::validate_close_timeout(close_timeout).map_err(|e| invalid("closeTimeout", close_timeout_ms, e))?;
        for &signal in &signals {
            lameduck::validate_signal(signal).map_err(|e| invalid("signals", signal, e))?;
        }
        let repeat = RepeatSignalPolicy::from_name(&repeat_signal).map_err(|e| invalid("repeatSignal", &repeat_signal, e))?;
        for &signal in &upgrade_signals {
            lameduck::validate_upgrade_signals(&[signal], &signals).map_err(|e| invalid("upgradeSignals", signal, e))?;
        }
        let upgrade_timeout = millis("upgradeTimeout", upgrade_timeout_ms)?;
        lameduck::validate_upgrade_timeout(upgrade_timeout).map_err(|e| invalid("upgradeTimeout", upgrade_timeout_ms, e))?;
        let upgrade_command = upgrade_command
            .map(|argv| {
                lameduck::UpgradeCommand::from_argv(argv.clone()).map_err(|e| invalid("upgradeCommand", json_strings(&argv), e))
            })
            .transpose()?;
        let listen_timeout = millis("listenTimeout", listen_timeout_ms)?;
        lameduck::validate_listen_timeout(listen_timeout).map_err(|e| invalid("listenTimeout", listen_timeout_ms, e))?;
        let upgrade_confirm = millis("upgradeConfirm", upgrade_confirm_ms)?;
        lameduck::validate_upgrade_confirm(upgrade_confirm).map_err(|e| invalid("upgradeConfirm", upgrade_confirm_ms, e))?;
        if pid_file.as_deref() == Some("") {
            return Err(Error::new(Status::InvalidArg, "pidFile=\"\" is invalid: give a path, or leave it out"));
        }
        let bridge = Arc::new(Bridge::default());
        let logger = logging.then(|| {
            let bridge = Arc::clone(&bridge);
            Arc::new(move |level: Level, message: &str| {
                let mut event = Event::new("log");
                event.level = Some(level as u32);
                event.message = Some(message.to_string());
                bridge.send(event);
            }) as lameduck::Logger
        });
        let observer = {
            let bridge = Arc::clone(&bridge);
            Arc::new(move |old: State, new: State| {
                let mut event = Event::new("state");
                event.from = Some(old.name().into());
                event.to = Some(new.name().into());
                bridge.send(event);
            }) as lameduck::StateObserver
        };
        let options = Options {
            period,
            signals,
            drain_delay,
            close_timeout,
            logger,
            repeat_signal: repeat,
            state_observer: Some(observer),
            explicit_ready,
            signal_owner: SignalOwner::Host,
            upgrade_signals,
            upgrade_timeout,
            upgrade_command,
            pid_file: pid_file.map(Into::into),
            listen_timeout,
            upgrade_confirm,
            upgrade_without_listeners,
        };
        let server = Arc::new(JsServer { bridge: Arc::clone(&bridge) });
        let runner = Runner::new(server, options).map_err(|e| Error::new(Status::InvalidArg, e.message().to_string()))?;
        Ok(NativeRunner { runner: Arc::new(runner), bridge })
    }

    /// Starts the run on a thread of its own; every event, then `done`, goes to `dispatch`
    /// on the JS thread. Never blocks the event loop.
    #[napi]
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
                let mut done = Event::new("done");
                if let Err(mut err) = runner.run() {
                    done.error = Some(err.kind().name().into());
                    done.message = Some(err.message().to_string());
                    done.code = Some(err.code());
                    done.abandoned = Some(err.abandoned());
                    done.cause =
                        err.take_cause().and_then(|mut c| c.take_payload()).and_then(|p| p.downcast::<u32>().ok()).map(|id| *id);
                }
                bridge.send(done);
                // Release the run's dispatch function: from now on nothing of lameduck keeps
                // the event loop alive (an abandoned hook thread holds only the bridge).
                bridge.dispatch.lock().unwrap_or_else(PoisonError::into_inner).take();
                drop(dispatch);
            })
            .map_err(|e| Error::new(Status::GenericFailure, format!("could not start the run thread: {e}")))?;
        Ok(())
    }

    /// JS's verdict on a hook call. `error` is the message of what the hook threw (absent on
    /// success), `causeId` the id under which JS keeps that error, `deadlineExceeded` true when
    /// shutdown reported that it ran out of time.
    #[napi]
    pub fn settle(&self, token: u32, error: Option<String>, cause_id: Option<u32>, deadline_exceeded: Option<bool>) {
        let sender = self.bridge.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&token);
        let Some(sender) = sender else { return };
        let verdict = match error {
            None => Ok(()),
            Some(message) => {
                let err =
                    if deadline_exceeded.unwrap_or(false) { HookError::deadline_exceeded() } else { HookError::new(1, message) };
                Err(match cause_id {
                    Some(id) => err.with_payload(Box::new(id)),
                    None => err,
                })
            }
        };
        let _ = sender.send(verdict);
    }

    /// Upgrades on a libuv worker thread (never blocking the event loop); resolves to the
    /// outcome, which index.js turns into the new pid or an error.
    #[napi]
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

/// A listening socket's descriptor for `address`: inherited (systemd LISTEN_FDS,
/// Server::Starter) or fresh. JS owns it (index.js hands it to `server.listen({ fd })`).
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

/// What an upgrade came to: the new pid, or the core's error kind and message.
#[napi(object)]
pub struct UpgradeOutcome {
    pub pid: u32,
    pub error: Option<String>,
    pub message: Option<String>,
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
            Ok(pid) => UpgradeOutcome { pid, error: None, message: None },
            Err(e) => UpgradeOutcome { pid: 0, error: Some(e.kind().name().into()), message: Some(e.message().to_string()) },
        })
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output)
    }
}
