//! What a run reports, and what a hook returns when it fails.
//!
//! Go's `LameDuckError{Expired, Failed, Err}` becomes one [`Error`] with a [`ErrorKind`], the
//! failing hook's own return code, and a message rendered the Go way
//! (`"Lame-duck period has expired + <close error>"`). The kinds are the C `ld_status` numbers,
//! so the C, Python and Node layers map them one to one.

use std::any::Any;
use std::ffi::CStr;
use std::fmt;

use crate::options::OptionField;

/// Defines [`ErrorKind`] from one table: each kind's `ld_status` number, its name (the C status
/// without `LD_`) and its `ld_status_str` text are written once, next to each other, so a new
/// kind cannot be added without all three. The C enum (`capi::error::ld_status`) is checked
/// against this table at compile time.
macro_rules! error_kinds {
    ($( $(#[$doc:meta])* $kind:ident = $number:literal, $name:literal, $text:literal; )*) => {
        /// The kind of a failed run or API call. The numbers are the C ABI's `ld_status` values
        /// and are never reused once retired.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum ErrorKind {
            $( $(#[$doc])* $kind = $number, )*
        }

        impl ErrorKind {
            /// Every kind, in `ld_status` order.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$kind),*];

            /// The kind's stable name, shared by the bindings: `EXPIRED`, `SHUTDOWN_FAILED`, …
            /// (the C status without its `LD_` prefix).
            pub const fn name(self) -> &'static str {
                match self {
                    $( ErrorKind::$kind => $name, )*
                }
            }

            /// Static English text for the kind, as returned by `ld_status_str`.
            pub const fn description(self) -> &'static CStr {
                match self {
                    $( ErrorKind::$kind => $text, )*
                }
            }
        }
    };
}

error_kinds! {
    /// The lame-duck period ran out (or `shutdown` said so) and `close` was called.
    Expired = 1, "EXPIRED", c"lame-duck period expired; close was called";
    /// `serve` failed: before any trigger, or on its own during lame-duck.
    Failed = 2, "FAILED", c"serve failed";
    /// `shutdown` returned its own error.
    ShutdownFailed = 3, "SHUTDOWN_FAILED", c"shutdown failed";
    /// A repeated trigger signal cut the lame-duck period short and `close` was called.
    Forced = 4, "FORCED", c"forced by a repeated signal; close was called";
    /// The run was stopped before it started; no hook was called.
    Canceled = 5, "CANCELED", c"canceled before the run started";
    /// An option or argument has a value that cannot be used ([`Error::field`] names the option).
    InvalidArgument = 6, "INVALID_ARGUMENT", c"invalid argument";
    /// A required pointer was NULL (C ABI only).
    NullArgument = 7, "NULL_ARGUMENT", c"NULL argument";
    /// The runner is running or has already run; or an upgrade is already in flight.
    Busy = 8, "BUSY", c"busy: the runner is running or has already run, an upgrade is in flight, or the connection gate is full";
    /// A hook (or the library itself) panicked; the panic was caught.
    Panic = 9, "PANIC", c"a panic was caught";
    /// The signal handlers could not be installed.
    SignalSetup = 10, "SIGNAL_SETUP", c"signal handlers could not be installed";
    /// A wait ran out of time (`wait_ready`).
    Timeout = 11, "TIMEOUT", c"timed out";
    /// The run ended without ever becoming ready (`wait_ready`).
    NotRunning = 12, "NOT_RUNNING", c"the run ended before the server became ready";
    /// The operating system refused a resource (a thread or a pipe).
    System = 13, "SYSTEM", c"system resource error";
    /// An upgrade failed: the new process could not start, exited, or was not ready in time.
    /// It was terminated and the old process goes on serving.
    UpgradeFailed = 14, "UPGRADE_FAILED", c"upgrade failed; the old process goes on serving";
    /// The connection gate admits no new connection: lame-duck has begun.
    GateClosed = 15, "GATE_CLOSED", c"the connection gate is closed: lame-duck admits no new connection";
}

impl ErrorKind {
    /// The kind's `ld_status` number.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The kind with this `ld_status` number, if any.
    pub fn from_code(code: i32) -> Option<ErrorKind> {
        ErrorKind::ALL.iter().copied().find(|k| k.code() == code)
    }

    /// [`ErrorKind::description`] as a `&str`.
    pub fn as_str(self) -> &'static str {
        self.description().to_str().unwrap_or("")
    }
}

/// The error of a run or an API call.
///
/// `code` is the return code of the hook the kind is about: `serve`'s for [`ErrorKind::Failed`],
/// `shutdown`'s for [`ErrorKind::ShutdownFailed`], `close`'s for [`ErrorKind::Expired`] and
/// [`ErrorKind::Forced`] (0 when `close` succeeded). `cause` keeps the hook's own error, so a
/// binding can hand the original exception back to its caller. `field` names the option an
/// [`ErrorKind::InvalidArgument`] is about, so each binding can name it in its own spelling
/// (`drain_delay`, `drainDelay`, `ld_options_set_drain_delay_ms`) without redoing the check.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    code: i32,
    message: String,
    abandoned: bool,
    field: Option<OptionField>,
    #[source]
    cause: Option<HookError>,
}

impl Error {
    /// An error with no hook behind it.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, code: 0, message: message.into(), abandoned: false, field: None, cause: None }
    }

    pub(crate) fn with_cause(mut self, code: i32, cause: Option<HookError>) -> Self {
        self.code = code;
        self.cause = cause;
        self
    }

    pub(crate) fn with_abandoned(mut self, abandoned: bool) -> Self {
        self.abandoned = abandoned;
        self
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// An [`ErrorKind::InvalidArgument`] about `field`.
    pub(crate) fn invalid_option(field: OptionField, message: impl Into<String>) -> Self {
        Error::invalid(message).in_field(field)
    }

    /// The same error, about `field` (a check shared by several options, such as one signal's,
    /// learns which option it was checking from its caller).
    pub(crate) fn in_field(mut self, field: OptionField) -> Self {
        self.field = Some(field);
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The return code of the hook the kind is about (0 when there is none).
    pub fn code(&self) -> i32 {
        self.code
    }
    /// The option an [`ErrorKind::InvalidArgument`] is about, when it is about one.
    pub fn field(&self) -> Option<OptionField> {
        self.field
    }
    /// The human-readable message (Go's `LameDuckError.Error()` text for run outcomes).
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Go's `Expired`: the period ran out (or was forced short) and `close` was called.
    pub fn is_expired(&self) -> bool {
        matches!(self.kind, ErrorKind::Expired | ErrorKind::Forced)
    }
    /// Go's `Failed`: `serve` failed.
    pub fn is_failed(&self) -> bool {
        self.kind == ErrorKind::Failed
    }
    /// A repeated signal forced the close.
    pub fn is_forced(&self) -> bool {
        self.kind == ErrorKind::Forced
    }
    /// True when a hook did not return within the close timeout and was left running.
    pub fn abandoned(&self) -> bool {
        self.abandoned
    }
    /// The hook's own error, if the kind came from a hook.
    pub fn cause(&self) -> Option<&HookError> {
        self.cause.as_ref()
    }
    /// Takes the hook's own error out (for bindings that re-raise the original exception).
    pub fn take_cause(&mut self) -> Option<HookError> {
        self.cause.take()
    }
}

/// How a hook failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookFailure {
    /// The hook returned (or raised) its own error.
    Code,
    /// `shutdown` says it ran out of time (Go's `context.DeadlineExceeded`).
    DeadlineExceeded,
    /// The hook panicked (or, in a binding, raised where a panic-like failure is reported).
    Panic,
}

/// A hook's failure: a code, a message, and optionally the binding's own error object
/// (a Python exception, a JS error reference) carried through unchanged.
pub struct HookError {
    failure: HookFailure,
    code: i32,
    message: String,
    payload: Option<Box<dyn Any + Send>>,
}

impl HookError {
    /// A hook failure with its own non-zero code and a message (may be empty; the runner then
    /// says which hook returned which code).
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        HookError { failure: HookFailure::Code, code, message: message.into(), payload: None }
    }

    /// `shutdown` ran out of time: the runner calls `close` and reports expired.
    pub fn deadline_exceeded() -> Self {
        HookError {
            failure: HookFailure::DeadlineExceeded,
            code: crate::DEADLINE_EXCEEDED,
            message: "deadline exceeded".into(),
            payload: None,
        }
    }

    /// A caught panic.
    pub fn panic(message: impl Into<String>) -> Self {
        HookError { failure: HookFailure::Panic, code: 0, message: message.into(), payload: None }
    }

    /// Attaches the binding's own error object; get it back with [`HookError::take_payload`].
    pub fn with_payload(mut self, payload: Box<dyn Any + Send>) -> Self {
        self.payload = Some(payload);
        self
    }

    /// How the hook failed.
    pub fn failure(&self) -> HookFailure {
        self.failure
    }
    /// The hook's own return code.
    pub fn code(&self) -> i32 {
        self.code
    }
    /// The hook's message (possibly empty).
    pub fn message(&self) -> &str {
        &self.message
    }
    /// True when `shutdown` reported that its deadline passed.
    pub fn is_deadline_exceeded(&self) -> bool {
        self.failure == HookFailure::DeadlineExceeded
    }
    /// True when the hook panicked.
    pub fn is_panic(&self) -> bool {
        self.failure == HookFailure::Panic
    }
    /// The binding's own error object, if one was attached.
    pub fn payload(&self) -> Option<&(dyn Any + Send)> {
        self.payload.as_deref()
    }
    /// Takes the binding's own error object out.
    pub fn take_payload(&mut self) -> Option<Box<dyn Any + Send>> {
        self.payload.take()
    }

    /// The text used in run messages: the hook's message, or "<hook> hook returned <code>".
    pub(crate) fn describe(&self, hook: &str) -> String {
        match (self.failure, self.message.is_empty()) {
            (HookFailure::Panic, _) => format!("{hook} hook panicked: {}", self.message),
            (_, true) => format!("{hook} hook returned {}", self.code),
            (_, false) => self.message.clone(),
        }
    }
}

impl fmt::Debug for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookError")
            .field("failure", &self.failure)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("payload", &self.payload.is_some())
            .finish()
    }
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "hook returned {}", self.code)
        } else {
            f.write_str(&self.message)
        }
    }
}

impl std::error::Error for HookError {}

impl From<crate::gate::GateError> for Error {
    fn from(err: crate::gate::GateError) -> Error {
        use crate::gate::GateError;
        let kind = match err {
            GateError::Closed => ErrorKind::GateClosed,
            GateError::TimedOut => ErrorKind::Timeout,
            GateError::Full => ErrorKind::Busy,
            GateError::InvalidLimit(_) => return Error::invalid_option(OptionField::MaxConnections, err.to_string()),
        };
        Error::new(kind, err.to_string())
    }
}
