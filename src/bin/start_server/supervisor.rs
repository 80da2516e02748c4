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
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use crate::files::{self, EnvDir};
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
    generation: u64,
    current: Option<(i32, u64)>,
    old: BTreeMap<i32, u64>,
    /// Old workers already sent `--signal-on-hup` (and not reaped yet): never sent it again.
    signalled: BTreeSet<i32>,
    phase: Phase,
    /// HUPs received and not acted on yet: each gives one generation.
    hups: u32,
    restart_current: bool,
    notify: BTreeMap<i32, UnixDatagram>,
    last_restart: Instant,
    /// No crash replacement starts before this: `--interval` after the previous spawn, so a
    /// worker that reports ready and then dies cannot make us spin (Perl's interval sleep).
    next_spawn_at: Instant,
}

/// Perl prints the raw wait status (`$?`): 256 for exit 1, 9 for SIGKILL.
fn status_text(status: libc::c_int) -> String {
    status.to_string()
}

fn env_number(name: &str) -> Option<f64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0)
}

fn truthy(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

impl Supervisor {
    pub fn new(config: Config, signals: SignalPipe, envdir: EnvDir) -> Supervisor {
        Supervisor {
            config,
            signals,
            envdir,
            generation: 0,
            current: None,
            old: BTreeMap::new(),
            signalled: BTreeSet::new(),
            phase: Phase::Idle,
            hups: 0,
            restart_current: false,
            notify: BTreeMap::new(),
            last_restart: Instant::now(),
            next_spawn_at: Instant::now(),
        }
    }

    fn tell_systemd(&self, message: &str) {
        if let Some(path) = &self.config.notify_socket {
            let _ = lameduck::notify::send(path, message);
        }
    }

    /// Perl: `AUTO_RESTART_INTERVAL ||= 360`, so 0 (or garbage) means 360.
    fn auto_restart_interval(&self) -> Option<Duration> {
        let seconds = env_number("AUTO_RESTART_INTERVAL").filter(|s| *s > 0.0).unwrap_or(360.0);
        truthy("ENABLE_AUTO_RESTART").then(|| Duration::from_secs_f64(seconds))
    }

    fn kill_old_delay(&self) -> Duration {
        let default = if truthy("ENABLE_AUTO_RESTART") { 5.0 } else { 0.0 };
        Duration::from_secs_f64(env_number("KILL_OLD_DELAY").unwrap_or(default))
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
        self.envdir.apply();
        self.generation += 1;
        let generation = self.generation;
        std::env::set_var("SERVER_STARTER_GENERATION", generation.to_string());
        // A private notify socket per worker: READY=1 on it means "started".
        let name = format!("start_server/{}/{generation}", std::process::id());
        let notify = SocketAddr::from_abstract_name(name.as_bytes()).and_then(|a| UnixDatagram::bind_addr(&a));
        match &notify {
            Ok(socket) => {
                let _ = socket.set_nonblocking(true);
                std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
            }
            Err(_) => std::env::remove_var("NOTIFY_SOCKET"),
        }
        let mut command = std::process::Command::new(&self.config.command[0]);
        command.args(&self.config.command[1..]);
        if let Some(dir) = &self.config.dir {
            command.current_dir(dir);
        }
        if let Some(n) = self.config.listen_fds {
            std::env::set_var("LISTEN_FDS", n.to_string());
            // LISTEN_PID is the worker's own pid, known only after fork. start_server is
            // single-threaded, so setting it in the child before exec is safe; the command
            // inherits the environment as it is at exec.
            // SAFETY: see above; getpid/setenv in the single-threaded child.
            unsafe {
                command.pre_exec(|| {
                    let pid = std::ffi::CString::new(libc::getpid().to_string()).unwrap_or_default();
                    libc::setenv(c"LISTEN_PID".as_ptr(), pid.as_ptr(), 1);
                    Ok(())
                });
            }
        }
        let deadline = Instant::now() + self.config.interval;
        self.next_spawn_at = deadline;
        match command.spawn() {
            Ok(child) => {
                let pid = child.id() as i32;
                log!("starting new worker {pid}");
                if let Ok(socket) = notify {
                    self.notify.insert(pid, socket);
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
            let delay = self.kill_old_delay();
            if delay.is_zero() {
                self.kill_old_workers();
            } else {
                log!("sleeping {} secs before killing old workers", delay.as_secs_f64());
                self.phase = Phase::KillDelay { until: Instant::now() + delay };
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
    /// started; STATUS= from the current worker goes on to systemd.
    fn read_notifications(&mut self) -> Option<i32> {
        let mut ready = None;
        let mut buf = [0u8; 4096];
        for (pid, socket) in &self.notify {
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                for line in text.lines() {
                    if line == "READY=1" {
                        ready = Some(*pid);
                    } else if line.starts_with("STATUS=") && self.current.is_some_and(|(p, _)| p == *pid) {
                        self.tell_systemd(line);
                    }
                }
            }
        }
        ready
    }

    fn next_wake(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Starting { deadline, .. } => Some(deadline),
            Phase::KillDelay { until } => Some(until),
            _ => None,
        };
        let auto = self.auto_restart_interval().map(|_| Instant::now() + Duration::from_secs(1));
        let respawn = self.restart_current.then_some(self.next_spawn_at);
        [phase, auto, respawn].into_iter().flatten().min()
    }

    fn wait(&self) {
        let mut fds = vec![libc::pollfd { fd: self.signals.fd(), events: libc::POLLIN, revents: 0 }];
        fds.extend(self.notify.values().map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 }));
        let timeout = self.next_wake().map_or(-1, |t| t.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: a valid array of pollfds; EINTR (a signal) just returns early.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    }

    /// Runs until TERM/INT and every worker has exited.
    pub fn run(&mut self) {
        self.start_worker(false);
        loop {
            // Perl re-reads the envdir on every wake-up (it may switch auto-restart or the
            // kill-old delay on and off), not only before a spawn.
            self.envdir.apply();
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
                        if ready == Some(pid) || now >= deadline {
                            self.accept(pid, generation, after_hup);
                        }
                    } else if now >= deadline {
                        if let Some(pid) = pid {
                            log!("new worker {pid} seems to have failed to start, exit status:{}", status_text(died.unwrap_or(0)));
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
                } else if let Some(interval) = self.auto_restart_interval() {
                    let elapsed = self.last_restart.elapsed();
                    let restart = elapsed >= interval && self.old.is_empty();
                    let forced = !restart && elapsed >= interval * 2;
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
            self.wait();
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
