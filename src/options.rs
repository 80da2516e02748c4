//! Run options and their validation.
//!
//! Options are plain values; [`Options::validate`] is the one place that decides what is
//! acceptable, so the C setters, the Python keyword arguments and the Node options object all
//! reject the same values with the same messages, before anything starts. Each rejection names
//! its [`OptionField`], so a binding says which of its own arguments was wrong from one table of
//! spellings instead of repeating the checks to find out.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::format::{go_duration, signal_name};
use crate::state::State;

/// The longest period, drain delay or close timeout accepted: one day. Anything longer is
/// almost certainly a unit mistake (seconds passed as milliseconds).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// One field of [`Options`], as named by a validation error ([`Error::field`]). Each binding
/// maps these to its own spelling in one table (Python `drain_delay`, Node `drainDelay`, C
/// `ld_options_set_drain_delay_ms`). Deliberately not `#[non_exhaustive]`: a new option should
/// fail to compile in each binding's exhaustive `match` until it has a spelling there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OptionField {
    /// [`Options::period`].
    Period,
    /// [`Options::signals`].
    Signals,
    /// [`Options::drain_delay`].
    DrainDelay,
    /// [`Options::close_timeout`].
    CloseTimeout,
    /// [`Options::logger`].
    Logger,
    /// [`Options::repeat_signal`].
    RepeatSignal,
    /// [`Options::state_observer`].
    StateObserver,
    /// [`Options::explicit_ready`].
    ExplicitReady,
    /// [`Options::signal_owner`].
    SignalOwner,
    /// [`Options::upgrade_signals`].
    UpgradeSignals,
    /// [`Options::upgrade_timeout`].
    UpgradeTimeout,
    /// [`Options::upgrade_command`].
    UpgradeCommand,
    /// [`Options::pid_file`].
    PidFile,
    /// [`Options::listen_timeout`].
    ListenTimeout,
    /// [`Options::upgrade_confirm`].
    UpgradeConfirm,
    /// [`Options::upgrade_without_listeners`].
    UpgradeWithoutListeners,
    /// [`Options::max_connections`].
    MaxConnections,
    /// [`Options::health_address`].
    HealthAddress,
    /// [`Options::drain_quiet`].
    DrainQuiet,
}

impl OptionField {
    /// Every field, in the order of [`Options`].
    pub const ALL: &'static [OptionField] = &[
        OptionField::Period,
        OptionField::Signals,
        OptionField::DrainDelay,
        OptionField::CloseTimeout,
        OptionField::Logger,
        OptionField::RepeatSignal,
        OptionField::StateObserver,
        OptionField::ExplicitReady,
        OptionField::SignalOwner,
        OptionField::UpgradeSignals,
        OptionField::UpgradeTimeout,
        OptionField::UpgradeCommand,
        OptionField::PidFile,
        OptionField::ListenTimeout,
        OptionField::UpgradeConfirm,
        OptionField::UpgradeWithoutListeners,
        OptionField::MaxConnections,
        OptionField::HealthAddress,
        OptionField::DrainQuiet,
    ];

    /// The Rust name of the field in [`Options`]: `period`, `drain_delay`, …
    pub const fn name(self) -> &'static str {
        match self {
            OptionField::Period => "period",
            OptionField::Signals => "signals",
            OptionField::DrainDelay => "drain_delay",
            OptionField::CloseTimeout => "close_timeout",
            OptionField::Logger => "logger",
            OptionField::RepeatSignal => "repeat_signal",
            OptionField::StateObserver => "state_observer",
            OptionField::ExplicitReady => "explicit_ready",
            OptionField::SignalOwner => "signal_owner",
            OptionField::UpgradeSignals => "upgrade_signals",
            OptionField::UpgradeTimeout => "upgrade_timeout",
            OptionField::UpgradeCommand => "upgrade_command",
            OptionField::PidFile => "pid_file",
            OptionField::ListenTimeout => "listen_timeout",
            OptionField::UpgradeConfirm => "upgrade_confirm",
            OptionField::UpgradeWithoutListeners => "upgrade_without_listeners",
            OptionField::MaxConnections => "max_connections",
            OptionField::HealthAddress => "health_address",
            OptionField::DrainQuiet => "drain_quiet",
        }
    }
}

impl std::fmt::Display for OptionField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub enum Level {
    /// Detail useful when debugging the library itself.
    Debug = 0,
    /// A lifecycle event (the Go texts).
    Info = 1,
    /// Something went wrong but the run goes on.
    Warn = 2,
    /// The run failed.
    Error = 3,
}

/// Receives one line per lifecycle event. Called on the thread that runs the runner.
pub type Logger = Arc<dyn Fn(Level, &str) + Send + Sync>;

/// Receives every state transition `(old, new)`. Called on the thread that runs the runner.
pub type StateObserver = Arc<dyn Fn(State, State) + Send + Sync>;

/// What a trigger signal does once lame-duck has already begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RepeatSignalPolicy {
    /// Second signal: end the period now and call `close` (result: forced). Third signal: restore
    /// the default disposition and re-raise it, so the process dies as the signal intends.
    Force = 0,
    /// Repeated signals are logged and otherwise ignored; lame-duck runs its course.
    Ignore = 1,
    /// Second signal: restore the default disposition and re-raise it at once.
    ExitNow = 2,
}

impl RepeatSignalPolicy {
    /// Parses the names the bindings accept: `force`, `ignore`, `exit` (or `exit-now`).
    pub fn from_name(name: &str) -> Result<Self, Error> {
        match name {
            "force" => Ok(RepeatSignalPolicy::Force),
            "ignore" => Ok(RepeatSignalPolicy::Ignore),
            "exit" | "exit-now" | "exit_now" => Ok(RepeatSignalPolicy::ExitNow),
            other => Err(Error::invalid_option(
                OptionField::RepeatSignal,
                format!("repeat signal policy {other:?} is invalid: use \"force\", \"ignore\" or \"exit\""),
            )),
        }
    }
}

/// Who owns the trigger signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalOwner {
    /// The library installs `sigaction` handlers for the run (chained, restored afterwards).
    Library,
    /// The host (Python's `signal`, Node's `process.on`, a C event loop) catches the signals and
    /// forwards them with `Runner::deliver_signal`; the library installs nothing.
    Host,
}

/// Options for one run. `Default` gives Go's defaults plus ours.
#[derive(Clone)]
pub struct Options {
    /// The lame-duck period: `shutdown`'s deadline is trigger (+ drain delay) + period. Default 3 s.
    pub period: Duration,
    /// Trigger signals. Default SIGINT, SIGTERM; a custom list replaces the default.
    pub signals: Vec<i32>,
    /// Time between the trigger and `shutdown` during which `serve` keeps serving and the state
    /// reads "draining" (not ready), so load balancers stop sending traffic first. Default 0.
    pub drain_delay: Duration,
    /// How long the runner waits for `close` (and for `serve`/`shutdown` to return after it)
    /// before it gives up and abandons them. Default 5 s.
    pub close_timeout: Duration,
    /// Where log lines go; `None` disables logging. Default: stderr.
    pub logger: Option<Logger>,
    /// What repeated trigger signals do. Default [`RepeatSignalPolicy::Force`].
    pub repeat_signal: RepeatSignalPolicy,
    /// Called on every state transition.
    pub state_observer: Option<StateObserver>,
    /// When true, the run becomes ready only when `serve` calls `Context::ready` (bound and
    /// accepting); when false, as soon as the handlers are installed and `serve` has been called.
    pub explicit_ready: bool,
    /// Who catches the trigger signals. Default [`SignalOwner::Library`].
    pub signal_owner: SignalOwner,
    /// Signals that start an upgrade (a new process takes over the listeners, then this one
    /// enters lame-duck). Default SIGHUP; empty disables upgrades by signal.
    pub upgrade_signals: Vec<i32>,
    /// How long a new process has to report ready before it is terminated and the upgrade is
    /// rolled back. Default 60 s.
    pub upgrade_timeout: Duration,
    /// What an upgrade starts. Default `None`: the program and arguments this process was
    /// started with, the program looked up again so a replaced binary is what starts.
    pub upgrade_command: Option<UpgradeCommand>,
    /// A file to hold the pid of the current generation: written atomically (temporary file +
    /// rename) once the run is ready, removed when the last generation stops. Default none.
    pub pid_file: Option<PathBuf>,
    /// In a process started by an upgrade: how long, once the run is ready, `listen` calls have
    /// to take every listener the previous generation handed over. Only then is readiness
    /// reported; when the time is up the upgrade fails with a message naming the listeners
    /// nobody took (a server that binds its own sockets would fight the old one for the port).
    /// Default 10 s.
    pub listen_timeout: Duration,
    /// How long the old process keeps serving beside a new one that reported ready before it
    /// hands over and enters lame-duck. A new process that exits within this window is a failed
    /// upgrade: the old process was never stopped, so it simply goes on serving. May be zero.
    /// Default 1 s.
    pub upgrade_confirm: Duration,
    /// Upgrade even though this process has no listener known to lameduck (a worker with no
    /// sockets). Off by default: such an upgrade is refused, because a server that binds its own
    /// port would start a successor that cannot bind it.
    pub upgrade_without_listeners: bool,
    /// The run's connection gate starts with this limit (`None` or `Some(0)`: unlimited, the
    /// default); see [`crate::gate`]. Changeable while running with
    /// [`crate::Runner::set_max_connections`].
    pub max_connections: Option<usize>,
    /// Where the built-in health listener answers `/ready`, `/live` and `/health` (see
    /// [`crate::health`]): any address [`crate::listener::listen`] takes (`127.0.0.1:8081`,
    /// `:8081`, a unix socket path; port 0 picks one, see [`crate::Runner::health_address`]).
    /// Taken through `listen`, so an upgrade hands it on and systemd or start_server may pass
    /// it in. Default `None`: no listener.
    pub health_address: Option<String>,
    /// Adaptive drain: the drain delay ends early once no new connection has been admitted
    /// through the gate for this long since readiness flipped (and, once a readiness probe has
    /// been answered during the run — by the health listener or [`crate::Runner::health`] —
    /// after at least one `/ready` answered "not ready"): the balancer has stopped sending.
    /// At the latest it ends after `drain_delay`. Zero (the default) turns it off; otherwise it
    /// must be shorter than `drain_delay`.
    pub drain_quiet: Duration,
}

/// The program an upgrade starts and its whole argument vector (`args[0]` included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeCommand {
    /// A path (absolute, or relative to the directory the process started in) or a bare name
    /// looked up in `PATH`, at each upgrade.
    pub program: PathBuf,
    /// The argument vector, `argv[0]` first. Must not be empty.
    pub args: Vec<OsString>,
}

impl UpgradeCommand {
    /// The command `argv` names (`argv[0]` is the program), validated.
    pub fn from_argv<S: Into<OsString>>(argv: impl IntoIterator<Item = S>) -> Result<UpgradeCommand, Error> {
        let args: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let command = UpgradeCommand { program: args.first().cloned().unwrap_or_default().into(), args };
        validate_upgrade_command(&command)?;
        Ok(command)
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            period: Duration::from_secs(3),
            signals: vec![libc::SIGINT, libc::SIGTERM],
            drain_delay: Duration::ZERO,
            close_timeout: Duration::from_secs(5),
            logger: Some(stderr_logger()),
            repeat_signal: RepeatSignalPolicy::Force,
            state_observer: None,
            explicit_ready: false,
            signal_owner: SignalOwner::Library,
            upgrade_signals: vec![libc::SIGHUP],
            upgrade_timeout: Duration::from_secs(60),
            upgrade_command: None,
            pid_file: None,
            listen_timeout: Duration::from_secs(10),
            upgrade_confirm: Duration::from_secs(1),
            upgrade_without_listeners: false,
            max_connections: None,
            health_address: None,
            drain_quiet: Duration::ZERO,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("period", &self.period)
            .field("signals", &self.signals)
            .field("drain_delay", &self.drain_delay)
            .field("close_timeout", &self.close_timeout)
            .field("logger", &self.logger.is_some())
            .field("repeat_signal", &self.repeat_signal)
            .field("state_observer", &self.state_observer.is_some())
            .field("explicit_ready", &self.explicit_ready)
            .field("signal_owner", &self.signal_owner)
            .field("upgrade_signals", &self.upgrade_signals)
            .field("upgrade_timeout", &self.upgrade_timeout)
            .field("upgrade_command", &self.upgrade_command)
            .field("pid_file", &self.pid_file)
            .field("listen_timeout", &self.listen_timeout)
            .field("upgrade_confirm", &self.upgrade_confirm)
            .field("upgrade_without_listeners", &self.upgrade_without_listeners)
            .field("max_connections", &self.max_connections)
            .field("health_address", &self.health_address)
            .field("drain_quiet", &self.drain_quiet)
            .finish()
    }
}

/// The default logger: one line per event on stderr, written with a single `write` so lines
/// from several threads or processes do not interleave.
pub fn stderr_logger() -> Logger {
    Arc::new(|level: Level, message: &str| {
        use std::io::Write;
        let prefix = match level {
            Level::Debug => "lameduck: debug: ",
            Level::Info => "lameduck: ",
            Level::Warn => "lameduck: warning: ",
            Level::Error => "lameduck: error: ",
        };
        let line = format!("{prefix}{message}\n");
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    })
}

impl Options {
    /// Checks every value; the message names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        validate_period(self.period)?;
        validate_drain_delay(self.drain_delay)?;
        validate_close_timeout(self.close_timeout)?;
        validate_upgrade_timeout(self.upgrade_timeout)?;
        validate_listen_timeout(self.listen_timeout)?;
        validate_upgrade_confirm(self.upgrade_confirm)?;
        self.validate_signal_setting()?;
        validate_upgrade_signals(&self.upgrade_signals, &self.signals)?;
        if let Some(command) = &self.upgrade_command {
            validate_upgrade_command(command)?;
        }
        if let Some(path) = &self.pid_file {
            validate_pid_file(path)?;
        }
        validate_max_connections(self.max_connections)?;
        if let Some(address) = &self.health_address {
            validate_health_address(address)?;
        }
        validate_drain_quiet(self.drain_quiet, self.drain_delay)?;
        Ok(())
    }

    /// The signal list: each one trappable. It may be empty, whoever owns the signals: then
    /// only a stop (or, with host-owned signals, a delivered signal) starts lame-duck, as with
    /// `signals: []` in Python and Node, which a Node worker thread needs.
    pub fn validate_signal_setting(&self) -> Result<(), Error> {
        validate_signals(&self.signals).map_err(|e| e.in_field(OptionField::Signals))
    }
}

/// A duration that must be above zero and at most [`MAX_DURATION`]; the message names `what`.
fn validate_positive(field: OptionField, what: &str, value: Duration) -> Result<(), Error> {
    if value.is_zero() || value > MAX_DURATION {
        return Err(Error::invalid_option(
            field,
            format!(
                "{what} {} is invalid: it must be greater than zero and at most {}",
                go_duration(value),
                go_duration(MAX_DURATION)
            ),
        ));
    }
    Ok(())
}

/// The period must be above zero and at most [`MAX_DURATION`].
pub fn validate_period(period: Duration) -> Result<(), Error> {
    validate_positive(OptionField::Period, "lame-duck period", period)
}

/// The drain delay may be zero, and at most [`MAX_DURATION`].
pub fn validate_drain_delay(delay: Duration) -> Result<(), Error> {
    if delay > MAX_DURATION {
        return Err(Error::invalid_option(
            OptionField::DrainDelay,
            format!("drain delay {} is invalid: it must be at most {}", go_duration(delay), go_duration(MAX_DURATION)),
        ));
    }
    Ok(())
}

/// The close timeout must be above zero and at most [`MAX_DURATION`].
pub fn validate_close_timeout(timeout: Duration) -> Result<(), Error> {
    validate_positive(OptionField::CloseTimeout, "close timeout", timeout)
}

/// The upgrade timeout must be above zero and at most [`MAX_DURATION`].
pub fn validate_upgrade_timeout(timeout: Duration) -> Result<(), Error> {
    validate_positive(OptionField::UpgradeTimeout, "upgrade timeout", timeout)
}

/// The listen timeout must be above zero and at most [`MAX_DURATION`].
pub fn validate_listen_timeout(timeout: Duration) -> Result<(), Error> {
    validate_positive(OptionField::ListenTimeout, "listen timeout", timeout)
}

/// The upgrade confirmation window may be zero, and at most one minute: the old and the new
/// process both serve during it, and an upgrade takes at least this long.
pub fn validate_upgrade_confirm(window: Duration) -> Result<(), Error> {
    let max = Duration::from_secs(60);
    if window > max {
        return Err(Error::invalid_option(
            OptionField::UpgradeConfirm,
            format!("upgrade confirmation window {} is invalid: it must be at most {}", go_duration(window), go_duration(max)),
        ));
    }
    Ok(())
}

/// Upgrade signals (possibly none): each trappable, and none also a trigger signal.
pub fn validate_upgrade_signals(upgrade: &[i32], triggers: &[i32]) -> Result<(), Error> {
    for &signal in upgrade {
        validate_signal(signal).map_err(|e| e.in_field(OptionField::UpgradeSignals))?;
        if triggers.contains(&signal) {
            return Err(Error::invalid_option(
                OptionField::UpgradeSignals,
                format!("signal {signal} ({}) cannot both trigger lame-duck and start an upgrade", signal_name(signal)),
            ));
        }
    }
    Ok(())
}

/// An upgrade command needs a program and at least `argv[0]`, without NUL bytes.
pub fn validate_upgrade_command(command: &UpgradeCommand) -> Result<(), Error> {
    use std::os::unix::ffi::OsStrExt;
    let invalid =
        |why: &str| Err(Error::invalid_option(OptionField::UpgradeCommand, format!("upgrade command is invalid: {why}")));
    if command.program.as_os_str().is_empty() {
        return invalid("the program is empty");
    }
    if command.args.is_empty() {
        return invalid("give at least argv[0]");
    }
    let has_nul = |s: &std::ffi::OsStr| s.as_bytes().contains(&0);
    if has_nul(command.program.as_os_str()) || command.args.iter().any(|a| has_nul(a)) {
        return invalid("it contains a NUL byte");
    }
    Ok(())
}

/// A connection limit: at most `i32::MAX` (`None` and 0 mean unlimited).
pub fn validate_max_connections(limit: Option<usize>) -> Result<(), Error> {
    crate::gate::Gate::check_limit(limit).map_err(|e| Error::invalid_option(OptionField::MaxConnections, e.to_string()))
}

/// The health listener's address must be one [`crate::listener::listen`] takes.
pub fn validate_health_address(address: &str) -> Result<(), Error> {
    crate::listener::Address::parse(address)
        .map(|_| ())
        .map_err(|e| Error::invalid_option(OptionField::HealthAddress, format!("health address: {}", e.message())))
}

/// The adaptive drain's quiet time: zero (off), or shorter than the drain delay it shortens.
pub fn validate_drain_quiet(quiet: Duration, drain_delay: Duration) -> Result<(), Error> {
    if !quiet.is_zero() && quiet >= drain_delay {
        return Err(Error::invalid_option(
            OptionField::DrainQuiet,
            format!(
                "drain quiet time {} is invalid: it must be shorter than the drain delay ({}), which it ends early; \
                 set a drain delay, or 0 to turn the adaptive drain off",
                go_duration(quiet),
                go_duration(drain_delay)
            ),
        ));
    }
    Ok(())
}

/// A pid file needs a path: "" is refused (no pid file is `None`).
pub fn validate_pid_file(path: &std::path::Path) -> Result<(), Error> {
    if path.as_os_str().is_empty() {
        return Err(Error::invalid_option(OptionField::PidFile, "pid file \"\" is invalid: give a path, or no pid file"));
    }
    Ok(())
}

/// A list of signals that can be trapped (empty: only a stop triggers lame-duck).
pub fn validate_signals(signals: &[i32]) -> Result<(), Error> {
    signals.iter().try_for_each(|&s| validate_signal(s))
}

/// One signal that can be trapped as a lame-duck trigger.
///
/// Rejected: 0 and negatives, numbers above `SIGRTMAX`, the two that cannot be caught (SIGKILL,
/// SIGSTOP), the synchronous fault signals a handler must not swallow (SIGSEGV, SIGBUS, SIGFPE,
/// SIGILL), and the real-time signals the C library reserves for itself (below `SIGRTMIN`).
pub fn validate_signal(signal: i32) -> Result<(), Error> {
    let max = crate::sys::highest_signal();
    if signal <= 0 || signal > max {
        return Err(Error::invalid(format!("signal {signal} is invalid: signal numbers run from 1 to {max}")));
    }
    let why = match signal {
        libc::SIGKILL | libc::SIGSTOP => Some("it cannot be caught"),
        libc::SIGSEGV | libc::SIGBUS | libc::SIGFPE | libc::SIGILL => Some("it reports a fault and must not be trapped"),
        s if s > 31 && s < crate::sys::first_free_realtime_signal() => Some("it is reserved by the C library"),
        _ => None,
    };
    match why {
        Some(why) => Err(Error::invalid(format!("signal {signal} ({}) cannot be a trigger signal: {why}", signal_name(signal)))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_go_defaults() {
        let o = Options::default();
        assert_eq!(o.period, Duration::from_secs(3));
        assert_eq!(o.signals, vec![libc::SIGINT, libc::SIGTERM]);
        assert_eq!(o.drain_delay, Duration::ZERO);
        assert_eq!(o.repeat_signal, RepeatSignalPolicy::Force);
        assert!(o.logger.is_some());
        o.validate().unwrap();
    }

    #[test]
    fn rejects_bad_values_naming_them() {
        let cases: Vec<(Options, &str, OptionField)> = vec![
            (Options { period: Duration::ZERO, ..Options::default() }, "period 0s", OptionField::Period),
            (
                Options { period: MAX_DURATION + Duration::from_millis(1), ..Options::default() },
                "period 24h0m0.001s",
                OptionField::Period,
            ),
            (
                Options { drain_delay: Duration::from_secs(90_000), ..Options::default() },
                "drain delay 25h0m0s",
                OptionField::DrainDelay,
            ),
            (Options { close_timeout: Duration::ZERO, ..Options::default() }, "close timeout 0s", OptionField::CloseTimeout),
            (Options { signals: vec![0], ..Options::default() }, "signal 0", OptionField::Signals),
            (Options { signals: vec![-3], ..Options::default() }, "signal -3", OptionField::Signals),
            (Options { signals: vec![libc::SIGTERM, 65], ..Options::default() }, "signal 65", OptionField::Signals),
            (Options { signals: vec![libc::SIGKILL], ..Options::default() }, "signal 9 (killed)", OptionField::Signals),
            (Options { signals: vec![libc::SIGSTOP], ..Options::default() }, "signal 19", OptionField::Signals),
            (Options { signals: vec![libc::SIGSEGV], ..Options::default() }, "signal 11", OptionField::Signals),
            (Options { signals: vec![libc::SIGBUS], ..Options::default() }, "signal 7", OptionField::Signals),
            (Options { signals: vec![libc::SIGFPE], ..Options::default() }, "signal 8", OptionField::Signals),
            (Options { signals: vec![libc::SIGILL], ..Options::default() }, "signal 4", OptionField::Signals),
            (Options { signals: vec![32], ..Options::default() }, "signal 32", OptionField::Signals),
            (
                Options { upgrade_timeout: Duration::ZERO, ..Options::default() },
                "upgrade timeout 0s",
                OptionField::UpgradeTimeout,
            ),
            (Options { listen_timeout: Duration::ZERO, ..Options::default() }, "listen timeout 0s", OptionField::ListenTimeout),
            (
                Options { upgrade_confirm: Duration::from_secs(61), ..Options::default() },
                "confirmation window 1m1s",
                OptionField::UpgradeConfirm,
            ),
            (
                Options { upgrade_signals: vec![libc::SIGTERM], ..Options::default() },
                "both trigger lame-duck and start an upgrade",
                OptionField::UpgradeSignals,
            ),
            (Options { upgrade_signals: vec![libc::SIGKILL], ..Options::default() }, "signal 9", OptionField::UpgradeSignals),
            (
                Options { upgrade_command: Some(UpgradeCommand { program: "x".into(), args: vec![] }), ..Options::default() },
                "at least argv[0]",
                OptionField::UpgradeCommand,
            ),
            (Options { pid_file: Some("".into()), ..Options::default() }, "pid file", OptionField::PidFile),
            (
                Options { health_address: Some("[::1:8081".into()), ..Options::default() },
                "health address: address \"[::1:8081\" is invalid",
                OptionField::HealthAddress,
            ),
            (
                Options { drain_quiet: Duration::from_millis(50), ..Options::default() },
                "drain quiet time 50ms is invalid: it must be shorter than the drain delay (0s)",
                OptionField::DrainQuiet,
            ),
            (
                Options { drain_quiet: Duration::from_secs(2), drain_delay: Duration::from_secs(2), ..Options::default() },
                "shorter than the drain delay (2s)",
                OptionField::DrainQuiet,
            ),
        ];
        for (options, needle, field) in cases {
            let err = options.validate().expect_err(needle);
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
            assert!(err.message().contains(needle), "{:?} should contain {needle:?}", err.message());
            assert_eq!(err.field(), Some(field), "{needle}");
        }
    }

    #[test]
    fn every_field_is_listed_once_with_its_own_name() {
        let names: std::collections::HashSet<&str> = OptionField::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), OptionField::ALL.len());
        // The Debug output lists every field of Options by name: each must have an OptionField.
        let debug = format!("{:?}", Options::default());
        assert_eq!(debug.matches(": ").count(), OptionField::ALL.len(), "{debug}");
        for field in OptionField::ALL {
            assert!(debug.contains(&format!("{}: ", field.name())), "{field} is not a field of Options");
        }
    }

    #[test]
    fn signals_may_be_empty_whoever_owns_them() {
        for signal_owner in [SignalOwner::Host, SignalOwner::Library] {
            Options { signals: vec![], signal_owner, ..Options::default() }.validate().unwrap();
        }
    }

    #[test]
    fn policy_names() {
        assert_eq!(RepeatSignalPolicy::from_name("force").unwrap(), RepeatSignalPolicy::Force);
        assert_eq!(RepeatSignalPolicy::from_name("ignore").unwrap(), RepeatSignalPolicy::Ignore);
        assert_eq!(RepeatSignalPolicy::from_name("exit").unwrap(), RepeatSignalPolicy::ExitNow);
        let err = RepeatSignalPolicy::from_name("nope").unwrap_err();
        assert!(err.message().contains("\"nope\""));
        assert_eq!(err.field(), Some(OptionField::RepeatSignal));
    }
}
