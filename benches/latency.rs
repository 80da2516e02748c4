//! `cargo bench --bench latency`: prints the numbers the issue asks for (not pass/fail).
//!
//! - signal → `shutdown` entry latency (a real SIGUSR1 sent with kill(2) to this process);
//! - deadline accuracy: how late `close` is called after the deadline when `shutdown` ignores it;
//! - `Runner::stop` → `shutdown` entry latency;
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
fn options(period: Duration) -> Options {
    Options {
        signals: vec![libc::SIGUSR1],
        period,
        logger: Some(Arc::new(|_, m: &str| {
            if m.starts_with("Lame-duck period has expired") {
                *EXPIRED_LOG.lock().unwrap() = Some(Instant::now());
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --all-targets` lists benches; nothing to list here.
    }
    println!("lameduck {} benchmarks ({} runs each, {} CPUs)", env!("CARGO_PKG_VERSION"), RUNS, num_cpus());

    let signal_latency: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let (sent, probe) = one_run(Arc::new(Probe::default()), Duration::from_secs(3), |_| {
                let at = Instant::now();
                // SAFETY: sending SIGUSR1, which the runner has trapped, to ourselves.
                unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
                at
            });
            let entry = probe.shutdown_entry.lock().unwrap().unwrap();
            entry - sent
        })
        .collect();
    summary("signal -> shutdown entry", signal_latency);

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

    std::thread::sleep(Duration::from_millis(50)); // let the kernel reap exited threads
    let base_threads = thread_count();
    // In shutdown the process has: its threads at rest, the caller's thread blocked in run(),
    // and whatever lameduck started.
    println!(
        "threads lameduck starts per run: {} (serve, shutdown; close adds 1 when called; all joined after the run)",
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
