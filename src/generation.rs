//! This process's place in a line of generations: how it was started (so an upgrade can start
//! the same program again) and, when an upgrade started it, the channel on which it tells the
//! previous generation that it is ready and learns that the previous generation handed over.
//!
//! Read once, the first time a runner is made. `LAMEDUCK_READY_FD` is removed from the
//! environment and its descriptor made close-on-exec, so it never leaks into other children.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};

/// Names the descriptor on which a process started by an upgrade reports readiness: it writes
/// the line `READY=1\n` there once it accepts connections on every listener it was handed
/// (or `FAILED=reason\n` when it cannot). The previous generation answers `HANDOVER=1\n` and
/// closes its end once it has handed over.
pub const READY_FD_ENV: &str = "LAMEDUCK_READY_FD";

/// What this process learned at start.
pub(crate) struct Generation {
    /// The argument vector the process was started with (`argv[0]` first).
    pub(crate) args: Vec<OsString>,
    /// The directory the process started in: relative program paths and arguments mean it.
    pub(crate) start_dir: Option<PathBuf>,
    /// The running executable, for when `argv[0]` cannot be found again.
    pub(crate) executable: Option<PathBuf>,
    /// Where the handover from the previous generation stands.
    handover: Mutex<Handover>,
    /// A malformed `LAMEDUCK_READY_FD`, reported by the first run as a warning.
    pub(crate) problem: Option<String>,
    /// Started by Server::Starter's `start_server` (`SERVER_STARTER_PORT` was set): it replaces
    /// its workers itself, so this process never upgrades itself.
    pub(crate) supervised: bool,
}

/// The handshake with the previous generation, on a socket pair whose other end it holds.
///
/// ```text
/// Pending ─READY=1 sent→ Reported ─HANDOVER=1 or EOF→ Current
/// Pending ─EOF (the previous generation is gone)→ Current
/// ```
enum Handover {
    /// Not started by an upgrade, or the handover is over: this process is the current
    /// generation (it owns the pid file and the unix socket paths).
    Current,
    /// Started by an upgrade and not ready yet.
    Pending(OwnedFd),
    /// Ready was reported; the previous generation keeps serving through its confirmation
    /// window, then writes `HANDOVER=1` and closes its end.
    Reported(OwnedFd),
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
    let executable = std::fs::read_link("/proc/self/exe").ok().map(|p| {
        // A binary replaced on disk shows as "/path (deleted)": the path is what we want.
        let text = p.to_string_lossy();
        text.strip_suffix(" (deleted)").map_or(p.clone(), PathBuf::from)
    });
    let (handover, problem) = match std::env::var_os(READY_FD_ENV) {
        None => (Handover::Current, None),
        Some(value) => {
            std::env::remove_var(READY_FD_ENV);
            match parse_ready_fd(&value.to_string_lossy()) {
                Ok(fd) => {
                    // SAFETY: the previous generation placed this descriptor here for us alone.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    crate::listener::set_cloexec(fd.as_raw_fd());
                    (Handover::Pending(fd), None)
                }
                Err(problem) => (Handover::Current, Some(problem)),
            }
        }
    };
    Generation {
        args: std::env::args_os().collect(),
        start_dir: std::env::current_dir().ok(),
        executable,
        handover: Mutex::new(handover),
        problem,
        supervised,
    }
}

/// `LAMEDUCK_READY_FD` must name an open descriptor above stderr.
fn parse_ready_fd(value: &str) -> Result<RawFd, String> {
    let fd: RawFd = value
        .trim()
        .parse()
        .ok()
        .filter(|&fd| fd > 2)
        .ok_or_else(|| format!("{READY_FD_ENV}={value:?} is not a descriptor number above 2; ignoring it"))?;
    // SAFETY: F_GETFD only asks whether the number is an open descriptor.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!("{READY_FD_ENV}={value:?} names a descriptor that is not open; ignoring it"));
    }
    Ok(fd)
}

/// Sends one line on the channel. `MSG_NOSIGNAL`: a reader that is gone is an error, never a
/// SIGPIPE that kills us. Works on a pipe too (an older generation's), where SIGPIPE is blocked
/// around the write instead.
pub(crate) fn send_line(fd: RawFd, line: &str) -> std::io::Result<()> {
    let bytes = line.as_bytes();
    // SAFETY: sending a local buffer on a descriptor we own.
    let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
    if n >= 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
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

    /// The channel to watch (for `HANDOVER=1`, or EOF when the previous generation is gone)
    /// while the handover is not over.
    pub(crate) fn channel(&self) -> Option<RawFd> {
        match &*self.handover() {
            Handover::Current => None,
            Handover::Pending(fd) | Handover::Reported(fd) => Some(fd.as_raw_fd()),
        }
    }

    /// Tells the previous generation (if an upgrade started us) that we are ready, once.
    pub(crate) fn report_ready(&self) -> Report {
        let mut handover = self.handover();
        let Handover::Pending(fd) = std::mem::replace(&mut *handover, Handover::Current) else {
            return Report::NobodyToTell;
        };
        match send_line(fd.as_raw_fd(), "READY=1\n") {
            Ok(()) => {
                *handover = Handover::Reported(fd);
                Report::Reported
            }
            Err(_) => Report::PredecessorGone,
        }
    }

    /// Tells the previous generation that this upgrade cannot succeed, and why (one line). It
    /// then terminates us and goes on serving. False when it is gone (nobody heard).
    pub(crate) fn report_failure(&self, why: &str) -> bool {
        let handover = self.handover();
        let Handover::Pending(fd) = &*handover else { return false };
        let line = format!("FAILED={}\n", why.replace(['\n', '\r'], " "));
        send_line(fd.as_raw_fd(), &line).is_ok()
    }

    /// Reads the channel without blocking: the end of the handover once the previous
    /// generation wrote `HANDOVER=1` or closed its end. `None` while it is still going on.
    pub(crate) fn poll_handover(&self) -> Option<Outcome> {
        let mut handover = self.handover();
        let fd = match &*handover {
            Handover::Current => return None,
            Handover::Pending(fd) | Handover::Reported(fd) => fd.as_raw_fd(),
        };
        let mut buf = [0u8; 256];
        let mut handed_over = false;
        loop {
            // SAFETY: reading into a local buffer from a descriptor we own, without blocking.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                handed_over |= buf[..n as usize].windows(10).any(|w| w == b"HANDOVER=1");
                continue;
            }
            let err = std::io::Error::last_os_error();
            if n < 0 && err.kind() == std::io::ErrorKind::WouldBlock && !handed_over {
                return None;
            }
            if n < 0 && err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break; // EOF, an error, or HANDOVER=1 read
        }
        *handover = Handover::Current;
        Some(if handed_over { Outcome::HandedOver } else { Outcome::PredecessorGone })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_fd_values() {
        assert!(parse_ready_fd("x").unwrap_err().contains("\"x\""));
        assert!(parse_ready_fd("2").is_err(), "stdio is never the channel");
        assert!(parse_ready_fd("-5").is_err());
        assert!(parse_ready_fd("99999").unwrap_err().contains("not open"));
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        assert_eq!(parse_ready_fd(&fd.to_string()), Ok(fd));
    }
}
