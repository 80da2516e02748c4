//! `cargo bench --bench gate`: what one connection pays the gate (issue 13): nanoseconds per
//! acquire + release (the permit's drop), printed, not pass/fail.
//!
//! - uncontended, one thread: `try_acquire` and `acquire(None)`, on an unlimited gate and on a
//!   limited one (the limit is never reached);
//! - contended, two threads hammering one gate: a limit of 64 (both always find a slot; they
//!   contend only for the gate's lock) and a limit of 1 (they take turns: one waits in
//!   `acquire` until the other's release wakes it);
//! - the floor: an uncontended `Mutex<()>` lock + unlock (an acquire + release takes the gate's
//!   lock twice).
//!
//! Each case runs BATCHES batches of a fixed number of operations (calibrated to about
//! BATCH_TARGET per batch); the median batch is printed, with the fastest and slowest, so a
//! busy machine shows as spread rather than as a wrong number. The whole run takes a few
//! seconds; `cargo test --all-targets` runs it unoptimised with tiny batches as a smoke test.

use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use lameduck::Gate;

const BATCHES: usize = if cfg!(debug_assertions) { 3 } else { 15 };
const BATCH_TARGET: Duration = if cfg!(debug_assertions) { Duration::from_millis(2) } else { Duration::from_millis(40) };

/// Per-operation times of each batch, in ns.
struct Samples(Vec<f64>);

impl Samples {
    fn report(mut self, what: &str) {
        self.0.sort_by(f64::total_cmp);
        let median = self.0[self.0.len() / 2];
        let (low, high) = (self.0[0], self.0[self.0.len() - 1]);
        println!("{what:<58} median {median:>8.1} ns   (min {low:.1}, max {high:.1}, {} batches)", self.0.len());
    }
}

/// How many operations make a batch of about BATCH_TARGET, judged from a short trial run.
fn calibrate(mut run: impl FnMut(u64) -> Duration) -> u64 {
    let mut ops = 1_000;
    loop {
        let took = run(ops);
        if took >= BATCH_TARGET / 10 || ops >= 1 << 30 {
            let per_op = took.as_secs_f64() / ops as f64;
            return ((BATCH_TARGET.as_secs_f64() / per_op.max(1e-12)) as u64).max(100);
        }
        ops *= 10;
    }
}

/// Runs `run(ops)` (which returns its elapsed time) BATCHES times; ns per operation.
fn batches(mut run: impl FnMut(u64) -> Duration) -> Samples {
    let ops = calibrate(&mut run);
    Samples((0..BATCHES).map(|_| run(ops).as_nanos() as f64 / ops as f64).collect())
}

fn try_acquire_release(gate: &Arc<Gate>, ops: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..ops {
        drop(black_box(gate.try_acquire().expect("the gate has room")));
    }
    start.elapsed()
}

fn acquire_release(gate: &Arc<Gate>, ops: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..ops {
        drop(black_box(gate.acquire(None).expect("the gate is open")));
    }
    start.elapsed()
}

/// Two threads each do `ops` acquire + release on one gate, started together; the wall time
/// until both are done (so ns per operation is per thread: each thread's own rate).
fn two_threads(gate: &Arc<Gate>, ops: u64, each: fn(&Arc<Gate>, u64) -> Duration) -> Duration {
    let start_line = Arc::new(Barrier::new(3));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (gate, start_line) = (Arc::clone(gate), Arc::clone(&start_line));
            std::thread::spawn(move || {
                start_line.wait();
                each(&gate, ops);
            })
        })
        .collect();
    start_line.wait();
    let start = Instant::now();
    for worker in workers {
        worker.join().expect("a bench thread panicked");
    }
    start.elapsed()
}

fn mutex_floor(ops: u64) -> Duration {
    let lock = Mutex::new(());
    let start = Instant::now();
    for _ in 0..ops {
        drop(black_box(lock.lock().unwrap()));
    }
    start.elapsed()
}

fn main() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("gate: ns per acquire + release (median of {BATCHES} batches; {cpus} CPUs)");

    let unlimited = Gate::new(None).unwrap();
    let limited = Gate::new(Some(1000)).unwrap();
    batches(|ops| try_acquire_release(&unlimited, ops)).report("uncontended try_acquire + release, unlimited");
    batches(|ops| try_acquire_release(&limited, ops)).report("uncontended try_acquire + release, limit 1000");
    batches(|ops| acquire_release(&unlimited, ops)).report("uncontended acquire(None) + release, unlimited");
    batches(|ops| acquire_release(&limited, ops)).report("uncontended acquire(None) + release, limit 1000");
    batches(mutex_floor).report("floor: uncontended Mutex<()> lock + unlock");

    let roomy = Gate::new(Some(64)).unwrap();
    let single = Gate::new(Some(1)).unwrap();
    batches(|ops| two_threads(&unlimited, ops, try_acquire_release))
        .report("2 threads, try_acquire + release, unlimited (per thread)");
    batches(|ops| two_threads(&roomy, ops, try_acquire_release))
        .report("2 threads, try_acquire + release, limit 64 (per thread)");
    batches(|ops| two_threads(&roomy, ops, acquire_release)).report("2 threads, acquire(None) + release, limit 64 (per thread)");
    batches(|ops| two_threads(&single, ops, acquire_release)).report("2 threads, acquire(None) + release, limit 1 (per thread)");
    if cpus < 2 {
        println!("(one CPU: the two threads take turns on it, so the contended numbers include scheduling)");
    }
    for gate in [&unlimited, &limited, &roomy, &single] {
        let stats = gate.stats();
        assert_eq!((stats.admitted, stats.waiting), (0, 0), "every permit came back: {stats:?}");
    }
}
