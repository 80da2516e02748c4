//! The Linux side of [`super`]: one safe function per facility, each saying which kernel (and,
//! where it matters, which glibc) it needs. Calls whose glibc wrapper is newer than 2.17 go
//! through `syscall(2)`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

/// `Ok(())` when a system call returned 0, else the OS error.
fn zero_or_error(result: libc::c_int) -> io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// Randomness.

/// Fills `buf` with bytes from the kernel's random source (`getrandom(2)`, Linux 3.17), retrying
/// on `EINTR` and on short reads; never blocks once the system has booted its entropy pool.
/// Through `syscall(2)`: glibc's wrapper came in 2.25.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let got = unsafe { libc::syscall(libc::SYS_getrandom, rest.as_mut_ptr(), rest.len(), 0) };
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        } else {
            filled += got as usize;
        }
    }
    Ok(())
}

// Processes: pidfds.

/// The calling thread's id (`gettid(2)`, through `syscall(2)`: glibc's wrapper is 2.30, and
/// a binary linked for glibc 2.17 would not load with a reference to it).
pub fn thread_id() -> libc::pid_t {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

/// A pidfd for process `pid` (`pidfd_open(2)`, Linux 5.3): it names that process for as long as
/// it is open, even after the process exits and its pid is reused. Close-on-exec (the kernel
/// always makes it so). Fails with `ENOSYS` on older kernels (see the module docs for what each
/// caller does then) and `ESRCH` when there is no such process. Through `syscall(2)`: glibc's
/// wrapper came in 2.36.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags (none) and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a non-negative result is a new descriptor that belongs to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process behind `pidfd` (`pidfd_send_signal(2)`, Linux 5.1): never to
/// another process that reused its pid. Through `syscall(2)`: glibc's wrapper came in 2.36.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal on a descriptor we hold, with no siginfo and no flags.
    let sent =
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0) };
    if sent == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits up to `timeout` (whole milliseconds) for the process behind `pidfd` to exit; true once
/// it has. A pidfd becomes readable when its process exits, reaped or not, so it can also sit
/// in a `poll(2)` set with other descriptors.
pub fn pidfd_wait_exit(pidfd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut p = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let millis = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, millis) > 0 }
}

/// True once the process behind `pidfd` has exited (its pidfd is readable), without waiting.
pub fn pidfd_exited(pidfd: BorrowedFd<'_>) -> bool {
    pidfd_wait_exit(pidfd, Duration::ZERO)
}

// Processes: the rest.

/// Asks the kernel to send this process `signal` when its parent exits (strictly: when the
/// thread that forked it exits), with `prctl(PR_SET_PDEATHSIG)` (Linux 2.1.57). The kernel
/// clears it when the process execs a set-user-ID or set-group-ID program. Async-signal-safe:
/// meant for the child between `fork` and `exec`.
pub fn set_parent_death_signal(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and nothing else.
    zero_or_error(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) })
}

/// The path of the running executable, from `/proc/self/exe`, without the ` (deleted)` the
/// kernel appends once the file was replaced or removed on disk (the path is what we want).
pub fn executable_path() -> Option<PathBuf> {
    std::fs::read_link("/proc/self/exe").ok().map(|p| {
        let text = p.to_string_lossy();
        text.strip_suffix(" (deleted)").map_or(p.clone(), PathBuf::from)
    })
}

/// The parent pid of process `pid`, from `/proc/<pid>/stat`; None when the process is gone.
pub fn parent_pid(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may contain anything, so parse after the last `)`.
    let after = &stat[stat.iter().rposition(|b| *b == b')')? + 1..];
    let text = std::str::from_utf8(after).ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

// Descriptors made close-on-exec atomically.

/// `pipe2(2)` (Linux 2.6.27, glibc 2.9) with `flags`: `(read end, write end)`.
fn pipe_with_flags(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two-int array.
    zero_or_error(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) })?;
    // SAFETY: both descriptors were just created and belong to nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pipe whose ends are close-on-exec from the start (`pipe2(2)` with `O_CLOEXEC`), so that
/// another thread's `fork` + `exec` never inherits them: `(read end, write end)`.
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    pipe_with_flags(libc::O_CLOEXEC)
}

/// As [`pipe_cloexec`], with both ends non-blocking (`O_NONBLOCK`): for waking a thread from a
/// signal handler, where a full pipe must never block.
pub fn pipe_cloexec_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    pipe_with_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
}

/// A new socket of `family` and `kind` (`SOCK_STREAM`, `SOCK_DGRAM`), close-on-exec from the
/// start (`SOCK_CLOEXEC`, Linux 2.6.27).
pub fn socket_cloexec(family: libc::c_int, kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2); a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// Sockets.

/// Makes the socket `fd` drop every TCP segment with the SYN flag that would reach it: a
/// classic BPF socket filter (`SO_ATTACH_FILTER`, Linux 2.2). A TCP socket's filter sees each
/// segment from its TCP header, whose byte 13 holds the flags:
///
/// ```text
/// ldb [13]               load the flags byte
/// jset #0x02, drop, keep SYN set?
/// drop: ret #0           keep 0 bytes: dropped
/// keep: ret #0xffffffff  keep it whole
/// ```
///
/// On a TCP listener that drops new connection attempts (the client retransmits its SYN after
/// its RTO, 1 s at first), while the handshakes already under way complete (their last ACK has
/// no SYN flag) and the connections queued can still be accepted. A connection that completes
/// its handshake later inherits the filter, which an established connection never needs (it
/// receives no SYN). The filter belongs to the socket (every descriptor of it, in every process)
/// and stays until the socket is closed. A unix stream socket never runs its filter on
/// connections: there it changes nothing.
pub fn attach_drop_syn_filter(fd: RawFd) -> io::Result<()> {
    let mut drop_syn = [
        libc::sock_filter { code: 0x30, jt: 0, jf: 0, k: 13 }, // BPF_LD | BPF_B | BPF_ABS
        libc::sock_filter { code: 0x45, jt: 0, jf: 1, k: 0x02 }, // BPF_JMP | BPF_JSET | BPF_K
        libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 },  // BPF_RET | BPF_K
        libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: u32::MAX },
    ];
    let program = libc::sock_fprog { len: drop_syn.len() as u16, filter: drop_syn.as_mut_ptr() };
    // SAFETY: `program` points to valid instructions that outlive the call; the kernel copies
    // the program.
    zero_or_error(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&program as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
}

/// Accepts one connection from the listening socket `fd`, close-on-exec from birth
/// (`accept4(SOCK_CLOEXEC)`, Linux 2.6.28): `WouldBlock` when none is queued on a non-blocking
/// socket.
pub fn accept_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: accept4 without an address buffer; a valid descriptor on success, which we own.
    let conn = unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    if conn < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(conn) })
}

/// Stops the listening socket `fd` listening, for every descriptor of it, without closing any:
/// `shutdown(SHUT_RD)`. On a TCP listener Linux then answers new SYNs with RST (the client's
/// connect fails with `ECONNREFUSED` at once) and resets the connections still queued, as a
/// close would. On a unix stream listener new connections are refused at once and the queued
/// ones stay, to be accepted (then `accept` fails with `EAGAIN`, or `EINVAL` when blocking).
pub fn stop_listening(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown on a descriptor number; an invalid one just fails.
    zero_or_error(unsafe { libc::shutdown(fd, libc::SHUT_RD) })
}

/// True when `fd` is in non-blocking mode (`O_NONBLOCK`).
pub fn is_nonblocking(fd: RawFd) -> io::Result<bool> {
    // SAFETY: fcntl F_GETFL on a descriptor number.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & libc::O_NONBLOCK != 0)
}

/// The pid of the process at the other end of the connected unix socket `fd`, as the kernel
/// recorded it when the connection (or the socket pair) was made: `SO_PEERCRED` (Linux 2.2).
/// None when `fd` has no peer.
pub fn peer_pid(fd: RawFd) -> Option<libc::pid_t> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a local ucred of the size we pass.
    let r =
        unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len) };
    (r == 0).then_some(cred.pid)
}

/// Sends `bytes` on the socket `fd` without blocking (`MSG_DONTWAIT`: a peer that stopped
/// reading never holds us up) and without SIGPIPE (`MSG_NOSIGNAL`, Linux 2.2: a peer that is
/// gone is an `EPIPE` error, not a signal that kills the process). Returns the bytes sent; on a
/// descriptor that is not a socket (a pipe) fails with `ENOTSOCK`.
pub fn send_nonblocking_no_sigpipe(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: sending from a local buffer of the length given.
    let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Asks the kernel to attach the sender's credentials to every datagram the unix socket `fd`
/// receives (`SO_PASSCRED`, Linux 2.2); [`recv_with_credentials`] reads them.
pub fn pass_credentials(fd: RawFd) -> io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)
}

/// Sets an `int` socket option (`SO_REUSEADDR`, `IPV6_V6ONLY`, `SO_PASSCRED`, …).
pub fn set_int_option(fd: RawFd, level: libc::c_int, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a local int and its size.
    zero_or_error(unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

/// One datagram received by [`recv_with_credentials`], and who sent it.
#[derive(Debug)]
pub struct Datagram {
    /// The sender's pid, as the kernel vouches for it (`SCM_CREDENTIALS`: an unprivileged
    /// sender cannot forge it). 0 when the kernel gave none (a sender in another pid namespace).
    pub pid: libc::pid_t,
    /// The sender's uid (`u32::MAX` when the kernel gave none).
    pub uid: libc::uid_t,
    /// How many bytes of the buffer the datagram filled.
    pub len: usize,
}

/// Receives one datagram into `buf` from the unix socket `fd` (with [`pass_credentials`] set),
/// without blocking: None when there is none. `SCM_CREDENTIALS` (Linux 2.2) says who sent it.
/// Descriptors passed along with it (`SCM_RIGHTS`, which anyone can send) are closed at once,
/// and are close-on-exec until then (`MSG_CMSG_CLOEXEC`, Linux 2.6.23).
pub fn recv_with_credentials(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
    // Room for the credentials and a few descriptors; u64s for cmsghdr's alignment.
    let mut control = [0u64; 32];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: a zeroed msghdr pointing at our iovec and control buffer, both alive for the
    // call; the kernel writes within the lengths given.
    let (n, msg) = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC);
        (n, msg)
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            io::ErrorKind::Interrupted => recv_with_credentials(fd, buf),
            _ => Err(err),
        };
    }
    let mut datagram = Datagram { pid: 0, uid: u32::MAX, len: n as usize };
    // SAFETY: walking the control messages the kernel wrote, with the libc CMSG macros, and
    // reading each payload (unaligned) within its length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            let len = ((*cmsg).cmsg_len as usize).saturating_sub(data as usize - cmsg as usize);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) if len >= std::mem::size_of::<libc::ucred>() => {
                    let cred: libc::ucred = std::ptr::read_unaligned(data.cast());
                    datagram.pid = cred.pid;
                    datagram.uid = cred.uid;
                }
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    for i in 0..len / std::mem::size_of::<libc::c_int>() {
                        let fd: libc::c_int = std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                        drop(OwnedFd::from_raw_fd(fd));
                    }
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Some(datagram))
}

/// The address `name` in Linux's abstract unix socket namespace (Linux 2.2): no file, no
/// permissions; systemd writes it `@name` in `NOTIFY_SOCKET`.
pub fn abstract_socket_address(name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

// The C library.

/// This thread's `errno` (glibc's and musl's `__errno_location`). Async-signal-safe: a signal
/// handler saves it first and puts it back with [`set_errno`] last.
pub fn errno() -> libc::c_int {
    // SAFETY: __errno_location always returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Sets this thread's `errno`. Async-signal-safe.
pub fn set_errno(value: libc::c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value }
}

/// The highest signal number, `SIGRTMAX()` (64 on x86 and Arm).
pub fn highest_signal() -> libc::c_int {
    libc::SIGRTMAX()
}

/// The first real-time signal the C library leaves to programs, `SIGRTMIN()`: 34 with glibc,
/// whose threads use 32 and 33 themselves.
pub fn first_free_realtime_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

// Devices.

/// The device number of `/dev/null`: character device 1:3 on Linux.
pub fn null_device() -> libc::dev_t {
    libc::makedev(1, 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_pidfd_signals_its_process_and_is_readable_once_it_exits() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pidfd = match pidfd_open(child.id() as libc::pid_t) {
            Ok(pidfd) => pidfd,
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                eprintln!("no pidfd_open (Linux before 5.3); skipped");
                child.kill().unwrap();
                child.wait().unwrap();
                return;
            }
            Err(e) => panic!("pidfd_open: {e}"),
        };
        assert!(!pidfd_exited(pidfd.as_fd()));
        assert!(!pidfd_wait_exit(pidfd.as_fd(), Duration::from_millis(20)));
        pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL).unwrap();
        assert!(pidfd_wait_exit(pidfd.as_fd(), Duration::from_secs(10)));
        assert!(pidfd_exited(pidfd.as_fd()), "readable before it is reaped");
        child.wait().unwrap();
        assert!(pidfd_exited(pidfd.as_fd()), "and after");
    }

    #[test]
    fn descriptors_are_close_on_exec_from_the_start() {
        // SAFETY: F_GETFD and F_GETFL only read a descriptor's flags.
        let cloexec = |fd: &OwnedFd| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC != 0;
        // SAFETY: as above.
        let nonblocking = |fd: &OwnedFd| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) } & libc::O_NONBLOCK != 0;
        let (read, write) = pipe_cloexec().unwrap();
        assert!(cloexec(&read) && cloexec(&write) && !nonblocking(&read) && !nonblocking(&write));
        let (read, write) = pipe_cloexec_nonblocking().unwrap();
        assert!(cloexec(&read) && cloexec(&write) && nonblocking(&read) && nonblocking(&write));
        assert!(cloexec(&socket_cloexec(libc::AF_UNIX, libc::SOCK_STREAM).unwrap()));
        assert!(socket_cloexec(-1, libc::SOCK_STREAM).is_err());
    }

    #[test]
    fn a_socket_pairs_peer_is_its_creator() {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(peer_pid(ours.as_raw_fd()), Some(std::process::id() as libc::pid_t));
        assert_eq!(peer_pid(-1), None);
    }

    #[test]
    fn proc_reads() {
        // SAFETY: getppid cannot fail.
        assert_eq!(parent_pid(std::process::id() as libc::pid_t), Some(unsafe { libc::getppid() }));
        assert_eq!(parent_pid(-1), None);
        assert!(executable_path().is_some_and(|p| p.is_file()));
    }

    #[test]
    fn the_c_library_and_the_device_numbers() {
        let saved = errno();
        set_errno(libc::EINTR);
        assert_eq!(errno(), libc::EINTR);
        set_errno(saved);
        assert!(highest_signal() >= first_free_realtime_signal() && first_free_realtime_signal() > 31);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata("/dev/null").unwrap().rdev(), null_device());
    }
}
