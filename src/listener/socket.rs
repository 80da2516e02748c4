//! The system calls the listener makes on descriptors: what a socket is bound to, whether it is
//! a listening socket, its identity, binding a fresh one. Kept apart from the registry so the
//! registry reads as bookkeeping, and from `env` so that stays pure.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::address::Address;
use super::env::FileId;
use crate::error::Error;

/// Marks `fd` close-on-exec: inherited descriptors are handed on only on purpose (an upgrade),
/// never by accident to a child the host starts.
pub(crate) fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on an fd number; an invalid fd just fails.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// The address a listening socket is bound to, as an [`Address`]-comparable value.
pub(super) enum Bound {
    Inet(SocketAddr),
    Unix(Option<PathBuf>),
}

pub(super) fn bound_address(fd: RawFd) -> io::Result<Bound> {
    // SAFETY: getsockname fills a sockaddr_storage of the size we pass.
    let (storage, len) = unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(fd, (&mut storage as *mut libc::sockaddr_storage).cast(), &mut len) != 0 {
            return Err(io::Error::last_os_error());
        }
        (storage, len)
    };
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let a: libc::sockaddr_in = unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Ok(Bound::Inet(SocketAddr::from((ip, u16::from_be(a.sin_port)))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Ok(Bound::Inet(SocketAddr::from((ip, u16::from_be(a.sin6_port)))))
        }
        libc::AF_UNIX => {
            // SAFETY: the family says it is a sockaddr_un; the path is NUL-terminated within len.
            let a: libc::sockaddr_un = unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let offset = std::mem::size_of::<libc::sa_family_t>();
            let bytes: Vec<u8> =
                a.sun_path[..(len as usize).saturating_sub(offset)].iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
            use std::os::unix::ffi::OsStrExt;
            Ok(Bound::Unix((!bytes.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&bytes)))))
        }
        other => Err(io::Error::other(format!("address family {other} is not TCP or unix"))),
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::Inet(sa) => write!(f, "{sa}"),
            Bound::Unix(Some(path)) => write!(f, "{}", path.display()),
            Bound::Unix(None) => f.write_str("(unnamed unix socket)"),
        }
    }
}

/// True when `bound` is the address asked for (`resolved`: its socket addresses, looked up once
/// by the caller). A wildcard host matches the wildcard.
pub(super) fn same_address(bound: &Bound, wanted: &Address, resolved: &Result<Vec<SocketAddr>, Error>) -> bool {
    match (bound, wanted) {
        (Bound::Unix(Some(path)), Address::Unix(want)) => path == want,
        // Port 0 means "any port": a program restarted with the arguments it was first started
        // with (`--port 0`) takes over the port its predecessor was given.
        (Bound::Inet(sa), Address::Tcp { port, .. }) if sa.port() == *port || *port == 0 => resolved
            .as_ref()
            .is_ok_and(|addrs| addrs.iter().any(|w| w.ip() == sa.ip() || (w.ip().is_unspecified() && sa.ip().is_unspecified()))),
        _ => false,
    }
}

/// A socket's identity (device and inode numbers), the same for every descriptor that refers to
/// it: how a copy (`dup`, `socket.fromfd`) is recognised, and a closed and reused number told
/// apart from the socket it used to name.
pub(super) type SocketId = (u64, u64);

/// The identity of the socket `fd` refers to, if it is an open socket.
pub(super) fn socket_identity(fd: RawFd) -> Option<SocketId> {
    // SAFETY: fstat into a local.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ok = unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK;
    ok.then_some((st.st_dev, st.st_ino))
}

/// The identity of the unix socket file at `path`, if it is one.
pub(super) fn socket_file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::symlink_metadata(path).ok().filter(|m| m.file_type().is_socket()).map(|m| (m.dev(), m.ino()))
}

/// Reads an `int` socket option (`SOL_SOCKET` level); None when the call fails.
pub(crate) fn int_option(fd: RawFd, option: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a local int of the size we pass.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, option, (&mut value as *mut libc::c_int).cast(), &mut len) };
    (r == 0).then_some(value)
}

/// Checks a descriptor from outside (inherited or adopted): a stream socket, listening. The
/// message names the fd and `origin`.
pub(super) fn validate_listening(fd: RawFd, origin: &str) -> Result<(), Error> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an fd number, into the local stat.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(Error::invalid(format!("fd {fd} from {origin} is not open")));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(Error::invalid(format!("fd {fd} from {origin} is not a socket")));
    }
    if int_option(fd, libc::SO_ACCEPTCONN).unwrap_or(0) == 0 {
        return Err(Error::invalid(format!("fd {fd} from {origin} is not a listening socket")));
    }
    Ok(())
}

/// Binds a fresh listening socket for `address` (`resolved`: its socket addresses).
pub(super) fn bind_fresh(address: &Address, resolved: Result<Vec<SocketAddr>, Error>) -> Result<OwnedFd, Error> {
    let fail = |e: io::Error| Error::new(crate::ErrorKind::System, format!("cannot listen on {address}: {e}"));
    let fd: OwnedFd = match address {
        Address::Tcp { .. } => {
            // std sets SO_REUSEADDR and CLOEXEC; we raise the backlog below.
            TcpListener::bind(&resolved?[..]).map_err(fail)?.into()
        }
        Address::Unix(path) => {
            remove_stale_socket(path);
            UnixListener::bind(path).map_err(fail)?.into()
        }
    };
    // SAFETY: listen(2) again on a listening socket only changes its backlog.
    unsafe { libc::listen(fd.as_raw_fd(), libc::SOMAXCONN) };
    Ok(fd)
}

/// A unix socket file nobody listens on any more (a crashed server's) is removed, so bind works.
fn remove_stale_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket && UnixStream::connect(path).is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused) {
        let _ = std::fs::remove_file(path);
    }
}
