//! Upgrades (tableflip's protocol, with its gaps closed): start a new generation of this
//! program with every listener, wait until it reports ready, and only then let this process
//! enter lame-duck. If the new process fails to start, exits, or is not ready within the
//! upgrade timeout, it is terminated (SIGTERM, then SIGKILL after a grace) and nothing else
//! changes: this process goes on serving.
//!
//! The new process finds its listeners at fd 3.. with `LISTEN_FDS`, `LISTEN_PID` (its own pid)
//! and `LISTEN_FDNAMES`, exactly as systemd hands them, and a readiness channel at the next
//! descriptor, named by `LAMEDUCK_READY_FD`. A lameduck-based program reports on it by itself
//! when its runner is ready; any other program writes the line `READY=1\n` to it.

mod coordinator;
mod spawn;

pub(crate) use coordinator::{Coordinator, Outcome, Request, Requests, Started, Waiter, Waiters};

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind};
use crate::format::{go_duration, signal_name};
use crate::options::Options;

/// How long a new process that failed the upgrade gets to exit after SIGTERM before SIGKILL.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(5);

/// Variables that describe this process's inheritance, never passed on as they are: the
/// library leaves them in its own environment (see [`crate::generation`]), and the new process
/// gets its own values from [`spawn`] instead.
const INHERITANCE_ENV: [&str; 11] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "SERVER_STARTER_PORT",
    crate::generation::READY_FD_ENV,
    crate::generation::READY_PID_ENV,
    crate::listener::OWNED_FDS_ENV,
    crate::listener::REQUIRED_FDS_ENV,
    crate::listener::LINEAGE_FDS_ENV,
    crate::generation::PREVIOUS_PID_ENV,
    crate::generation::GENERATION_ENV,
];

/// A new generation that has been started (its `execve` succeeded) but is not yet ready.
pub(crate) struct Candidate {
    pub(crate) pid: u32,
    pub(crate) program: PathBuf,
    /// The descriptors it was given (ours), to mark as shared once it takes over.
    pub(crate) passed_on: Vec<RawFd>,
    spawned: spawn::Spawned,
}

/// Starts the new generation. Errors are [`ErrorKind::UpgradeFailed`] (or `System`).
pub(crate) fn start(options: &Options) -> Result<Candidate, Error> {
    let generation = crate::generation::get();
    let (program, args, is_own_command) = match &options.upgrade_command {
        Some(command) => (command.program.clone(), command.args.clone(), false),
        None => {
            let Some(first) = generation.args.first() else {
                return Err(Error::new(
                    ErrorKind::UpgradeFailed,
                    "cannot start a new process: this process's command line is unknown; set an upgrade command",
                ));
            };
            (PathBuf::from(first), generation.args.clone(), true)
        }
    };
    let dir = generation.start_dir.as_deref();
    let program = match resolve(&program, dir) {
        Ok(path) => path,
        // argv[0] is only a convention; the running executable is the next best thing.
        Err(_) if is_own_command && generation.executable.is_some() && !program.as_os_str().to_string_lossy().contains('/') => {
            generation.executable.clone().unwrap_or_default()
        }
        Err(err) => return Err(err),
    };
    let listeners = crate::listener::for_successor();
    let fds: Vec<RawFd> = listeners.iter().map(|l| l.fd).collect();
    let names: Vec<String> = listeners.iter().map(|l| l.name.clone()).collect();
    let owned: Vec<(usize, crate::listener::FileId)> =
        listeners.iter().enumerate().filter_map(|(i, l)| l.owned.map(|id| (i, id))).collect();
    let required: Vec<usize> = listeners.iter().enumerate().filter(|(_, l)| l.taken).map(|(i, _)| i).collect();
    let lineage: Vec<usize> = listeners.iter().enumerate().filter(|(_, l)| l.lineage).map(|(i, _)| i).collect();
    let env = child_env(std::env::vars_os());
    let plan = spawn::Plan {
        program: &program,
        args: &args,
        env,
        fds: &fds,
        names: &names,
        owned: &owned,
        required: &required,
        lineage: &lineage,
        dir,
    };
    let spawned = spawn::spawn(&plan)?;
    Ok(Candidate { pid: spawned.pid as u32, program, passed_on: fds, spawned })
}

/// The new process's environment before [`spawn`] adds its own variables: this process's,
/// without the ones that describe this process's inheritance.
fn child_env(vars: impl Iterator<Item = (OsString, OsString)>) -> Vec<(OsString, OsString)> {
    vars.filter(|(k, _)| !INHERITANCE_ENV.iter().any(|name| k == name)).collect()
}

/// `program` as `execve` needs it: a path with a slash is taken as it is (relative to the
/// directory the process started in); a bare name is looked up in `PATH`, now, so a binary
/// installed since is what starts.
fn resolve(program: &Path, start_dir: Option<&Path>) -> Result<PathBuf, Error> {
    use std::os::unix::ffi::OsStrExt;
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(match start_dir {
            Some(dir) if program.is_relative() => dir.join(program),
            _ => program.to_path_buf(),
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable_file(candidate))
        .ok_or_else(|| Error::new(ErrorKind::UpgradeFailed, format!("cannot start {}: not found in PATH", program.display())))
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Candidate {
    /// Waits until the new process reports ready and is still running `confirm` later (`Ok`),
    /// or it exits, reports a failure (`FAILED=…`), runs out of `timeout` before it is ready,
    /// or `cancel` becomes readable. In every case but `Ok` it is gone (terminated and reaped)
    /// when this returns, and the error says what happened. During the confirmation window both
    /// processes serve, so a new process that dies right after READY costs nothing: this one
    /// never stopped.
    pub(crate) fn watch(&self, timeout: Duration, confirm: Duration, cancel: RawFd) -> Result<(), Error> {
        let mut deadline = Instant::now() + timeout;
        let pid = self.pid;
        let mut ready_open = true;
        let mut received: Vec<u8> = Vec::new();
        let mut confirming = false;
        let died = |status: libc::c_int, confirming: bool| {
            let when = if confirming {
                format!("within {} of reporting ready", go_duration(confirm))
            } else {
                "before it was ready".to_string()
            };
            Error::new(ErrorKind::UpgradeFailed, format!("new process {pid} {} {when}", describe_status(status)))
        };
        loop {
            let now = Instant::now();
            if confirming && now >= deadline {
                // One last look: a process that died in the window's last instant is no successor.
                return match self.exited(true) {
                    Some(status) => Err(died(status, true)),
                    None => Ok(()),
                };
            }
            if now >= deadline {
                let how = self.terminate();
                return Err(Error::new(
                    ErrorKind::UpgradeFailed,
                    format!("new process {pid} was not ready within {}; {how}", go_duration(timeout)),
                ));
            }
            let mut wait = deadline - now;
            if self.spawned.pidfd.is_none() {
                wait = wait.min(Duration::from_millis(50)); // no pidfd: look at waitpid often
            }
            let mut fds = [
                libc::pollfd {
                    fd: if ready_open { self.spawned.ready.as_raw_fd() } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd { fd: self.spawned.pidfd.as_ref().map_or(-1, |f| f.as_raw_fd()), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: cancel, events: libc::POLLIN, revents: 0 },
            ];
            let millis = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: three valid pollfds (negative fds are ignored by poll).
            unsafe { libc::poll(fds.as_mut_ptr(), 3, millis) };
            if fds[2].revents != 0 {
                let how = self.terminate();
                let when = if confirming { "before it took over" } else { "before it was ready" };
                return Err(Error::new(
                    ErrorKind::Canceled,
                    format!("upgrade canceled: lame-duck began {when} (new process {pid}); {how}"),
                ));
            }
            if fds[0].revents != 0 {
                let mut buf = [0u8; 512];
                // SAFETY: reading into a local buffer from a descriptor we own.
                let n = unsafe { libc::read(self.spawned.ready.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 && received.len() < 4096 {
                    received.extend_from_slice(&buf[..n as usize]);
                } else if n <= 0 {
                    ready_open = false; // EOF (or an error): nothing more will come
                }
                if let Some(why) = failure_reported(&received) {
                    let how = self.terminate();
                    return Err(Error::new(
                        ErrorKind::UpgradeFailed,
                        format!("new process {pid} cannot take over: {why}; {how}"),
                    ));
                }
                if !confirming && ready_reported(&received, !ready_open) {
                    confirming = true;
                    deadline = Instant::now() + confirm;
                    continue;
                }
            }
            if let Some(status) = self.exited(fds[1].revents != 0) {
                return Err(died(status, confirming));
            }
        }
    }

    /// Tells a lameduck new process that this one hands over now (it becomes the current
    /// generation); any other program simply finds the channel closed. Never a SIGPIPE.
    pub(crate) fn hand_over(&self) {
        let _ = crate::generation::send_line(self.spawned.ready.as_raw_fd(), "HANDOVER=1\n");
    }

    /// Terminates a candidate that will not be watched (see [`Candidate::watch`]'s errors).
    pub(crate) fn abort(&self) -> String {
        self.terminate()
    }

    /// The exit status, if the process has exited (and is now reaped). A host that reaps
    /// children itself (SIGCHLD ignored, or its own `waitpid(-1)`) leaves nothing to reap:
    /// ECHILD then means "gone", with an unknown status (reported as 0).
    fn exited(&self, pidfd_readable: bool) -> Option<libc::c_int> {
        if self.spawned.pidfd.is_some() && !pidfd_readable {
            return None;
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child, without blocking.
        let r = unsafe { libc::waitpid(self.spawned.pid, &mut status, libc::WNOHANG) };
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            return Some(0);
        }
        (r == self.spawned.pid).then_some(status)
    }

    /// Signals the candidate through its pidfd when there is one, so a pid reused after a
    /// reap by someone else is never hit.
    fn signal(&self, signal: libc::c_int) {
        match &self.spawned.pidfd {
            Some(fd) => {
                let _ = crate::sys::pidfd_send_signal(fd.as_fd(), signal);
            }
            // SAFETY: signalling our own child, which we have not reaped.
            None => unsafe {
                libc::kill(self.spawned.pid, signal);
            },
        }
    }

    /// SIGTERM, then SIGKILL after [`KILL_GRACE`]; reaps it. Says which it took.
    fn terminate(&self) -> String {
        self.signal(libc::SIGTERM);
        let until = Instant::now() + KILL_GRACE;
        while Instant::now() < until {
            if let Some(fd) = &self.spawned.pidfd {
                let left = until.saturating_duration_since(Instant::now());
                crate::sys::pidfd_wait_exit(fd.as_fd(), left.clamp(Duration::from_millis(1), Duration::from_secs(1)));
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(status) = self.exited(true) {
                return format!("stopped it with SIGTERM ({})", describe_status(status));
            }
        }
        self.signal(libc::SIGKILL);
        reap(self.spawned.pid);
        format!("killed it with SIGKILL after it ignored SIGTERM for {}", go_duration(KILL_GRACE))
    }
}

/// True when a whole line `READY=1` arrived (the text after the last newline counts only once
/// the channel is closed).
fn ready_reported(received: &[u8], closed: bool) -> bool {
    let mut lines: Vec<&[u8]> = received.split(|&b| b == b'\n').collect();
    if !closed {
        lines.pop();
    }
    lines.iter().any(|line| line.strip_suffix(b"\r").unwrap_or(line) == b"READY=1")
}

/// The reason in a whole line `FAILED=reason`, if the new process sent one.
fn failure_reported(received: &[u8]) -> Option<String> {
    let mut lines: Vec<&[u8]> = received.split(|&b| b == b'\n').collect();
    lines.pop(); // only whole lines count
    lines.iter().find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.strip_prefix(b"FAILED=").map(|why| String::from_utf8_lossy(why).into_owned())
    })
}

/// Waits for our child `pid` to exit and reaps it (retrying on EINTR; ECHILD means someone
/// else reaped it).
pub(crate) fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waitpid on our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {}
}

/// "exited with status 3", "was killed by signal 9 (killed)".
pub(crate) fn describe_status(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        format!("was killed by signal {signal} ({})", signal_name(signal))
    } else {
        format!("ended with wait status {status}")
    }
}

/// A pipe whose write end cancels a [`Candidate::watch`].
pub(crate) struct CancelPipe {
    pub(crate) read: OwnedFd,
    write: OwnedFd,
}

impl CancelPipe {
    pub(crate) fn new() -> io::Result<CancelPipe> {
        let (read, write) = crate::sys::pipe_cloexec_nonblocking()?;
        Ok(CancelPipe { read, write })
    }

    pub(crate) fn cancel(&self) {
        let byte = 1u8;
        // SAFETY: one byte from a local to a descriptor we own (non-blocking).
        unsafe { libc::write(self.write.as_raw_fd(), (&byte as *const u8).cast(), 1) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_resolution() {
        assert_eq!(resolve(Path::new("/bin/true"), None).unwrap(), PathBuf::from("/bin/true"));
        assert_eq!(resolve(Path::new("./x"), Some(Path::new("/srv"))).unwrap(), PathBuf::from("/srv/./x"));
        assert!(resolve(Path::new("sh"), None).unwrap().ends_with("sh"));
        let err = resolve(Path::new("no-such-program-xyz"), None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UpgradeFailed);
        assert!(err.message().contains("no-such-program-xyz: not found in PATH"), "{}", err.message());
    }

    #[test]
    fn readiness_lines() {
        assert!(ready_reported(b"READY=1\n", false));
        assert!(ready_reported(b"STATUS=x\r\nREADY=1\r\n", false));
        assert!(!ready_reported(b"READY=1", false), "not a whole line yet");
        assert!(ready_reported(b"READY=1", true));
        assert!(!ready_reported(b"READY=10\n", false));
        assert!(!ready_reported(b"", true));
        assert_eq!(failure_reported(b"FAILED=fd 3 untaken\n").as_deref(), Some("fd 3 untaken"));
        assert_eq!(failure_reported(b"FAILED=half"), None, "not a whole line yet");
        assert_eq!(failure_reported(b"READY=1\n"), None);
    }

    #[test]
    fn statuses() {
        assert_eq!(describe_status(3 << 8), "exited with status 3");
        assert_eq!(describe_status(9), "was killed by signal 9 (killed)");
    }

    /// A new generation never inherits the readiness channel, the previous pid or the sockets
    /// meant for this process (they stay in this process's environment: nothing removes them).
    #[test]
    fn child_env_drops_this_processs_inheritance() {
        let ours = |k: &str, v: &str| (OsString::from(k), OsString::from(v));
        let vars = vec![
            ours("PATH", "/usr/bin"),
            ours(crate::generation::READY_FD_ENV, "7"),
            ours(crate::generation::READY_PID_ENV, "42"),
            ours(crate::generation::PREVIOUS_PID_ENV, "41"),
            ours("LISTEN_FDS", "1"),
            ours("LISTEN_PID", "42"),
            ours("NOTIFY_SOCKET", "/run/notify"),
        ];
        let env = child_env(vars.into_iter());
        assert_eq!(env, vec![ours("PATH", "/usr/bin"), ours("NOTIFY_SOCKET", "/run/notify")]);
    }
}
