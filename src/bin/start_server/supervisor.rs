//! The superdaemon's loop: Perl's `start_server` lifecycle as an event loop, so that signals,
//! child exits and readiness reports are handled as they come and never lost.
//!
//! - A new worker counts as started when it sends `READY=1` on its private notify socket, or
//!   when it is still alive after `--interval` (Perl's rule). If it died, the attempt failed and
//!   another (new generation) starts at the end of the interval, forever; old workers keep
//!   serving meanwhile.
//! - HUP: the next generation starts; once it counts as started, after `--kill-old-delay`, every
//!   old worker gets `--signal-on-hup`. Each HUP gives one more generation, in order.
//! - Each worker gets `--signal-on-hup` once. Perl sends it again to every old worker still alive
//!   at each new generation; a lameduck worker already in lame-duck takes the second one as a
//!   repeated signal (forced close: in-flight requests cut) and dies of the third, so a burst of
//!   HUPs would lose requests.
//! - The current worker exiting on its own is replaced at once.
//! - TERM/INT: `--signal-on-term` (TERM for INT) to every worker, except to an old worker that
//!   already got that very signal as its `--signal-on-hup`; wait for all, clean up, exit 0.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use crate::files::{self, EnvDir};
use crate::notify;
use crate::settings::Settings;
use crate::signals::{name_of, SignalPipe};

pub struct Config {
    pub command: Vec<OsString>,
    pub dir: Option<String>,
    pub interval: Duration,
    pub signal_on_hup: i32,
    pub signal_on_term: i32,
    pub status_file: Option<String>,
    /// The worker descriptors are exactly 3.. (so LISTEN_FDS can describe them).
    pub listen_fds: Option<usize>,
    /// systemd's notify socket, if start_server runs under systemd.
    pub notify_socket: Option<String>,
    /// Variables every worker gets before the envdir's: `SERVER_STARTER_PORT` and what the
    /// options set (Perl puts them in its `%ENV`). start_server's own environment is never
    /// changed: each worker's is built on its `Command`.
    pub env: Vec<(OsString, OsString)>,
}

/// A variable as the supervisor reads it: the envdir's value, else the one the options set,
/// else start_server's environment at startup.
pub fn lookup(envdir: &EnvDir, env: &[(OsString, OsString)], name: &str) -> Option<OsString> {
    envdir
        .get(name)
        .map(OsStr::to_os_string)
        .or_else(|| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()))
        .or_else(|| std::env::var_os(name))
}

/// The lameduck library's private variables (`LAMEDUCK_OWNED_FDS`, `LAMEDUCK_READY_FD`, …)
/// describe start_server's own descriptors when it was itself started by a lameduck
/// process: passed on, a worker would take them for its own (and generation 1 would unlink
/// start_server's `--path` socket at HUP). No worker gets any of them.
fn is_lameduck_private(name: &OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b"LAMEDUCK_")
}

/// `now + d`, never panicking (every duration is bounded, see `settings`; this is the belt
/// to those braces): an unrepresentable instant becomes a year from now.
fn later(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600))).unwrap_or(now)
}

/// A worker's private notify socket (see `notify`), removed with its worker.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    /// An ignored datagram has been logged for this worker (once per worker, so an attacker
    /// cannot flood the log).
    warned: bool,
}

/// The most datagrams read from one notify socket per wake-up: a sender flooding it cannot
/// keep the loop from signals and child exits.
const DATAGRAMS_PER_WAKE: usize = 64;

/// The envdir is read again at most this often when only notify traffic wakes the loop (on
/// every signal and timer wake-up it is read, as Perl does), so a flood of datagrams cannot
/// make start_server burn its CPU re-reading the directory.
const ENVDIR_MIN_INTERVAL: Duration = Duration::from_millis(100);

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

enum Phase {
    Idle,
    Starting { pid: Option<i32>, generation: u64, deadline: Instant, died: Option<i32>, after_hup: bool },
    KillDelay { until: Instant },
    Stopping,
}

pub struct Supervisor {
    config: Config,
    signals: SignalPipe,
    envdir: EnvDir,
    settings: Settings,
    generation: u64,
    current: Option<(i32, u64)>,
    old: BTreeMap<i32, u64>,
    /// Old workers already sent `--signal-on-hup` (and not reaped yet): never sent it again.
    signalled: BTreeSet<i32>,
    phase: Phase,
    /// HUPs received and not acted on yet: each gives one generation.
    hups: u32,
    restart_current: bool,
    notify: BTreeMap<i32, NotifySocket>,
    /// The private directory the notify sockets are in (None: it could not be made, and
    /// workers count as started after --interval). Removed when start_server exits.
    notify_dir: Option<notify::NotifyDir>,
    /// When the envdir was last read (see `ENVDIR_MIN_INTERVAL`).
    envdir_read_at: Instant,
    last_restart: Instant,
    /// No crash replacement starts before this: `--interval` after the previous spawn, so a
    /// worker that reports ready and then dies cannot make us spin (Perl's interval sleep).
    next_spawn_at: Instant,
}

/// Perl prints the raw wait status (`$?`): 256 for exit 1, 9 for SIGKILL.
fn status_text(status: libc::c_int) -> String {
    status.to_string()
}

impl Supervisor {
    /// `envdir` was read and `settings` checked at startup.
    pub fn new(config: Config, signals: SignalPipe, envdir: EnvDir, settings: Settings) -> Supervisor {
        let notify_dir = notify::NotifyDir::create()
            .map_err(|e| log!("failed to create a private directory for the notify sockets ({e}): workers count as started after --interval"))
            .ok();
        Supervisor {
            config,
            signals,
            envdir,
            settings,
            generation: 0,
            current: None,
            old: BTreeMap::new(),
            signalled: BTreeSet::new(),
            phase: Phase::Idle,
            hups: 0,
            restart_current: false,
            notify: BTreeMap::new(),
            notify_dir,
            envdir_read_at: Instant::now(),
            last_restart: Instant::now(),
            next_spawn_at: Instant::now(),
        }
    }

    fn tell_systemd(&self, message: &str) {
        if let Some(path) = &self.config.notify_socket {
            let _ = lameduck::notify::send(path, message);
        }
    }

    /// Reads the envdir again (Perl does at every wake-up: it may switch auto-restart or the
    /// kill-old delay on and off). A bad number there is logged once and the old value kept.
    fn reload_envdir(&mut self) {
        self.envdir.reload();
        self.envdir_read_at = Instant::now();
        let (envdir, env) = (&self.envdir, &self.config.env);
        for warning in self.settings.update(|name| lookup(envdir, env, name)) {
            log!("{warning}");
        }
    }

    fn update_status(&self) {
        let Some(path) = &self.config.status_file else { return };
        let mut workers: BTreeMap<u64, i32> = self.old.iter().map(|(pid, g)| (*g, *pid)).collect();
        if let Some((pid, generation)) = self.current {
            workers.insert(generation, pid);
        }
        files::write_status(path, &workers);
    }

    /// One attempt at a new worker (a new generation, even if it fails).
    fn start_worker(&mut self, after_hup: bool) {
        self.reload_envdir();
        self.generation += 1;
        let generation = self.generation;
        // A private notify socket per worker: READY=1 on it (from the worker) means "started".
        let notify = self.notify_dir.as_ref().map(|dir| dir.bind(generation));
        if let Some(Err(e)) = &notify {
            log!("failed to create a notify socket for generation {generation} ({e}): it counts as started after --interval");
        }
        let notify = notify.and_then(Result::ok);
        let mut command = std::process::Command::new(&self.config.command[0]);
        command.args(&self.config.command[1..]);
        if let Some(dir) = &self.config.dir {
            command.current_dir(dir);
        }
        let mut env = self.worker_environment(generation, notify.as_ref().map(|(_, path)| path.as_path()));
        let parent = std::process::id() as libc::pid_t;
        let death_signal = self.config.signal_on_term;
        // SAFETY: runs in the child between fork and exec, and makes only async-signal-safe
        // calls (prctl, getppid, getpid, _exit) and plain stores into memory prepared before
        // the fork (`env`, moved into the closure, lives until the Command is dropped after
        // spawn returns).
        unsafe {
            command.pre_exec(move || {
                // If start_server dies, even by SIGKILL, the worker gets --signal-on-term (a
                // lameduck worker then goes through its lame-duck) instead of serving on as an
                // orphan. The kernel sends it when the *thread* that forked exits: start_server
                // is single-threaded (signals come through a self-pipe, the `| cmd` logger is a
                // process), so that means start_server's death.
                lameduck::sys::set_parent_death_signal(death_signal)?;
                // start_server died between fork and prctl: nothing will tell this child.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                env.install(libc::getpid());
                Ok(())
            });
        }
        let deadline = later(self.config.interval);
        self.next_spawn_at = deadline;
        match command.spawn() {
            Ok(child) => {
                let pid = child.id() as i32;
                log!("starting new worker {pid}");
                if let Some((socket, path)) = notify {
                    self.notify.insert(pid, NotifySocket { socket, path, warned: false });
                }
                self.phase = Phase::Starting { pid: Some(pid), generation, deadline, died: None, after_hup };
            }
            Err(e) => {
                let program = self.config.command[0].to_string_lossy();
                match &self.config.dir {
                    Some(dir) if e.kind() == std::io::ErrorKind::NotFound && !std::path::Path::new(dir).is_dir() => {
                        log!("failed to chdir:{dir}:{e}")
                    }
                    _ => log!("failed to exec {program}:{e}"),
                }
                self.phase = Phase::Starting { pid: None, generation, deadline, died: Some(255 << 8), after_hup };
            }
        }
    }

    /// A worker's environment: start_server's, less the lameduck library's private variables,
    /// plus `Config::env`, the envdir, and the per-worker `SERVER_STARTER_GENERATION`,
    /// `NOTIFY_SOCKET`, `LISTEN_FDS` and `LISTEN_PID` (filled in by the child). Built anew for
    /// each worker, so start_server's own environment never changes (a `setenv` per
    /// generation leaked memory).
    fn worker_environment(&self, generation: u64, notify: Option<&std::path::Path>) -> WorkerEnv {
        let mut vars: Vec<(OsString, OsString)> = std::env::vars_os().filter(|(name, _)| !is_lameduck_private(name)).collect();
        let mut set = |name: &OsStr, value: Option<&OsStr>| {
            let found = vars.iter().position(|(n, _)| n == name);
            match (found, value) {
                (Some(i), Some(v)) => vars[i].1 = v.to_os_string(),
                (None, Some(v)) => vars.push((name.to_os_string(), v.to_os_string())),
                (Some(i), None) => {
                    vars.remove(i);
                }
                (None, None) => {}
            }
        };
        for (name, value) in self.config.env.iter().map(|(n, v)| (n, v)).chain(self.envdir.values()) {
            set(name, Some(value).filter(|_| !is_lameduck_private(name)).map(OsString::as_os_str));
        }
        set(OsStr::new("SERVER_STARTER_GENERATION"), Some(OsStr::new(&generation.to_string())));
        set(OsStr::new("NOTIFY_SOCKET"), notify.map(std::path::Path::as_os_str));
        let listen_fds = self.config.listen_fds.map(|n| OsString::from(n.to_string()));
        set(OsStr::new("LISTEN_FDS"), listen_fds.as_deref());
        set(OsStr::new("LISTEN_PID"), None);
        set(OsStr::new("LISTEN_FDNAMES"), None);
        WorkerEnv::new(vars, self.config.listen_fds.is_some())
    }

    /// The new worker counts as started.
    fn accept(&mut self, pid: i32, generation: u64, after_hup: bool) {
        self.current = Some((pid, generation));
        self.last_restart = Instant::now();
        self.update_status();
        self.tell_systemd(&format!("READY=1\nSTATUS=worker {pid} (generation {generation}) started"));
        self.phase = Phase::Idle;
        if after_hup {
            let olds: Vec<String> = self.old.keys().map(|p| p.to_string()).collect();
            let list = if olds.is_empty() { "none".to_string() } else { olds.join(",") };
            log!("new worker is now running, sending {} to old workers:{list}", name_of(self.config.signal_on_hup));
            let delay = self.settings.kill_old_delay();
            if delay.is_zero() {
                self.kill_old_workers();
            } else {
                log!("sleeping {} secs before killing old workers", delay.as_secs_f64());
                self.phase = Phase::KillDelay { until: later(delay) };
            }
        }
    }

    /// `--signal-on-hup` to the old workers that have not had it yet (see the module doc).
    fn kill_old_workers(&mut self) {
        log!("killing old workers");
        for pid in self.old.keys() {
            if self.signalled.insert(*pid) {
                // SAFETY: signalling a worker we started and have not reaped.
                unsafe { libc::kill(*pid, self.config.signal_on_hup) };
            }
        }
        self.phase = Phase::Idle;
    }

    fn begin_stop(&mut self, signal: i32) {
        let send = if signal == libc::SIGTERM { self.config.signal_on_term } else { libc::SIGTERM };
        // A worker still being started counts as started: it gets the signal too (Perl).
        if let Phase::Starting { pid: Some(pid), generation, died: None, .. } = self.phase {
            self.current = Some((pid, generation));
        }
        let mut pids: Vec<i32> = self.old.keys().copied().collect();
        pids.extend(self.current.map(|(pid, _)| pid));
        pids.sort_unstable();
        let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        log!("received {}, sending {} to all workers:{}", name_of(signal), name_of(send), list.join(","));
        self.tell_systemd("STOPPING=1");
        for pid in &pids {
            // The same signal twice would count as a repeat (forced close) in a lameduck worker.
            if send == self.config.signal_on_hup && self.signalled.contains(pid) {
                continue;
            }
            // SAFETY: as in kill_old_workers.
            unsafe { libc::kill(*pid, send) };
        }
        self.phase = Phase::Stopping;
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid on any child, without blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            self.notify.remove(&pid);
            self.signalled.remove(&pid); // the pid may be reused
            self.exited(pid, status);
        }
    }

    fn exited(&mut self, pid: i32, status: libc::c_int) {
        if let Phase::Stopping = self.phase {
            if self.current.is_some_and(|(p, _)| p == pid) {
                self.current = None;
            }
            self.old.remove(&pid);
            log!("worker {pid} died, status:{}", status_text(status));
            self.update_status();
            return;
        }
        if let Phase::Starting { pid: Some(starting), died, .. } = &mut self.phase {
            if *starting == pid {
                *died = Some(status);
                return;
            }
        }
        if self.current.is_some_and(|(p, _)| p == pid) {
            log!("worker {pid} died unexpectedly with status:{}, restarting", status_text(status));
            self.current = None;
            self.update_status();
            self.restart_current = true;
        } else if self.old.remove(&pid).is_some() {
            log!("old worker {pid} died, status:{}", status_text(status));
            self.update_status();
        }
    }

    /// Messages on the workers' notify sockets: READY=1 from the worker being started makes it
    /// started; STATUS= from the current worker goes on to systemd. Only datagrams the worker
    /// (or a descendant of it) sent count (see `notify`); others are logged once per worker.
    /// Returns every worker that reported READY=1 in this wake-up (an old worker's READY
    /// must not hide the new one's).
    fn read_notifications(&mut self) -> BTreeSet<i32> {
        let (ready, relay) = read_notify_sockets(&mut self.notify, self.current.map(|(pid, _)| pid));
        for line in relay {
            self.tell_systemd(&line);
        }
        ready
    }

    fn next_wake(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Starting { deadline, .. } => Some(deadline),
            Phase::KillDelay { until } => Some(until),
            _ => None,
        };
        let auto = self.settings.auto_restart().map(|_| later(Duration::from_secs(1)));
        let respawn = self.restart_current.then_some(self.next_spawn_at);
        [phase, auto, respawn].into_iter().flatten().min()
    }

    /// Sleeps until a signal, a datagram or the next timer. Returns whether the envdir is to
    /// be read again: after a signal or a timer (Perl reads it at every wake-up), but after
    /// notify traffic alone at most every `ENVDIR_MIN_INTERVAL`.
    fn wait(&self) -> bool {
        let mut fds = vec![libc::pollfd { fd: self.signals.fd(), events: libc::POLLIN, revents: 0 }];
        fds.extend(self.notify.values().map(|s| libc::pollfd { fd: s.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 }));
        // Rounded up, so a timer is never woken for just before it is due.
        let timeout = self.next_wake().map_or(-1, |t| {
            let left = t.saturating_duration_since(Instant::now());
            left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
        });
        // SAFETY: a valid array of pollfds; EINTR (a signal) just returns early.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        let notify_only = ready > 0 && fds[0].revents == 0;
        !notify_only || self.envdir_read_at.elapsed() >= ENVDIR_MIN_INTERVAL
    }

    /// Runs until TERM/INT and every worker has exited.
    pub fn run(&mut self) {
        self.start_worker(false);
        let mut reload = false; // start_worker has just read it
        loop {
            if reload {
                self.reload_envdir();
            }
            for signal in self.signals.drain() {
                match signal {
                    libc::SIGHUP => self.hups += 1,
                    libc::SIGTERM | libc::SIGINT if !matches!(self.phase, Phase::Stopping) => self.begin_stop(signal),
                    _ => {} // SIGCHLD: reaped below; anything during Stopping is ignored (Perl)
                }
            }
            self.reap();
            let ready = self.read_notifications();
            let now = Instant::now();
            match self.phase {
                Phase::Stopping => {} // ends below, once every worker is gone
                Phase::Starting { pid, generation, deadline, died, after_hup } => {
                    if let (Some(pid), None) = (pid, died) {
                        if ready.contains(&pid) || now >= deadline {
                            self.accept(pid, generation, after_hup);
                        }
                    } else if now >= deadline {
                        if let Some(pid) = pid {
                            log!(
                                "new worker {pid} seems to have failed to start, exit status:{}",
                                status_text(died.unwrap_or(0))
                            );
                        }
                        self.start_worker(after_hup);
                    }
                }
                Phase::KillDelay { until } => {
                    if now >= until {
                        self.kill_old_workers();
                    }
                }
                Phase::Idle => {}
            }
            if let Phase::Idle = self.phase {
                if self.restart_current {
                    if now >= self.next_spawn_at {
                        self.restart_current = false;
                        self.start_worker(false);
                    }
                } else if self.hups > 0 {
                    self.hups -= 1;
                    log!("received HUP, spawning a new worker");
                    self.retire_current();
                    self.start_worker(true);
                } else if let Some(interval) = self.settings.auto_restart() {
                    let elapsed = self.last_restart.elapsed();
                    let restart = elapsed >= interval && self.old.is_empty();
                    let forced = !restart && interval.checked_mul(2).is_some_and(|twice| elapsed >= twice);
                    if restart || forced {
                        let how = if forced { "forced, " } else { "" };
                        log!("autorestart triggered ({how}interval={})", interval.as_secs_f64());
                        self.retire_current();
                        self.start_worker(true);
                    }
                }
            }
            if matches!(self.phase, Phase::Stopping) && self.current.is_none() && self.old.is_empty() {
                log!("exiting");
                return;
            }
            reload = self.wait();
        }
    }

    /// The current worker becomes an old one (it keeps serving until the new one is started).
    fn retire_current(&mut self) {
        self.tell_systemd(&format!("RELOADING=1\nMONOTONIC_USEC={}", lameduck::notify::monotonic_usec()));
        if let Some((pid, generation)) = self.current.take() {
            self.old.insert(pid, generation);
        }
    }
}

/// What `read_notifications` reads: the workers that sent READY=1 (every one of them), and
/// the `STATUS=` lines `current` sent, to pass on.
fn read_notify_sockets(notify: &mut BTreeMap<i32, NotifySocket>, current: Option<i32>) -> (BTreeSet<i32>, Vec<String>) {
    let mut ready = BTreeSet::new();
    let mut buf = [0u8; 4096];
    let mut relay = Vec::new();
    for (pid, entry) in notify {
        for _ in 0..DATAGRAMS_PER_WAKE {
            let Ok(Some(message)) = lameduck::sys::recv_with_credentials(entry.socket.as_raw_fd(), &mut buf) else { break };
            if !notify::from_worker(message.pid, message.uid, *pid) {
                if !entry.warned {
                    entry.warned = true;
                    log!("ignored a notification from pid {} uid {} (not worker {pid})", message.pid, message.uid);
                }
                continue;
            }
            let text = String::from_utf8_lossy(&buf[..message.len]);
            for line in text.lines() {
                if line == "READY=1" {
                    ready.insert(*pid);
                } else if line.starts_with("STATUS=") && current == Some(*pid) {
                    relay.push(line.to_string());
                }
            }
        }
    }
    (ready, relay)
}

extern "C" {
    /// The C library's environment, which `execvp` passes on (and searches `PATH` in).
    static mut environ: *const *const libc::c_char;
}

/// Width of the `LISTEN_PID=` slot: enough digits for any pid.
const PID_DIGITS: usize = 20;

/// A worker's whole environment, prepared before the fork: `NAME=value` strings, a
/// `LISTEN_PID=` slot of fixed width, and the NULL-terminated pointer array. In the child,
/// `install` writes the pid into the slot and points `environ` at the array, with plain stores
/// only: no `setenv` (not async-signal-safe: it allocates), no allocation. The Command itself
/// is given no variables, so std leaves `environ` alone and its `execvp` uses this one.
struct WorkerEnv {
    _entries: Vec<std::ffi::CString>,
    listen_pid: Option<Vec<u8>>,
    /// Addresses of the strings above, then 0 (kept as integers so the closure is Send).
    pointers: Vec<usize>,
}

impl WorkerEnv {
    fn new(vars: Vec<(OsString, OsString)>, with_listen_pid: bool) -> WorkerEnv {
        let entries: Vec<std::ffi::CString> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let mut entry = name.into_encoded_bytes();
                entry.push(b'=');
                entry.extend(value.into_encoded_bytes());
                std::ffi::CString::new(entry).ok()
            })
            .collect();
        let mut listen_pid = with_listen_pid.then(|| {
            let mut slot = b"LISTEN_PID=".to_vec();
            slot.resize(slot.len() + PID_DIGITS + 1, 0);
            slot
        });
        let mut pointers: Vec<usize> = entries.iter().map(|e| e.as_ptr() as usize).collect();
        pointers.extend(listen_pid.as_mut().map(|slot| slot.as_mut_ptr() as usize));
        pointers.push(0);
        WorkerEnv { _entries: entries, listen_pid, pointers }
    }

    /// In the child: fills in `LISTEN_PID` and makes this the environment `execvp` passes on.
    ///
    /// # Safety
    /// Only between fork and exec (it replaces the process's `environ`).
    unsafe fn install(&mut self, pid: libc::pid_t) {
        self.fill_listen_pid(pid);
        environ = self.pointers.as_ptr().cast();
    }

    /// Writes `pid` into the `LISTEN_PID=` slot (plain stores).
    fn fill_listen_pid(&mut self, pid: libc::pid_t) {
        if let Some(slot) = self.listen_pid.as_mut() {
            let mut digits = [0u8; 24];
            let text = decimal(pid as u64, &mut digits);
            // The heap buffer `pointers` refers to: written in place, never reallocated.
            let start = b"LISTEN_PID=".len();
            slot[start..start + text.len()].copy_from_slice(text);
        }
    }
}

/// `n` in decimal, NUL-terminated, in `buf`; no allocation (used between fork and exec).
fn decimal(mut n: u64, buf: &mut [u8; 24]) -> &[u8] {
    let mut i = buf.len() - 1;
    buf[i] = 0;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_digits() {
        let mut buf = [0u8; 24];
        assert_eq!(decimal(0, &mut buf), b"0\0");
        assert_eq!(decimal(4194304, &mut buf), b"4194304\0");
        assert_eq!(decimal(u64::MAX, &mut buf), b"18446744073709551615\0");
    }

    #[test]
    fn the_worker_environment_array() {
        let vars = vec![(OsString::from("A"), OsString::from("1")), (OsString::from("B"), OsString::from("x=y"))];
        let mut env = WorkerEnv::new(vars, true);
        env.fill_listen_pid(4194304);
        let strings: Vec<String> = env
            .pointers
            .iter()
            .take_while(|p| **p != 0)
            // SAFETY: each pointer is a NUL-terminated string owned by `env`.
            .map(|p| unsafe { std::ffi::CStr::from_ptr(*p as *const libc::c_char) }.to_string_lossy().into_owned())
            .collect();
        assert_eq!(strings, ["A=1", "B=x=y", "LISTEN_PID=4194304"]);
    }

    #[test]
    fn every_ready_in_one_wake_up_counts() {
        // Two "workers": our parent and us (we are a descendant of both, so our datagrams are
        // theirs). The old worker is the one with the higher pid, so it is read last: its
        // READY=1 must not hide the new worker's. (Which of the two has the higher pid depends
        // on wrap-around, so the roles follow the numbers.)
        let (a, b) = (std::os::unix::process::parent_id() as i32, std::process::id() as i32);
        let (new, old) = (a.min(b), a.max(b));
        let dir = notify::NotifyDir::create().unwrap();
        let mut sockets = BTreeMap::new();
        let sender = UnixDatagram::unbound().unwrap();
        for (generation, pid) in [(1, old), (2, new)] {
            let (socket, path) = dir.bind(generation).unwrap();
            sender.send_to(b"READY=1\nSTATUS=up", &path).unwrap();
            sockets.insert(pid, NotifySocket { socket, path, warned: false });
        }
        let (ready, relay) = read_notify_sockets(&mut sockets, Some(old));
        assert_eq!(ready, BTreeSet::from([new, old]));
        assert_eq!(relay, ["STATUS=up"], "only the current worker's STATUS= goes on");
        assert!(read_notify_sockets(&mut sockets, Some(old)).0.is_empty(), "read once");
    }

    #[test]
    fn lookup_order_and_private_names() {
        let env = vec![(OsString::from("KILL_OLD_DELAY"), OsString::from("3"))];
        let envdir = EnvDir::default();
        assert_eq!(lookup(&envdir, &env, "KILL_OLD_DELAY"), Some("3".into()));
        assert_eq!(lookup(&envdir, &env, "START_SERVER_SURELY_UNSET"), None);
        assert!(is_lameduck_private(OsStr::new("LAMEDUCK_OWNED_FDS")));
        assert!(!is_lameduck_private(OsStr::new("LAMEDUCKY")));
    }
}
