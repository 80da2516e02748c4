//! `ld_listen`: a listening socket, inherited (systemd, Server::Starter) or fresh; and
//! `ld_listen_shut` (or `ld_listen_drain`) and their parts, to stop one at shutdown without
//! resetting the connections waiting in its queue, and (`ld_listen_shut`) without making a
//! client that arrives then wait a second for its SYN's retransmission (see
//! `src/listener/drain.rs`).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::fd::IntoRawFd;
use std::time::Duration;

use super::boundary::{guard, guard_result, null_arg};
use super::error::{ld_error, ld_status};
use crate::error::{Error, ErrorKind};
use crate::listener::Drained;

fn text<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>, Error> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: a non-NULL pointer the caller promises is a NUL-terminated string.
    unsafe { CStr::from_ptr(ptr) }.to_str().map(Some).map_err(|_| Error::invalid(format!("{what} is not valid UTF-8")))
}

/// Returns a listening socket for `address` in `*fd_out`:
/// - the one this process inherited for it, if any: systemd socket activation (`LISTEN_FDS`
///   with `LISTEN_PID` equal to this process, matched by `name` against `LISTEN_FDNAMES`, or by
///   address), then Server::Starter's `SERVER_STARTER_PORT`;
/// - otherwise a fresh one, with `SO_REUSEADDR`, close-on-exec and a backlog of `SOMAXCONN`.
///   A stale unix socket file is replaced.
///
/// `address` is `PORT`, `HOST:PORT`, `[IPV6]:PORT`, or a unix socket path (absolute, or
/// `unix:PATH`). `name` may be NULL.
///
/// Inherited descriptors are checked (a listening socket bound to that address) and marked
/// close-on-exec. The environment variables are read on the first call to any `ld_listen*`
/// function (or by an upgrade) and never changed. A child this program starts inherits them but
/// not the sockets (they are close-on-exec); `LISTEN_FDS` does not apply to it (`LISTEN_PID`
/// names this process), but leave `SERVER_STARTER_PORT` out of the environment of a child that
/// is itself a Server::Starter-aware server. Any thread.
///
/// Ownership: the caller owns `*fd_out` and closes it.
/// Errors:
/// - `LD_NULL_ARGUMENT` (address or fd_out);
/// - `LD_INVALID_ARGUMENT`: a bad address, or a malformed `LISTEN_FDS`/`LISTEN_PID`/
///   `LISTEN_FDNAMES`/`SERVER_STARTER_PORT`, or an inherited fd that is not a listening socket.
///   The message names the value.
/// - `LD_SYSTEM`: bind/listen failed, for example because the address is in use.
#[no_mangle]
pub extern "C" fn ld_listen(
    address: *const c_char,
    name: *const c_char,
    fd_out: *mut c_int,
    error_out: *mut *mut ld_error,
) -> ld_status {
    guard_result(error_out, || {
        if fd_out.is_null() {
            return Err(null_arg("fd_out"));
        }
        let address = text(address, "address")?.ok_or_else(|| null_arg("address"))?;
        let name = text(name, "name")?;
        let fd = crate::listener::listen(address, name)?;
        // SAFETY: checked non-NULL above; ownership of the fd passes to the caller.
        unsafe { *fd_out = fd.into_raw_fd() };
        Ok(())
    })
}

/// True when `fd` is a socket this process inherited (systemd, start_server, an earlier
/// generation), under its own number or a copy's (`dup`), whether `ld_listen` took it or not.
/// Whether it may be drained is `ld_listen_should_drain`'s answer, not this one: a socket an
/// earlier generation bound is ours alone once that generation has exited. Any thread.
#[no_mangle]
pub extern "C" fn ld_listen_is_inherited(fd: c_int) -> bool {
    guard(false, || crate::listener::is_inherited(fd))
}

/// True when `fd` is shared with other processes: exactly `!ld_listen_should_drain(fd)`. A
/// server that stops accepting should then simply close its copy: draining with a socket filter
/// would stop the other processes too. Any thread.
#[no_mangle]
pub extern "C" fn ld_listen_is_shared(fd: c_int) -> bool {
    guard(false, || crate::listener::is_shared(fd))
}

/// True when this process owns the listener `fd` alone and should drain it at shutdown (see
/// `ld_listen_drain`); false when other processes hold the socket too: it was inherited from
/// systemd or start_server, or from a previous generation that is still running, or an upgrade
/// passed it on to a new generation. Copies (`dup`) of a known socket get the same answer; a
/// socket lameduck does not know (not from `ld_listen` nor `ld_listen_adopt`, not inherited)
/// was bound by this program: true. The answer does not depend on what was called before, and
/// may change as generations come and go: ask when shutdown comes. Any thread.
#[no_mangle]
pub extern "C" fn ld_listen_should_drain(fd: c_int) -> bool {
    guard(false, || crate::listener::should_drain(fd))
}

/// Makes the listening socket `fd` drop new connection attempts (their SYNs, so clients retry
/// after one second and, once the listener is closed, are refused), while the connections
/// already queued can still be accepted and handshakes under way complete. Only for a listener
/// `ld_listen_should_drain` says is ours alone: the filter belongs to the socket, and would stop
/// every process sharing it. Usually called through `ld_listen_shut` or `ld_listen_drain`.
/// Linux only (a unix socket is not affected). Any thread; the descriptor stays the caller's.
///
/// Errors: `LD_SYSTEM` when the filter cannot be attached (`fd` is not a socket, or not open);
/// the message names the fd and the system's reason.
#[no_mangle]
pub extern "C" fn ld_listen_stop_accepting(fd: c_int, error_out: *mut *mut ld_error) -> ld_status {
    guard_result(error_out, || {
        crate::listener::stop_accepting(fd)
            .map_err(|e| Error::new(ErrorKind::System, format!("cannot stop accepting on fd {fd}: {e}")))
    })
}

/// Sets `*pending_out` to true when the listening socket `fd` has a connection waiting to be
/// accepted, without waiting. Any thread.
///
/// Errors: `LD_NULL_ARGUMENT` (pending_out); `LD_SYSTEM` when `fd` is not open (the message
/// names it). `*pending_out` is left unchanged on error.
#[no_mangle]
pub extern "C" fn ld_listen_has_pending(fd: c_int, pending_out: *mut bool, error_out: *mut *mut ld_error) -> ld_status {
    guard_result(error_out, || {
        if pending_out.is_null() {
            return Err(null_arg("pending_out"));
        }
        let pending = crate::listener::has_pending_connection(fd)
            .map_err(|e| Error::new(ErrorKind::System, format!("cannot look at the queue of fd {fd}: {e}")))?;
        // SAFETY: checked non-NULL above.
        unsafe { *pending_out = pending };
        Ok(())
    })
}

/// Called by `ld_listen_shut` once for each connection it took from the queue, after the
/// listener stopped listening: `fd` is the connection (close-on-exec, blocking), now the
/// callee's to serve (or refuse) and close.
pub type ld_connection_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, fd: c_int)>;

/// Stops the listener `fd` at once without resetting anyone: at shutdown, once the program's
/// accept loop has stopped. It accepts every connection still queued, drops new SYNs
/// (`ld_listen_stop_accepting`) only while it accepts once more what joined meanwhile (one
/// accept that finds the queue empty: a microsecond or two), then stops the socket listening
/// with `shutdown(fd, SHUT_RD)`. From its return on, a new connection attempt is refused at once
/// (`ECONNREFUSED`) instead of waiting a second for its SYN's retransmission, as it does
/// during `ld_listen_drain`. Then it calls `on_connection(user_data, conn_fd)` for each
/// connection it took, in queue order, on this thread: admit them (the gate's
/// `ld_context_acquire_queued_connection`, within the limit, as slots free) and serve them like
/// any other. Close `fd` afterwards: the socket no longer listens, through any descriptor. A
/// unix socket is shut first (its queue stays) and then accepted, with no filter. An accept
/// that fails for want of descriptors (`EMFILE`) ends the sweep: what is still queued is reset,
/// as closing the listener would.
///
/// A listener that `ld_listen_should_drain` says is shared is left alone (its queue survives
/// this process's close, and shutting it would stop every process that shares it): the call
/// returns `LD_OK` at once, with no callback. Close it afterwards, either way. Any thread; the
/// descriptor stays the caller's.
///
/// Errors: `LD_NULL_ARGUMENT` (on_connection); `LD_SYSTEM` when `fd` is not a listening socket
/// (or not open), before anything is changed; the message names the fd.
#[no_mangle]
pub extern "C" fn ld_listen_shut(
    fd: c_int,
    on_connection: ld_connection_fn,
    user_data: *mut c_void,
    error_out: *mut *mut ld_error,
) -> ld_status {
    guard_result(error_out, || {
        let on_connection = on_connection.ok_or_else(|| null_arg("on_connection"))?;
        if !crate::listener::should_drain(fd) {
            return Ok(());
        }
        let taken = crate::listener::shut(fd).map_err(|e| Error::new(ErrorKind::System, format!("cannot shut fd {fd}: {e}")))?;
        for conn in taken {
            // SAFETY: the caller's callback, given a descriptor it now owns.
            unsafe { on_connection(user_data, conn.into_raw_fd()) };
        }
        Ok(())
    })
}

/// Stops the listener `fd` without resetting the connections in its queue, for a program that
/// closes it itself while its accept loop runs: when `ld_listen_should_drain(fd)`, drops new
/// connection attempts (`ld_listen_stop_accepting`), then blocks until every queued connection
/// has been accepted (`ld_listen_has_pending`) or `timeout_ms` has passed (negative: no limit,
/// as in `ld_context_wait`). A shared listener is left alone (its queue survives this
/// process's close) and the call returns at once. Close the listener afterwards, either way.
/// Every client that arrives from the filter to the close waits a second for its SYN's
/// retransmission and is refused only then: where the accept loop can stop first,
/// `ld_listen_shut` leaves no such gap.
///
/// The program's accept loop must keep running meanwhile, on another thread: this only watches
/// the queue. In a shutdown hook, pass `ld_context_remaining_ms(ctx)`, then wake the accept
/// loop and close the listener. The descriptor stays the caller's. Any thread.
///
/// Errors: `LD_TIMEOUT` when connections were still queued at the timeout (closing the listener
/// now resets them); `LD_SYSTEM` when `fd` is not a listening socket (or is closed meanwhile).
#[no_mangle]
pub extern "C" fn ld_listen_drain(fd: c_int, timeout_ms: i64, error_out: *mut *mut ld_error) -> ld_status {
    guard_result(error_out, || {
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        match crate::listener::drain(fd, timeout) {
            Ok(Drained::Shared | Drained::Emptied) => Ok(()),
            Ok(Drained::TimedOut) => Err(Error::new(
                ErrorKind::Timeout,
                format!("fd {fd} still had connections waiting to be accepted after {timeout_ms} ms"),
            )),
            Err(e) => Err(Error::new(ErrorKind::System, format!("cannot drain fd {fd}: {e}"))),
        }
    })
}

/// Registers a listening socket this program bound itself (not with `ld_listen`), so that an
/// upgrade hands it on to the new process like the ones from `ld_listen`. The descriptor stays
/// the caller's (nothing is duplicated or closed); adopting it again is harmless. `name` may be
/// NULL; it becomes the socket's `LISTEN_FDNAMES` entry.
///
/// Without a listener known to lameduck an upgrade is refused (see
/// `ld_options_set_upgrade_without_listeners`): the new process could not bind the port.
/// Errors: `LD_INVALID_ARGUMENT` when `fd` is not a listening socket or `name` is not 1 to 255
/// printable characters without ':'.
#[no_mangle]
pub extern "C" fn ld_listen_adopt(fd: c_int, name: *const c_char, error_out: *mut *mut ld_error) -> ld_status {
    guard_result(error_out, || {
        let name = text(name, "name")?;
        crate::listener::adopt(fd, name)
    })
}
