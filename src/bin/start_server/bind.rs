//! Binding what `--port` and `--path` ask for, and placing the sockets at the descriptors the
//! workers will find them on (Perl `Server/Starter.pm` 88-186, with its `=fd` collision fixed).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// One `--port` value, parsed: `PORT`, `HOST:PORT`, `[HOST]:PORT`, each with an optional `u`
/// before the port (UDP) and an optional `=FD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// The `SERVER_STARTER_PORT` key: `PORT`, `HOST:PORT` (host as typed) or `[V6]:PORT`.
    pub key: String,
    pub host: Option<String>,
    pub port: u16,
    pub udp: bool,
    pub fd: Option<RawFd>,
}

/// The highest `=FD` accepted: the kernel's own ceiling (`fs.nr_open`'s default), so the
/// descriptor arithmetic start_server does with it cannot overflow; above the process's
/// descriptor limit `dup2` fails with a clear error.
pub const MAX_FD: RawFd = 1 << 20;

impl PortSpec {
    pub fn parse(text: &str) -> Result<PortSpec, String> {
        let bad = || format!("invalid ``port'' value:{text}");
        let trimmed = text.trim();
        let (address, fd) = match trimmed.split_once('=') {
            Some((a, fd)) => (a, Some(fd.parse::<RawFd>().ok().filter(|fd| (0..=MAX_FD).contains(fd)).ok_or_else(bad)?)),
            None => (trimmed, None),
        };
        let (host, port_text) = if let Some(rest) = address.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            (Some(host.to_string()), after.strip_prefix(':').ok_or_else(bad)?)
        } else {
            match address.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && !host.contains(':') => (Some(host.to_string()), port),
                Some(_) => return Err(bad()),
                None => (None, address),
            }
        };
        let (udp, digits) = match port_text.strip_prefix('u') {
            Some(d) => (true, d),
            None => (false, port_text),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let port: u16 = digits.parse().map_err(|_| bad())?;
        if host.as_deref().is_some_and(str::is_empty) {
            return Err(bad());
        }
        let key = match &host {
            Some(h) if h.contains(':') => format!("[{h}]:{port}"),
            Some(h) => format!("{h}:{port}"),
            None => port.to_string(),
        };
        Ok(PortSpec { key, host, port, udp, fd })
    }

    /// The address to bind: no host is IPv4 0.0.0.0; a host with `:` is IPv6 (bound v6-only);
    /// any other host is looked up as IPv4, as Perl's `gethostbyname`.
    fn address(&self) -> Result<SocketAddr, String> {
        match &self.host {
            None => Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port))),
            Some(h) if h.contains(':') => {
                h.parse::<Ipv6Addr>().map(|ip| SocketAddr::from((ip, self.port))).map_err(|_| format!("invalid IPv6 address:{h}"))
            }
            Some(h) => (h.as_str(), self.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.find(|a| a.is_ipv4()))
                .ok_or_else(|| format!("failed to resolve host:{h}")),
        }
    }
}

/// A bound socket and where it goes.
pub struct Socket {
    pub key: String,
    pub fd: OwnedFd,
    /// `=FD`: the descriptor the worker must find it on.
    pub wanted_fd: Option<RawFd>,
    /// A unix socket path, removed when start_server exits (if it is still this socket).
    pub path: Option<PathBuf>,
    /// The device and inode of the socket file at `path` right after bind.
    pub path_id: Option<(u64, u64)>,
}

/// Whether `socket`'s path still names the socket file it bound (not a file that replaced it).
pub fn still_ours(socket: &Socket) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (Some(path), Some(id)) = (&socket.path, socket.path_id) else { return false };
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == id)
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn set_flag(fd: &OwnedFd, level: libc::c_int, option: libc::c_int) -> io::Result<()> {
    lameduck::sys::set_int_option(fd.as_raw_fd(), level, option, 1)
}

fn bind_inet(address: SocketAddr, udp: bool, backlog: i32) -> io::Result<OwnedFd> {
    let family = if address.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let fd = lameduck::sys::socket_cloexec(family, if udp { libc::SOCK_DGRAM } else { libc::SOCK_STREAM })?;
    set_flag(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    // SAFETY: zeroed sockaddr structs filled field by field, passed with their sizes.
    unsafe {
        match address.ip() {
            IpAddr::V4(ip) => {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as _;
                sa.sin_port = address.port().to_be();
                sa.sin_addr.s_addr = u32::from(ip).to_be();
                check(libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_in).cast(), std::mem::size_of_val(&sa) as _))?;
            }
            IpAddr::V6(ip) => {
                set_flag(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as _;
                sa.sin6_port = address.port().to_be();
                sa.sin6_addr.s6_addr = ip.octets();
                check(libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_in6).cast(), std::mem::size_of_val(&sa) as _))?;
            }
        }
        if !udp {
            check(libc::listen(fd.as_raw_fd(), backlog))?;
        }
    }
    Ok(fd)
}

/// Binds one `--port`.
pub fn bind_port(spec: &PortSpec, backlog: i32) -> Result<Socket, String> {
    let address = spec.address()?;
    let fd = bind_inet(address, spec.udp, backlog).map_err(|e| format!("failed to bind to {}:{e}", spec.key))?;
    Ok(Socket { key: spec.key.clone(), fd, wanted_fd: spec.fd, path: None, path_id: None })
}

/// Binds one `--path` (a unix stream socket, created with umask 0). An existing socket file is
/// removed first, with a warning, as Perl does; any other existing file is an error.
pub fn bind_path(path: &str, backlog: i32) -> Result<Socket, String> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            log!("removing existing socket file:{path}");
            std::fs::remove_file(path).map_err(|e| format!("failed to remove existing socket file:{path}:{e}"))?;
        }
    }
    let fail = |e: io::Error| format!("failed to listen to file {path}:{e}");
    let fd = lameduck::sys::socket_cloexec(libc::AF_UNIX, libc::SOCK_STREAM).map_err(fail)?;
    let bytes = std::ffi::OsStr::new(path).as_bytes();
    // SAFETY: a zeroed sockaddr_un with the path copied in (length checked), then bind/listen.
    unsafe {
        let mut sa: libc::sockaddr_un = std::mem::zeroed();
        if bytes.len() >= sa.sun_path.len() {
            return Err(format!("failed to listen to file {path}:path too long"));
        }
        sa.sun_family = libc::AF_UNIX as _;
        for (dst, src) in sa.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let old_mask = libc::umask(0);
        let bound = libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_un).cast(), std::mem::size_of_val(&sa) as _);
        libc::umask(old_mask);
        check(bound).map_err(fail)?;
    }
    // What bind made, recorded at once (lstat: the path is ours now).
    let path_id = {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path).ok().filter(|m| m.file_type().is_socket()).map(|m| (m.dev(), m.ino()))
    };
    let socket = Socket { key: path.to_string(), fd, wanted_fd: None, path: Some(PathBuf::from(path)), path_id };
    // SAFETY: listen(2) on the socket we own.
    if let Err(e) = check(unsafe { libc::listen(socket.fd.as_raw_fd(), backlog) }) {
        if still_ours(&socket) {
            let _ = std::fs::remove_file(path);
        }
        return Err(fail(e));
    }
    Ok(socket)
}

/// Moves every socket to the descriptor its workers will use: `=FD` where given, otherwise the
/// next free one from 3 up; those are left inheritable (everything else start_server opens is
/// close-on-exec). Unlike Perl, two sockets never end up on one descriptor. Returns the
/// descriptors, in order.
pub fn place(sockets: &[Socket]) -> Result<Vec<RawFd>, String> {
    let explicit: Vec<RawFd> = sockets.iter().filter_map(|s| s.wanted_fd).collect();
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = explicit.iter().find(|fd| !seen.insert(**fd)) {
        return Err(format!("two sockets want file descriptor {dup}"));
    }
    let mut next = 3;
    let targets: Vec<RawFd> = sockets
        .iter()
        .map(|s| {
            s.wanted_fd.unwrap_or_else(|| {
                while explicit.contains(&next) {
                    next += 1;
                }
                next += 1;
                next - 1
            })
        })
        .collect();
    // Out of the way first (above every target), so no dup2 below lands on a source.
    let floor = targets.iter().copied().max().unwrap_or(2) + 1;
    let mut moved = Vec::with_capacity(sockets.len());
    for socket in sockets {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; the copy is ours.
        let copy = check(unsafe { libc::fcntl(socket.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) })
            .map_err(|e| format!("failed to move socket {}:{e}", socket.key))?;
        // SAFETY: as above.
        moved.push(unsafe { OwnedFd::from_raw_fd(copy) });
    }
    for ((socket, copy), &target) in sockets.iter().zip(&moved).zip(&targets) {
        // SAFETY: dup2 onto the target descriptor (whatever was there, stdin included, is
        // replaced on purpose); the result is inheritable.
        check(unsafe { libc::dup2(copy.as_raw_fd(), target) }).map_err(|e| format!("failed to dup2 to {target}:{e}"))?;
        if socket.wanted_fd.is_some() {
            log!("socket is duplicated to file descriptor {target}");
        }
    }
    Ok(targets)
}

/// `SERVER_STARTER_PORT`: `KEY=FD` joined with `;`, in `--port` then `--path` order (empty
/// when nothing is bound, as Perl 0.34+).
pub fn server_starter_port(sockets: &[Socket], fds: &[RawFd]) -> String {
    sockets.iter().zip(fds).map(|(s, fd)| format!("{}={fd}", s.key)).collect::<Vec<_>>().join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_reads_back_with_the_shared_parser() {
        let spec = |t: &str| PortSpec::parse(t).unwrap();
        let sockets: Vec<Socket> = ["8080", "127.0.0.1:8081", "[::1]:8082"]
            .iter()
            .map(|t| Socket {
                key: spec(t).key,
                fd: std::fs::File::open("/dev/null").unwrap().into(),
                wanted_fd: None,
                path: None,
                path_id: None,
            })
            .collect();
        let value = server_starter_port(&sockets, &[3, 4, 5]);
        assert_eq!(value, "8080=3;127.0.0.1:8081=4;[::1]:8082=5");
        let parsed = lameduck::listener::parse_server_starter_port(&value).unwrap();
        assert_eq!(parsed, [("8080".to_string(), 3), ("127.0.0.1:8081".to_string(), 4), ("[::1]:8082".to_string(), 5)]);
        assert_eq!(server_starter_port(&[], &[]), "");
    }

    #[test]
    fn port_grammar_and_keys() {
        let p = |t: &str| PortSpec::parse(t).unwrap();
        assert_eq!(p("8080").key, "8080");
        assert_eq!(p(" 127.0.0.1:8080 ").key, "127.0.0.1:8080");
        assert_eq!(p("[127.0.0.1]:8080").key, "127.0.0.1:8080");
        assert_eq!(p("[::1]:8080").key, "[::1]:8080");
        assert_eq!(p("localhost:8080").key, "localhost:8080");
        let udp = p("0.0.0.0:u443");
        assert!(udp.udp && udp.key == "0.0.0.0:443");
        assert_eq!(p("8080=0").fd, Some(0));
        assert_eq!(p("127.0.0.1:8080=9").fd, Some(9));
        for bad in ["abc", "", "80x", "::1:80", "[::1]80", "host:", "70000", "80=-1", "80=x", ":80"] {
            assert!(PortSpec::parse(bad).unwrap_err().starts_with("invalid ``port'' value:"), "{bad}");
        }
        for bad in ["80=1048577", "80=2147483647", "80=99999999999"] {
            assert!(PortSpec::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(p("80=1048576").fd, Some(MAX_FD));
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn any_text_parses_or_fails_without_panicking(text in any::<String>()) {
                if let Ok(spec) = PortSpec::parse(&text) {
                    prop_assert!(spec.fd.map_or(true, |fd| (0..=MAX_FD).contains(&fd)));
                }
            }

            #[test]
            fn port_like_text_never_panics(text in "\\[?[0-9a-z.:]{0,12}\\]?:?u?[0-9]{0,7}(=[-0-9]{0,12})?") {
                let _ = PortSpec::parse(&text);
            }

            #[test]
            fn valid_specs_round_trip(
                host in proptest::option::of(prop_oneof![
                    any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
                    any::<[u16; 8]>().prop_map(|s| Ipv6Addr::from(s).to_string()),
                    "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,10}){0,2}",
                ]),
                port in any::<u16>(),
                udp in any::<bool>(),
                fd in proptest::option::of(0..=MAX_FD),
            ) {
                let u = if udp { "u" } else { "" };
                let address = match &host {
                    Some(h) if h.contains(':') => format!("[{h}]:{u}{port}"),
                    Some(h) => format!("{h}:{u}{port}"),
                    None => format!("{u}{port}"),
                };
                let text = match fd { Some(fd) => format!("{address}={fd}"), None => address };
                let spec = PortSpec::parse(&text).unwrap();
                prop_assert_eq!(&spec.host, &host);
                prop_assert_eq!((spec.port, spec.udp, spec.fd), (port, udp, fd));
                let key = match &host {
                    Some(h) if h.contains(':') => format!("[{h}]:{port}"),
                    Some(h) => format!("{h}:{port}"),
                    None => port.to_string(),
                };
                prop_assert_eq!(spec.key, key);
            }
        }
    }
}
