//! Each worker's private notify socket: an abstract unix datagram socket with an unpredictable
//! name, on which only the worker (or a process it started) is heard.
//!
//! Abstract sockets have no permissions and are listed in `/proc/net/unix`, so anyone on the
//! machine can send to one. Two defences:
//!
//! - The name is random (`start_server/` and 32 hex digits from `getrandom(2)`), so nobody can
//!   bind it first and make the worker's notifications go nowhere; a name that is taken anyway
//!   is replaced by another at once.
//! - `SO_PASSCRED`: the kernel attaches the sender's real pid and uid to every datagram
//!   (`SCM_CREDENTIALS`; an unprivileged sender cannot forge them). A datagram counts only
//!   when its sender is the worker or one of its descendants (a shell wrapper running
//!   `systemd-notify`: its ppid chain in `/proc/<pid>/stat` leads to the worker).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// `n` random bytes from the kernel, as hex.
pub fn random_hex(n: usize) -> io::Result<String> {
    let mut bytes = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: getrandom(2) writes at most `n - filled` bytes into our buffer.
        let got = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), n - filled, 0) };
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        } else {
            filled += got as usize;
        }
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A fresh unpredictable name (without the leading `@`).
pub fn random_name() -> io::Result<String> {
    Ok(format!("start_server/{}", random_hex(16)?))
}

/// Binds a non-blocking datagram socket with `SO_PASSCRED` on the first name from `names` that
/// is free (a taken name, squatted or not, is skipped at once); returns it and its name.
pub fn bind(mut names: impl FnMut() -> io::Result<String>) -> io::Result<(UnixDatagram, String)> {
    let mut last = io::Error::from(io::ErrorKind::AddrInUse);
    for _ in 0..32 {
        let name = names()?;
        let bound = SocketAddr::from_abstract_name(name.as_bytes()).and_then(|a| UnixDatagram::bind_addr(&a));
        match bound {
            Ok(socket) => {
                socket.set_nonblocking(true)?;
                let one: libc::c_int = 1;
                // SAFETY: setsockopt with a pointer to a local int and its size.
                let set = unsafe {
                    libc::setsockopt(
                        socket.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_PASSCRED,
                        (&one as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if set != 0 {
                    return Err(io::Error::last_os_error());
                }
                return Ok((socket, name));
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// One datagram and who sent it (pid 0: the kernel gave no credentials, e.g. a sender in
/// another pid namespace).
#[derive(Debug)]
pub struct Message {
    pub pid: i32,
    pub uid: u32,
    pub len: usize,
}

/// Receives one datagram into `buf` without blocking (None when there is none). Descriptors
/// passed along with it (`SCM_RIGHTS`, which anyone can send) are closed at once.
pub fn recv(socket: &UnixDatagram, buf: &mut [u8]) -> io::Result<Option<Message>> {
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
        let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC);
        (n, msg)
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            io::ErrorKind::Interrupted => recv(socket, buf),
            _ => Err(err),
        };
    }
    let mut message = Message { pid: 0, uid: u32::MAX, len: n as usize };
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
                    message.pid = cred.pid;
                    message.uid = cred.uid;
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
    Ok(Some(message))
}

/// The parent pid of `pid`, from `/proc/<pid>/stat` (None when the process is gone).
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may contain anything, so parse after the last `)`.
    let after = &stat[stat.iter().rposition(|b| *b == b')')? + 1..];
    let text = std::str::from_utf8(after).ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The real and effective uid of `pid` (from `/proc/<pid>/status`).
fn uids_of(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|uids| uids.split_ascii_whitespace().take(2).filter_map(|u| u.parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether `sender` is `worker` or one of its descendants.
pub fn is_worker_or_descendant(sender: i32, worker: i32) -> Option<bool> {
    if sender <= 0 {
        return Some(false);
    }
    let mut pid = sender;
    for _ in 0..256 {
        if pid == worker {
            return Some(true);
        }
        if pid <= 1 {
            return Some(false);
        }
        match parent_of(pid) {
            Some(parent) => pid = parent,
            None if pid == sender => return None, // the sender is gone: unknown
            None => return Some(false),
        }
    }
    Some(false)
}

/// Whether a datagram from `sender` (with `uid`) counts as the worker's.
///
/// A sender that has already exited (a `systemd-notify` that sent and quit before we looked)
/// cannot be traced. It counts only when its uid is start_server's own or the worker's: a
/// process with either uid could make the worker itself send anything (or signal
/// start_server), so this lets no one new in. Another user is never heard.
pub fn from_worker(sender: i32, uid: u32, worker: i32) -> bool {
    match is_worker_or_descendant(sender, worker) {
        Some(verdict) => verdict,
        // SAFETY: geteuid(2) cannot fail.
        None => uid == unsafe { libc::geteuid() } || uids_of(worker).contains(&uid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn random_names_differ_and_a_taken_name_is_skipped() {
        let a = random_name().unwrap();
        assert!(a.starts_with("start_server/") && a.len() == "start_server/".len() + 32, "{a}");
        assert_ne!(a, random_name().unwrap());
        // Squatted: the first name offered is taken; the next one is used at once.
        let (_squatter, taken) = bind(random_name).unwrap();
        let mut offered = vec![taken.clone()];
        let (_socket, name) = bind(|| {
            let next = if offered.len() == 1 { taken.clone() } else { random_name()? };
            offered.push(next.clone());
            Ok(next)
        })
        .unwrap();
        assert_ne!(name, taken);
        assert_eq!(offered.len(), 3, "{offered:?}");
    }

    #[test]
    fn credentials_come_with_each_datagram_and_passed_descriptors_are_closed() {
        let (socket, name) = bind(random_name).unwrap();
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sender = UnixDatagram::unbound().unwrap();
        sender.send_to_addr(b"READY=1", &address).unwrap();
        let mut buf = [0u8; 64];
        let m = recv(&socket, &mut buf).unwrap().unwrap();
        assert_eq!(&buf[..m.len], b"READY=1");
        assert_eq!(m.pid, std::process::id() as i32);
        // SAFETY: getuid cannot fail.
        assert_eq!(m.uid, unsafe { libc::getuid() });
        assert!(recv(&socket, &mut buf).unwrap().is_none());

        // A descriptor sent along (SCM_RIGHTS) is not kept open here: send a pipe's write
        // end, close ours; the read end then sees end-of-file only if no copy is left.
        let mut ends = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills the two-int array; both ends are ours.
        let (read_end, write_end) = unsafe {
            assert_eq!(libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC), 0);
            (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1]))
        };
        // SAFETY: sendmsg with one SCM_RIGHTS control message built with the CMSG macros.
        unsafe {
            let mut control = [0u64; 4];
            let mut data = *b"X";
            let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: 1 };
            let mut msg: libc::msghdr = std::mem::zeroed();
            let mut sa: libc::sockaddr_un = std::mem::zeroed();
            sa.sun_family = libc::AF_UNIX as _;
            for (d, s) in sa.sun_path[1..].iter_mut().zip(name.as_bytes()) {
                *d = *s as libc::c_char;
            }
            msg.msg_name = (&mut sa as *mut libc::sockaddr_un).cast();
            msg.msg_namelen = (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as _;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(4) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), write_end.as_raw_fd());
            assert_eq!(libc::sendmsg(sender.as_raw_fd(), &msg, 0), 1, "{}", io::Error::last_os_error());
        }
        drop(write_end);
        let m = recv(&socket, &mut buf).unwrap().unwrap();
        assert_eq!(&buf[..m.len], b"X");
        let mut poll = libc::pollfd { fd: read_end.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one descriptor we own, then a read into a local byte.
        unsafe {
            assert_eq!(libc::poll(&mut poll, 1, 10_000), 1, "the passed write end is still open somewhere");
            let mut byte = 0u8;
            assert_eq!(libc::read(read_end.as_raw_fd(), (&mut byte as *mut u8).cast(), 1), 0, "end of file");
        }
    }

    #[test]
    fn descendants_through_the_ppid_chain() {
        let me = std::process::id() as i32;
        // A shell (our child) with a background sleep (our grandchild).
        let mut shell = Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(shell.stdout.take().unwrap()), &mut line).unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        let child = shell.id() as i32;
        assert_eq!(parent_of(grandchild), Some(child));
        assert_eq!(is_worker_or_descendant(grandchild, child), Some(true));
        assert_eq!(is_worker_or_descendant(grandchild, me), Some(true));
        assert_eq!(is_worker_or_descendant(child, child), Some(true));
        assert_eq!(is_worker_or_descendant(me, child), Some(false), "a parent is not a descendant");
        assert_eq!(is_worker_or_descendant(1, child), Some(false));
        assert_eq!(is_worker_or_descendant(0, child), Some(false));
        // SAFETY: kill(2) on the grandchild we started.
        unsafe { libc::kill(grandchild, libc::SIGKILL) };
        shell.wait().unwrap();
        assert_eq!(is_worker_or_descendant(grandchild, child), None, "gone: unknown");
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        assert!(from_worker(grandchild, uid, child), "gone, our own uid: heard");
        assert!(!from_worker(grandchild, uid.wrapping_add(12345), child), "gone, another uid: ignored");
        assert!(!from_worker(me, uid, child), "alive and not a descendant: ignored, whatever its uid");
    }
}
