//! `ld_listen`: a listening socket, inherited (systemd, Server::Starter) or fresh.

use std::ffi::{c_char, c_int, CStr};
use std::os::fd::IntoRawFd;

use super::boundary::{guard_result, null_arg};
use super::error::{ld_error, ld_status};
use crate::error::Error;

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
/// close-on-exec. The environment variables are read and removed on the first call; call it
/// before starting threads that read the environment.
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

/// True when `fd` came from `ld_listen` as an inherited descriptor, i.e. it is shared with
/// other processes (systemd, start_server, an earlier generation). Such a listener must not be
/// drained with a socket filter; closing this process's copy loses nothing.
#[no_mangle]
pub extern "C" fn ld_listen_is_inherited(fd: c_int) -> bool {
    super::boundary::guard(false, || crate::listener::is_inherited(fd))
}

/// True when `fd` is shared with other processes: inherited (see `ld_listen_is_inherited`) or
/// handed to a new generation by an upgrade. A server that stops accepting should then simply
/// close its copy: draining with a socket filter would stop the other processes too.
#[no_mangle]
pub extern "C" fn ld_listen_is_shared(fd: c_int) -> bool {
    super::boundary::guard(false, || crate::listener::is_shared(fd))
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
