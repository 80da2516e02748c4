//! The hook threads: `serve`, `shutdown` and `close` each run on a thread of their own, so the
//! coordinator can always enforce the deadline and the close timeout.
//!
//! All three threads are created when the run starts. `serve` runs at once; `shutdown` and
//! `close` stay parked on a condition variable until the coordinator starts them, and are
//! dismissed unused when the run ends without them. Why: a thread created on the signal path
//! (or at the deadline) waits for a CPU like any new task, up to milliseconds on a busy
//! machine, while a woken one is scheduled at once; the trigger signal and the deadline only
//! wake a thread that already exists.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::error::{Error, ErrorKind, HookError};
use crate::trigger::Trigger;

/// Work deferred until no hook of the runner is running any more.
pub(crate) type AfterHooks = Box<dyn FnOnce() + Send>;

/// Counts the hooks still running, including hooks the run abandoned (a shutdown that ignored
/// its deadline is still running after `run` returned), so that what such a hook may still use
/// (the C handle it was given) is freed only once it has returned. A parked thread whose hook
/// was never started does not count: it is dismissed before `run` returns.
#[derive(Default)]
pub(crate) struct LiveHooks {
    state: Mutex<(usize, Vec<AfterHooks>)>,
}

impl LiveHooks {
    fn started(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 += 1;
    }

    /// The last hook to return runs the deferred work.
    fn ended(&self) {
        let deferred = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.0 = state.0.saturating_sub(1);
            if state.0 > 0 {
                return;
            }
            std::mem::take(&mut state.1)
        };
        for work in deferred {
            let _ = catch_unwind(AssertUnwindSafe(work));
        }
    }

    /// Runs `work` now if no hook is running, otherwise once the last one returns (never, if
    /// that hook never returns).
    #[cfg(feature = "capi")]
    pub(crate) fn after(&self, work: AfterHooks) {
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.0 > 0 {
                state.1.push(work);
                return;
            }
        }
        work();
    }
}

/// What the coordinator told a parked hook thread.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    Wait,
    Run,
    Dismiss,
}

/// Shared between the coordinator and one hook thread.
struct Baton {
    order: Mutex<Order>,
    given: Condvar,
    result: Mutex<Option<Result<(), HookError>>>,
}

impl Baton {
    fn give(&self, order: Order) {
        *self.order.lock().unwrap_or_else(PoisonError::into_inner) = order;
        self.given.notify_one();
    }

    /// Blocks until the coordinator decides; true when the hook is to run.
    fn wait_for_order(&self) -> bool {
        let mut order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        while *order == Order::Wait {
            order = self.given.wait(order).unwrap_or_else(PoisonError::into_inner);
        }
        *order == Order::Run
    }
}

/// A hook on its own thread, and its result once it returned.
pub(super) struct HookThread {
    pub(super) name: &'static str,
    baton: Arc<Baton>,
    handle: Option<JoinHandle<()>>,
    live: Arc<LiveHooks>,
    started: bool,
    result: Option<Result<(), HookError>>,
    returned: bool,
}

impl HookThread {
    /// Creates the hook's thread, parked until [`HookThread::start`]; dropped unstarted, it
    /// exits without calling the hook. When the hook returns, its thread wakes `trigger`.
    pub(super) fn park<F>(name: &'static str, trigger: &Arc<Trigger>, live: &Arc<LiveHooks>, hook: F) -> Result<HookThread, Error>
    where
        F: FnOnce() -> Result<(), HookError> + Send + 'static,
    {
        let baton = Arc::new(Baton { order: Mutex::new(Order::Wait), given: Condvar::new(), result: Mutex::new(None) });
        let (in_thread, trigger, live_in_thread) = (Arc::clone(&baton), Arc::clone(trigger), Arc::clone(live));
        let spawned = std::thread::Builder::new().name(format!("lameduck-{name}")).spawn(move || {
            if !in_thread.wait_for_order() {
                return;
            }
            let result = catch_unwind(AssertUnwindSafe(hook)).unwrap_or_else(|p| Err(HookError::panic(panic_text(&*p))));
            *in_thread.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
            trigger.wake();
            drop(trigger);
            live_in_thread.ended();
        });
        let handle = spawned.map_err(|e| Error::new(ErrorKind::System, format!("could not start the {name} thread: {e}")))?;
        Ok(HookThread {
            name,
            baton,
            handle: Some(handle),
            live: Arc::clone(live),
            started: false,
            result: None,
            returned: false,
        })
    }

    /// A thread that runs the hook at once: [`HookThread::park`], then [`HookThread::start`].
    pub(super) fn spawn<F>(
        name: &'static str,
        trigger: &Arc<Trigger>,
        live: &Arc<LiveHooks>,
        hook: F,
    ) -> Result<HookThread, Error>
    where
        F: FnOnce() -> Result<(), HookError> + Send + 'static,
    {
        let mut thread = HookThread::park(name, trigger, live, hook)?;
        thread.start();
        Ok(thread)
    }

    /// Wakes the parked thread to call its hook (once; later calls do nothing).
    pub(super) fn start(&mut self) {
        if !self.started {
            self.started = true;
            self.live.started();
            self.baton.give(Order::Run);
        }
    }

    /// Picks up the result if the hook has returned (and joins its thread). True once returned.
    pub(super) fn poll(&mut self) -> bool {
        if self.started && !self.returned {
            if let Some(result) = self.baton.result.lock().unwrap_or_else(PoisonError::into_inner).take() {
                self.result = Some(result);
                self.returned = true;
                if let Some(handle) = self.handle.take() {
                    let _ = handle.join();
                }
            }
        }
        self.returned
    }

    /// True once the hook has returned (as of the last [`HookThread::poll`]).
    pub(super) fn returned(&self) -> bool {
        self.returned
    }

    /// True while the hook has been started and has not returned (a parked one is not).
    pub(super) fn pending(&self) -> bool {
        self.started && !self.returned
    }

    /// The hook's result, once (after it returned).
    pub(super) fn take_result(&mut self) -> Option<Result<(), HookError>> {
        self.result.take()
    }
}

impl Drop for HookThread {
    /// An unstarted thread is dismissed and joined (it only has to wake up and return); a
    /// running hook the run abandoned keeps its thread, detached.
    fn drop(&mut self) {
        if !self.started {
            self.baton.give(Order::Dismiss);
            if let Some(handle) = self.handle.take() {
                let _ = handle.join();
            }
        }
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message), for errors.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}
