//! Stopping a listener without resetting the connections in its queue, and without making a
//! client that arrives at that moment wait for its SYN to be retransmitted.
//!
//! Closing a listening socket resets every connection still in its accept queue. Those
//! clients already had their connect succeed and have often sent a request, so the reset is a
//! lost request, not a refused connection (wrk counts them as read errors; closing undrained,
//! the C demo lost about 0.75 requests per restart behind haproxy). Linux cannot stop a TCP
//! listener and keep its queue: the moment a socket stops listening (`close`, or
//! `shutdown(SHUT_RD)`) it resets its queue and answers new SYNs with RST ("connection
//! refused", at once). What it can do is drop new SYNs with a socket filter while the queue is
//! accepted ([`stop_accepting`]). But a client whose SYN is dropped hears nothing until it
//! retransmits it, after the initial RTO of 1 s, and is refused only then. With the filter on
//! for a whole drain ([`drain`]: the filter, then wait for the accept loop to empty the queue,
//! then close), ~10 requests per rolling restart of a Python or Node server behind haproxy
//! (health checks every 100 ms, a connect given up after 1 s) waited out that second, as
//! issue 14 reports.
//!
//! [`shut`] shrinks that gap to microseconds. Once the server has stopped its accept loop, it
//! accepts everything queued at once, attaches the filter, accepts again what joined in the
//! meantime, then stops the socket listening (`shutdown(SHUT_RD)`: the descriptors stay the
//! caller's).
//! The filter is on only for that second sweep, one `accept` that finds the queue empty (a
//! microsecond or two): the only SYNs it drops are those that reach the socket then, which
//! without it would be reset after their connect succeeded. Before the filter every newcomer
//! is accepted, after the shutdown every newcomer is refused at once, and the connections taken
//! from the queue are the caller's to serve: admitted through the connection gate like any
//! other, as slots free. A unix stream listener needs no filter: `shutdown(SHUT_RD)` refuses new
//! connections at once and keeps its queue, so [`shut`] shuts it first, then accepts the queue.
//! `benches/close_stall.py` measures both ways (README: 46 to 75 clients left waiting a second
//! per 20 SIGTERMs of each server under a connection storm with the filter on for the drain;
//! 0 or 1 with [`shut`]).
//!
//! A client whose handshake is still under way when the socket stops listening (its SYN came
//! less than one round trip before) is reset, whatever is done: the last ACK of its handshake
//! finds no listener. On 127.0.0.1 a handshake takes microseconds (longer on a busy machine,
//! where the kernel defers its network work). Together with the SYNs of the last accept, the
//! bench sees about one such client per ten SIGTERMs at 4,500 new connections a second.
//!
//! Never do this to a socket shared with other processes (start_server, systemd socket
//! activation, an upgrade's successor): [`super::should_drain`] says which. The filter and
//! `shutdown` belong to the socket, not the descriptor, so they would stop the others
//! accepting too. There it is simply unnecessary: the queue survives our close.
//!
//! After the listener is closed, idle keep-alive connections get a grace before they are closed
//! (a request may be on its way); [`idle_grace`] is the rule every adapter applies to it.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::sys;

/// How often [`drain`] looks at the queue: short against a lame-duck period, long enough not to
/// spin (the bindings' own loops use the same 2 ms).
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// Makes the listening socket `fd` drop new connection attempts (SYNs) while connections
/// already queued can still be accepted, and handshakes under way complete. Linux only (a
/// classic BPF socket filter, `SO_ATTACH_FILTER`); it changes nothing on a unix socket.
pub fn stop_accepting(fd: RawFd) -> io::Result<()> {
    sys::attach_drop_syn_filter(fd)
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

/// Stops the listening socket `fd` at once and returns the connections that were still in its
/// queue, accepted (close-on-exec, blocking as `accept` makes them), in queue order. From its
/// return on, every new connection attempt is refused at once (`ECONNREFUSED`), none had to
/// wait for a SYN retransmission but those that arrived during its last accept (see the module
/// docs), and none was reset. Serve the connections returned, then close `fd` (and any copy of
/// it) when convenient: the socket no longer listens, whatever descriptors remain.
///
/// For a listener this process owns alone ([`super::should_drain`]; this does not ask), once
/// nothing else accepts on it: stop the accept loop first. An accept that fails for want of
/// descriptors or memory (`EMFILE`, `ENOMEM`) ends the sweep early, and the connections still
/// queued are reset, as closing the listener would. If the filter cannot be attached, the
/// sweep goes on without it (a connection arriving during the last accept is then reset
/// instead of retried).
///
/// Errors, before anything is changed: `fd` is not a listening socket (or not open).
pub fn shut(fd: RawFd) -> io::Result<Vec<OwnedFd>> {
    check_listening(fd)?;
    let nonblocking = sys::is_nonblocking(fd)?;
    let mut taken = Vec::new();
    if super::int_option(fd, libc::SO_DOMAIN) == Some(libc::AF_UNIX) {
        // New connections are refused from here on; the queue stays, to be accepted.
        sys::stop_listening(fd)?;
        accept_queued(fd, nonblocking, &mut taken);
        return Ok(taken);
    }
    // Everything queued so far, with nobody held up: new SYNs are still answered meanwhile.
    if accept_queued(fd, nonblocking, &mut taken) {
        // Only from here to stop_listening are new SYNs dropped (retried after the RTO).
        let _ = stop_accepting(fd);
        accept_queued(fd, nonblocking, &mut taken);
    }
    // Linux does not fail this on a listening socket (were it to, the caller's close would stop
    // it): the connections taken are returned whatever happens, never dropped (reset).
    let _ = sys::stop_listening(fd);
    Ok(taken)
}

/// `fd` is a listening socket: else the system's error (`EBADF`, `ENOTSOCK`) or
/// `InvalidInput`.
fn check_listening(fd: RawFd) -> io::Result<()> {
    match super::int_option(fd, libc::SO_ACCEPTCONN) {
        Some(1) => Ok(()),
        Some(_) => Err(io::Error::new(io::ErrorKind::InvalidInput, "not a listening socket")),
        None => Err(io::Error::last_os_error()),
    }
}

/// Accepts until the queue of `fd` is empty, into `taken`. False when an accept failed for
/// another reason than an empty queue (out of descriptors or memory): the rest cannot be taken.
fn accept_queued(fd: RawFd, nonblocking: bool, taken: &mut Vec<OwnedFd>) -> bool {
    loop {
        // A blocking listener is asked first: its accept would wait for the next client.
        if !nonblocking && !has_pending_connection(fd).unwrap_or(false) {
            return true;
        }
        match sys::accept_cloexec(fd) {
            Ok(conn) => taken.push(conn),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {} // gone before we took it
            // EINVAL: a shut unix listener whose queue is empty (a blocking one says so).
            Err(e) => return e.raw_os_error() == Some(libc::EINVAL),
        }
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

/// Drains the listener `fd` if this process owns it alone, for a caller that closes it itself
/// with its accept loop running: stops new connections ([`stop_accepting`]), then blocks until
/// the queue is empty ([`has_pending_connection`]) or `timeout` has passed (`None`: no limit).
/// The caller's accept loop must keep running meanwhile, on another thread: this only watches
/// the queue. Every client that arrives from the filter to the close waits a second for its SYN
/// to be retransmitted, and is refused then: where the accept loop can be stopped first, stop
/// it and [`shut`] the listener instead.
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
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    /// Long enough for any loopback connect, even on a busy machine; far shorter than the SYN
    /// retries a dropped connection attempt goes through (1 s, 3 s, 7 s…) before it gives up.
    const PATIENCE: Duration = Duration::from_secs(5);

    /// Connections queued on `listener`, each with `hello N` sent, once the kernel queued them.
    fn queue(addr: SocketAddr, fd: RawFd, n: usize) -> Vec<TcpStream> {
        let queued: Vec<TcpStream> = (0..n)
            .map(|i| {
                let mut s = TcpStream::connect_timeout(&addr, PATIENCE).unwrap();
                write!(s, "hello {i}").unwrap();
                s
            })
            .collect();
        let until = Instant::now() + PATIENCE;
        while !has_pending_connection(fd).unwrap() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        queued
    }

    fn read_hello(conn: OwnedFd, i: usize) -> TcpStream {
        let mut conn = TcpStream::from(conn);
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = vec![0u8; format!("hello {i}").len()];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(buf, format!("hello {i}").as_bytes());
        conn
    }

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
        // Only SYNs are dropped: the accepted connection goes on working both ways.
        queued.write_all(b" again").unwrap();
        let mut again = [0u8; 6];
        accepted.read_exact(&mut again).unwrap();
        accepted.write_all(b"ok").unwrap();
        queued.read_exact(&mut buf[..2]).unwrap();
        assert_eq!(&buf[..2], b"ok");
        assert!(!has_pending_connection(listener.as_raw_fd()).unwrap());
        drop(listener);
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_err());
    }

    #[test]
    fn the_filter_drops_syns_over_ipv6_too() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback here; skipped");
            return;
        };
        let addr = listener.local_addr().unwrap();
        stop_accepting(listener.as_raw_fd()).unwrap();
        let attempt = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert_eq!(attempt.unwrap_err().kind(), ErrorKind::TimedOut, "the SYN must be dropped, not refused");
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
    fn shut_takes_the_queue_and_refuses_newcomers_at_once() {
        for nonblocking in [false, true] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(nonblocking).unwrap();
            let (addr, fd) = (listener.local_addr().unwrap(), listener.as_raw_fd());
            let mut queued = queue(addr, fd, 3);
            let taken = shut(fd).unwrap();
            assert_eq!(taken.len(), 3, "every queued connection is accepted (nonblocking: {nonblocking})");
            // Refused at once: a dropped SYN would time out here instead.
            let newcomer = TcpStream::connect_timeout(&addr, PATIENCE).unwrap_err();
            assert_eq!(newcomer.kind(), ErrorKind::ConnectionRefused, "{newcomer}");
            // The queued ones were not reset: each is there, its request readable, and answered.
            for (i, conn) in taken.into_iter().enumerate() {
                read_hello(conn, i).write_all(b"answer").unwrap();
                let mut buf = [0u8; 6];
                queued[i].set_read_timeout(Some(PATIENCE)).unwrap();
                queued[i].read_exact(&mut buf).unwrap();
                assert_eq!(&buf, b"answer");
            }
            // The descriptor is still the caller's, no longer listening.
            assert_eq!(crate::listener::int_option(fd, libc::SO_ACCEPTCONN), Some(0));
            assert!(shut(fd).is_err(), "no longer a listening socket");
            drop(listener);
        }
    }

    #[test]
    fn shut_takes_a_unix_listeners_queue_and_refuses_newcomers_at_once() {
        let dir = std::env::temp_dir().join(format!("lameduck-shut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        for nonblocking in [false, true] {
            let listener = UnixListener::bind(&path).unwrap();
            listener.set_nonblocking(nonblocking).unwrap();
            let queued: Vec<UnixStream> = (0..2)
                .map(|i| {
                    let mut s = UnixStream::connect(&path).unwrap();
                    write!(s, "hello {i}").unwrap();
                    s
                })
                .collect();
            let taken = shut(listener.as_raw_fd()).unwrap();
            assert_eq!(taken.len(), 2, "nonblocking: {nonblocking}");
            let newcomer = UnixStream::connect(&path).unwrap_err();
            assert_eq!(newcomer.kind(), ErrorKind::ConnectionRefused, "{newcomer}");
            for (i, conn) in taken.into_iter().enumerate() {
                let mut conn = UnixStream::from(conn);
                let mut buf = vec![0u8; 7];
                conn.read_exact(&mut buf).unwrap();
                assert_eq!(buf, format!("hello {i}").as_bytes());
            }
            drop(queued);
            drop(listener);
            std::fs::remove_file(&path).unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_descriptors_are_errors() {
        assert!(stop_accepting(-1).is_err());
        assert!(has_pending_connection(-1).is_err());
        assert!(drain(-1, Some(Duration::ZERO)).is_err());
        assert_eq!(shut(-1).unwrap_err().raw_os_error(), Some(libc::EBADF));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(shut(file.as_raw_fd()).unwrap_err().raw_os_error(), Some(libc::ENOTSOCK));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let connected = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(shut(connected.as_raw_fd()).unwrap_err().kind(), ErrorKind::InvalidInput);
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
