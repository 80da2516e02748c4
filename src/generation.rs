//! This process's place in a line of generations: how it was started (so an upgrade can start
//! the same program again) and, when an upgrade started it, the channel on which it tells the
//! previous generation that it is ready and learns that the previous generation handed over.
//!
//! Read once, the first time a runner is made, and never written: the library runs inside
//! Python and Node hosts with threads of their own, where changing the environment races with
//! every `getenv`. So `LAMEDUCK_READY_FD`, `LAMEDUCK_READY_PID` and `LAMEDUCK_PREVIOUS_PID`
//! stay in the environment, and nothing goes stale for the children they reach:
//! - the descriptor is made close-on-exec, so it never leaks into a child;
//! - a child the host starts inherits `LAMEDUCK_READY_PID` naming this process, not itself, so
//!   a lameduck program there ignores the variables (with a warning), as below;
//! - a new generation started by an upgrade gets an environment built without them and then
//!   its own values (`upgrade::INHERITANCE_ENV`, `upgrade::spawn`).
//!
//! `LAMEDUCK_READY_FD` is trusted only when `LAMEDUCK_READY_PID` names this very process (as
//! `LISTEN_PID` binds `LISTEN_FDS`) and the descriptor really is a channel (a connected unix
//! stream socket made by the previous generation, or a pipe's write end): a variable inherited
//! through another program, or one naming the server's own listener, is ignored and its
//! descriptor untouched.

use crate::listener::int_option;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// Names the descriptor on which a process started by an upgrade reports readiness: it writes
/// the line `READY=1\n` there once it accepts connections on every listener it was handed
/// (or `FAILED=reason\n` when it cannot). The previous generation answers `HANDOVER=1\n` and
/// closes its end once it has handed over.
pub const READY_FD_ENV: &str = "LAMEDUCK_READY_FD";

/// The pid `LAMEDUCK_READY_FD` is meant for: the process the previous generation started.
pub const READY_PID_ENV: &str = "LAMEDUCK_READY_PID";

/// This process's generation number, set by an upgrade for the process it starts (one more
/// than its own). Trusted only with a valid `LAMEDUCK_READY_FD` (the same launch).
pub const GENERATION_ENV: &str = "LAMEDUCK_GENERATION";

/// What this process learned at start.
pub(crate) struct Generation {
    /// The argument vector the process was started with (`argv[0]` first).
    pub(crate) args: Vec<OsString>,
    /// The directory the process started in: relative program paths and arguments mean it.
    pub(crate) start_dir: Option<PathBuf>,
    /// The running executable, for when `argv[0]` cannot be found again.
    pub(crate) executable: Option<PathBuf>,
    /// 1 for a process started by hand; one more for each upgrade in its line
    /// ([`GENERATION_ENV`]), or start_server's `SERVER_STARTER_GENERATION` for its workers.
    pub(crate) number: u64,
    /// Where the handover from the previous generation stands.
    handover: Mutex<Handover>,
    /// A malformed `LAMEDUCK_READY_FD`, reported by the first run as a warning.
    pub(crate) problem: Option<String>,
    /// Started by Server::Starter's `start_server` (`SERVER_STARTER_PORT` was set): it replaces
    /// its workers itself, so this process never upgrades itself.
    pub(crate) supervised: bool,
    /// The previous generation's pidfd (when it was our parent), kept after the handover: once
    /// it has exited, the sockets our lineage bound are ours alone again.
    previous_pidfd: Option<Arc<OwnedFd>>,
}

/// The handshake with the previous generation, on a socket pair whose other end it holds.
///
/// ```text
/// Pending ─READY=1 sent→ Reported ─HANDOVER=1, EOF, or it exited→ Current
/// Pending ─EOF, or it exited (the previous generation is gone)→ Current
/// ```
enum Handover {
    /// Not started by an upgrade, or the handover is over: this process is the current
    /// generation (it owns the pid file and the unix socket paths).
    Current,
    /// Started by an upgrade and not ready yet.
    Pending(Predecessor),
    /// Ready was reported; the previous generation keeps serving through its confirmation
    /// window, then writes `HANDOVER=1` and closes its end.
    Reported(Predecessor),
}

/// The previous generation, while the handshake with it goes on.
struct Predecessor {
    /// Our end of the readiness channel.
    channel: OwnedFd,
    /// A socket pair (this protocol), or a pipe (an older lameduck, another launcher), which
    /// only carries `READY=1` one way: then reporting ready is the whole handshake.
    is_socket: bool,
    /// The previous generation's pidfd, when it is our parent (`LAMEDUCK_PREVIOUS_PID` is
    /// our parent's pid): readable once it exited. Its death must be seen even when a child it
    /// forked holds a copy of its end of the channel, which would hide the EOF.
    pidfd: Option<Arc<OwnedFd>>,
}

impl Predecessor {
    /// Takes the channel at `fd`; `previous` is `LAMEDUCK_PREVIOUS_PID` as read at start.
    fn open(fd: RawFd, previous: Option<&str>) -> Predecessor {
        // SAFETY: the previous generation placed this descriptor here for us alone.
        let channel = unsafe { OwnedFd::from_raw_fd(fd) };
        crate::listener::set_cloexec(fd);
        // SAFETY: fstat on an open descriptor into a local.
        let is_socket = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
        };
        let pidfd = previous.and_then(|v| v.trim().parse::<libc::pid_t>().ok()).and_then(|pid| {
            // A pidfd on a pid that is checked to still be our parent afterwards, so it is not
            // of a process that reused the number.
            // SAFETY: getppid cannot fail.
            if pid <= 1 || unsafe { libc::getppid() } != pid {
                return None; // a wrapper in between, or it is gone already (EOF tells)
            }
            let pidfd = crate::sys::pidfd_open(pid).ok()?;
            // SAFETY: as above.
            (unsafe { libc::getppid() } == pid).then(|| Arc::new(pidfd))
        });
        Predecessor { channel, is_socket, pidfd }
    }

    /// True once the previous generation has exited (its pidfd is readable).
    fn exited(&self) -> bool {
        self.pidfd.as_deref().is_some_and(|pidfd| crate::sys::pidfd_exited(pidfd.as_fd()))
    }
}

/// The pid of the process that started an upgrade, set for the new process.
pub(crate) const PREVIOUS_PID_ENV: &str = "LAMEDUCK_PREVIOUS_PID";

/// True for the errors that mean "the other end is gone".
fn peer_gone(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET))
}

/// What [`Generation::report_ready`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// Not started by an upgrade (or already reported): nobody to tell.
    NobodyToTell,
    /// The previous generation was told.
    Reported,
    /// The previous generation is gone (killed mid-handshake): this one is the current one now.
    PredecessorGone,
    /// The report could not be written (the channel is broken): the previous generation will
    /// terminate us after its upgrade timeout, and goes on serving.
    NotSent(String),
}

/// What [`Generation::poll_handover`] saw.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The previous generation handed over after its confirmation window.
    HandedOver,
    /// The previous generation went away without handing over (it was killed or crashed).
    PredecessorGone,
}

static GENERATION: OnceLock<Generation> = OnceLock::new();
static SUPERVISED: OnceLock<bool> = OnceLock::new();

/// This process's generation, read on first use.
pub(crate) fn get() -> &'static Generation {
    GENERATION.get_or_init(read)
}

/// True when `start_server` started this process. Read before the listener pool consumes
/// `SERVER_STARTER_PORT`, whichever comes first.
pub(crate) fn supervised_by_server_starter() -> bool {
    *SUPERVISED.get_or_init(|| std::env::var_os("SERVER_STARTER_PORT").is_some())
}

fn read() -> Generation {
    let supervised = supervised_by_server_starter();
    let executable = crate::sys::executable_path();
    // One look at each variable (this runs once, under the OnceLock): the channel's
    // descriptor is taken below, so a second reading must never take it again.
    let bound_to = std::env::var_os(READY_PID_ENV).map(|v| v.to_string_lossy().into_owned());
    let previous = std::env::var(PREVIOUS_PID_ENV).ok();
    let (handover, problem) = match std::env::var_os(READY_FD_ENV) {
        None => (Handover::Current, None),
        Some(value) => {
            match parse_ready_fd(&value.to_string_lossy(), bound_to.as_deref(), previous.as_deref(), std::process::id()) {
                Ok(fd) => (Handover::Pending(Predecessor::open(fd, previous.as_deref())), None),
                Err(problem) => (Handover::Current, Some(problem)),
            }
        }
    };
    let previous_pidfd = match &handover {
        Handover::Pending(p) => p.pidfd.clone(),
        _ => None,
    };
    let number_in = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok()).filter(|&n| n > 0);
    let number = match &handover {
        Handover::Pending(_) => number_in(GENERATION_ENV).unwrap_or(2),
        _ if supervised => number_in("SERVER_STARTER_GENERATION").unwrap_or(1),
        _ => 1,
    };
    Generation {
        previous_pidfd,
        args: std::env::args_os().collect(),
        start_dir: std::env::current_dir().ok(),
        executable,
        number,
        handover: Mutex::new(handover),
        problem,
        supervised,
    }
}

/// `LAMEDUCK_READY_FD` must be meant for process `pid` (`LAMEDUCK_READY_PID`) and name an open
/// descriptor above stderr that is a readiness channel (see [`check_channel`]).
fn parse_ready_fd(value: &str, bound_to: Option<&str>, previous: Option<&str>, pid: u32) -> Result<RawFd, String> {
    match bound_to.map(|p| p.trim().parse::<u32>()) {
        Some(Ok(target)) if target == pid => {}
        Some(Ok(target)) => {
            return Err(format!(
                "{READY_FD_ENV}={value:?} is meant for process {target}, not this one (inherited through another program); ignoring it"
            ))
        }
        Some(Err(_)) | None => {
            return Err(format!(
                "{READY_FD_ENV}={value:?} without {READY_PID_ENV} naming this process is not meant for it; ignoring it"
            ))
        }
    }
    let fd: RawFd = value
        .trim()
        .parse()
        .ok()
        .filter(|&fd| fd > 2)
        .ok_or_else(|| format!("{READY_FD_ENV}={value:?} is not a descriptor number above 2; ignoring it"))?;
    let previous = previous.and_then(|p| p.trim().parse::<libc::pid_t>().ok());
    check_channel(fd, previous).map_err(|what| format!("{READY_FD_ENV}={value:?} names {what}; ignoring it"))?;
    Ok(fd)
}

/// A readiness channel is a connected (not listening) unix stream socket, made by the previous
/// generation (`previous`, when known: a socket pair's peer credentials are its creator's), or
/// the write end of a pipe. Anything else (the server's own listener, a file) is not ours to
/// write to, read from or close. The error says what the descriptor is.
fn check_channel(fd: RawFd, previous: Option<libc::pid_t>) -> Result<(), String> {
    // SAFETY: fstat into a local.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err("a descriptor that is not open".into());
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO => {
            // SAFETY: F_GETFL on an open descriptor.
            let mode = unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_ACCMODE;
            if mode == libc::O_RDONLY {
                return Err("the read end of a pipe".into());
            }
            Ok(())
        }
        libc::S_IFSOCK => {
            if int_option(fd, libc::SO_ACCEPTCONN) != Some(0) {
                return Err("a listening socket, not a readiness channel".into());
            }
            if int_option(fd, libc::SO_DOMAIN) != Some(libc::AF_UNIX) || int_option(fd, libc::SO_TYPE) != Some(libc::SOCK_STREAM)
            {
                return Err("a socket that is not a unix stream socket".into());
            }
            let Some(peer) = crate::sys::peer_pid(fd) else {
                return Err("a unix socket with no peer".into());
            };
            match previous {
                Some(previous) if peer != previous => {
                    Err(format!("a socket made by process {peer}, not by the previous generation {previous}"))
                }
                _ => Ok(()),
            }
        }
        libc::S_IFREG => Err("a regular file, not a readiness channel".into()),
        _ => Err("a descriptor that is not a socket or a pipe".into()),
    }
}

/// Sends one line on the channel, without blocking (a peer that stopped reading, SIGSTOPped,
/// never blocks our coordinator) and without SIGPIPE: a reader that is gone is an error, never
/// a signal that kills us. Works on a pipe too (an older generation's), where SIGPIPE is
/// blocked around the write instead.
pub(crate) fn send_line(fd: RawFd, line: &str) -> std::io::Result<()> {
    let bytes = line.as_bytes();
    let Err(err) = crate::sys::send_nonblocking_no_sigpipe(fd, bytes) else { return Ok(()) };
    if err.raw_os_error() != Some(libc::ENOTSOCK) {
        return Err(err);
    }
    // SAFETY: block SIGPIPE on this thread for one write, then drop any SIGPIPE it raised and
    // restore the mask, so nothing is delivered.
    unsafe {
        let mut pipe_only: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe_only);
        libc::sigaddset(&mut pipe_only, libc::SIGPIPE);
        let was_pending = {
            let mut pending: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut pending);
            libc::sigismember(&pending, libc::SIGPIPE) == 1
        };
        libc::pthread_sigmask(libc::SIG_BLOCK, &pipe_only, &mut old);
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let err = std::io::Error::last_os_error();
        if n < 0 && err.raw_os_error() == Some(libc::EPIPE) && !was_pending {
            let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            libc::sigtimedwait(&pipe_only, std::ptr::null_mut(), &zero);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if n < 0 {
            return Err(err);
        }
    }
    Ok(())
}

impl Generation {
    fn handover(&self) -> std::sync::MutexGuard<'_, Handover> {
        self.handover.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True once the previous generation (an upgrade started us) is known to have exited. False
    /// when we were not started by an upgrade, or cannot tell (a wrapper between us): sockets
    /// stay shared then, which is the safe answer.
    pub(crate) fn previous_generation_exited(&self) -> bool {
        self.previous_pidfd.as_deref().is_some_and(|pidfd| crate::sys::pidfd_exited(pidfd.as_fd()))
    }

    /// True when this process is the current generation: not started by an upgrade, or the
    /// previous generation handed over (or is gone). Until then the previous generation owns
    /// the pid file and the unix socket paths (if we fail, it goes on serving with them).
    pub(crate) fn is_current(&self) -> bool {
        matches!(*self.handover(), Handover::Current)
    }

    /// True while an upgrade started us and we have not reported ready yet.
    pub(crate) fn must_report(&self) -> bool {
        matches!(*self.handover(), Handover::Pending(_))
    }

    /// What to watch while the handover is not over: the channel (for `HANDOVER=1`, or EOF)
    /// and the previous generation's pidfd.
    pub(crate) fn watch_fds(&self) -> Vec<RawFd> {
        match &*self.handover() {
            Handover::Current => Vec::new(),
            Handover::Pending(p) | Handover::Reported(p) => {
                let channel = p.is_socket.then(|| p.channel.as_raw_fd());
                channel.into_iter().chain(p.pidfd.as_ref().map(|f| f.as_raw_fd())).collect()
            }
        }
    }

    /// Tells the previous generation (if an upgrade started us) that we are ready, once.
    pub(crate) fn report_ready(&self) -> Report {
        let mut handover = self.handover();
        let Handover::Pending(p) = std::mem::replace(&mut *handover, Handover::Current) else {
            return Report::NobodyToTell;
        };
        match send_line(p.channel.as_raw_fd(), "READY=1\n") {
            // Over a pipe nothing more comes back: reporting was the whole handshake.
            Ok(()) if !p.is_socket => Report::Reported,
            Ok(()) => {
                *handover = Handover::Reported(p);
                Report::Reported
            }
            Err(err) if peer_gone(&err) => Report::PredecessorGone,
            Err(err) => {
                *handover = Handover::Reported(p); // never a second current generation
                Report::NotSent(err.to_string())
            }
        }
    }

    /// Tells the previous generation that this upgrade cannot succeed, and why (one line). It
    /// then terminates us and goes on serving. False when it is gone (nobody heard): then this
    /// process is the current generation.
    pub(crate) fn report_failure(&self, why: &str) -> bool {
        let mut handover = self.handover();
        let Handover::Pending(p) = &*handover else { return true };
        let line = format!("FAILED={}\n", why.replace(['\n', '\r'], " "));
        match send_line(p.channel.as_raw_fd(), &line) {
            Err(err) if peer_gone(&err) => {
                *handover = Handover::Current;
                false
            }
            _ => true,
        }
    }

    /// Looks, without blocking, for the end of the handover: the previous generation wrote
    /// `HANDOVER=1`, closed its end, or exited. `None` while it is still going on.
    pub(crate) fn poll_handover(&self) -> Option<Outcome> {
        let mut handover = self.handover();
        let (Handover::Pending(p) | Handover::Reported(p)) = &*handover else { return None };
        let outcome = if p.is_socket { read_handover(p.channel.as_raw_fd()) } else { None };
        let outcome = outcome.or_else(|| p.exited().then_some(Outcome::PredecessorGone))?;
        *handover = Handover::Current;
        Some(outcome)
    }
}

/// Reads the channel without blocking: `HandedOver` once `HANDOVER=1` arrived, `PredecessorGone`
/// at EOF (or an error) without it, `None` while nothing has happened.
fn read_handover(fd: RawFd) -> Option<Outcome> {
    let mut received: Vec<u8> = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: reading into a local buffer from a descriptor we own, without blocking.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            if received.len() < 4096 {
                received.extend_from_slice(&buf[..n as usize]);
            }
            continue;
        }
        let err = std::io::Error::last_os_error();
        if n < 0 && err.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        let handed_over = received.windows(10).any(|w| w == b"HANDOVER=1");
        return match (n, handed_over) {
            (_, true) => Some(Outcome::HandedOver),
            (n, false) if n < 0 && err.kind() == std::io::ErrorKind::WouldBlock => None,
            _ => Some(Outcome::PredecessorGone), // EOF or an error without HANDOVER=1
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<RawFd, String> {
        let me = std::process::id();
        parse_ready_fd(value, Some(&me.to_string()), Some(&me.to_string()), me)
    }

    #[test]
    fn ready_fd_values() {
        assert!(parse("x").unwrap_err().contains("\"x\""));
        assert!(parse("2").is_err(), "stdio is never the channel");
        assert!(parse("-5").is_err());
        assert!(parse("99999").unwrap_err().contains("not open"));
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = file.as_raw_fd();
        assert!(parse(&fd.to_string()).unwrap_err().contains("not a socket or a pipe"));
    }

    #[test]
    fn ready_fd_is_bound_to_this_process() {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = ours.as_raw_fd().to_string();
        let me = std::process::id();
        assert_eq!(parse_ready_fd(&fd, Some(&me.to_string()), None, me), Ok(ours.as_raw_fd()));
        let err = parse_ready_fd(&fd, Some("1"), None, me).unwrap_err();
        assert!(err.contains("meant for process 1, not this one"), "{err}");
        let err = parse_ready_fd(&fd, None, None, me).unwrap_err();
        assert!(err.contains("without LAMEDUCK_READY_PID"), "{err}");
        assert!(parse_ready_fd(&fd, Some("garbage"), None, me).is_err());
        // A socket pair's peer is its creator: here us, not "the previous generation" 1.
        let err = parse_ready_fd(&fd, Some(&me.to_string()), Some("1"), me).unwrap_err();
        assert!(err.contains(&format!("made by process {me}, not by the previous generation 1")), "{err}");
    }

    #[test]
    fn only_a_channel_is_a_channel() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = parse(&listener.as_raw_fd().to_string()).unwrap_err();
        assert!(err.contains("a listening socket"), "{err}");
        let unix = std::os::unix::net::UnixDatagram::unbound().unwrap();
        assert!(parse(&unix.as_raw_fd().to_string()).unwrap_err().contains("not a unix stream socket"));
        let (read, write) = crate::sys::pipe_cloexec().unwrap();
        assert!(parse(&read.as_raw_fd().to_string()).unwrap_err().contains("read end of a pipe"));
        assert_eq!(parse(&write.as_raw_fd().to_string()), Ok(write.as_raw_fd()));
        let file = tempfile_in_target();
        assert!(parse(&file.as_raw_fd().to_string()).unwrap_err().contains("regular file"));
    }

    fn tempfile_in_target() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("lameduck-generation-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }
}

/// `LAMEDUCK_READY_FD`/`LAMEDUCK_READY_PID`/`LAMEDUCK_PREVIOUS_PID` as anyone may set them:
/// never a panic, and never accepted for a descriptor that is not open (0..2 are never used).
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn ready_fd_never_panics(
            value in prop_oneof![".{0,12}", (-5i32..100_000).prop_map(|n| n.to_string())],
            bound in proptest::option::of(prop_oneof![Just(std::process::id().to_string()), ".{0,12}"]),
            previous in proptest::option::of(".{0,12}"),
        ) {
            if let Ok(fd) = parse_ready_fd(&value, bound.as_deref(), previous.as_deref(), std::process::id()) {
                prop_assert!(fd > 2);
                // SAFETY: F_GETFD only asks whether the number is open.
                let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
                prop_assert!(open, "fd {} accepted but not open", fd);
            }
        }
    }
}
