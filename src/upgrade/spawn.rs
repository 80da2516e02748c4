//! Starting the new generation: `fork` + `execve` with everything prepared beforehand.
//!
//! Why not `std::process::Command`: the new process must find its own pid in `LISTEN_PID`
//! (sd_listen_fds(3) ignores the descriptors otherwise, and grace's omission of it is a bug we
//! fix), and that pid exists only after `fork`. Between `fork` and `execve` a threaded process
//! may only make async-signal-safe calls, so `setenv` is out. Instead the environment is built
//! before the fork with a fixed-width `LISTEN_PID=` slot that the child fills in with plain
//! stores. Everything else the child does is a raw system call: reset the signal mask and
//! dispositions, move the descriptors into place, `chdir`, `execve`; if `execve` fails it
//! writes its errno to a close-on-exec pipe, so the parent reports "cannot start" at once.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, ErrorKind};

/// The first descriptor handed on, as systemd does (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;

/// Width of the `LISTEN_PID=` slot: enough digits for any pid.
const PID_DIGITS: usize = 20;

/// A started process: its pid, our end of its readiness channel, and a pidfd to learn of
/// its exit (absent on kernels without `pidfd_open`).
pub(crate) struct Spawned {
    pub(crate) pid: libc::pid_t,
    pub(crate) ready: OwnedFd,
    pub(crate) pidfd: Option<OwnedFd>,
}

/// What to start: the program, its argv, its environment (without the variables we add), the
/// descriptors to place at 3, 4, … and their names, and the directory to start in.
pub(crate) struct Plan<'a> {
    pub(crate) program: &'a Path,
    pub(crate) args: &'a [OsString],
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) fds: &'a [RawFd],
    pub(crate) names: &'a [String],
    /// Positions (in `fds`) whose unix socket path the new process will own, with the socket
    /// file's identity.
    pub(crate) owned: &'a [(usize, crate::listener::FileId)],
    /// Positions (in `fds`) the new process must take before it reports ready.
    pub(crate) required: &'a [usize],
    /// Positions (in `fds`) of sockets a lameduck generation bound (not systemd's or
    /// start_server's).
    pub(crate) lineage: &'a [usize],
    pub(crate) dir: Option<&'a Path>,
}

fn c_string(bytes: &[u8], what: &str) -> Result<CString, Error> {
    CString::new(bytes).map_err(|_| Error::invalid(format!("{what} contains a NUL byte")))
}

/// A close-on-exec pipe whose ends are never 0, 1 or 2 (with stdio closed they would be, and
/// the new process would inherit them as its stdio).
fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    let (read, write) =
        crate::sys::pipe_cloexec().map_err(|e| Error::new(ErrorKind::System, format!("could not create a pipe: {e}")))?;
    Ok((above_stdio(read)?, above_stdio(write)?))
}

/// The readiness channel: a close-on-exec stream socket pair, so both sides can talk (READY=1
/// one way, HANDOVER=1 the other), each sees the other's end close, and writes use
/// `MSG_NOSIGNAL` (a vanished peer is an error, not a SIGPIPE). Never on fds 0-2 either.
fn socket_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    // std makes both ends close-on-exec (SOCK_CLOEXEC on Linux).
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| Error::new(ErrorKind::System, format!("could not create a socket pair: {e}")))?;
    Ok((above_stdio(ours.into())?, above_stdio(theirs.into())?))
}

fn above_stdio(fd: OwnedFd) -> Result<OwnedFd, Error> {
    if fd.as_raw_fd() >= FIRST_FD {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; the copy is ours, the original is dropped.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FIRST_FD) };
    if copy < 0 {
        return Err(Error::new(ErrorKind::System, format!("could not move a pipe: {}", io::Error::last_os_error())));
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// How long to wait for `execve` to succeed or fail. A failure is reported within
/// microseconds; the wait is bounded only because another thread's `fork` without `exec`
/// (Python's multiprocessing) may hold a copy of the pipe's write end and delay the EOF.
const EXEC_REPORT_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the plan. Returns once `execve` succeeded (or failed: then an
/// [`ErrorKind::UpgradeFailed`] naming the program and the OS error).
pub(crate) fn spawn(plan: &Plan<'_>) -> Result<Spawned, Error> {
    let n = plan.fds.len();
    let (ready_read, ready_write) = socket_pair()?;
    let (error_read, error_write) = pipe()?;

    // Everything the child needs, allocated now.
    let program = c_string(plan.program.as_os_str().as_bytes(), "the program path")?;
    let args: Vec<CString> = plan.args.iter().map(|a| c_string(a.as_bytes(), "an argument")).collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = Vec::with_capacity(plan.env.len() + 8);
    for (key, value) in &plan.env {
        let mut entry = key.as_bytes().to_vec();
        entry.push(b'=');
        entry.extend_from_slice(value.as_bytes());
        if let Ok(entry) = CString::new(entry) {
            env.push(entry);
        }
    }
    let ready_fd = FIRST_FD + n as RawFd;
    env.push(c_string(format!("{}={ready_fd}", crate::generation::READY_FD_ENV).as_bytes(), "")?);
    env.push(c_string(format!("{}={}", crate::generation::PREVIOUS_PID_ENV, std::process::id()).as_bytes(), "")?);
    let next = crate::generation::get().number.saturating_add(1);
    env.push(c_string(format!("{}={next}", crate::generation::GENERATION_ENV).as_bytes(), "")?);
    if n > 0 {
        env.push(c_string(format!("LISTEN_FDS={n}").as_bytes(), "")?);
        env.push(c_string(format!("LISTEN_FDNAMES={}", plan.names.join(":")).as_bytes(), "")?);
    }
    if !plan.owned.is_empty() {
        let owned: Vec<String> =
            plan.owned.iter().map(|(i, (dev, ino))| format!("{}:{dev}:{ino}", FIRST_FD + *i as RawFd)).collect();
        env.push(c_string(format!("{}={}", crate::listener::OWNED_FDS_ENV, owned.join(",")).as_bytes(), "")?);
    }
    if n > 0 {
        let positions = |list: &[usize]| list.iter().map(|i| (FIRST_FD + *i as RawFd).to_string()).collect::<Vec<_>>().join(",");
        env.push(c_string(format!("{}={}", crate::listener::REQUIRED_FDS_ENV, positions(plan.required)).as_bytes(), "")?);
        env.push(c_string(format!("{}={}", crate::listener::LINEAGE_FDS_ENV, positions(plan.lineage)).as_bytes(), "")?);
    }
    // The slots the child fills with its pid: "NAME=" + PID_DIGITS bytes + NUL. LISTEN_PID binds
    // the listeners to it (sd_listen_fds), LAMEDUCK_READY_PID the readiness channel: a program
    // it starts in turn, which inherits the variables, knows they are not its own.
    let pid_slot = |name: &str| {
        let mut entry = format!("{name}=").into_bytes();
        entry.resize(entry.len() + PID_DIGITS + 1, 0);
        entry
    };
    let mut listen_pid = pid_slot("LISTEN_PID");
    let mut ready_pid = pid_slot(crate::generation::READY_PID_ENV);
    let dir = plan.dir.map(|d| c_string(d.as_os_str().as_bytes(), "the start directory")).transpose()?;

    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    if n > 0 {
        envp.push(listen_pid.as_ptr().cast());
    }
    envp.push(ready_pid.as_ptr().cast());
    envp.push(std::ptr::null());
    // Sources, in target order: the listeners, then the readiness channel.
    let mut sources: Vec<RawFd> = plan.fds.to_vec();
    sources.push(ready_write.as_raw_fd());
    let error_fd = error_write.as_raw_fd();
    let last_signal = crate::sys::highest_signal();

    // SAFETY: fork; the child below only makes async-signal-safe calls on memory prepared above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::new(ErrorKind::UpgradeFailed, format!("cannot fork: {}", io::Error::last_os_error())));
    }
    if pid == 0 {
        // SAFETY: we are the child of a fork; see `child`.
        unsafe {
            let slots = [
                listen_pid.as_mut_ptr().add("LISTEN_PID=".len()),
                ready_pid.as_mut_ptr().add(crate::generation::READY_PID_ENV.len() + 1),
            ];
            child(&program, &argv, &envp, &slots, &mut sources, dir.as_deref(), error_fd, last_signal)
        }
    }
    drop(ready_write);
    drop(error_write);
    // Waits until execve closes the close-on-exec pipe (success) or the child writes errno.
    let mut errno = [0u8; 4];
    let mut got = 0;
    let limit = std::time::Instant::now() + EXEC_REPORT_LIMIT;
    while got < errno.len() {
        let left = limit.saturating_duration_since(std::time::Instant::now()).as_millis() as i32;
        let mut p = libc::pollfd { fd: error_read.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        if left <= 0 || unsafe { libc::poll(&mut p, 1, left) } == 0 {
            break; // no report: the exec went through
        }
        // SAFETY: reading into a local buffer from a descriptor we own.
        let r = unsafe { libc::read(error_read.as_raw_fd(), errno[got..].as_mut_ptr().cast(), errno.len() - got) };
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if r <= 0 {
            break;
        }
        got += r as usize;
    }
    if got == errno.len() {
        super::reap(pid);
        let cause = io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
        return Err(Error::new(ErrorKind::UpgradeFailed, format!("cannot start {}: {cause}", plan.program.display())));
    }
    // Without one (ENOSYS before Linux 5.3) the child is signalled and watched by its pid.
    let pidfd = crate::sys::pidfd_open(pid).ok();
    Ok(Spawned { pid, ready: ready_read, pidfd })
}

/// The child between `fork` and `execve`. Only raw system calls and stores to memory prepared
/// before the fork: no allocation, no locks.
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    program: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    pid_slots: &[*mut u8],
    sources: &mut [RawFd],
    dir: Option<&std::ffi::CStr>,
    mut error_fd: RawFd,
    last_signal: libc::c_int,
) -> ! {
    // Signals: every disposition back to default (a parent's SIG_IGN, such as Python's or
    // Rust's SIGPIPE, would otherwise survive execve), then nothing blocked, in that order so
    // no parent handler can run in the child.
    let mut default: libc::sigaction = std::mem::zeroed();
    default.sa_sigaction = libc::SIG_DFL;
    for signal in 1..=last_signal {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            libc::sigaction(signal, &default, std::ptr::null_mut());
        }
    }
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    // LISTEN_PID and LAMEDUCK_READY_PID: our pid in decimal, NUL-terminated, into the slots.
    let mut pid = libc::getpid() as u64;
    let mut digits = [0u8; PID_DIGITS];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (pid % 10) as u8;
        len += 1;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    for &slot in pid_slots {
        for i in 0..len {
            *slot.add(i) = digits[len - 1 - i];
        }
        *slot.add(len) = 0;
    }
    // Descriptors: source i goes to FIRST_FD + i. First move every source that sits in the
    // target range (but not on its own target) above it, so no dup2 below overwrites a source
    // still to be placed; then place them. dup2 clears close-on-exec on the copy.
    let end = FIRST_FD + sources.len() as RawFd;
    if error_fd < end {
        error_fd = libc::fcntl(error_fd, libc::F_DUPFD_CLOEXEC, end);
        if error_fd < 0 {
            libc::_exit(127);
        }
    }
    for (i, fd) in sources.iter_mut().enumerate() {
        if *fd >= FIRST_FD && *fd < end && *fd != FIRST_FD + i as RawFd {
            let moved = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, end);
            if moved < 0 {
                fail(error_fd);
            }
            *fd = moved;
        }
    }
    for (i, &fd) in sources.iter().enumerate() {
        let target = FIRST_FD + i as RawFd;
        let placed = if fd == target { libc::fcntl(fd, libc::F_SETFD, 0) } else { libc::dup2(fd, target) };
        if placed < 0 {
            fail(error_fd);
        }
    }
    // Standard input, output and error are inherited, whatever their close-on-exec flag
    // (Node, for one, marks its stdio close-on-exec).
    for fd in 0..FIRST_FD {
        libc::fcntl(fd, libc::F_SETFD, 0);
    }
    if let Some(dir) = dir {
        libc::chdir(dir.as_ptr()); // best effort: the directory may be gone
    }
    libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
    fail(error_fd)
}

/// Reports errno to the parent and exits. Async-signal-safe.
unsafe fn fail(error_fd: RawFd) -> ! {
    let errno = crate::sys::errno().to_ne_bytes();
    libc::write(error_fd, errno.as_ptr().cast(), errno.len());
    libc::_exit(127)
}
