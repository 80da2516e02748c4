//! The panic boundary and pointer checks every `ld_*` function goes through.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::error::{ld_error, ld_status, write_error};
use crate::error::{Error, ErrorKind};
use crate::lifecycle::panic_text;

/// Runs `body`; a panic becomes `on_panic` instead of unwinding into C.
pub(crate) fn guard<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(on_panic)
}

/// Runs a fallible `body`: maps its result to a status, writes `error_out` (the error on
/// failure, NULL on success), and turns a panic into `LD_PANIC` with the panic message. The
/// mapping and the writing run inside the guard too: nothing after `body` may unwind into C.
pub(crate) fn guard_result(error_out: *mut *mut ld_error, body: impl FnOnce() -> Result<(), Error>) -> ld_status {
    guard(ld_status::LD_PANIC, || {
        let result = catch_unwind(AssertUnwindSafe(body))
            .unwrap_or_else(|p| Err(Error::new(ErrorKind::Panic, format!("lameduck panicked: {}", panic_text(&*p)))));
        let status = match &result {
            Ok(()) => ld_status::LD_OK,
            Err(e) => ld_status::from_kind(e.kind()),
        };
        write_error(error_out, result.err());
        status
    })
}

/// A `LD_NULL_ARGUMENT` error naming the parameter.
pub(crate) fn null_arg(name: &str) -> Error {
    Error::new(ErrorKind::NullArgument, format!("{name} is NULL"))
}
