//! What a server must provide: Go's `lameduck.Server` interface.

use crate::context::Context;
use crate::error::HookError;

/// A server run under lame-duck coordination.
///
/// The runner calls `serve` on a thread it owns, `shutdown` on another thread (concurrently
/// with a still-running `serve`, exactly like Go's `http.Server`), and `close` on a third, so
/// a hook that never returns cannot hang the run. Implementations must therefore be `Sync`.
pub trait Server: Send + Sync {
    /// Serves until `shutdown` or `close` makes it return. `Ok` means "stopped as asked".
    fn serve(&self, ctx: &Context) -> Result<(), HookError>;

    /// Stops accepting and waits for in-flight work, up to `ctx`'s deadline. Return
    /// [`HookError::deadline_exceeded`] when time ran out: the runner then calls `close`.
    fn shutdown(&self, ctx: &Context) -> Result<(), HookError>;

    /// Closes everything now (called when the period expired or was forced short).
    fn close(&self) -> Result<(), HookError>;
}
