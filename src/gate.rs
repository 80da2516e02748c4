//! The connection gate: nserv's run-time connection limit, and the one count of what is in
//! flight that lame-duck waits on.
//!
//! A server calls [`Gate::acquire`] *before* `accept(2)`: while the gate is full it does not
//! accept, so new clients complete the handshake and wait in the kernel backlog instead of
//! being refused. Each admitted connection holds a [`Permit`] and gives its slot back when the
//! permit is dropped (exactly once: the permit is consumed). Unlike limitnet, admission is
//! decided at the moment of admission, under one lock: after the limit is lowered, nothing new
//! is admitted until fewer than the new limit are open, even while an acquire was blocked.
//!
//! The run moves the gate through three phases ([`GatePhase`]): `Open` while serving (the drain
//! delay included: a balancer may still send), `Draining` once `shutdown` is called (accept
//! loops blocked in [`Gate::acquire`] return [`GateError::Closed`] at once, so they stop
//! promptly; only [`Gate::acquire_queued`], for connections already waiting in the accept
//! queue, still admits, within the limit), and `Closed` once `close` is called (nothing is
//! admitted). The run's `shutdown` phase ends only when every permit is back.
//!
//! The counts are atomics, so a health endpoint or a signal-driven reporter reads them without
//! taking the lock.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

/// The largest limit accepted (nserv clamps to `MaxInt32`; we refuse instead). Crate-private:
/// cbindgen would put a public constant into the C header.
pub(crate) const MAX_LIMIT: usize = i32::MAX as usize;

/// `UNLIMITED` in the atomic limit: no limit is set.
const UNLIMITED: usize = usize::MAX;

/// Why a gate did not admit a connection, or refused a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// Lame-duck has begun ([`Gate::drain`]) or the run is closing ([`Gate::close`]).
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

/// Where a gate stands in its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GatePhase {
    /// Admits up to the limit.
    Open = 0,
    /// Lame-duck: admits only connections already queued ([`Gate::acquire_queued`]).
    Draining = 1,
    /// Admits nothing.
    Closed = 2,
}

impl GatePhase {
    fn from_u8(value: u8) -> GatePhase {
        match value {
            0 => GatePhase::Open,
            1 => GatePhase::Draining,
            _ => GatePhase::Closed,
        }
    }

    /// Lower-case name, as the bindings report it: `open`, `draining`, `closed`.
    pub const fn name(self) -> &'static str {
        match self {
            GatePhase::Open => "open",
            GatePhase::Draining => "draining",
            GatePhase::Closed => "closed",
        }
    }
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
    /// Open, draining (lame-duck) or closed.
    pub phase: GatePhase,
}

/// Called when the last permit comes back after the gate stopped admitting new connections:
/// the run's coordinator, which waits for the gate to empty.
type EmptyWaker = Box<dyn Fn() + Send + Sync>;

/// The connection gate, shared as an `Arc<Gate>`; every method may be called from any thread.
pub struct Gate {
    /// Held to decide an admission, so that two callers never take the same slot; the atomics
    /// below are what it decided, readable without it.
    lock: Mutex<()>,
    changed: Condvar,
    phase: AtomicU8,
    limit: AtomicUsize,
    admitted: AtomicUsize,
    waiting: AtomicUsize,
    /// Callers blocked in [`Gate::wait_empty`]: with `waiting`, who a release must wake (a
    /// notify is a system call; with nobody waiting, a release is two atomics under the lock).
    watchers: AtomicUsize,
    total: AtomicU64,
    peak: AtomicUsize,
    /// The descriptors permits were tagged with ([`Permit::attach_fd`]), by permit number.
    fds: Mutex<HashMap<u64, RawFd>>,
    on_empty: OnceLock<EmptyWaker>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("stats", &self.stats()).finish()
    }
}

/// One admitted connection's slot, given back when dropped: it moves with the connection to
/// whichever thread or task serves it.
#[derive(Debug)]
#[must_use = "dropping the permit at once gives the slot back"]
pub struct Permit {
    gate: Arc<Gate>,
    /// Its admission number (the gate's total when it was admitted).
    number: u64,
    tagged: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.tagged {
            self.gate.tags().remove(&self.number);
        }
        self.gate.release_one();
    }
}

impl Permit {
    /// Gives the slot back now (the same as dropping the permit).
    pub fn release(self) {}

    /// Records `fd` as this connection's descriptor, so [`Gate::open_fds`] lists it (for a
    /// `close` hook that must cut what is still open). Release the permit before closing the
    /// descriptor, or the list may name a number the system has given to another file.
    pub fn attach_fd(&mut self, fd: RawFd) {
        self.gate.tags().insert(self.number, fd);
        self.tagged = true;
    }

    /// The gate this permit belongs to.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
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

/// Adds `by` to a count that only changes under the gate's lock (so a plain load and store
/// suffice: no locked instruction) and returns the new value; lock-free readers see either.
fn bump(count: &AtomicUsize, by: isize) -> usize {
    let now = count.load(Ordering::Relaxed).wrapping_add_signed(by);
    count.store(now, Ordering::Release);
    now
}

/// Which phases an admission accepts.
#[derive(Clone, Copy)]
enum Admits {
    /// A new connection: only while open.
    New,
    /// A connection already in the accept queue: also while draining.
    Queued,
}

impl Gate {
    /// A gate with `limit` (`None` or `Some(0)`: unlimited).
    pub fn new(limit: Option<usize>) -> Result<Arc<Gate>, GateError> {
        Ok(Arc::new(Gate {
            lock: Mutex::new(()),
            changed: Condvar::new(),
            phase: AtomicU8::new(GatePhase::Open as u8),
            limit: AtomicUsize::new(encode(limit)?),
            admitted: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            watchers: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
            fds: Mutex::new(HashMap::new()),
            on_empty: OnceLock::new(),
        }))
    }

    /// Validates a limit without making a gate (for options).
    pub fn check_limit(limit: Option<usize>) -> Result<(), GateError> {
        encode(limit).map(drop)
    }

    fn locked(&self) -> MutexGuard<'_, ()> {
        // A panic while holding this lock leaves only counters behind, which stay consistent.
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tags(&self) -> MutexGuard<'_, HashMap<u64, RawFd>> {
        self.fds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets what is called when the last permit comes back after [`Gate::drain`] or
    /// [`Gate::close`] (once per gate; later calls are ignored). It runs on the releasing
    /// thread, so it must be quick and must not call back into the gate.
    pub(crate) fn on_empty(&self, waker: EmptyWaker) {
        let _ = self.on_empty.set(waker);
    }

    /// The phase now. Lock-free.
    pub fn phase(&self) -> GatePhase {
        GatePhase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Free slots now (`None`: unlimited). Lock-free.
    pub fn free(&self) -> Option<usize> {
        decode(self.limit.load(Ordering::Acquire)).map(|limit| limit.saturating_sub(self.admitted.load(Ordering::Acquire)))
    }

    /// The limit now (`None`: unlimited). Lock-free.
    pub fn limit(&self) -> Option<usize> {
        decode(self.limit.load(Ordering::Acquire))
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

    /// Admits one new connection, waiting for a free slot until `deadline` (`None`: no
    /// deadline). Returns [`GateError::Closed`] at once in lame-duck.
    pub fn acquire(self: &Arc<Self>, deadline: Option<Instant>) -> Result<Permit, GateError> {
        self.wait_for_slot(Admits::New, deadline)
    }

    /// Admits one connection that is already waiting in the accept queue: as
    /// [`Gate::acquire`], and also while lame-duck drains that queue (the connections there
    /// completed their handshake and may have sent a request; answering them loses nothing).
    pub fn acquire_queued(self: &Arc<Self>, deadline: Option<Instant>) -> Result<Permit, GateError> {
        self.wait_for_slot(Admits::Queued, deadline)
    }

    /// Admits one new connection if a slot is free now (for event loops: poll again after a
    /// release, or on a timer).
    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, GateError> {
        self.try_admit(Admits::New)
    }

    /// [`Gate::try_acquire`] for a connection already in the accept queue (see
    /// [`Gate::acquire_queued`]).
    pub fn try_acquire_queued(self: &Arc<Self>) -> Result<Permit, GateError> {
        self.try_admit(Admits::Queued)
    }

    fn refuses(&self, admits: Admits) -> bool {
        match (self.phase(), admits) {
            (GatePhase::Open, _) | (GatePhase::Draining, Admits::Queued) => false,
            (GatePhase::Draining, Admits::New) | (GatePhase::Closed, _) => true,
        }
    }

    fn wait_for_slot(self: &Arc<Self>, admits: Admits, deadline: Option<Instant>) -> Result<Permit, GateError> {
        let mut guard = self.locked();
        bump(&self.waiting, 1);
        let outcome = loop {
            if self.refuses(admits) {
                break Err(GateError::Closed);
            }
            if self.has_room() {
                break Ok(());
            }
            guard = match deadline {
                None => self.changed.wait(guard).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break Err(GateError::TimedOut);
                    }
                    self.changed.wait_timeout(guard, deadline - now).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        };
        bump(&self.waiting, -1);
        outcome.map(|()| self.admit())
    }

    fn try_admit(self: &Arc<Self>, admits: Admits) -> Result<Permit, GateError> {
        let _decide = self.locked();
        if self.refuses(admits) {
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
        let now = bump(&self.admitted, 1);
        if now > self.peak.load(Ordering::Relaxed) {
            self.peak.store(now, Ordering::Release);
        }
        let number = self.total.load(Ordering::Relaxed);
        self.total.store(number + 1, Ordering::Release);
        Permit { gate: Arc::clone(self), number, tagged: false }
    }

    fn release_one(&self) {
        let now_empty = {
            let _decide = self.locked();
            let left = bump(&self.admitted, -1);
            // Waiters count themselves under this lock before they wait, so none is missed.
            if self.waiting.load(Ordering::Acquire) + self.watchers.load(Ordering::Acquire) > 0 {
                self.changed.notify_all();
            }
            left == 0 && self.phase() != GatePhase::Open
        };
        if now_empty {
            if let Some(wake) = self.on_empty.get() {
                wake();
            }
        }
    }

    fn enter(&self, phase: GatePhase) -> bool {
        let _decide = self.locked();
        let before = self.phase.fetch_max(phase as u8, Ordering::AcqRel);
        self.changed.notify_all();
        before < phase as u8
    }

    /// Lame-duck: admits no new connection from now on, only queued ones
    /// ([`Gate::acquire_queued`]); callers blocked in [`Gate::acquire`] return
    /// [`GateError::Closed`] at once. Admitted connections keep their permits. True the first
    /// time (the run calls it when `shutdown` is called).
    pub fn drain(&self) -> bool {
        self.enter(GatePhase::Draining)
    }

    /// Admits nothing from now on; every blocked caller returns [`GateError::Closed`] at once.
    /// Admitted connections keep their permits. True the first time, false afterwards (nserv's
    /// second `Close` is an error; here it is harmless). The run calls it when `close` is
    /// called, and when the run ends.
    pub fn close(&self) -> bool {
        self.enter(GatePhase::Closed)
    }

    /// Waits until no connection is admitted, or until `deadline`; true when empty.
    pub fn wait_empty(&self, deadline: Option<Instant>) -> bool {
        let mut guard = self.locked();
        bump(&self.watchers, 1);
        let empty = loop {
            if self.admitted.load(Ordering::Acquire) == 0 {
                break true;
            }
            guard = match deadline {
                None => self.changed.wait(guard).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break false;
                    }
                    self.changed.wait_timeout(guard, deadline - now).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        };
        bump(&self.watchers, -1);
        empty
    }

    /// Connections admitted and not yet released. Lock-free.
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// The descriptors of the open connections whose permits were tagged
    /// ([`Permit::attach_fd`]), in admission order.
    pub fn open_fds(&self) -> Vec<RawFd> {
        let mut tagged: Vec<(u64, RawFd)> = self.tags().iter().map(|(n, fd)| (*n, *fd)).collect();
        tagged.sort_unstable();
        tagged.into_iter().map(|(_, fd)| fd).collect()
    }

    /// The counts, read without the lock (each is exact; together they are a close snapshot).
    pub fn stats(&self) -> GateStats {
        GateStats {
            limit: self.limit(),
            admitted: self.admitted.load(Ordering::Acquire),
            waiting: self.waiting.load(Ordering::Acquire),
            total: self.total.load(Ordering::Acquire),
            peak: self.peak.load(Ordering::Acquire),
            phase: self.phase(),
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
        assert!(gate.close());
        assert!(!gate.close(), "a second close reports that it changed nothing");
        assert_eq!(waiter.join().unwrap(), Err(GateError::Closed));
        assert_eq!(gate.try_acquire().err(), Some(GateError::Closed));
        assert_eq!(gate.try_acquire_queued().err(), Some(GateError::Closed));
        assert_eq!(gate.stats().phase, GatePhase::Closed);
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

    #[test]
    fn draining_refuses_new_connections_at_once_but_admits_queued_ones_within_the_limit() {
        let gate = Gate::new(Some(1)).unwrap();
        let live = gate.try_acquire().unwrap();
        let new = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || gate.acquire(None).map(|p| p.release()))
        };
        until("the accept loop to wait", || gate.stats().waiting == 1);
        assert!(gate.drain());
        assert!(!gate.drain());
        assert_eq!(new.join().unwrap(), Err(GateError::Closed), "the accept loop stops promptly");
        assert_eq!(gate.try_acquire_queued().err(), Some(GateError::Full), "the limit still holds");
        let queued = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || gate.acquire_queued(Some(Instant::now() + PATIENCE)).map(|p| p.release()))
        };
        until("the queued connection to wait", || gate.stats().waiting == 1);
        drop(live);
        assert_eq!(queued.join().unwrap(), Ok(()));
        assert_eq!(gate.stats().phase, GatePhase::Draining);
        gate.close();
        assert_eq!(gate.stats().phase, GatePhase::Closed);
    }

    #[test]
    fn the_empty_waker_runs_when_the_last_permit_comes_back_after_drain() {
        let gate = Gate::new(None).unwrap();
        let woken = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&woken);
        gate.on_empty(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        drop(gate.try_acquire().unwrap());
        assert_eq!(woken.load(Ordering::SeqCst), 0, "not while open");
        let (a, b) = (gate.try_acquire().unwrap(), gate.try_acquire().unwrap());
        gate.drain();
        drop(a);
        assert_eq!(woken.load(Ordering::SeqCst), 0, "one is still open");
        drop(b);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn tagged_permits_are_listed_in_admission_order_until_released() {
        let gate = Gate::new(None).unwrap();
        let mut first = gate.try_acquire().unwrap();
        let mut second = gate.try_acquire().unwrap();
        let _untagged = gate.try_acquire().unwrap();
        second.attach_fd(21);
        first.attach_fd(20);
        assert_eq!(gate.open_fds(), vec![20, 21]);
        drop(first);
        assert_eq!(gate.open_fds(), vec![21]);
        second.release();
        assert!(gate.open_fds().is_empty());
    }
}
