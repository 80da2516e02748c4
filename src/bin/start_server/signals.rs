//! Signals as bytes on a pipe (the self-pipe trick), so the main loop waits for signals, child
//! exits and notify messages in one `poll` and never loses a signal that arrives while it is
//! busy: every delivery is a byte, read in order.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

static WRITE_END: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    // errno save/restore and write(2) are async-signal-safe.
    let saved = lameduck::sys::errno();
    let byte = signal as u8;
    // SAFETY: writing one byte from a local to the pipe's (non-blocking) write end.
    unsafe { libc::write(WRITE_END.load(Ordering::Relaxed), (&byte as *const u8).cast(), 1) };
    lameduck::sys::set_errno(saved);
}

pub struct SignalPipe {
    read: OwnedFd,
    _write: OwnedFd,
}

impl SignalPipe {
    /// Catches `signals` (and ignores SIGPIPE) for the life of the process.
    pub fn install(signals: &[i32]) -> io::Result<SignalPipe> {
        let (read, write) = lameduck::sys::pipe_cloexec_nonblocking()?;
        WRITE_END.store(write.as_raw_fd(), Ordering::Relaxed);
        // SAFETY: installing a plain handler with an empty mask; SA_RESTART keeps other calls
        // going (poll returns EINTR regardless, which is what wakes the loop).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            for &signal in signals {
                if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        Ok(SignalPipe { read, _write: write })
    }

    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The signals received since the last call, in order.
    pub fn drain(&self) -> Vec<i32> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reading into a local buffer from a non-blocking pipe we own.
            let n = unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            out.extend(buf[..n as usize].iter().map(|&b| i32::from(b)));
        }
    }
}

/// Signal numbers by name: `TERM`, `SIGTERM`, `term`, `SigTerm` are all SIGTERM.
pub fn by_name(name: &str) -> Option<i32> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let table = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("ILL", libc::SIGILL),
        ("TRAP", libc::SIGTRAP),
        ("ABRT", libc::SIGABRT),
        ("BUS", libc::SIGBUS),
        ("FPE", libc::SIGFPE),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("SEGV", libc::SIGSEGV),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("CHLD", libc::SIGCHLD),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("TSTP", libc::SIGTSTP),
        ("TTIN", libc::SIGTTIN),
        ("TTOU", libc::SIGTTOU),
        ("URG", libc::SIGURG),
        ("XCPU", libc::SIGXCPU),
        ("XFSZ", libc::SIGXFSZ),
        ("VTALRM", libc::SIGVTALRM),
        ("PROF", libc::SIGPROF),
        ("WINCH", libc::SIGWINCH),
        ("IO", libc::SIGIO),
        ("PWR", libc::SIGPWR),
        ("SYS", libc::SIGSYS),
    ];
    table.iter().find(|(n, _)| *n == bare).map(|(_, s)| *s)
}

/// The name Perl prints: `TERM`, `USR1`, …
pub fn name_of(signal: i32) -> String {
    ["HUP", "INT", "QUIT", "USR1", "USR2", "TERM", "KILL", "ALRM", "CONT", "STOP", "WINCH", "PIPE", "ABRT"]
        .iter()
        .find(|n| by_name(n) == Some(signal))
        .map_or_else(|| signal.to_string(), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for name in ["TERM", "term", "SIGTERM", "SigTerm", " sigterm "] {
            assert_eq!(by_name(name), Some(libc::SIGTERM), "{name}");
        }
        assert_eq!(by_name("Hup"), Some(libc::SIGHUP));
        assert_eq!(by_name("usr1"), Some(libc::SIGUSR1));
        assert_eq!(by_name("BOGUS"), None);
        assert_eq!(by_name(""), None);
        assert_eq!(name_of(libc::SIGUSR1), "USR1");
    }
}
