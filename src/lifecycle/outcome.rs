//! How a run ends: the result, from what the hooks returned and why `close` was called, in one
//! order of precedence.

use std::time::Duration;

use crate::error::{Error, ErrorKind, HookError};
use crate::format::go_duration;

/// Why `close` was called.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum CloseReason {
    /// The lame-duck period ran out (or `shutdown` returned `DEADLINE_EXCEEDED`).
    Expired,
    /// A repeated signal cut the lame-duck period short.
    Forced,
    /// `shutdown` failed (or could not start) and `serve` was still running at the deadline.
    ShutdownFailed,
}

/// The run's result, and whether `serve` failed (then the run ends in `Failed`, and the line
/// `Server failed: …` is logged with this text).
pub(super) struct Ending {
    pub(super) result: Result<(), Error>,
    pub(super) serve_failure: Option<String>,
}

/// What decides the result of a run that entered lame-duck.
pub(super) struct Facts {
    pub(super) close_reason: Option<CloseReason>,
    pub(super) shutdown_error: Option<HookError>,
    pub(super) serve: Option<Result<(), HookError>>,
    pub(super) close: Option<Result<(), HookError>>,
    /// The hooks that did not return within the close timeout.
    pub(super) abandoned: Vec<&'static str>,
    pub(super) close_timeout: Duration,
}

/// The outcome, in order of precedence: forced, expired, shutdown failed, serve failed during
/// lame-duck, success. A failed `close` and abandoned hooks are added to whichever it is.
pub(super) fn decide(facts: Facts) -> Ending {
    let abandoned = !facts.abandoned.is_empty();
    let abandoned_note = facts
        .abandoned
        .iter()
        .map(|name| format!(" + {name} did not return within {} (abandoned)", go_duration(facts.close_timeout)))
        .collect::<String>();
    let (close_code, close_note, close_cause) = match facts.close {
        Some(Err(err)) => (err.code(), format!(" + {}", err.describe("close")), Some(err)),
        _ => (0, String::new(), None),
    };
    let serve_error = facts.serve.and_then(Result::err);
    let mut serve_failure = None;
    let result = match (facts.close_reason, facts.shutdown_error) {
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
            Some(err) => {
                let (error, line) = serve_failed(err, &abandoned_note);
                serve_failure = Some(line);
                Err(error)
            }
            None => Ok(()),
        },
    };
    Ending { result: result.map_err(|e| e.with_abandoned(abandoned)), serve_failure }
}

/// `serve` returned before any trigger: success, or its failure.
pub(super) fn before_trigger(serve: Option<Result<(), HookError>>) -> Ending {
    match serve {
        Some(Err(err)) => {
            let (error, line) = serve_failed(err, "");
            Ending { result: Err(error), serve_failure: Some(line) }
        }
        _ => Ending { result: Ok(()), serve_failure: None },
    }
}

/// `serve` failed (Go's `Failed`): the error, and the text of its log line.
fn serve_failed(err: HookError, note: &str) -> (Error, String) {
    let message = err.describe("serve");
    let kind = if err.is_panic() { ErrorKind::Panic } else { ErrorKind::Failed };
    (Error::new(kind, format!("{message}{note}")).with_cause(err.code(), Some(err)), message)
}
