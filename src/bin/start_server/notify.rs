//! Each worker's private notify socket: a unix datagram socket in a directory only
//! start_server's user can enter, on which only the worker (or a process it started) is heard.
//!
//! - The directory is made per start_server with `mkdtemp(3)` (mode 0700), under
//!   `$XDG_RUNTIME_DIR` when that is an absolute directory of ours that nobody else can write,
//!   else under the temp directory (`$TMPDIR` or `/tmp`, used only if it is sticky or not
//!   writable by others). Another user cannot reach a socket in it at all (EACCES): neither
//!   send a fake `READY=1` nor fill its receive queue so that the worker's notification blocks
//!   or is lost. (An abstract socket, as before, has no permissions and is listed in
//!   `/proc/net/unix`: anyone could flood it.) The directory and its sockets are removed when
//!   start_server exits; one a SIGKILLed start_server leaves behind is never used again (every
//!   start_server makes a fresh one).
//! - `SO_PASSCRED`: the kernel attaches the sender's real pid and uid to every datagram
//!   (`SCM_CREDENTIALS`; an unprivileged sender cannot forge them). A datagram counts only
//!   when its sender is the worker or one of its descendants (a shell wrapper running
//!   `systemd-notify`: its ppid chain in `/proc/<pid>/stat` leads to the worker). That keeps
//!   out the processes of start_server's own user that may reach the directory (another
//!   worker, another service running as that user).
//!
//! A worker that switches to another user before it notifies cannot reach the socket: it
//! counts as started after `--interval`, as in Perl's start_server.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// The longest socket path (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Room left in a socket path for a socket's own name in the directory (`/` and 20 digits).
const NAME_ROOM: usize = 21;

fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether `base` may hold our private directory: an absolute directory, owned by root or by
/// us, that no one else can write unless it is sticky (as /tmp is: then no one else can rename
/// or remove what we make in it).
fn usable_base(base: &Path) -> bool {
    if !base.is_absolute() || base.as_os_str().len() + "/start_server.XXXXXX".len() + NAME_ROOM > MAX_SOCKET_PATH {
        return false;
    }
    let Ok(meta) = std::fs::metadata(base) else { return false };
    let others_write = meta.mode() & 0o022 != 0;
    meta.is_dir() && (meta.uid() == 0 || meta.uid() == euid()) && (!others_write || meta.mode() & 0o1000 != 0)
}

/// The private directory of one start_server, holding its workers' notify sockets. Removed,
/// with whatever is in it, when dropped.
pub struct NotifyDir {
    path: PathBuf,
}

impl NotifyDir {
    /// Makes a fresh directory (`mkdtemp`, mode 0700) under the first usable of
    /// `$XDG_RUNTIME_DIR`, the temp directory and `/tmp`.
    pub fn create() -> io::Result<NotifyDir> {
        let xdg = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()).map(PathBuf::from);
        // $XDG_RUNTIME_DIR is a user's private directory: only one of ours will do.
        let xdg = xdg.filter(|x| std::fs::metadata(x).is_ok_and(|m| m.uid() == euid() && m.mode() & 0o022 == 0));
        let candidates = xdg.into_iter().chain([std::env::temp_dir(), PathBuf::from("/tmp")]);
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no usable directory ($XDG_RUNTIME_DIR, $TMPDIR, /tmp)");
        for base in candidates.filter(|b| usable_base(b)) {
            let mut template = base.join("start_server.XXXXXX").into_os_string().into_vec();
            template.push(0);
            // SAFETY: mkdtemp(3) rewrites the X's of our NUL-terminated buffer in place.
            let made = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
            if made.is_null() {
                last = io::Error::last_os_error();
                continue;
            }
            template.pop();
            return Ok(NotifyDir { path: PathBuf::from(OsString::from_vec(template)) });
        }
        Err(last)
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Binds a non-blocking datagram socket with `SO_PASSCRED` at `<dir>/<name>`; returns it
    /// and its path.
    pub fn bind(&self, name: u64) -> io::Result<(UnixDatagram, PathBuf)> {
        let path = self.path.join(name.to_string());
        // Nobody else can put anything here; a leftover of ours (never expected) goes.
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        socket.set_nonblocking(true)?;
        if let Err(err) = lameduck::sys::pass_credentials(socket.as_raw_fd()) {
            let _ = std::fs::remove_file(&path);
            return Err(err);
        }
        Ok((socket, path))
    }
}

impl Drop for NotifyDir {
    fn drop(&mut self) {
        // std's remove_dir_all never follows a symlink it finds inside.
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            log!("failed to remove the notify directory {}:{e}", self.path.display());
        }
    }
}

/// Whether `sender` is `worker` or one of its descendants.
pub fn is_worker_or_descendant(sender: i32, worker: i32) -> Option<bool> {
    if sender <= 0 {
        return Some(false);
    }
    let mut pid = sender;
    for _ in 0..256 {
        if pid == worker {
            return Some(true);
        }
        if pid <= 1 {
            return Some(false);
        }
        match lameduck::sys::parent_pid(pid) {
            Some(parent) => pid = parent,
            None if pid == sender => return None, // the sender is gone: unknown
            None => return Some(false),
        }
    }
    Some(false)
}

/// Whether a datagram from `sender` (with `uid`) counts as the worker's.
///
/// A sender that has already exited (a `systemd-notify` that sent and quit before we looked)
/// cannot be traced: it counts only when it ran as start_server's own user (root, or the
/// user start_server runs as, could make start_server do anything anyway). The worker's uid
/// is not enough: another service running as that user could pass for the worker. So a
/// wrapper that notifies as another user must `exec` the server, or keep its notifier alive
/// until start_server has read the datagram (`systemd-notify` exits at once).
pub fn from_worker(sender: i32, uid: u32, worker: i32) -> bool {
    match is_worker_or_descendant(sender, worker) {
        Some(verdict) => verdict,
        None => uid == euid(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    #[test]
    fn the_directory_is_private_fresh_and_removed_with_its_sockets() {
        let a = NotifyDir::create().unwrap();
        let b = NotifyDir::create().unwrap();
        assert_ne!(a.path(), b.path(), "a fresh directory each time");
        let meta = std::fs::symlink_metadata(a.path()).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
        assert_eq!(meta.uid(), euid());
        let (_socket, path) = a.bind(7).unwrap();
        assert_eq!(path, a.path().join("7"));
        assert!(path.as_os_str().len() <= MAX_SOCKET_PATH);
        let dir = a.path().to_path_buf();
        drop(a);
        assert!(!dir.exists(), "removed with its socket");
    }

    #[test]
    fn bases_others_can_write_are_not_used() {
        let base = std::env::temp_dir().join(format!("start-server-notify-base-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!usable_base(&base), "world-writable without the sticky bit");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(usable_base(&base), "sticky, as /tmp");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(usable_base(&base));
        assert!(!usable_base(Path::new("relative")), "relative");
        assert!(!usable_base(&base.join("x".repeat(100))), "too long for a socket path");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn credentials_come_with_each_datagram_and_passed_descriptors_are_closed() {
        let dir = NotifyDir::create().unwrap();
        let (socket, path) = dir.bind(1).unwrap();
        let sender = UnixDatagram::unbound().unwrap();
        sender.send_to(b"READY=1", &path).unwrap();
        let mut buf = [0u8; 64];
        let m = lameduck::sys::recv_with_credentials(socket.as_raw_fd(), &mut buf).unwrap().unwrap();
        assert_eq!(&buf[..m.len], b"READY=1");
        assert_eq!(m.pid, std::process::id() as i32);
        // SAFETY: getuid cannot fail.
        assert_eq!(m.uid, unsafe { libc::getuid() });
        assert!(lameduck::sys::recv_with_credentials(socket.as_raw_fd(), &mut buf).unwrap().is_none());

        // A descriptor sent along (SCM_RIGHTS) is not kept open here: send a pipe's write
        // end, close ours; the read end then sees end-of-file only if no copy is left.
        let (read_end, write_end) = lameduck::sys::pipe_cloexec().unwrap();
        sender.connect(&path).unwrap();
        // SAFETY: sendmsg on the connected socket with one SCM_RIGHTS control message built
        // with the CMSG macros.
        unsafe {
            let mut control = [0u64; 4];
            let mut data = *b"X";
            let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: 1 };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(4) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), write_end.as_raw_fd());
            assert_eq!(libc::sendmsg(sender.as_raw_fd(), &msg, 0), 1, "{}", io::Error::last_os_error());
        }
        drop(write_end);
        let m = lameduck::sys::recv_with_credentials(socket.as_raw_fd(), &mut buf).unwrap().unwrap();
        assert_eq!(&buf[..m.len], b"X");
        let mut poll = libc::pollfd { fd: read_end.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one descriptor we own, then a read into a local byte.
        unsafe {
            assert_eq!(libc::poll(&mut poll, 1, 10_000), 1, "the passed write end is still open somewhere");
            let mut byte = 0u8;
            assert_eq!(libc::read(read_end.as_raw_fd(), (&mut byte as *mut u8).cast(), 1), 0, "end of file");
        }
    }

    /// `sh -c "sleep 30 & echo $!; wait"`, optionally as `uid`: the shell and its child's pid.
    fn shell_with_child(uid: Option<u32>) -> (std::process::Child, i32) {
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 30 & echo $!; wait"]).stdout(Stdio::piped());
        if let Some(uid) = uid {
            // SAFETY: setgroups/setgid/setuid are async-signal-safe system calls.
            unsafe {
                command.pre_exec(move || {
                    if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut shell = command.spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(shell.stdout.take().unwrap()), &mut line).unwrap();
        (shell, line.trim().parse().unwrap())
    }

    #[test]
    fn descendants_through_the_ppid_chain() {
        let me = std::process::id() as i32;
        // A shell (our child) with a background sleep (our grandchild).
        let (mut shell, grandchild) = shell_with_child(None);
        let child = shell.id() as i32;
        assert_eq!(lameduck::sys::parent_pid(grandchild), Some(child));
        assert_eq!(is_worker_or_descendant(grandchild, child), Some(true));
        assert_eq!(is_worker_or_descendant(grandchild, me), Some(true));
        assert_eq!(is_worker_or_descendant(child, child), Some(true));
        assert_eq!(is_worker_or_descendant(me, child), Some(false), "a parent is not a descendant");
        assert_eq!(is_worker_or_descendant(1, child), Some(false));
        assert_eq!(is_worker_or_descendant(0, child), Some(false));
        // SAFETY: kill(2) on the grandchild we started.
        unsafe { libc::kill(grandchild, libc::SIGKILL) };
        shell.wait().unwrap();
        assert_eq!(is_worker_or_descendant(grandchild, child), None, "gone: unknown");
        let uid = euid();
        assert!(from_worker(grandchild, uid, child), "gone, our own uid: heard");
        assert!(!from_worker(grandchild, uid.wrapping_add(12345), child), "gone, another uid: ignored");
        assert!(!from_worker(me, uid, child), "alive and not a descendant: ignored, whatever its uid");
    }

    #[test]
    fn a_gone_sender_with_the_workers_uid_is_not_heard() {
        if euid() != 0 {
            eprintln!("not root: cannot run a worker as another uid; skipped");
            return;
        }
        let other = 65534; // nobody
        let (mut worker, child) = shell_with_child(Some(other));
        let worker_pid = worker.id() as i32;
        // A sender that has exited: a reaped child's pid.
        let mut quick = Command::new("true").spawn().unwrap();
        let gone = quick.id() as i32;
        quick.wait().unwrap();
        assert!(
            !from_worker(gone, other, worker_pid),
            "gone, with the worker's uid: another service running as that user could have sent it"
        );
        assert!(from_worker(child, other, worker_pid), "the worker's live child is heard");
        // SAFETY: kill(2) on the processes we started.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::kill(worker_pid, libc::SIGKILL);
        }
        worker.wait().unwrap();
    }
}
