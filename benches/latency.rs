//! `cargo bench --bench latency`: prints the numbers the issue asks for (not pass/fail).
//!
//! - signal → `shutdown` entry latency (a real SIGUSR1 sent with kill(2) to this process);
//! - deadline accuracy: how late `close` is called after the deadline when `shutdown` ignores it;
//! - `Runner::stop` → `shutdown` entry latency;
//! - the floors those two latencies are measured against, in the same run and under the same
//!   load: a bare signal handler waking a thread blocked on a pipe, and a thread blocked with a
//!   timeout waking at it (what no coordinator can beat: the cost of a wake-up itself);
//! - cost of a run: threads created, RSS growth over many runs, `.so` size.
//!
//! Each latency is measured over RUNS runs; median, p99 and max are printed.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lameduck::{Context, HookError, Options, Runner, Server};

/// Runs per measurement; `cargo test --all-targets` runs this file unoptimised as a quick smoke test.
const RUNS: usize = if cfg!(debug_assertions) { 20 } else { 300 };
static WAKE: Mutex<Vec<Duration>> = Mutex::new(Vec::new());
static SPAWN: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Probe {
    shutdown_entry: Mutex<Option<Instant>>,
    deadline: Mutex<Option<Instant>>,
    close_entry: Mutex<Option<Instant>>,
    threads_in_shutdown: Mutex<usize>,
    ignore_deadline: bool,
    released: Mutex<bool>,
    release: Condvar,
}

impl Probe {
    fn wait_released(&self) {
        let mut released = self.released.lock().unwrap();
        while !*released {
            released = self.release.wait(released).unwrap();
        }
    }
    fn set_released(&self) {
        *self.released.lock().unwrap() = true;
        self.release.notify_all();
    }
}

impl Server for Probe {
    fn serve(&self, _: &Context) -> Result<(), HookError> {
        self.wait_released();
        Ok(())
    }
    fn shutdown(&self, ctx: &Context) -> Result<(), HookError> {
        *self.shutdown_entry.lock().unwrap() = Some(Instant::now());
        *self.deadline.lock().unwrap() = ctx.deadline();
        *self.threads_in_shutdown.lock().unwrap() = thread_count();
        if self.ignore_deadline {
            self.wait_released(); // until close
        } else {
            self.set_released();
        }
        Ok(())
    }
    fn close(&self) -> Result<(), HookError> {
        *self.close_entry.lock().unwrap() = Some(Instant::now());
        self.set_released();
        Ok(())
    }
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

static EXPIRED_LOG: Mutex<Option<Instant>> = Mutex::new(None);
/// When the coordinator logged that it took the trigger signal (just before it starts `shutdown`).
static SIGNAL_LOG: Mutex<Option<Instant>> = Mutex::new(None);
fn options(period: Duration) -> Options {
    Options {
        signals: vec![libc::SIGUSR1],
        period,
        logger: Some(Arc::new(|_, m: &str| {
            if m.starts_with("Lame-duck period has expired") {
                *EXPIRED_LOG.lock().unwrap() = Some(Instant::now());
            } else if m.starts_with("Received signal [") {
                *SIGNAL_LOG.lock().unwrap() = Some(Instant::now());
            }
        })),
        ..Options::default()
    }
}

/// One run; `trigger` starts lame-duck and returns the instant it did so.
fn one_run(probe: Arc<Probe>, period: Duration, trigger: impl FnOnce(&Runner) -> Instant) -> (Instant, Arc<Probe>) {
    let runner = Arc::new(Runner::new(probe.clone(), options(period)).unwrap());
    let thread = std::thread::spawn({
        let runner = Arc::clone(&runner);
        move || {
            let _ = runner.run();
        }
    });
    runner.wait_ready(None).unwrap();
    let sent = trigger(&runner);
    thread.join().unwrap();
    (sent, probe)
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1).min(samples.len() - 1)];
    println!(
        "{name:<46} n={:<4} median {:>9.3} ms   p99 {:>9.3} ms   max {:>9.3} ms",
        samples.len(),
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3
    );
}

/// The write end of the floor's pipe, for the bare handler below.
static FLOOR_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn floor_handler(_: libc::c_int) {
    let byte = 1u8;
    // SAFETY: write(2) is async-signal-safe; one byte from a local to the pipe set up below.
    unsafe { libc::write(FLOOR_PIPE.load(std::sync::atomic::Ordering::SeqCst), (&byte as *const u8).cast(), 1) };
}

/// Blocks in ppoll(2) on `fd` (as the coordinator does) for at most `timeout` (`None`:
/// forever); returns when it woke.
fn poll_wake(fd: i32, timeout: Option<Duration>) -> Instant {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let timeout = timeout.map(|t| libc::timespec { tv_sec: t.as_secs() as libc::time_t, tv_nsec: t.subsec_nanos() as _ });
    let timeout_ptr = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: one valid pollfd; the timeout is NULL or a live timespec.
    unsafe { libc::ppoll(&mut p, 1, timeout_ptr, std::ptr::null()) };
    Instant::now()
}

/// The floors: a signal (SIGUSR2, a bare handler that writes one byte to a pipe) waking a
/// thread blocked in poll(2) on it, and a thread blocked in poll(2) waking at its timeout.
fn floors() -> (Vec<Duration>, Vec<Duration>) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array; both ends are closed at the end.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) }, 0);
    FLOOR_PIPE.store(fds[1], std::sync::atomic::Ordering::SeqCst);
    // SAFETY: installing a handler that only calls write(2); restored to default below.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = floor_handler as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut());
    }
    let read = fds[0];
    let signal: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let waiter = std::thread::spawn(move || {
                started_tx.send(()).unwrap();
                let woke = poll_wake(read, None);
                let mut buf = [0u8; 16];
                // SAFETY: draining the non-blocking pipe into a local buffer.
                unsafe { libc::read(read, buf.as_mut_ptr().cast(), buf.len()) };
                woke
            });
            started_rx.recv().unwrap();
            std::thread::sleep(Duration::from_millis(2)); // blocked in poll by now, as a run's coordinator is
            let sent = Instant::now();
            // SAFETY: SIGUSR2 has the handler installed above.
            unsafe { libc::kill(libc::getpid(), libc::SIGUSR2) };
            waiter.join().unwrap() - sent
        })
        .collect();
    let timer: Vec<Duration> = (0..RUNS)
        .map(|_| {
            std::thread::spawn(move || {
                let due = Instant::now() + Duration::from_millis(10);
                poll_wake(read, Some(Duration::from_millis(10))).saturating_duration_since(due)
            })
            .join()
            .unwrap()
        })
        .collect();
    // SAFETY: back to the default disposition; then the pipe is ours to close.
    unsafe {
        libc::signal(libc::SIGUSR2, libc::SIG_DFL);
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    (signal, timer)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --all-targets` lists benches; nothing to list here.
    }
    println!("lameduck {} benchmarks ({} runs each, {} CPUs)", env!("CARGO_PKG_VERSION"), RUNS, num_cpus());

    let (mut signal_wake, mut signal_start) = (Vec::new(), Vec::new());
    let signal_latency: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let (sent, probe) = one_run(Arc::new(Probe::default()), Duration::from_secs(3), |_| {
                let at = Instant::now();
                // SAFETY: sending SIGUSR1, which the runner has trapped, to ourselves.
                unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
                at
            });
            let entry = probe.shutdown_entry.lock().unwrap().unwrap();
            let logged = SIGNAL_LOG.lock().unwrap().unwrap();
            signal_wake.push(logged.saturating_duration_since(sent));
            signal_start.push(entry.saturating_duration_since(logged));
            entry - sent
        })
        .collect();
    let (signal_floor, timer_floor) = floors();
    summary("signal -> shutdown entry", signal_latency);
    summary("  signal -> coordinator wake", signal_wake);
    summary("  coordinator -> shutdown entry", signal_start);
    summary("  floor: signal -> woken thread (bare handler)", signal_floor);

    let stop_latency: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let (sent, probe) = one_run(Arc::new(Probe::default()), Duration::from_secs(3), |r| {
                let at = Instant::now();
                r.stop();
                at
            });
            let entry = probe.shutdown_entry.lock().unwrap().unwrap();
            entry - sent
        })
        .collect();
    summary("ld_runner_stop -> shutdown entry", stop_latency);

    let mut threads_in_shutdown = 0;
    let lateness: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let probe = Arc::new(Probe { ignore_deadline: true, ..Probe::default() });
            let (_, probe) = one_run(probe, Duration::from_millis(10), |r| {
                r.stop();
                Instant::now()
            });
            threads_in_shutdown = *probe.threads_in_shutdown.lock().unwrap();
            let deadline = probe.deadline.lock().unwrap().unwrap();
            let close = probe.close_entry.lock().unwrap().unwrap();
            let logged = EXPIRED_LOG.lock().unwrap().unwrap();
            WAKE.lock().unwrap().push(logged.saturating_duration_since(deadline));
            SPAWN.lock().unwrap().push(close.saturating_duration_since(logged));
            close.saturating_duration_since(deadline)
        })
        .collect();
    summary("deadline -> close entry (shutdown ignores it)", lateness);
    summary("  deadline -> coordinator wake", WAKE.lock().unwrap().clone());
    summary("  coordinator -> close entry", SPAWN.lock().unwrap().clone());
    summary("  floor: timeout -> woken thread (poll)", timer_floor);

    std::thread::sleep(Duration::from_millis(50)); // let the kernel reap exited threads
    let base_threads = thread_count();
    // In shutdown the process has: its threads at rest, the caller's thread blocked in run(),
    // and whatever lameduck started.
    println!(
        "threads lameduck starts per run: {} (serve, and shutdown and close parked from the start; all joined after the run)",
        threads_in_shutdown.saturating_sub(base_threads + 1)
    );
    let before = rss_kib();
    for _ in 0..RUNS * 3 {
        one_run(Arc::new(Probe::default()), Duration::from_secs(3), |r| {
            r.stop();
            Instant::now()
        });
    }
    let after = rss_kib();
    std::thread::sleep(Duration::from_millis(50));
    println!("RSS: {before} KiB before {} runs, {after} KiB after ({} KiB added)", RUNS * 3, after.saturating_sub(before));
    println!("threads after {} runs: {} (at rest: {base_threads})", RUNS * 3, thread_count());

    let so = std::env::current_exe().unwrap().parent().unwrap().join("liblameduck.so");
    if let Ok(meta) = std::fs::metadata(&so) {
        let stripped = std::env::temp_dir().join(format!("liblameduck-stripped-{}.so", std::process::id()));
        let stripped_size = std::process::Command::new("strip")
            .arg("-o")
            .arg(&stripped)
            .arg(&so)
            .status()
            .ok()
            .filter(|s| s.success())
            .and_then(|_| std::fs::metadata(&stripped).ok())
            .map(|m| m.len());
        let _ = std::fs::remove_file(&stripped);
        println!(
            "liblameduck.so: {} KiB as built{}",
            meta.len() / 1024,
            stripped_size.map(|s| format!(", {} KiB stripped", s / 1024)).unwrap_or_default()
        );
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
