//! The operating system beneath lameduck, behind one boundary: every call that only Linux has
//! is in `linux.rs`, as one small safe function each, so that a port to another Unix is one
//! new file with the same functions (the rest of the crate, and `start_server`, call only
//! POSIX, BSD's `flock`, and these). Hidden from the documentation: not part of the API.
//!
//! # What Linux provides, and what for
//!
//! lameduck needs **Linux 3.17** (`getrandom`, which has no fallback). Everything else is
//! older, except the pidfds (Linux 5.3), without which the code falls back on plain pids as
//! described below. The C library baseline is **glibc 2.17** (manylinux2014; release binaries
//! are linked against it): a call whose glibc wrapper is newer goes through `syscall(2)`
//! instead, so the binaries load on any glibc from 2.17 on.
//!
//! - `getrandom(2)` (Linux 3.17; glibc wrapper 2.25, so `syscall(2)`): [`random_bytes`] and
//!   [`random_hex`], the unpredictable names of temporary files (the pid file's,
//!   start_server's status file's) in directories other users can write. No fallback: on an
//!   older kernel writing the pid file fails.
//! - pidfds (`syscall(2)`: glibc's wrappers came in 2.36): [`pidfd_open`] (Linux 5.3),
//!   [`pidfd_send_signal`] (Linux 5.1), and a pidfd being readable once its process has exited
//!   ([`pidfd_exited`], [`pidfd_wait_exit`]). They name a process, not a pid that may be reused.
//!   Each user has a fallback for when `pidfd_open` fails (`ENOSYS` before 5.3):
//!   - an upgrade watches its new process's exit (in the same `poll` as its readiness channel)
//!     and signals it through its pidfd; without one it sends `kill(2)` to the unreaped child
//!     and looks at `waitpid(WNOHANG)` every 50 ms;
//!   - a new generation watches its predecessor (its parent, checked with `getppid` before and
//!     after) through a pidfd, so that it sees it die even when a child of the predecessor holds
//!     its end of the channel open; without one only the channel's end-of-file ends the
//!     handover, and the sockets the lineage bound stay "shared" (never drained, just closed);
//!   - `start_server --stop`/`--restart` signal the start_server that holds the pid file's lock
//!     race-free; only on `ENOSYS` they fall back on `kill(2)` after the lock check (any other
//!     error, such as `ESRCH`, is reported).
//! - `SO_ATTACH_FILTER` (Linux 2.2, classic BPF): [`attach_drop_syn_filter`], with which
//!   `listener::stop_accepting`, `listener::drain` and `listener::shut` make a listener drop new
//!   SYNs while its queue is accepted, so closing it resets no connection. No fallback:
//!   `stop_accepting` and `drain` return the error (`shut` goes on without it). Nothing detaches
//!   the filter (`SO_DETACH_FILTER`): it lives until the socket is closed.
//! - `shutdown(SHUT_RD)` on a listening socket ([`stop_listening`]): Linux stops it listening
//!   for every descriptor at once (a TCP one answers new SYNs with RST, so clients are refused
//!   at once; a unix one refuses new connections and keeps its queue). `listener::shut` ends
//!   with it. `accept4(SOCK_CLOEXEC)` (Linux 2.6.28): [`accept_cloexec`], its accepts.
//! - `SO_PEERCRED` (Linux 2.2): [`peer_pid`], which checks that `LAMEDUCK_READY_FD` is a socket
//!   pair made by the previous generation.
//! - `SO_PASSCRED` and `SCM_CREDENTIALS` (Linux 2.2), received with `MSG_CMSG_CLOEXEC` (Linux
//!   2.6.23): [`pass_credentials`] and [`recv_with_credentials`], the kernel-checked pid and uid
//!   of whoever sent a datagram to one of start_server's notify sockets.
//! - `/proc`: [`executable_path`] (`/proc/self/exe`: the program an upgrade starts when
//!   `argv[0]` cannot be found again) and [`parent_pid`] (`/proc/<pid>/stat`: start_server
//!   follows a notifying process's parents up to its worker).
//! - `MSG_NOSIGNAL` (Linux 2.2): [`send_nonblocking_no_sigpipe`], the readiness channel's
//!   writes, for which a vanished reader is an error, never a SIGPIPE.
//! - Descriptors close-on-exec from birth (the library runs in threaded Python and Node hosts
//!   that fork; a descriptor made first and marked later can leak into their children):
//!   `pipe2(2)` (Linux 2.6.27, glibc 2.9) in [`pipe_cloexec`] and [`pipe_cloexec_nonblocking`],
//!   `SOCK_CLOEXEC` (Linux 2.6.27) in [`socket_cloexec`]. pidfds are close-on-exec as made.
//! - `prctl(PR_SET_PDEATHSIG)` (Linux 2.1.57): [`set_parent_death_signal`], start_server's
//!   workers get `--signal-on-term` when start_server dies, even by SIGKILL.
//! - The abstract unix socket namespace (Linux 2.2): [`abstract_socket_address`], systemd's
//!   `NOTIFY_SOCKET=@name`.
//! - The C library's own: errno through `__errno_location` ([`errno`], [`set_errno`], for
//!   signal handlers and the child between `fork` and `exec`), and the real-time signal range,
//!   `SIGRTMIN()`/`SIGRTMAX()` ([`first_free_realtime_signal`], [`highest_signal`]).
//! - Linux's device numbers: [`null_device`], `/dev/null` (1:3), the one log file start_server
//!   accepts that is not a regular file.
//!
//! # Porting
//!
//! A port adds `src/sys/<os>.rs` with the same functions, selected below by `target_os`. What
//! each needs: `getentropy(2)` or `arc4random_buf(3)` for [`random_bytes`]; for pidfds, kqueue's
//! `EVFILT_PROC`/`NOTE_EXIT` to watch an exit, or `pidfd_open` failing with `ENOSYS` (the plain
//! pid fallbacks above); `LOCAL_PEERCRED`/`LOCAL_PEERPID` for [`peer_pid`]; FreeBSD's
//! `LOCAL_CREDS`/`SCM_CREDS` for the datagram credentials (macOS has none: start_server would
//! have to trust the notify directory's permissions alone); `sysctl(KERN_PROC_*)` or
//! `proc_pidinfo` for the `/proc` reads; `SO_NOSIGPIPE` where there is no `MSG_NOSIGNAL`;
//! `pipe` + `FD_CLOEXEC` where there is no `pipe2`/`SOCK_CLOEXEC` (not atomic against another
//! thread's fork); `procctl(PROC_PDEATHSIG_CTL)` on FreeBSD; `__error()` for errno; `stat`
//! of `/dev/null` for its device. Few kernels have anything like [`attach_drop_syn_filter`]
//! (FreeBSD's accept filters only delay `accept`): where there is none it fails (`ENOTSUP`)
//! and `stop_accepting` and `drain` report the error. What `shutdown(SHUT_RD)` does to a
//! listener differs between kernels: [`stop_listening`] must stop it listening (or fail).
//!
//! Linux values outside this module that a port must check too: `SO_DOMAIN` (Linux 2.6.32) in
//! `generation::check_channel`; `NSIG` (65) in `signals`, and "32 up to `SIGRTMIN`" as the C
//! library's reserved signals in `options::validate_signal`; `SIGPWR` in start_server's signal
//! names (`format::signal_name` already has it only on Linux); `sockaddr_un` as Linux lays it
//! out (108 bytes of path right after the family, no `sun_len`) in `listener::socket` and
//! start_server; `DEADLINE_EXCEEDED` = -110, Linux's `-ETIMEDOUT`, part of the C ABI.

#[cfg(not(target_os = "linux"))]
compile_error!("lameduck runs on Linux only: a port adds src/sys/<os>.rs (see the sys module's documentation)");

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

/// `n` random bytes as lowercase hex (2n characters): unpredictable names for temporary files
/// and private sockets.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    random_bytes(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_hex_has_the_length_asked_for_and_differs_between_calls() {
        let a = super::random_hex(8).unwrap();
        let b = super::random_hex(8).unwrap();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(super::random_hex(0).unwrap(), "");
    }
}
