//! Stopping a listener without resetting the connections in its queue.
//!
//! Closing a listening socket resets every connection still in its accept queue. Those
//! clients already had their connect succeed and have often sent a request, so the reset is a
//! lost request, not a refused connection (wrk counts them as read errors). To stop a listener
//! this process owns alone without losing any:
//!
//! 1. [`stop_accepting`] attaches a socket filter that drops new SYNs, so nothing more joins the
//!    queue. Clients retry the SYN, and after the listener is closed they get "connection refused".
//! 2. The server goes on accepting what is still queued ([`has_pending_connection`] says when it
//!    is done; [`drain`] does 1 and waits for 2).
//! 3. Then it closes the socket.
//!
//! Never do this to a socket shared with other processes (start_server, systemd socket
//! activation, an upgrade's successor): [`super::should_drain`] says which. The filter belongs to
//! the socket, not the descriptor, so it would stop them accepting too. There it is simply
//! unnecessary: the queue survives our close.
//!
//! After the listener is closed, idle keep-alive connections get a grace before they are closed
//! (a request may be on its way); [`idle_grace`] is the rule every adapter applies to it.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// How often [`drain`] looks at the queue: short against a lame-duck period, long enough not to
/// spin (the bindings' own loops use the same 2 ms).
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// Makes the listening socket `fd` drop new connection attempts (SYNs) while connections
/// already queued can still be accepted. Linux only (a classic BPF socket filter,
/// `SO_ATTACH_FILTER`).
pub fn stop_accepting(fd: RawFd) -> io::Result<()> {
    crate::sys::attach_drop_all_filter(fd)
}

/// True when the listening socket `fd` has a connection waiting to be accepted.
pub fn has_pending_connection(fd: RawFd) -> io::Result<bool> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF)); // poll(2) would ignore it
    }
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, zero timeout.
    match unsafe { libc::poll(&mut pfd, 1, 0) } {
        -1 => Err(io::Error::last_os_error()),
        _ if pfd.revents & libc::POLLNVAL != 0 => Err(io::Error::from_raw_os_error(libc::EBADF)),
        n => Ok(n > 0 && pfd.revents & libc::POLLIN != 0),
    }
}

/// What [`drain`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// The listener is shared with other processes ([`super::should_drain`] is false): it was
    /// left alone, and closing this process's copy loses nothing.
    Shared,
    /// New connections are dropped and every queued one has been accepted: close it now.
    Emptied,
    /// The time ran out with connections still queued; closing the listener resets them.
    TimedOut,
}

/// Drains the listener `fd` if this process owns it alone: stops new connections
/// ([`stop_accepting`]), then blocks until the queue is empty ([`has_pending_connection`]) or
/// `timeout` has passed (`None`: no limit). The caller's accept loop must keep running
/// meanwhile, on another thread: this only watches the queue.
///
/// Errors are the system's, for a descriptor that is not a listening socket (or was closed).
pub fn drain(fd: RawFd, timeout: Option<Duration>) -> io::Result<Drained> {
    if !super::should_drain(fd) {
        return Ok(Drained::Shared);
    }
    stop_accepting(fd)?;
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        if !has_pending_connection(fd)? {
            return Ok(Drained::Emptied);
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return Ok(Drained::TimedOut);
        }
        std::thread::sleep(left.map_or(POLL_INTERVAL, |l| l.min(POLL_INTERVAL)));
    }
}

/// How long idle keep-alive connections may stay open once the listener is closed: the
/// adapter's `idle_grace`, but never past the lame-duck deadline (`remaining`: the time left
/// until it, `None` when there is none).
pub fn idle_grace(grace: Duration, remaining: Option<Duration>) -> Duration {
    remaining.map_or(grace, |left| grace.min(left))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn queued_connections_survive_and_new_ones_stall() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = TcpStream::connect(addr).unwrap();
        queued.write_all(b"hello").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(has_pending_connection(listener.as_raw_fd()).unwrap());
        stop_accepting(listener.as_raw_fd()).unwrap();
        // A new connection attempt is dropped (its SYN), so it does not complete.
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err());
        let (mut accepted, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(!has_pending_connection(listener.as_raw_fd()).unwrap());
        drop(listener);
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_err());
    }

    #[test]
    fn drain_waits_for_the_accept_loop_and_gives_up_at_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _queued = TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // Nobody accepts: the connection stays queued until the timeout.
        let started = Instant::now();
        assert_eq!(drain(listener.as_raw_fd(), Some(Duration::from_millis(50))).unwrap(), Drained::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
        // An accept loop takes it: the queue empties.
        let fd = listener.as_raw_fd();
        let acceptor = std::thread::spawn(move || listener.accept().map(|_| listener));
        assert_eq!(drain(fd, None).unwrap(), Drained::Emptied);
        let listener = acceptor.join().unwrap().unwrap();
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(), "new connections are dropped");
        drop(listener);
    }

    #[test]
    fn bad_descriptors_are_errors() {
        assert!(stop_accepting(-1).is_err());
        assert!(has_pending_connection(-1).is_err());
        assert!(drain(-1, Some(Duration::ZERO)).is_err());
    }

    #[test]
    fn idle_grace_never_passes_the_deadline() {
        let s = Duration::from_secs;
        assert_eq!(idle_grace(s(1), None), s(1));
        assert_eq!(idle_grace(s(1), Some(s(5))), s(1));
        assert_eq!(idle_grace(s(1), Some(Duration::from_millis(300))), Duration::from_millis(300));
        assert_eq!(idle_grace(s(1), Some(Duration::ZERO)), Duration::ZERO);
    }
}
