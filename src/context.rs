//! The context handed to `serve` and `shutdown`: the lame-duck deadline, whether time is up,
//! the readiness report, and the run's connection gate.
//!
//! One context per run, shared by both hooks (and by any thread they hand it to): before the
//! trigger it has no deadline; when `shutdown` is called it gets `trigger (+ drain) + period`;
//! it becomes done at the deadline or when a repeated signal forces the close.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::gate::Gate;
use crate::trigger::Trigger;

/// A run's deadline and readiness. Cheap to clone; every clone sees the same run.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    timing: Mutex<Timing>,
    changed: Condvar,
    ready: AtomicBool,
    trigger: Arc<Trigger>,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Timing {
    deadline: Option<Instant>,
    done: bool,
}

impl Context {
    pub(crate) fn new(trigger: Arc<Trigger>, gate: Arc<Gate>) -> Context {
        Context {
            inner: Arc::new(Inner {
                timing: Mutex::new(Timing::default()),
                changed: Condvar::new(),
                ready: AtomicBool::new(false),
                trigger,
                gate,
            }),
        }
    }

    /// The run's connection gate: acquire a permit before each `accept(2)` and keep it while
    /// the connection is open. Lame-duck's `shutdown` phase lasts until every permit is back.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.inner.gate
    }

    fn timing(&self) -> MutexGuard<'_, Timing> {
        self.inner.timing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lame-duck deadline, once `shutdown` has been called.
    pub fn deadline(&self) -> Option<Instant> {
        self.timing().deadline
    }

    /// Time left until the deadline: `None` before lame-duck, zero once done.
    pub fn remaining(&self) -> Option<Duration> {
        let timing = self.timing();
        if timing.done {
            return Some(Duration::ZERO);
        }
        timing.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// True once the deadline has passed or a repeated signal forced the close.
    pub fn is_done(&self) -> bool {
        let timing = self.timing();
        timing.done || timing.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Blocks until done or until `timeout` passes (forever when `None`); returns `is_done()`.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let until = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut timing = self.timing();
        loop {
            let now = Instant::now();
            if timing.done || timing.deadline.is_some_and(|d| now >= d) {
                return true;
            }
            let wake_at = match (until, timing.deadline) {
                (Some(u), Some(d)) => Some(u.min(d)),
                (u, d) => u.or(d),
            };
            match wake_at {
                None => timing = self.inner.changed.wait(timing).unwrap_or_else(PoisonError::into_inner),
                Some(at) if now >= at => return false,
                Some(at) => {
                    timing = self.inner.changed.wait_timeout(timing, at - now).unwrap_or_else(PoisonError::into_inner).0;
                }
            }
        }
    }

    /// Reports that the server is bound and accepting. With explicit readiness the run becomes
    /// ready only after this; otherwise it is harmless. May be called from any thread.
    pub fn ready(&self) {
        if !self.inner.ready.swap(true, Ordering::SeqCst) {
            self.inner.trigger.wake();
        }
    }

    pub(crate) fn ready_reported(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    pub(crate) fn set_deadline(&self, deadline: Instant) {
        self.timing().deadline = Some(deadline);
        self.inner.changed.notify_all();
    }

    pub(crate) fn set_done(&self) {
        self.timing().done = true;
        self.inner.changed.notify_all();
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("remaining", &self.remaining()).field("done", &self.is_done()).finish()
    }
}
