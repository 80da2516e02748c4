//! What other programs put in our environment about inherited listeners: systemd's
//! `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`, Server::Starter's `SERVER_STARTER_PORT`, and the
//! `LAMEDUCK_*_FDS` variables an upgrade adds.
//!
//! Everything here is a pure function of text, so the parsers are fuzzed (see `fuzz` below).
//! The variables are read once, into a [`Snapshot`], when the registry is first used; nothing
//! here (or anywhere in the listener) changes the environment, because the hosts we run in
//! (Python, Node) have other threads that may be reading it at the same moment.

use std::collections::{HashMap, HashSet};
use std::os::fd::RawFd;

use crate::error::Error;

/// The most descriptors `LISTEN_FDS` may hand over. Far above any real use, low enough to reject
/// garbage before walking the fd table.
pub const MAX_INHERITED_FDS: usize = 65_536;

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

/// Names the inherited descriptors the previous generation had taken with `listen` (comma-
/// separated fd numbers): a new generation reports ready only once it has taken these too. The
/// others it merely passes on (sockets systemd gave that nobody used).
pub const REQUIRED_FDS_ENV: &str = "LAMEDUCK_REQUIRED_FDS";

/// A unix socket file's identity: device and inode numbers.
pub(crate) type FileId = (u64, u64);

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

/// Parses `LAMEDUCK_OWNED_FDS` (see [`OWNED_FDS_ENV`]); entries that are not `FD:DEV:INO` are
/// ignored (such a path is simply never removed).
pub(super) fn parse_owned_fds(value: &str) -> HashMap<RawFd, FileId> {
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

/// Parses a comma-separated list of fd numbers (`LAMEDUCK_REQUIRED_FDS`, `LAMEDUCK_LINEAGE_FDS`);
/// entries that are not numbers are ignored.
fn parse_fd_list(value: &str) -> HashSet<RawFd> {
    value.split(',').filter_map(|n| n.trim().parse::<RawFd>().ok()).collect()
}

/// The variables about inherited listeners, as they were when the registry was first used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Snapshot {
    pub(super) listen_fds: Option<String>,
    pub(super) listen_pid: Option<String>,
    pub(super) listen_fdnames: Option<String>,
    pub(super) server_starter_port: Option<String>,
    pub(super) owned_fds: Option<String>,
    pub(super) required_fds: Option<String>,
    pub(super) lineage_fds: Option<String>,
}

impl Snapshot {
    /// Reads this process's environment, without changing it.
    pub(super) fn read() -> Snapshot {
        let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        Snapshot {
            listen_fds: var("LISTEN_FDS"),
            listen_pid: var("LISTEN_PID"),
            listen_fdnames: var("LISTEN_FDNAMES"),
            server_starter_port: var("SERVER_STARTER_PORT"),
            owned_fds: var(OWNED_FDS_ENV),
            required_fds: var(REQUIRED_FDS_ENV),
            lineage_fds: var(LINEAGE_FDS_ENV),
        }
    }
}

/// Who made an inherited descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// systemd socket activation (or a lameduck upgrade, which hands sockets on the same way),
    /// with the descriptor's `LISTEN_FDNAMES` name.
    Systemd { name: Option<String> },
    /// Server::Starter (`SERVER_STARTER_PORT`), with the descriptor's key (`host:port` or path).
    ServerStarter { key: String },
}

/// One descriptor this process was given, as the environment describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Inherited {
    pub(super) fd: RawFd,
    pub(super) source: Source,
    /// The identity of the unix socket file a lameduck generation created for it.
    pub(super) owned: Option<FileId>,
    /// Bound by a lameduck generation (see [`LINEAGE_FDS_ENV`]).
    pub(super) lineage: bool,
    /// Must be taken by `listen` before readiness is reported (see [`REQUIRED_FDS_ENV`]; all of
    /// them when the variable is absent, i.e. not started by a lameduck upgrade that says).
    pub(super) required: bool,
}

/// The descriptors `snapshot` says process `pid` was given, in order (systemd's first, then
/// Server::Starter's), and what the environment got wrong, if anything: the message every
/// `listen` that would have used it reports.
pub(super) fn inherited(snapshot: &Snapshot, pid: u32) -> (Vec<Inherited>, Option<String>) {
    let mut problem = None;
    let mut found: Vec<(RawFd, Source)> = Vec::new();
    match parse_listen_fds(
        snapshot.listen_fds.as_deref(),
        snapshot.listen_pid.as_deref(),
        snapshot.listen_fdnames.as_deref(),
        pid,
    ) {
        Ok(list) => found.extend(list.into_iter().map(|(fd, name)| (fd, Source::Systemd { name }))),
        Err(e) => problem = Some(e.message().to_string()),
    }
    match snapshot.server_starter_port.as_deref().map(parse_server_starter_port).transpose() {
        Ok(list) => {
            // start_server sets both variables for the same descriptors: one entry per fd,
            // keeping the Server::Starter key (more specific than an unnamed systemd fd).
            for (key, fd) in list.unwrap_or_default() {
                match found.iter_mut().find(|(f, _)| *f == fd) {
                    Some((_, source @ Source::Systemd { name: None })) => *source = Source::ServerStarter { key },
                    Some(_) => {}
                    None => found.push((fd, Source::ServerStarter { key })),
                }
            }
        }
        Err(e) => problem = problem.or(Some(e.message().to_string())),
    }
    // The LAMEDUCK_* lists are only meaningful next to the descriptors they describe; entries
    // for other numbers are simply ignored.
    let owned = parse_owned_fds(snapshot.owned_fds.as_deref().unwrap_or_default());
    let required = snapshot.required_fds.as_deref().map(parse_fd_list);
    let lineage = parse_fd_list(snapshot.lineage_fds.as_deref().unwrap_or_default());
    let list = found
        .into_iter()
        .map(|(fd, source)| Inherited {
            fd,
            source,
            owned: owned.get(&fd).copied(),
            lineage: lineage.contains(&fd),
            required: required.as_ref().map_or(true, |r| r.contains(&fd)),
        })
        .collect();
    (list, problem)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn both_variables_describe_one_set_of_descriptors() {
        let snapshot = Snapshot {
            listen_fds: Some("2".into()),
            listen_pid: Some("42".into()),
            listen_fdnames: Some("web:unknown".into()),
            server_starter_port: Some("127.0.0.1:80=3;127.0.0.1:81=4;/run/a.sock=5".into()),
            owned_fds: Some("5:1:2,9:1:1,junk".into()),
            required_fds: Some("3,5,x".into()),
            lineage_fds: Some("4".into()),
        };
        let (list, problem) = inherited(&snapshot, 42);
        assert_eq!(problem, None);
        let sources: Vec<_> = list.iter().map(|i| (i.fd, i.source.clone())).collect();
        assert_eq!(
            sources,
            vec![
                (3, Source::Systemd { name: Some("web".into()) }), // a name beats the key
                (4, Source::ServerStarter { key: "127.0.0.1:81".into() }),
                (5, Source::ServerStarter { key: "/run/a.sock".into() }),
            ]
        );
        assert_eq!(list.iter().map(|i| i.owned).collect::<Vec<_>>(), vec![None, None, Some((1, 2))]);
        assert_eq!(list.iter().map(|i| i.required).collect::<Vec<_>>(), vec![true, false, true]);
        assert_eq!(list.iter().map(|i| i.lineage).collect::<Vec<_>>(), vec![false, true, false]);
        let all_required = inherited(&Snapshot { required_fds: None, ..snapshot.clone() }, 42).0;
        assert!(all_required.iter().all(|i| i.required), "no LAMEDUCK_REQUIRED_FDS: every one is required");
        let (others, problem) = inherited(&snapshot, 7);
        assert_eq!(problem, None);
        assert_eq!(others.iter().map(|i| i.fd).collect::<Vec<_>>(), vec![3, 4, 5], "LISTEN_PID names another process");
        let broken = Snapshot { listen_fds: Some("x".into()), server_starter_port: Some("80".into()), ..snapshot };
        assert!(inherited(&broken, 42).1.unwrap().starts_with("LISTEN_FDS=\"x\""), "the first problem is reported");
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

    fn variable() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![".{0,24}", "[0-9:,;=]{0,24}"])
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
        fn owned_fds_never_panic(value in ".{0,80}") {
            let _ = parse_owned_fds(&value);
        }

        #[test]
        fn owned_fds_round_trip(entries in proptest::collection::btree_map(3..1024i32, (0u64.., 0u64..), 0..10)) {
            let value: Vec<String> = entries.iter().map(|(fd, (dev, ino))| format!("{fd}:{dev}:{ino}")).collect();
            let parsed = parse_owned_fds(&value.join(","));
            prop_assert_eq!(parsed, entries.into_iter().collect::<HashMap<_, _>>());
        }

        /// Any environment at all gives a list and at most a message; every descriptor appears
        /// once, and a problem is only ever reported for a variable that is set.
        #[test]
        fn any_environment_is_a_list_or_a_message(
            listen_fds in variable(),
            listen_pid in proptest::option::of(prop_oneof![Just("4242".to_string()), ".{0,8}"]),
            listen_fdnames in variable(),
            server_starter_port in variable(),
            owned_fds in variable(),
            required_fds in variable(),
            lineage_fds in variable(),
        ) {
            let snapshot = Snapshot { listen_fds, listen_pid, listen_fdnames, server_starter_port, owned_fds, required_fds, lineage_fds };
            let (list, problem) = inherited(&snapshot, 4242);
            let fds: HashSet<RawFd> = list.iter().map(|i| i.fd).collect();
            prop_assert_eq!(fds.len(), list.len());
            if problem.is_some() {
                prop_assert!(snapshot.listen_fds.is_some() || snapshot.server_starter_port.is_some());
            }
        }
    }
}
