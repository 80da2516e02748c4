//! The address `listen` is asked for: the forms Server::Starter and systemd users write.
//! Pure parsing (fuzzed below); only [`Address::socket_addrs`] looks anything up.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use crate::error::Error;

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
    pub(super) fn socket_addrs(&self) -> Result<Vec<SocketAddr>, Error> {
        let Address::Tcp { host, port } = self else { return Ok(Vec::new()) };
        let host = host.as_deref().unwrap_or("0.0.0.0");
        (host, *port)
            .to_socket_addrs()
            .map(|a| a.collect())
            .map_err(|e| Error::invalid(format!("address {host}:{port} cannot be resolved: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Random and mutated input never panics and always gives a result or a clear error.
    #[test]
    fn parsers_survive_garbage() {
        use crate::listener::env::{parse_listen_fds, parse_server_starter_port};
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
}

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
    }
}
