//! This process's place in a line of generations: how it was started (so an upgrade can start
//! the same program again) and, when an upgrade started it, the channel on which it tells the
//! previous generation that it is ready.
//!
//! Read once, the first time a runner is made. `LAMEDUCK_READY_FD` is removed from the
//! environment and its descriptor made close-on-exec, so it never leaks into other children.

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};

/// Names the descriptor on which a process started by an upgrade reports readiness: it writes
/// the line `READY=1\n` there (and closes it) once it accepts connections.
pub const READY_FD_ENV: &str = "LAMEDUCK_READY_FD";

/// What this process learned at start.
pub(crate) struct Generation {
    /// The argument vector the process was started with (`argv[0]` first).
    pub(crate) args: Vec<OsString>,
    /// The directory the process started in: relative program paths and arguments mean it.
    pub(crate) start_dir: Option<PathBuf>,
    /// The running executable, for when `argv[0]` cannot be found again.
    pub(crate) executable: Option<PathBuf>,
    /// The previous generation's readiness channel, until it has been told.
    ready_channel: Mutex<Option<OwnedFd>>,
    /// A malformed `LAMEDUCK_READY_FD`, reported by the first run as a warning.
    pub(crate) problem: Option<String>,
}

static GENERATION: OnceLock<Generation> = OnceLock::new();

/// This process's generation, read on first use.
pub(crate) fn get() -> &'static Generation {
    GENERATION.get_or_init(read)
}

fn read() -> Generation {
    let executable = std::fs::read_link("/proc/self/exe").ok().map(|p| {
        // A binary replaced on disk shows as "/path (deleted)": the path is what we want.
        let text = p.to_string_lossy();
        text.strip_suffix(" (deleted)").map_or(p.clone(), PathBuf::from)
    });
    let (ready_channel, problem) = match std::env::var_os(READY_FD_ENV) {
        None => (None, None),
        Some(value) => {
            std::env::remove_var(READY_FD_ENV);
            match parse_ready_fd(&value.to_string_lossy()) {
                Ok(fd) => {
                    // SAFETY: the previous generation placed this descriptor here for us alone.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    crate::listener::set_cloexec(std::os::fd::AsRawFd::as_raw_fd(&fd));
                    (Some(fd), None)
                }
                Err(problem) => (None, Some(problem)),
            }
        }
    };
    Generation {
        args: std::env::args_os().collect(),
        start_dir: std::env::current_dir().ok(),
        executable,
        ready_channel: Mutex::new(ready_channel),
        problem,
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

impl Generation {
    /// True when this process is the current generation: not started by an upgrade, or it
    /// has reported ready to the one that started it. Until then the previous generation owns
    /// the pid file and the unix socket paths (if we fail, it goes on serving with them).
    pub(crate) fn is_current(&self) -> bool {
        self.ready_channel.lock().unwrap_or_else(PoisonError::into_inner).is_none()
    }

    /// Tells the previous generation (if an upgrade started us) that we are ready, once.
    /// Returns true when there was someone to tell.
    pub(crate) fn report_ready(&self) -> bool {
        let Some(fd) = self.ready_channel.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return false;
        };
        let line = b"READY=1\n";
        // SAFETY: writing a local buffer to a descriptor we own; the pipe has room for a line.
        unsafe { libc::write(std::os::fd::AsRawFd::as_raw_fd(&fd), line.as_ptr().cast(), line.len()) };
        true // dropping fd closes it, which also tells a parent that reads until EOF
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
