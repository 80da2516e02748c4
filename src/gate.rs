//! The connection gate: nserv's run-time connection limit, and the one count of what is in
//! flight that lame-duck waits on (issue 13 wires it into the options, the C, Python and Node
//! APIs and the adapters; this is the core).
//!
//! A server calls [`Gate::acquire`] *before* `accept(2)`: while the gate is full it does not
//! accept, so new clients complete the handshake and wait in the kernel backlog instead of
//! being refused. Each admitted connection holds a [`Permit`] and gives its slot back when the
//! permit is dropped (exactly once: the permit is consumed). Unlike limitnet, admission is
//! decided at the moment of admission, under one lock: after the limit is lowered, nothing new
//! is admitted until fewer than the new limit are open, even while an acquire was blocked.
//!
//! The counts are atomics, so a health endpoint or a signal-driven reporter reads them without
//! taking the lock.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// The largest limit accepted (nserv clamps to `MaxInt32`; we refuse instead). Crate-private
/// for now: cbindgen would put a public constant into the C header.
pub(crate) const MAX_LIMIT: usize = i32::MAX as usize;

/// `UNLIMITED` in the atomic limit: no limit is set.
const UNLIMITED: usize = usize::MAX;

/// Why a gate did not admit a connection, or refused a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// [`Gate::close`] was called: lame-duck has begun.
    #[error("the connection gate is closed: lame-duck mode admits no new connection")]
    Closed,
    /// The deadline given to [`Gate::acquire`] passed first.
    #[error("no connection slot became free before the deadline")]
    TimedOut,
    /// [`Gate::try_acquire`] found no free slot.
    #[error("the connection gate is full")]
    Full,
    /// A limit above `i32::MAX`.
    #[error("connection limit {0} is invalid: at most {MAX_LIMIT} (0 or none means unlimited)")]
    InvalidLimit(usize),
}

/// A snapshot of the gate's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateStats {
    /// The limit, or `None` when unlimited.
    pub limit: Option<usize>,
    /// Connections admitted and not yet released.
    pub admitted: usize,
    /// Callers blocked in [`Gate::acquire`] now.
    pub waiting: usize,
    /// Connections admitted since the gate was made.
    pub total: u64,
    /// The most connections admitted at once.
    pub peak: usize,
    /// True once [`Gate::close`] was called.
    pub closed: bool,
}

/// The connection gate, shared as an `Arc<Gate>`; every method may be called from any thread.
#[derive(Debug)]
pub struct Gate {
    /// Held to decide an admission, so that two callers never take the same slot; the atomics
    /// below are what it decided, readable without it.
    lock: Mutex<()>,
    changed: Condvar,
    closed: AtomicBool,
    limit: AtomicUsize,
    admitted: AtomicUsize,
    waiting: AtomicUsize,
    total: AtomicU64,
    peak: AtomicUsize,
}

/// One admitted connection's slot, given back when dropped: it moves with the connection to
/// whichever thread or task serves it.
#[derive(Debug)]
#[must_use = "dropping the permit at once gives the slot back"]
pub struct Permit {
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release_one();
    }
}

impl Permit {
    /// Gives the slot back now (the same as dropping the permit).
    pub fn release(self) {}
}

/// `None` and `Some(0)` both mean "no limit", as `max_connections=0` does in every API.
fn encode(limit: Option<usize>) -> Result<usize, GateError> {
    match limit {
        None | Some(0) => Ok(UNLIMITED),
        Some(n) if n > MAX_LIMIT => Err(GateError::InvalidLimit(n)),
        Some(n) => Ok(n),
    }
}

fn decode(limit: usize) -> Option<usize> {
    (limit != UNLIMITED).then_some(limit)
}

impl Gate {
    /// A gate with `limit` (`None` or `Some(0)`: unlimited).
    pub fn new(limit: Option<usize>) -> Result<Arc<Gate>, GateError> {
        Ok(Arc::new(Gate {
            lock: Mutex::new(()),
            changed: Condvar::new(),
            closed: AtomicBool::new(false),
            limit: AtomicUsize::new(encode(limit)?),
            admitted: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
        }))
    }

    fn locked(&self) -> MutexGuard<'_, ()> {
        // A panic while holding this lock leaves only counters behind, which stay consistent.
        self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Free slots now (`None`: unlimited). Lock-free.
    pub fn free(&self) -> Option<usize> {
        decode(self.limit.load(Ordering::Acquire)).map(|limit| limit.saturating_sub(self.admitted.load(Ordering::Acquire)))
    }

    /// Sets the limit and returns the free slots *before* the change, as nserv's `MaxConns(n)`
    /// does. Raising admits waiting callers at once; lowering closes nothing and takes effect as
    /// connections are released.
    pub fn set_limit(&self, limit: Option<usize>) -> Result<Option<usize>, GateError> {
        let encoded = encode(limit)?;
        let _decide = self.locked();
        let before = self.free();
        self.limit.store(encoded, Ordering::Release);
        self.changed.notify_all();
        Ok(before)
    }

    /// Admits one connection, waiting for a free slot until `deadline` (`None`: no deadline).
    pub fn acquire(self: &Arc<Self>, deadline: Option<Instant>) -> Result<Permit, GateError> {
        let mut guard = self.locked();
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let outcome = loop {
            if self.closed.load(Ordering::Acquire) {
                break Err(GateError::Closed);
            }
            if self.has_room() {
                break Ok(());
            }
            guard = match deadline {
                None => self.changed.wait(guard).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break Err(GateError::TimedOut);
                    }
                    self.changed.wait_timeout(guard, deadline - now).unwrap_or_else(|p| p.into_inner()).0
                }
            };
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        outcome.map(|()| self.admit())
    }

    /// Admits one connection if a slot is free now (for event loops: poll again after a
    /// release, or on a timer).
    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, GateError> {
        let _decide = self.locked();
        if self.closed.load(Ordering::Acquire) {
            return Err(GateError::Closed);
        }
        if !self.has_room() {
            return Err(GateError::Full);
        }
        Ok(self.admit())
    }

    /// True while another connection may be admitted (call with the lock held).
    fn has_room(&self) -> bool {
        self.admitted.load(Ordering::Acquire) < self.limit.load(Ordering::Acquire)
    }

    /// Counts one admission; the caller decided it and still holds the lock.
    fn admit(self: &Arc<Self>) -> Permit {
        let now = self.admitted.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(now, Ordering::AcqRel);
        self.total.fetch_add(1, Ordering::AcqRel);
        Permit { gate: Arc::clone(self) }
    }

    fn release_one(&self) {
        let _decide = self.locked();
        self.admitted.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_all();
    }

    /// Admits nothing from now on (lame-duck has begun): blocked callers return
    /// [`GateError::Closed`] at once. Admitted connections keep their permits.
    pub fn close(&self) {
        let _decide = self.locked();
        self.closed.store(true, Ordering::Release);
        self.changed.notify_all();
    }

    /// Waits until no connection is admitted, or until `deadline`; true when empty.
    pub fn wait_empty(&self, deadline: Option<Instant>) -> bool {
        let mut guard = self.locked();
        while self.admitted.load(Ordering::Acquire) > 0 {
            guard = match deadline {
                None => self.changed.wait(guard).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    self.changed.wait_timeout(guard, deadline - now).unwrap_or_else(|p| p.into_inner()).0
                }
            };
        }
        true
    }

    /// The counts, read without the lock (each is exact; together they are a close snapshot).
    pub fn stats(&self) -> GateStats {
        GateStats {
            limit: decode(self.limit.load(Ordering::Acquire)),
            admitted: self.admitted.load(Ordering::Acquire),
            waiting: self.waiting.load(Ordering::Acquire),
            total: self.total.load(Ordering::Acquire),
            peak: self.peak.load(Ordering::Acquire),
            closed: self.closed.load(Ordering::Acquire),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Generous: the machine may be busy; nothing here waits this long when it works.
    const PATIENCE: Duration = Duration::from_secs(30);

    fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn limit_10_of_100_holders_never_admits_more_than_10_and_admits_all() {
        let gate = Gate::new(Some(10)).unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..100)
            .map(|_| {
                let (gate, open, most) = (Arc::clone(&gate), Arc::clone(&open), Arc::clone(&most));
                std::thread::spawn(move || {
                    let permit = gate.acquire(Some(Instant::now() + PATIENCE)).unwrap();
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::yield_now();
                    open.fetch_sub(1, Ordering::SeqCst);
                    permit.release();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let stats = gate.stats();
        assert!(most.load(Ordering::SeqCst) <= 10);
        assert_eq!((stats.admitted, stats.waiting, stats.total), (0, 0, 100));
        assert!(stats.peak <= 10 && stats.peak >= 1, "{stats:?}");
    }

    #[test]
    fn raising_the_limit_admits_a_waiting_caller_at_once() {
        let gate = Gate::new(Some(1)).unwrap();
        let first = gate.try_acquire().unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || tx.send(gate.acquire(None).map(|p| p.release())).unwrap())
        };
        until("the second caller to wait", || gate.stats().waiting == 1);
        assert_eq!(gate.set_limit(Some(2)), Ok(Some(0)), "free slots before the change");
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), Ok(()));
        waiter.join().unwrap();
        drop(first);
        assert_eq!(gate.free(), Some(2));
    }

    #[test]
    fn lowering_closes_nothing_and_admits_nothing_until_below_the_new_limit() {
        let gate = Gate::new(Some(5)).unwrap();
        let mut permits: Vec<Permit> = (0..5).map(|_| gate.try_acquire().unwrap()).collect();
        assert_eq!(gate.set_limit(Some(2)), Ok(Some(0)));
        assert_eq!(gate.stats().admitted, 5, "lowering closes no connection");
        for _ in 0..3 {
            assert_eq!(gate.try_acquire().err(), Some(GateError::Full));
            permits.pop();
        }
        assert_eq!(gate.stats().admitted, 2);
        assert_eq!(gate.try_acquire().err(), Some(GateError::Full), "2 open, limit 2");
        permits.pop();
        let again = gate.try_acquire().unwrap();
        assert_eq!(gate.try_acquire().err(), Some(GateError::Full));
        drop(again);
        drop(permits);
        assert_eq!(gate.stats().admitted, 0);
    }

    #[test]
    fn close_wakes_a_blocked_acquire_and_keeps_live_permits() {
        let gate = Gate::new(Some(1)).unwrap();
        let live = gate.try_acquire().unwrap();
        let waiter = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || gate.acquire(None).map(|p| p.release()))
        };
        until("the caller to wait", || gate.stats().waiting == 1);
        gate.close();
        assert_eq!(waiter.join().unwrap(), Err(GateError::Closed));
        assert_eq!(gate.try_acquire().err(), Some(GateError::Closed));
        assert!(gate.stats().closed);
        assert_eq!(gate.stats().admitted, 1);
        assert!(!gate.wait_empty(Some(Instant::now())), "one connection is still open");
        let releaser = std::thread::spawn(move || live.release());
        assert!(gate.wait_empty(Some(Instant::now() + PATIENCE)));
        releaser.join().unwrap();
    }

    #[test]
    fn acquire_gives_up_at_its_deadline() {
        let gate = Gate::new(Some(1)).unwrap();
        let _held = gate.try_acquire().unwrap();
        assert_eq!(gate.acquire(Some(Instant::now() + Duration::from_millis(10))).err(), Some(GateError::TimedOut));
        assert_eq!(gate.stats().waiting, 0);
    }

    #[test]
    fn counts_do_not_drift_over_10000_connections() {
        let gate = Gate::new(Some(3)).unwrap();
        for _ in 0..10_000 {
            let permit = gate.acquire(None).unwrap();
            drop(permit);
        }
        let stats = gate.stats();
        assert_eq!((stats.admitted, stats.total, stats.peak), (0, 10_000, 1));
        assert_eq!(gate.free(), Some(3));
    }

    #[test]
    fn zero_and_none_mean_unlimited_and_absurd_limits_are_refused() {
        let gate = Gate::new(None).unwrap();
        assert_eq!(gate.free(), None);
        let _many: Vec<Permit> = (0..1000).map(|_| gate.try_acquire().unwrap()).collect();
        assert_eq!(gate.set_limit(Some(0)), Ok(None));
        assert_eq!(gate.stats().limit, None);
        assert_eq!(gate.set_limit(Some(MAX_LIMIT + 1)), Err(GateError::InvalidLimit(MAX_LIMIT + 1)));
        assert_eq!(gate.stats().limit, None, "a refused limit changes nothing");
        assert_eq!(Gate::new(Some(usize::MAX)).err(), Some(GateError::InvalidLimit(usize::MAX)));
        assert_eq!(gate.set_limit(Some(2000)), Ok(None));
        assert_eq!(gate.free(), Some(1000));
    }
}
