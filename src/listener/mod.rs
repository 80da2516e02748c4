//! Listening sockets: getting one (inherited or fresh), remembering every one taken so an
//! upgrade can pass them all on, and stopping one without resetting connections.
//!
//! - [`listen`] and [`adopt`] are how a server gets its sockets; [`should_drain`] (and its
//!   negation [`is_shared`]) is the one answer to "may I drain this listener at shutdown?";
//!   [`shut`] does it once the accept loop has stopped, or [`drain()`] while it runs (see [the
//!   `drain` module](mod@drain) for why a listener is drained at all, and how).
//! - `env` parses what systemd, Server::Starter and a previous generation put in the
//!   environment (pure functions, fuzzed); `address` parses `listen`'s argument; `socket` holds
//!   the system calls on descriptors; `registry` is the one list of listeners every answer is
//!   read from.
//!
//! # The environment
//!
//! `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, `SERVER_STARTER_PORT` and the
//! `LAMEDUCK_*_FDS` variables are read once, when the registry is first used (by any function
//! here, or by an upgrade), and never changed: removing them would race with the other threads
//! of a Python or Node host that read the environment (`setenv`/`unsetenv` are not thread-safe).
//! What this means for children:
//!
//! - An upgrade's new process gets an environment built for it: these variables are filtered
//!   out and set afresh for the sockets it is given (`upgrade::start`).
//! - A child the host starts itself inherits them, but not the sockets: every inherited
//!   descriptor is made close-on-exec when the registry is built. `LISTEN_FDS` is harmless there
//!   because `LISTEN_PID` names this process, not the child (sd_listen_fds(3), and our own
//!   `listen`, ignore it). `SERVER_STARTER_PORT` has no such binding: a child that is itself a
//!   Server::Starter-aware server (a lameduck one included) would look for sockets it was not
//!   given (its `listen` fails naming the descriptor, and it takes itself for a start_server
//!   worker, which never upgrades itself), as under Perl's and Go's Server::Starter. Leave the
//!   variable out of such a child's environment.
//! - A process that re-execs itself in place (`execv` of its own program, same pid) keeps the
//!   variables that name its own pid, but not the descriptors (close-on-exec), whose numbers
//!   may then hold something else. Remove `LISTEN_*`, `SERVER_STARTER_PORT` and `LAMEDUCK_*`
//!   from the environment you pass to `execve` there, as sd_listen_fds(3)'s `unset_environment`
//!   does for systemd; or upgrade, which starts the new image as a new process.

mod address;
pub mod drain;
mod env;
mod registry;
mod socket;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::error::Error;

pub use address::Address;
pub use drain::{drain, has_pending_connection, idle_grace, shut, stop_accepting, Drained};
pub(crate) use env::FileId;
pub use env::{parse_listen_fds, parse_server_starter_port, LINEAGE_FDS_ENV, MAX_INHERITED_FDS, OWNED_FDS_ENV, REQUIRED_FDS_ENV};
pub(crate) use registry::{any_known, for_successor, mark_passed_on, remove_owned_paths, untaken, watch_takes};
pub(crate) use socket::{int_option, set_cloexec};

use env::Source;
use registry::{Origin, Ownership};
use socket::{bind_fresh, bound_address, same_address, socket_identity, validate_listening};

/// A listening socket for `address`: the one this process inherited for it (systemd socket
/// activation, matched by `name` or by address, then Server::Starter's `SERVER_STARTER_PORT`),
/// or a fresh one (`SO_REUSEADDR`, `CLOEXEC`, backlog `SOMAXCONN`).
///
/// Inherited descriptors are checked (a listening socket bound to that address) and marked
/// close-on-exec. The environment is read on the first call (see the module docs), not changed.
pub fn listen(address: &str, name: Option<&str>) -> Result<OwnedFd, Error> {
    let wanted = Address::parse(address)?;
    if let Some(name) = name {
        validate_name(name)?;
    }
    // Resolved once (it may be a DNS lookup); needed only to compare addresses or to bind.
    let resolved = wanted.socket_addrs();
    let mut registry = registry::lock();
    if let Some(problem) = &registry.problem {
        return Err(Error::invalid(problem.clone()));
    }
    let found = registry.waiting(|l| match (&l.origin, &l.name) {
        (Origin::Inherited(Source::Systemd { .. }), Some(n)) if name.is_some() => Some(n.as_str()) == name,
        (Origin::Inherited(Source::ServerStarter { key }), _) if key == address => true,
        _ => bound_address(l.fd).is_ok_and(|b| same_address(&b, &wanted, &resolved)),
    });
    if let Some(index) = found {
        let Some(listener) = registry.listeners.remove(index) else { unreachable!("waiting() gave an index in range") };
        let fd = listener.fd;
        let origin = match &listener.origin {
            Origin::Inherited(Source::ServerStarter { .. }) => "SERVER_STARTER_PORT",
            _ => "LISTEN_FDS",
        };
        validate_listening(fd, origin)?;
        if let Origin::Inherited(Source::ServerStarter { key }) = &listener.origin {
            // Matched by its key alone: the descriptor must really be bound there (the docs
            // promise "a socket bound to that address"), or we would serve on another port.
            if let Err(e) = &resolved {
                return Err(Error::new(e.kind(), e.message())); // a host that does not resolve
            }
            match bound_address(fd) {
                Ok(bound) if same_address(&bound, &wanted, &resolved) => {}
                Ok(bound) => {
                    return Err(Error::invalid(format!(
                        "SERVER_STARTER_PORT says fd {fd} is {key}, but fd {fd} is bound to {bound}"
                    )))
                }
                Err(e) => return Err(Error::invalid(format!("SERVER_STARTER_PORT names fd {fd} for {key}, but: {e}"))),
            }
        }
        let ownership = Ownership::of_waiting(&listener.state);
        let name = name.map(str::to_string).or_else(|| listener.name.clone());
        registry.take(listener, name, ownership);
        drop(registry);
        registry::wake_watchers();
        // SAFETY: the fd was inherited for us, and we hand it out exactly once.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    drop(registry);
    let fd = bind_fresh(&wanted, resolved)?;
    registry::lock().take(registry::own(fd.as_raw_fd()), name.map(str::to_string), Ownership::Created);
    Ok(fd)
}

/// Registers a listening socket this process bound by other means (a server object that
/// arrived already bound), so that an upgrade hands it on exactly like one from [`listen`].
/// The descriptor stays the caller's: this only remembers it. Adopting it again is harmless.
///
/// Errors: `fd` is not a listening socket, or `name` does not fit in `LISTEN_FDNAMES`.
pub fn adopt(fd: RawFd, name: Option<&str>) -> Result<(), Error> {
    if let Some(name) = name {
        validate_name(name)?;
    }
    validate_listening(fd, "adopt")?;
    let mut registry = registry::lock();
    // The same socket as an inherited one, under its own number or a copy's (`socket.fromfd`,
    // `dup`): a copy of a socket systemd or start_server holds must never be drained.
    let identity = socket_identity(fd);
    if let Some(index) = registry.waiting(|l| l.fd == fd || (identity.is_some() && socket_identity(l.fd) == identity)) {
        // The host took an inherited descriptor itself: it is shared like one from `listen`,
        // and passed on under the number the host uses.
        let Some(mut listener) = registry.listeners.remove(index) else { unreachable!("waiting() gave an index in range") };
        let ownership = Ownership::of_waiting(&listener.state);
        let name = name.map(str::to_string).or_else(|| listener.name.take());
        listener.fd = fd;
        registry.take(listener, name, ownership);
    } else if registry.taken_inherited_copy_of(fd).is_some() {
        // A copy of an inherited socket that `listen` already took: not a listener of its own.
        // An upgrade passes the socket on once, as the original, and the new process's `listen`
        // takes it back; every question about the copy finds the original by its identity.
        return Ok(());
    } else if let Some(current) = registry.taken_still_bound(fd).filter(|l| l.socket == identity) {
        // Adopted (or listened on) before: it keeps its record, and its name unless given one.
        if let Some(name) = name {
            current.name = Some(name.to_string());
        }
    } else {
        // Bound by this process; a record of this number that no longer describes the socket
        // (the old one was closed and the number reused) is replaced.
        registry.take(registry::own(fd), name.map(str::to_string), Ownership::None);
    }
    drop(registry);
    registry::wake_watchers();
    Ok(())
}

/// A name must fit in `LISTEN_FDNAMES`: no `:`, printable, at most 255 bytes (as systemd's
/// `FileDescriptorName=`).
fn validate_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 255 || name.contains(':') || name.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(format!("listener name {name:?} is invalid: use 1 to 255 printable characters without ':'")));
    }
    Ok(())
}

/// The address the socket `fd` is bound to, as text (`127.0.0.1:8081`, `[::1]:80`, a unix
/// socket path): for logs and for the health listener's bound port.
pub(crate) fn bound_address_of(fd: RawFd) -> std::io::Result<String> {
    bound_address(fd).map(|b| b.to_string())
}

/// True when `fd` is a socket this process was given (systemd, Server::Starter or a previous
/// generation), under its own number or a copy's, whether `listen` took it or not.
pub fn is_inherited(fd: RawFd) -> bool {
    registry::lock().find(fd).is_some_and(|l| matches!(l.origin, Origin::Inherited(_)))
}

/// True when this process may drain the listener `fd` at shutdown (accept what is queued, stop
/// it with a socket filter and `shutdown`, then close): it owns the socket alone. False when
/// other processes hold it too: it was inherited from systemd or start_server (they keep a
/// copy), or from a previous generation that is still running, or it was passed on to a new
/// generation by an upgrade. The filter and the shutdown belong to the socket, so draining a
/// shared one would stop the others accepting; and closing our copy of it loses nothing, the
/// queue survives.
///
/// The answer comes from the registry, which is built from the environment on first use
/// whatever is called first, and finds copies of a known socket (`dup`, `socket.fromfd`) by the
/// socket's identity. A socket the registry does not know was bound by this process: drain it.
pub fn should_drain(fd: RawFd) -> bool {
    registry::lock().find(fd).map_or(true, |l| !l.is_shared())
}

/// True when `fd` is shared with other processes: the negation of [`should_drain`]. Never drain
/// a shared socket: just close it.
pub fn is_shared(fd: RawFd) -> bool {
    !should_drain(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    #[test]
    fn fresh_listeners_are_cloexec_and_listening() {
        let fd = listen("127.0.0.1:0", None).unwrap();
        validate_listening(fd.as_raw_fd(), "test").unwrap();
        // SAFETY: reading the fd flags of a descriptor we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0);
        assert!(!is_inherited(fd.as_raw_fd()));
        let dir = std::env::temp_dir().join(format!("lameduck-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let first = listen(path.to_str().unwrap(), None).unwrap();
        drop(first); // leaves a stale socket file behind
        let second = listen(path.to_str().unwrap(), None).unwrap();
        assert!(matches!(bound_address(second.as_raw_fd()).unwrap(), socket::Bound::Unix(Some(p)) if p == path));
        let _ = std::fs::remove_dir_all(&dir);
        let err = validate_listening(0, "LISTEN_FDS").unwrap_err();
        assert!(err.message().contains("fd 0 from LISTEN_FDS is not"), "{}", err.message());
    }

    #[test]
    fn adopt_replaces_a_stale_record_of_a_reused_number() {
        let first = listen("127.0.0.1:0", None).unwrap();
        let fd = first.as_raw_fd();
        // The number now names another socket (closed and reused, in one atomic step here).
        let second = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = second.local_addr().unwrap().port();
        // SAFETY: dup2 onto a descriptor this test owns (`first` closes it at the end).
        assert_eq!(unsafe { libc::dup2(second.as_raw_fd(), fd) }, fd);
        adopt(fd, Some("web")).unwrap();
        let record = |fd: RawFd| {
            let registry = registry::lock();
            let found = registry.listeners.iter().filter(|l| l.fd == fd).map(|l| (l.name.clone(), l.state.clone()));
            found.collect::<Vec<_>>()
        };
        let bound = Some(format!("127.0.0.1:{port}"));
        assert_eq!(record(fd), vec![(Some("web".to_string()), registry::Use::Taken { bound, owned_path: None })]);
        assert!(registry::for_successor().iter().any(|h| h.fd == fd && h.name == "web" && h.taken));
        adopt(fd, None).unwrap();
        assert_eq!(record(fd)[0].0.as_deref(), Some("web"), "adopting again keeps the name");
        assert!(adopt(0, None).unwrap_err().message().contains("fd 0 from adopt"));
        assert!(any_known());
        drop(first);
    }

    #[test]
    fn one_answer_to_shared() {
        let own = listen("127.0.0.1:0", None).unwrap();
        let fd = own.as_raw_fd();
        assert!(should_drain(fd) && !is_shared(fd), "bound here: ours alone");
        // SAFETY: dup of a descriptor this test owns; the copy is closed below.
        let copy = unsafe { OwnedFd::from_raw_fd(libc::dup(fd)) };
        registry::mark_passed_on(&[fd], true);
        assert!(!should_drain(fd) && is_shared(fd), "passed on to a new generation");
        assert!(!should_drain(copy.as_raw_fd()), "a copy is the same socket");
        registry::mark_passed_on(&[fd], false);
        assert!(should_drain(fd) && should_drain(copy.as_raw_fd()), "the new generation failed and is gone");
        let unknown = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(should_drain(unknown.as_raw_fd()), "not known to lameduck: bound by this process");
        assert!(should_drain(-1) && !is_shared(-1) && !is_inherited(-1));
    }
}
