//! Listening sockets. For now: stopping a listener without resetting connections.
//!
//! Closing a listening socket resets every connection still in its accept queue. Those
//! clients already had their connect succeed and have often sent a request, so the reset is a
//! lost request, not a refused connection (wrk counts them as read errors). To stop a listener
//! this process owns alone without losing any:
//!
//! 1. [`stop_accepting`] attaches a socket filter that drops new SYNs, so nothing more joins the
//!    queue. Clients retry the SYN, and after the listener is closed they get "connection refused".
//! 2. The server accepts what is still queued ([`has_pending_connection`] says when it is done).
//! 3. Then it closes the socket.
//!
//! Never do this to a socket shared with other processes (start_server, systemd socket
//! activation, an upgrade's successor). The filter belongs to the socket, not the descriptor,
//! so it would stop them accepting too. There it is simply unnecessary: the queue survives
//! our close.

use std::io;
use std::os::fd::RawFd;

/// Makes the listening socket `fd` drop new connection attempts (SYNs) while connections
/// already queued can still be accepted. Linux only (a classic BPF socket filter).
pub fn stop_accepting(fd: RawFd) -> io::Result<()> {
    // One instruction: BPF_RET | BPF_K with k = 0, "keep 0 bytes", i.e. drop the packet.
    let mut drop_all = [libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 }];
    let program = libc::sock_fprog { len: 1, filter: drop_all.as_mut_ptr() };
    // SAFETY: `program` points to one valid instruction that outlives the call; the kernel
    // copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&program as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

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
    fn bad_descriptors_are_errors() {
        assert!(stop_accepting(-1).is_err());
        assert!(has_pending_connection(-1).is_err());
    }
}
