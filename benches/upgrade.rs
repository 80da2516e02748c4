//! Upgrade latency: from the upgrade request to "the new process is ready and the old one is in
//! lame-duck", with 4, 400 and 4000 listeners handed over (tableflip's `BenchmarkUpgrade`
//! sizes). The new process is this same binary started with `--child`: a lameduck runner that
//! takes its listeners with `listen` and reports ready by itself. Prints median and p99.
//!
//!     cargo bench --bench upgrade            (ROUNDS=50 by default)

use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lameduck::{Context, HookError, Options, Runner, Server, SignalOwner, State, UpgradeCommand};

/// Serves until shutdown or close.
#[derive(Default)]
struct Idle {
    stopped: Mutex<bool>,
    changed: Condvar,
}

impl Idle {
    fn stop(&self) {
        *self.stopped.lock().unwrap() = true;
        self.changed.notify_all();
    }
}

impl Server for Idle {
    fn serve(&self, _ctx: &Context) -> Result<(), HookError> {
        let mut stopped = self.stopped.lock().unwrap();
        while !*stopped {
            stopped = self.changed.wait(stopped).unwrap();
        }
        Ok(())
    }
    fn shutdown(&self, _ctx: &Context) -> Result<(), HookError> {
        self.stop();
        Ok(())
    }
    fn close(&self) -> Result<(), HookError> {
        self.stop();
        Ok(())
    }
}

/// The new generation: take the listeners, serve until SIGTERM.
fn child() {
    // Take every listener handed over, as a real server does: only then is readiness reported.
    let handed: usize = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
    let _taken: Vec<OwnedFd> =
        (0..handed).map(|_| lameduck::listener::listen("127.0.0.1:0", None).expect("an inherited listener")).collect();
    let options = Options { logger: None, upgrade_signals: vec![], ..Options::default() };
    lameduck::run(Arc::new(Idle::default()), options).expect("the child run");
}

fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn main() {
    if std::env::args().any(|a| a == "--child") {
        return child();
    }
    raise_open_file_limit();
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(50);
    let exe = std::env::current_exe().unwrap();
    let command = UpgradeCommand { program: exe.clone(), args: vec![exe.into_os_string(), "--child".into()] };
    println!("upgrade latency (request -> new process took every listener and is ready -> old process in lame-duck), confirmation window 0, {rounds} upgrades each");
    let mut listeners: Vec<OwnedFd> = Vec::new();
    for size in [4usize, 400, 4000] {
        while listeners.len() < size {
            listeners.push(lameduck::listener::listen("127.0.0.1:0", None).expect("bind"));
        }
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let options = Options {
                signals: vec![],
                signal_owner: SignalOwner::Host,
                logger: None,
                upgrade_signals: vec![],
                upgrade_command: Some(command.clone()),
                // The confirmation window (1 s by default) is a wait by design; measure the rest.
                upgrade_confirm: Duration::ZERO,
                ..Options::default()
            };
            let runner = Arc::new(Runner::new(Arc::new(Idle::default()), options).unwrap());
            let running = {
                let runner = Arc::clone(&runner);
                std::thread::spawn(move || runner.run())
            };
            runner.wait_ready(Some(Duration::from_secs(10))).unwrap();
            let start = Instant::now();
            let pid = runner.upgrade().expect("upgrade");
            while !matches!(runner.state(), State::HandingOver | State::ShuttingDown | State::Closing | State::Stopped) {
                std::hint::spin_loop();
            }
            samples.push(start.elapsed());
            running.join().unwrap().unwrap();
            // SAFETY: our own child; stop it and reap it.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
                libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
            }
        }
        samples.sort();
        println!(
            "  {size:>4} listeners: median {:.2} ms, p99 {:.2} ms, min {:.2} ms, max {:.2} ms",
            percentile(&samples, 50).as_secs_f64() * 1e3,
            percentile(&samples, 99).as_secs_f64() * 1e3,
            samples[0].as_secs_f64() * 1e3,
            samples[samples.len() - 1].as_secs_f64() * 1e3,
        );
    }
}
