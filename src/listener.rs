//! Listening sockets: getting one (inherited or fresh), remembering every one handed out so an
//! upgrade can pass them all on, and stopping one without resetting connections.
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

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::error::Error;

/// The most descriptors `LISTEN_FDS` may hand over. Far above any real use, low enough to reject
/// garbage before walking the fd table.
pub const MAX_INHERITED_FDS: usize = 65_536;

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `PORT`, `:PORT`, `HOST:PORT` or `[V6]:PORT`. No host means every IPv4 address.
    Tcp {
        /// The host as written (a name or an IP literal, without brackets), or `None`.
        host: Option<String>,
        /// The port (0 asks the kernel for one, when binding fresh).
        port: u16,
    },
    /// A unix socket path (absolute, or `unix:` followed by a path).
    Unix(PathBuf),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp { host: None, port } => write!(f, "0.0.0.0:{port}"),
            Address::Tcp { host: Some(host), port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host: Some(host), port } => write!(f, "{host}:{port}"),
            Address::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Address {
    /// Parses the forms Server::Starter and systemd users write.
    pub fn parse(text: &str) -> Result<Address, Error> {
        let bad =
            || Error::invalid(format!("address {text:?} is invalid: use PORT, HOST:PORT, [IPV6]:PORT or a unix socket path"));
        let port = |p: &str| p.parse::<u16>().map_err(|_| bad());
        if let Some(path) = text.strip_prefix("unix:") {
            return if path.is_empty() { Err(bad()) } else { Ok(Address::Unix(path.into())) };
        }
        if text.starts_with('/') {
            return Ok(Address::Unix(text.into()));
        }
        if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            let p = after.strip_prefix(':').ok_or_else(bad)?;
            if host.is_empty() || host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad());
            }
            return Ok(Address::Tcp { host: Some(host.into()), port: port(p)? });
        }
        match text.rsplit_once(':') {
            None => Ok(Address::Tcp { host: None, port: port(text)? }),
            Some((host, p)) if !host.contains(':') => {
                let host = (!host.is_empty()).then(|| host.to_string());
                Ok(Address::Tcp { host, port: port(p)? })
            }
            Some(_) => Err(bad()), // an IPv6 literal without brackets
        }
    }

    /// The socket addresses this names (resolving a host name).
    fn socket_addrs(&self) -> Result<Vec<SocketAddr>, Error> {
        let Address::Tcp { host, port } = self else { return Ok(Vec::new()) };
        let host = host.as_deref().unwrap_or("0.0.0.0");
        (host, *port)
            .to_socket_addrs()
            .map(|a| a.collect())
            .map_err(|e| Error::invalid(format!("address {host}:{port} cannot be resolved: {e}")))
    }
}

/// Parses systemd's `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES` (sd_listen_fds(3)) for process
/// `pid`: the inherited descriptors (from 3 on) with their names. Nothing when the variables
/// are absent or meant for another process. Malformed values are errors that name them.
pub fn parse_listen_fds(
    listen_fds: Option<&str>,
    listen_pid: Option<&str>,
    listen_fdnames: Option<&str>,
    pid: u32,
) -> Result<Vec<(RawFd, Option<String>)>, Error> {
    let Some(count) = listen_fds.filter(|c| !c.is_empty()) else { return Ok(Vec::new()) };
    let Some(target) = listen_pid else {
        return Ok(Vec::new()); // sd_listen_fds() ignores LISTEN_FDS without LISTEN_PID
    };
    let target: u32 = target.trim().parse().map_err(|_| Error::invalid(format!("LISTEN_PID={target:?} is not a process id")))?;
    if target != pid {
        return Ok(Vec::new()); // meant for another process (e.g. our parent)
    }
    let n: usize =
        count.trim().parse().map_err(|_| Error::invalid(format!("LISTEN_FDS={count:?} is not a number of descriptors")))?;
    if n > MAX_INHERITED_FDS {
        return Err(Error::invalid(format!("LISTEN_FDS={n} is out of range (at most {MAX_INHERITED_FDS})")));
    }
    let names: Vec<Option<String>> = match listen_fdnames {
        None => vec![None; n],
        Some(names) => {
            let names: Vec<Option<String>> =
                names.split(':').map(|s| (!s.is_empty() && s != "unknown").then(|| s.to_string())).collect();
            if names.len() != n {
                return Err(Error::invalid(format!("LISTEN_FDNAMES has {} name(s) but LISTEN_FDS={n}", names.len())));
            }
            names
        }
    };
    Ok(names.into_iter().enumerate().map(|(i, name)| (3 + i as RawFd, name)).collect())
}

/// Parses Server::Starter's `SERVER_STARTER_PORT` (`port=fd;host:port=fd;[v6]:port=fd;path=fd`)
/// into `(key, fd)` pairs, in order. An empty value means nothing is bound.
pub fn parse_server_starter_port(value: &str) -> Result<Vec<(String, RawFd)>, Error> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(';')
        .map(|entry| {
            let bad = || Error::invalid(format!("SERVER_STARTER_PORT={value:?}: entry {entry:?} is not KEY=FD"));
            let (key, fd) = entry.rsplit_once('=').ok_or_else(bad)?;
            let fd: RawFd = fd.parse().map_err(|_| bad())?;
            if key.is_empty() || fd < 0 {
                return Err(bad());
            }
            Ok((key.to_string(), fd))
        })
        .collect()
}

/// Where an inherited descriptor came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Systemd { name: Option<String> },
    ServerStarter { key: String },
}

/// Names the inherited descriptors whose unix socket paths a lameduck generation created, so
/// the last generation removes them when it stops: comma-separated `FD:DEV:INO`, the identity
/// of the socket file as its creator saw it right after `bind`. The identity travels with the
/// descriptor because the path may have been replaced since (by another server, or by anyone
/// who can write the directory): a file that is not the one we created is never removed.
pub const OWNED_FDS_ENV: &str = "LAMEDUCK_OWNED_FDS";

/// Names the inherited descriptors that a lameduck generation bound itself (comma-separated fd
/// numbers), as opposed to sockets systemd or start_server made and keep a copy of. Such a
/// socket is shared only while the generation that handed it over is alive: once it has exited,
/// this process holds the only copy and drains it at shutdown like a socket it bound itself, so
/// the connections waiting in its queue are answered, not reset, when the last generation stops.
pub const LINEAGE_FDS_ENV: &str = "LAMEDUCK_LINEAGE_FDS";

/// A unix socket file's identity: device and inode numbers.
pub(crate) type FileId = (u64, u64);

/// The identity of the unix socket file at `path`, if it is one.
fn socket_file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::symlink_metadata(path).ok().filter(|m| m.file_type().is_socket()).map(|m| (m.dev(), m.ino()))
}

/// Parses `LAMEDUCK_OWNED_FDS` (see [`OWNED_FDS_ENV`]); entries that are not `FD:DEV:INO` are
/// ignored (such a path is simply never removed).
fn parse_owned_fds(value: &str) -> HashMap<RawFd, FileId> {
    value
        .split(',')
        .filter_map(|entry| {
            let mut parts = entry.trim().splitn(3, ':');
            let fd = parts.next()?.parse::<RawFd>().ok()?;
            let dev = parts.next()?.parse::<u64>().ok()?;
            let ino = parts.next()?.parse::<u64>().ok()?;
            Some((fd, (dev, ino)))
        })
        .collect()
}

/// Names the inherited descriptors the previous generation had taken with `listen` (comma-
/// separated fd numbers): a new generation reports ready only once it has taken these too. The
/// others it merely passes on (sockets systemd gave that nobody used).
pub const REQUIRED_FDS_ENV: &str = "LAMEDUCK_REQUIRED_FDS";

/// Descriptors this process inherited and has not handed out yet, read from the environment
/// once (the variables are then removed, so they do not leak into unrelated children), and
/// every listener handed out since.
struct Pool {
    available: Vec<(RawFd, Source)>,
    /// What the environment got wrong, reported by every `listen` that would have used it.
    problem: Option<String>,
    /// Inherited descriptors handed out: shared with other processes, never to be drained.
    shared: HashSet<RawFd>,
    /// Descriptors handed to a new generation (from the moment it is started).
    handed_on: HashSet<RawFd>,
    /// Inherited descriptors handed out.
    inherited: HashSet<RawFd>,
    /// Inherited descriptors whose unix socket path a lameduck generation created, with the
    /// socket file's identity as its creator recorded it.
    owned: HashMap<RawFd, FileId>,
    /// Inherited descriptors a lameduck generation bound itself (see [`LINEAGE_FDS_ENV`]).
    lineage: HashSet<RawFd>,
    /// Inherited descriptors that must be taken before readiness is reported; `None` (not
    /// started by a lameduck upgrade that says) means all of them.
    required: Option<HashSet<RawFd>>,
    /// Every listener `listen` returned, in order: what an upgrade hands on.
    handed_out: Vec<Listener>,
}

/// A listener `listen` returned.
struct Listener {
    fd: RawFd,
    /// Its name for `LISTEN_FDNAMES` ("unknown" when it has none, as systemd writes it).
    name: String,
    /// What `getsockname` said when it was handed out; a descriptor that no longer says so
    /// was closed (and perhaps reused) and is not passed on.
    bound: String,
    /// A unix socket path this lineage of processes created, with the file's identity, removed
    /// by the final stop if it is still that file.
    owned_path: Option<(PathBuf, FileId)>,
    /// Bound by this process or an earlier lameduck generation (not by systemd or start_server).
    lineage: bool,
}

/// One listener to pass to a new generation.
pub(crate) struct Handoff {
    pub(crate) fd: RawFd,
    pub(crate) name: String,
    /// Its unix socket path was created by us (the file's identity): the new generation owns
    /// it now.
    pub(crate) owned: Option<FileId>,
    /// This process took it with `listen` (or adopted it): the new one must take it too.
    pub(crate) taken: bool,
    /// Bound by a lameduck generation (see [`LINEAGE_FDS_ENV`]).
    pub(crate) lineage: bool,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

fn take_env(name: &str) -> Option<String> {
    let value = std::env::var_os(name)?;
    std::env::remove_var(name);
    Some(value.to_string_lossy().into_owned())
}

fn read_pool() -> Pool {
    crate::generation::supervised_by_server_starter(); // before SERVER_STARTER_PORT is consumed
    let (fds, pid, names, starter) =
        (take_env("LISTEN_FDS"), take_env("LISTEN_PID"), take_env("LISTEN_FDNAMES"), take_env("SERVER_STARTER_PORT"));
    let owned_fds = take_env(OWNED_FDS_ENV);
    let required_fds = take_env(REQUIRED_FDS_ENV);
    let lineage_fds = take_env(LINEAGE_FDS_ENV);
    let mut pool = Pool {
        available: Vec::new(),
        problem: None,
        shared: HashSet::new(),
        handed_on: HashSet::new(),
        inherited: HashSet::new(),
        owned: HashMap::new(),
        lineage: HashSet::new(),
        required: None,
        handed_out: Vec::new(),
    };
    match parse_listen_fds(fds.as_deref(), pid.as_deref(), names.as_deref(), std::process::id()) {
        Ok(list) => pool.available.extend(list.into_iter().map(|(fd, name)| (fd, Source::Systemd { name }))),
        Err(e) => pool.problem = Some(e.message().to_string()),
    }
    match starter.as_deref().map(parse_server_starter_port).transpose() {
        Ok(list) => {
            // start_server sets both variables for the same descriptors: one entry per fd,
            // keeping the Server::Starter key (more specific than an unnamed systemd fd).
            for (key, fd) in list.unwrap_or_default() {
                match pool.available.iter_mut().find(|(f, _)| *f == fd) {
                    Some((_, source @ Source::Systemd { name: None })) => *source = Source::ServerStarter { key },
                    Some(_) => {}
                    None => pool.available.push((fd, Source::ServerStarter { key })),
                }
            }
        }
        Err(e) => pool.problem = pool.problem.take().or(Some(e.message().to_string())),
    }
    for (fd, _) in &pool.available {
        set_cloexec(*fd); // handed on only on purpose (upgrade), never by accident
    }
    // Only meaningful next to the descriptors it describes; garbage is simply ignored.
    let inherited: HashSet<RawFd> = pool.available.iter().map(|(fd, _)| *fd).collect();
    let fd_list = |list: Option<String>| -> HashSet<RawFd> {
        list.unwrap_or_default()
            .split(',')
            .filter_map(|n| n.trim().parse::<RawFd>().ok())
            .filter(|fd| inherited.contains(fd))
            .collect()
    };
    pool.owned = parse_owned_fds(&owned_fds.unwrap_or_default());
    pool.owned.retain(|fd, _| inherited.contains(fd));
    pool.required = required_fds.is_some().then(|| fd_list(required_fds));
    pool.lineage = fd_list(lineage_fds);
    pool
}

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
enum Bound {
    Inet(SocketAddr),
    Unix(Option<PathBuf>),
}

fn bound_address(fd: RawFd) -> io::Result<Bound> {
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
fn same_address(bound: &Bound, wanted: &Address, resolved: &Result<Vec<SocketAddr>, Error>) -> bool {
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

/// A socket's identity (its inode number), the same for every descriptor that refers to it.
fn socket_identity(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: fstat into a local.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ok = unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK;
    ok.then_some((st.st_dev, st.st_ino))
}

/// Checks an inherited descriptor: a stream socket, listening. The message names the fd.
fn validate_inherited(fd: RawFd, origin: &str) -> Result<(), Error> {
    // SAFETY: fstat and getsockopt on an fd number, into locals of the right size.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(Error::invalid(format!("fd {fd} from {origin} is not open")));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(Error::invalid(format!("fd {fd} from {origin} is not a socket")));
        }
        let mut accepting: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN, (&mut accepting as *mut libc::c_int).cast(), &mut len) != 0
            || accepting == 0
        {
            return Err(Error::invalid(format!("fd {fd} from {origin} is not a listening socket")));
        }
    }
    Ok(())
}

/// A listening socket for `address`: the one this process inherited for it (systemd socket
/// activation, matched by `name` or by address, then Server::Starter's `SERVER_STARTER_PORT`),
/// or a fresh one (`SO_REUSEADDR`, `CLOEXEC`, backlog `SOMAXCONN`).
///
/// Inherited descriptors are checked (a listening socket bound to that address) and marked
/// close-on-exec. The environment variables are consumed on the first call.
pub fn listen(address: &str, name: Option<&str>) -> Result<OwnedFd, Error> {
    let wanted = Address::parse(address)?;
    if let Some(name) = name {
        validate_name(name)?;
    }
    // Resolved once (it may be a DNS lookup); needed only to compare addresses or to bind.
    let resolved = wanted.socket_addrs();
    let mut guard = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let pool = guard.get_or_insert_with(read_pool);
    if let Some(problem) = &pool.problem {
        return Err(Error::invalid(problem.clone()));
    }
    let found = pool.available.iter().position(|(fd, source)| match source {
        Source::Systemd { name: Some(n) } if name.is_some() => Some(n.as_str()) == name,
        Source::ServerStarter { key } if key == address => true,
        _ => bound_address(*fd).is_ok_and(|b| same_address(&b, &wanted, &resolved)),
    });
    if let Some(index) = found {
        let (fd, source) = pool.available.remove(index);
        let origin = match source {
            Source::Systemd { .. } => "LISTEN_FDS",
            Source::ServerStarter { .. } => "SERVER_STARTER_PORT",
        };
        validate_inherited(fd, origin)?;
        if let Source::ServerStarter { key } = &source {
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
        pool.shared.insert(fd);
        pool.inherited.insert(fd);
        let inherited_name = match &source {
            Source::Systemd { name: Some(n) } => Some(n.as_str()),
            _ => None,
        };
        let owned = pool.owned.get(&fd).copied().map(Ownership::Inherited).unwrap_or(Ownership::None);
        let lineage = pool.lineage.contains(&fd);
        pool.remember(fd, name.or(inherited_name), owned, lineage);
        drop(guard);
        wake_watchers();
        // SAFETY: the fd was inherited for us, and we hand it out exactly once.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    drop(guard);
    let fd = bind_fresh(&wanted, resolved)?;
    let mut guard = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    guard.get_or_insert_with(read_pool).remember(fd.as_raw_fd(), name, Ownership::Created, true);
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
    validate_inherited(fd, "adopt")?;
    let mut guard = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let pool = guard.get_or_insert_with(read_pool);
    let mut owned = Ownership::None;
    let mut lineage = true; // bound by this process, unless it was inherited
    let mut inherited_name = None;
    // The same socket as an inherited one, under its own number or a copy's (`socket.fromfd`,
    // `dup`): a copy of a socket systemd or start_server holds must never be drained.
    let identity = socket_identity(fd);
    let same = |f: &RawFd| *f == fd || (identity.is_some() && socket_identity(*f) == identity);
    if let Some(index) = pool.available.iter().position(|(f, _)| same(f)) {
        // The host took an inherited descriptor itself: it is shared like one from `listen`.
        let (original, source) = pool.available.remove(index);
        pool.shared.insert(fd);
        pool.inherited.insert(fd);
        owned = pool.owned.get(&original).copied().map(Ownership::Inherited).unwrap_or(Ownership::None);
        lineage = pool.lineage.contains(&original);
        if lineage {
            pool.lineage.insert(fd); // the copy stops being shared when the original would
        }
        if let Source::Systemd { name: Some(n) } = source {
            inherited_name = Some(n);
        }
    }
    // A copy of an inherited socket that `listen` already handed out is as shared as that one.
    let taken_original = pool
        .handed_out
        .iter()
        .find(|l| l.fd != fd && pool.inherited.contains(&l.fd) && identity.is_some() && socket_identity(l.fd) == identity)
        .map(|l| l.fd);
    if let Some(original) = taken_original {
        // Not remembered as a listener of its own: an upgrade hands the socket on once, as the
        // original, and the new process's `listen` takes it back.
        pool.shared.insert(fd);
        pool.inherited.insert(fd);
        if pool.lineage.contains(&original) {
            pool.lineage.insert(fd);
        }
        return Ok(());
    }
    // A record of this number that no longer describes the socket (the old one was closed and
    // the number reused) is replaced; a current one keeps its name unless a new one is given.
    let known = pool.handed_out.iter().find(|l| l.fd == fd && l.still_bound()).map(|l| l.name.clone());
    if known.is_none() || name.is_some() || inherited_name.is_some() {
        let name = name.map(str::to_string).or(inherited_name).or(known);
        pool.remember(fd, name.as_deref(), owned, lineage);
    }
    drop(guard);
    wake_watchers();
    Ok(())
}

/// The inherited listeners that the previous generation had taken and no [`listen`] (or
/// [`adopt`]) call has taken yet here, described for a message: `fd 3 (127.0.0.1:8080, "http")`.
pub(crate) fn untaken() -> Vec<String> {
    let mut guard = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let pool = guard.get_or_insert_with(read_pool);
    let required = pool.required.clone();
    pool.available
        .iter()
        .filter(|(fd, _)| required.as_ref().map_or(true, |r| r.contains(fd)))
        .map(|(fd, source)| {
            let address = bound_address(*fd).map_or_else(|e| e.to_string(), |b| b.to_string());
            match source {
                Source::Systemd { name: Some(n) } => format!("fd {fd} ({address}, {n:?})"),
                _ => format!("fd {fd} ({address})"),
            }
        })
        .collect()
}

/// Runs that wait for every inherited listener to be taken before they report ready.
static WATCHERS: Mutex<Vec<std::sync::Weak<crate::trigger::Trigger>>> = Mutex::new(Vec::new());

/// Wakes `trigger` whenever an inherited listener is taken, until it is dropped.
pub(crate) fn watch_takes(trigger: &std::sync::Arc<crate::trigger::Trigger>) {
    let mut watchers = WATCHERS.lock().unwrap_or_else(PoisonError::into_inner);
    watchers.retain(|w| w.strong_count() > 0);
    watchers.push(std::sync::Arc::downgrade(trigger));
}

fn wake_watchers() {
    let watchers = WATCHERS.lock().unwrap_or_else(PoisonError::into_inner);
    for trigger in watchers.iter().filter_map(std::sync::Weak::upgrade) {
        trigger.wake();
    }
}

/// A name must fit in `LISTEN_FDNAMES`: no `:`, printable, at most 255 bytes (as systemd's
/// `FileDescriptorName=`).
fn validate_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 255 || name.contains(':') || name.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(format!("listener name {name:?} is invalid: use 1 to 255 printable characters without ':'")));
    }
    Ok(())
}

impl Listener {
    /// Still a listening socket bound where it was when it was handed out (not closed, and its
    /// number not reused for something else).
    fn still_bound(&self) -> bool {
        validate_inherited(self.fd, "").is_ok() && bound_address(self.fd).is_ok_and(|b| b.to_string() == self.bound)
    }
}

/// Whether this lineage created a listener's unix socket file.
#[derive(Clone, Copy)]
enum Ownership {
    None,
    /// Bound just now by this process: the file at the path is the one `bind` created.
    Created,
    /// Created by a previous generation, which recorded the file's identity.
    Inherited(FileId),
}

impl Pool {
    /// Records a listener handed out, replacing a stale record of the same descriptor number.
    fn remember(&mut self, fd: RawFd, name: Option<&str>, ownership: Ownership, lineage: bool) {
        let Ok(bound) = bound_address(fd) else { return };
        let owned_path = match (&bound, ownership) {
            (Bound::Unix(Some(path)), Ownership::Created) => socket_file_id(path).map(|id| (path.clone(), id)),
            (Bound::Unix(Some(path)), Ownership::Inherited(id)) => Some((path.clone(), id)),
            _ => None,
        };
        self.handed_out.retain(|l| l.fd != fd);
        self.handed_out.push(Listener {
            fd,
            name: name.unwrap_or("unknown").to_string(),
            bound: bound.to_string(),
            owned_path,
            lineage,
        });
    }
}

/// True when `fd` was inherited (systemd, Server::Starter or a previous generation).
pub fn is_inherited(fd: RawFd) -> bool {
    POOL.lock().unwrap_or_else(PoisonError::into_inner).as_ref().is_some_and(|p| p.inherited.contains(&fd))
}

/// True when `fd` is shared with other processes: inherited (from systemd or start_server, or
/// from a previous generation that is still running), or handed to a new generation by an
/// upgrade. Never drain a shared socket (see the module docs): just close it.
pub fn is_shared(fd: RawFd) -> bool {
    let guard = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(pool) = guard.as_ref() else { return false };
    if pool.handed_on.contains(&fd) {
        return true;
    }
    // A socket a previous generation bound and handed over is ours alone once it has exited.
    pool.shared.contains(&fd) && !(pool.lineage.contains(&fd) && crate::generation::get().previous_generation_exited())
}

/// The listeners an upgrade passes on: every listener handed out that is still open and bound
/// where it was, then every inherited one nobody asked for, in that order.
pub(crate) fn handoff() -> Vec<Handoff> {
    let mut guard = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let pool = guard.get_or_insert_with(read_pool);
    pool.handed_out.retain(Listener::still_bound);
    let mut list: Vec<Handoff> = pool
        .handed_out
        .iter()
        .map(|l| Handoff {
            fd: l.fd,
            name: l.name.clone(),
            owned: l.owned_path.as_ref().map(|(_, id)| *id),
            taken: true,
            lineage: l.lineage,
        })
        .collect();
    for (fd, source) in &pool.available {
        if validate_inherited(*fd, "").is_ok() {
            let name = match source {
                Source::Systemd { name: Some(n) } => n.clone(),
                _ => "unknown".to_string(),
            };
            let (owned, lineage) = (pool.owned.get(fd).copied(), pool.lineage.contains(fd));
            list.push(Handoff { fd: *fd, name, owned, taken: false, lineage });
        }
    }
    list
}

/// True when this process has any listener an upgrade would hand on (taken with [`listen`] or
/// adopted and still open, or inherited and not taken yet). Stops at the first one found, so
/// it costs a few system calls, not one per listener.
pub(crate) fn any_known() -> bool {
    let mut guard = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let pool = guard.get_or_insert_with(read_pool);
    pool.handed_out.iter().any(Listener::still_bound) || pool.available.iter().any(|(fd, _)| validate_inherited(*fd, "").is_ok())
}

/// Marks descriptors as handed to a new generation (see [`is_shared`]), from the moment it is
/// started; unmarked again if it fails and is gone.
pub(crate) fn set_handed_on(fds: &[RawFd], handed: bool) {
    let mut guard = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let pool = guard.get_or_insert_with(read_pool);
    for fd in fds {
        if handed {
            pool.handed_on.insert(*fd);
        } else {
            pool.handed_on.remove(fd);
        }
    }
}

/// The final stop of the last generation: removes the unix socket paths this lineage created,
/// if each is still the socket file we created (a newer server, or anyone who can write the
/// directory, may have replaced it).
pub(crate) fn remove_owned_paths() {
    let guard = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(pool) = guard.as_ref() else { return };
    for (path, id) in pool.handed_out.iter().filter_map(|l| l.owned_path.as_ref()) {
        if socket_file_id(path) == Some(*id) {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn bind_fresh(address: &Address, resolved: Result<Vec<SocketAddr>, Error>) -> Result<OwnedFd, Error> {
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
    fn addresses() {
        let tcp = |h: Option<&str>, p| Address::Tcp { host: h.map(String::from), port: p };
        assert_eq!(Address::parse("8080").unwrap(), tcp(None, 8080));
        assert_eq!(Address::parse(":8080").unwrap(), tcp(None, 8080));
        assert_eq!(Address::parse("127.0.0.1:80").unwrap(), tcp(Some("127.0.0.1"), 80));
        assert_eq!(Address::parse("localhost:0").unwrap(), tcp(Some("localhost"), 0));
        assert_eq!(Address::parse("[::1]:443").unwrap(), tcp(Some("::1"), 443));
        assert_eq!(Address::parse("/run/app.sock").unwrap(), Address::Unix("/run/app.sock".into()));
        assert_eq!(Address::parse("unix:rel.sock").unwrap(), Address::Unix("rel.sock".into()));
        for bad in ["", "http", "80000", "-1", "::1:80", "[::1]80", "[nope]:80", "[]:80", "host:", "unix:"] {
            let err = Address::parse(bad).expect_err(bad);
            assert!(err.message().contains(&format!("{bad:?}")), "{}", err.message());
        }
    }

    #[test]
    fn listen_fds_follows_sd_listen_fds() {
        let parse = |n, pid, names| parse_listen_fds(n, pid, names, 42);
        assert_eq!(parse(None, Some("42"), None).unwrap(), vec![]);
        assert_eq!(parse(Some(""), Some("42"), None).unwrap(), vec![]);
        assert_eq!(parse(Some("0"), Some("42"), None).unwrap(), vec![]);
        assert_eq!(parse(Some("2"), None, None).unwrap(), vec![], "no LISTEN_PID: not ours");
        assert_eq!(parse(Some("2"), Some("41"), None).unwrap(), vec![], "another process's");
        assert_eq!(parse(Some("2"), Some("42"), None).unwrap(), vec![(3, None), (4, None)]);
        assert_eq!(parse(Some("2"), Some("42"), Some("http:unknown")).unwrap(), vec![(3, Some("http".into())), (4, None)]);
        for (n, pid, names, needle) in [
            (Some("a"), Some("42"), None, "LISTEN_FDS=\"a\" is not a number"),
            (Some("-1"), Some("42"), None, "LISTEN_FDS=\"-1\""),
            (Some("99999999"), Some("42"), None, "LISTEN_FDS=99999999 is out of range"),
            (Some("2"), Some("x"), None, "LISTEN_PID=\"x\" is not a process id"),
            (Some("2"), Some("42"), Some("a:b:c"), "LISTEN_FDNAMES has 3 name(s) but LISTEN_FDS=2"),
        ] {
            let err = parse(n, pid, names).expect_err(needle);
            assert!(err.message().contains(needle), "{} !~ {needle}", err.message());
        }
    }

    #[test]
    fn server_starter_port_grammar() {
        assert_eq!(parse_server_starter_port("").unwrap(), vec![]);
        assert_eq!(
            parse_server_starter_port("80=3;127.0.0.1:8080=4;[::1]:8443=5;/tmp/a=b.sock=6").unwrap(),
            vec![("80".into(), 3), ("127.0.0.1:8080".into(), 4), ("[::1]:8443".into(), 5), ("/tmp/a=b.sock".into(), 6)]
        );
        for bad in ["80", "80=", "=3", "80=x", "80=-1", "80=3;", "80=3;;81=4"] {
            let err = parse_server_starter_port(bad).expect_err(bad);
            assert!(err.message().contains("SERVER_STARTER_PORT="), "{}", err.message());
        }
    }

    /// Random and mutated input never panics and always gives a result or a clear error.
    #[test]
    fn parsers_survive_garbage() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"0123456789:;=[]/-ax. \xff";
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let text: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char).collect();
            let _ = Address::parse(&text);
            let _ = parse_server_starter_port(&text);
            let _ = parse_listen_fds(Some(&text), Some("1"), Some(&text), 1);
            let _ = parse_listen_fds(Some("3"), Some(&text), None, 1);
        }
    }

    #[test]
    fn fresh_listeners_are_cloexec_and_listening() {
        let fd = listen("127.0.0.1:0", None).unwrap();
        validate_inherited(fd.as_raw_fd(), "test").unwrap();
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
        assert!(matches!(bound_address(second.as_raw_fd()).unwrap(), Bound::Unix(Some(p)) if p == path));
        let _ = std::fs::remove_dir_all(&dir);
        let err = validate_inherited(0, "LISTEN_FDS").unwrap_err();
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
            let guard = POOL.lock().unwrap();
            guard.as_ref().unwrap().handed_out.iter().find(|l| l.fd == fd).map(|l| (l.name.clone(), l.bound.clone()))
        };
        assert_eq!(record(fd), Some(("web".to_string(), format!("127.0.0.1:{port}"))));
        assert!(handoff().iter().any(|h| h.fd == fd && h.name == "web" && h.taken));
        adopt(fd, None).unwrap();
        assert_eq!(record(fd).unwrap().0, "web", "adopting again keeps the name");
        assert!(adopt(0, None).unwrap_err().message().contains("fd 0 from adopt"));
        assert!(any_known());
        drop(first);
    }

    #[test]
    fn bad_descriptors_are_errors() {
        assert!(stop_accepting(-1).is_err());
        assert!(has_pending_connection(-1).is_err());
    }
}

/// The parsers of what other programs put in our environment, fuzzed: arbitrary text never
/// panics, and well-formed values come back as written.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn config() -> ProptestConfig {
        ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn listen_fds_never_panic(
            fds in proptest::option::of(".{0,12}"),
            pid in proptest::option::of(prop_oneof![Just("4242".to_string()), ".{0,12}"]),
            names in proptest::option::of(".{0,40}"),
        ) {
            let _ = parse_listen_fds(fds.as_deref(), pid.as_deref(), names.as_deref(), 4242);
        }

        #[test]
        fn listen_fds_round_trip(names in proptest::collection::vec("[a-z]{1,8}", 1..20)) {
            let count = names.len().to_string();
            let joined = names.join(":");
            let list = parse_listen_fds(Some(&count), Some("4242"), Some(&joined), 4242).unwrap();
            prop_assert_eq!(list.len(), names.len());
            for (i, (fd, name)) in list.iter().enumerate() {
                prop_assert_eq!(*fd, 3 + i as RawFd);
                prop_assert_eq!(name.as_deref(), Some(names[i].as_str()));
            }
        }

        #[test]
        fn server_starter_port_never_panics(value in ".{0,80}") {
            let _ = parse_server_starter_port(&value);
        }

        #[test]
        fn server_starter_port_round_trips(entries in proptest::collection::vec(("[a-z0-9.:/\\[\\]]{1,20}", 0..1024i32), 1..10)) {
            let value: Vec<String> = entries.iter().map(|(k, fd)| format!("{k}={fd}")).collect();
            let parsed = parse_server_starter_port(&value.join(";")).unwrap();
            prop_assert_eq!(parsed, entries.iter().map(|(k, fd)| (k.clone(), *fd)).collect::<Vec<_>>());
        }

        #[test]
        fn addresses_never_panic(text in ".{0,60}") {
            if let Ok(address) = Address::parse(&text) {
                let _ = address.to_string();
            }
        }

        #[test]
        fn tcp_addresses_round_trip(a in 0u8..=255, b in 0u8..=255, port in 0u16..) {
            let text = format!("10.{a}.{b}.1:{port}");
            prop_assert_eq!(Address::parse(&text).unwrap().to_string(), text);
        }

        #[test]
        fn owned_fds_never_panic(value in ".{0,80}") {
            let _ = parse_owned_fds(&value);
        }

        #[test]
        fn owned_fds_round_trip(entries in proptest::collection::btree_map(3..1024i32, (0u64.., 0u64..), 0..10)) {
            let value: Vec<String> = entries.iter().map(|(fd, (dev, ino))| format!("{fd}:{dev}:{ino}")).collect();
            let parsed = parse_owned_fds(&value.join(","));
            prop_assert_eq!(parsed, entries.into_iter().collect::<HashMap<_, _>>());
        }
    }
}
