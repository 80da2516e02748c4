//! The upgrade as the run loop sees it (tableflip's `upgrader.go`; [`super::Candidate`] is its
//! `child.go`): takes upgrade requests, refuses the ones that cannot succeed, starts the new
//! process and watches it on a thread of its own, and hands over once it is ready. It knows
//! nothing of draining or closing: the loop asks it for requests, tells it whether the run is
//! serving, polls it for an [`Outcome`], and cancels it when lame-duck begins.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{CancelPipe, Candidate};
use crate::error::{Error, ErrorKind};
use crate::format::signal_name;
use crate::options::Options;
use crate::state::State;
use crate::trigger::Trigger;
use crate::{generation, listener, pidfile};

/// Calls to `Runner::upgrade` waiting for the run loop to take them.
#[derive(Default)]
pub(crate) struct Requests {
    inner: Mutex<RequestQueue>,
}

#[derive(Default)]
struct RequestQueue {
    /// True while the run loop runs and will answer.
    accepting: bool,
    pending: Vec<Arc<Waiter>>,
}

impl Requests {
    fn queue(&self) -> std::sync::MutexGuard<'_, RequestQueue> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The run has started: requests are taken from now on.
    pub(crate) fn open(&self) {
        self.queue().accepting = true;
    }

    /// Queues `waiter`; false (nothing queued) when no run is taking requests.
    pub(crate) fn submit(&self, waiter: &Arc<Waiter>) -> bool {
        let mut queue = self.queue();
        if queue.accepting {
            queue.pending.push(Arc::clone(waiter));
        }
        queue.accepting
    }

    /// Stops taking requests and answers those still waiting.
    pub(crate) fn close(&self) {
        let pending = {
            let mut queue = self.queue();
            queue.accepting = false;
            std::mem::take(&mut queue.pending)
        };
        for waiter in pending {
            waiter.settle(Err(Error::new(ErrorKind::NotRunning, "cannot upgrade: the run has ended")));
        }
    }

    fn take(&self) -> Vec<Arc<Waiter>> {
        std::mem::take(&mut self.queue().pending)
    }
}

/// Where a `Runner::upgrade` call waits for its outcome.
#[derive(Default)]
pub(crate) struct Waiter {
    outcome: Mutex<Option<Result<u32, Error>>>,
    settled: Condvar,
}

impl Waiter {
    pub(crate) fn settle(&self, outcome: Result<u32, Error>) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
        self.settled.notify_all();
    }

    pub(crate) fn wait(&self) -> Result<u32, Error> {
        let mut outcome = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(outcome) = outcome.take() {
                return outcome;
            }
            outcome = self.settled.wait(outcome).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The callers waiting for one upgrade (none when a signal started it).
pub(crate) struct Waiters(Vec<Arc<Waiter>>);

impl Waiters {
    /// Tells every caller the new process's pid.
    pub(crate) fn took_over(self, pid: u32) {
        for waiter in self.0 {
            waiter.settle(Ok(pid));
        }
    }

    /// Tells every caller why not.
    pub(crate) fn failed(self, err: &Error) {
        for waiter in self.0 {
            waiter.settle(Err(Error::new(err.kind(), err.message())));
        }
    }
}

/// One upgrade request: what caused it, and the caller waiting for it (if any).
pub(crate) struct Request {
    pub(crate) cause: String,
    pub(crate) waiter: Option<Arc<Waiter>>,
}

impl Request {
    /// Answers a request that is not carried out: the caller hears why, a signal's goes to the
    /// log (the returned line).
    pub(crate) fn refuse(self, refusal: Error) -> Option<String> {
        match self.waiter {
            Some(waiter) => {
                waiter.settle(Err(refusal));
                None
            }
            None => Some(format!("{}; not upgrading: {}", self.cause, refusal.message())),
        }
    }
}

/// A new process that has started, for the run's log line.
pub(crate) struct Started<'a> {
    pub(crate) pid: u32,
    pub(crate) program: &'a Path,
    pub(crate) listeners: usize,
    pub(crate) timeout: Duration,
}

/// How an upgrade ended.
pub(crate) struct Outcome {
    /// The new process.
    pub(crate) pid: u32,
    /// `Ok`: it took over (the pid file names it, it was told to carry on, the listeners are
    /// marked shared). `Err`: it is gone, and the listeners are this process's alone again.
    pub(crate) result: Result<(), Error>,
    pub(crate) waiters: Waiters,
}

/// An upgrade whose new process has started and is being watched.
struct InFlight {
    candidate: Arc<Candidate>,
    cancel: Arc<CancelPipe>,
    outcome: Arc<Mutex<Option<Result<(), Error>>>>,
    watcher: Option<JoinHandle<()>>,
    waiters: Vec<Arc<Waiter>>,
}

/// The upgrade side of a run: at most one upgrade in flight.
#[derive(Default)]
pub(crate) struct Coordinator {
    in_flight: Option<InFlight>,
    /// Upgrade signals already taken.
    handled_signals: u32,
}

impl Coordinator {
    /// Upgrade signals and `Runner::upgrade` calls that arrived since the last look, in order.
    pub(crate) fn requests(&mut self, trigger: &Trigger, calls: &Requests) -> Vec<Request> {
        let (signals, last) = trigger.upgrade_snapshot();
        let mut requests = Vec::new();
        while self.handled_signals < signals {
            self.handled_signals += 1;
            requests.push(Request { cause: format!("Received signal [{}]", signal_name(last)), waiter: None });
        }
        requests
            .extend(calls.take().into_iter().map(|waiter| Request { cause: "Upgrade requested".into(), waiter: Some(waiter) }));
        requests
    }

    /// Why an upgrade must not start now, if it must not. `serving`: the run is ready and not
    /// in lame-duck; `state` names the run's state for the refusal.
    pub(crate) fn refusal(&self, options: &Options, serving: bool, state: State) -> Option<Error> {
        if let Some(upgrade) = &self.in_flight {
            return Some(Error::new(
                ErrorKind::Busy,
                format!("an upgrade is already in progress (new process {})", upgrade.candidate.pid),
            ));
        }
        if !serving {
            return Some(Error::new(ErrorKind::NotRunning, format!("cannot upgrade: the server is not serving (state {state})")));
        }
        if let Some(path) = &options.pid_file {
            // The hand-over points the pid file at the new process: if that cannot work, say so
            // before a process is started (and has served, and must be terminated).
            if let Err(err) = pidfile::check_writable(path) {
                return Some(Error::new(
                    ErrorKind::UpgradeFailed,
                    format!("could not write the pid file {}: {err}; no new process started", path.display()),
                ));
            }
        }
        let generation = generation::get();
        if generation.supervised {
            return Some(Error::new(
                ErrorKind::UpgradeFailed,
                "this process is a start_server worker (SERVER_STARTER_PORT): start_server replaces its workers \
                 (send SIGHUP to start_server); a worker that re-executed itself would escape its supervisor",
            ));
        }
        if !generation.is_current() {
            return Some(Error::new(
                ErrorKind::Busy,
                "an upgrade is already in progress: the previous generation has not handed over to this process yet",
            ));
        }
        if !options.upgrade_without_listeners && !listener::any_known() {
            return Some(Error::new(
                ErrorKind::UpgradeFailed,
                "this process has no listener known to lameduck, so a new process could not take over its port: \
                 bind with listen() (ld_listen, lameduck.listen, listen) or register a bound socket with adopt \
                 (ld_listen_adopt, lameduck.adopt, adopt); a worker without sockets sets upgrade_without_listeners",
            ));
        }
        None
    }

    /// Starts the new process and its watcher, which wakes `trigger` when it has an outcome;
    /// `started` is told once the process runs. Errors come with the callers to tell.
    pub(crate) fn start(
        &mut self,
        options: &Options,
        trigger: &Arc<Trigger>,
        waiter: Option<Arc<Waiter>>,
        started: impl FnOnce(&Started<'_>),
    ) -> Result<(), (Error, Waiters)> {
        let waiters: Vec<Arc<Waiter>> = waiter.into_iter().collect();
        let candidate = match super::start(options) {
            Ok(candidate) => Arc::new(candidate),
            Err(err) => return Err((err, Waiters(waiters))),
        };
        let (timeout, confirm) = (options.upgrade_timeout, options.upgrade_confirm);
        started(&Started { pid: candidate.pid, program: &candidate.program, listeners: candidate.passed_on.len(), timeout });
        let cancel = match CancelPipe::new() {
            Ok(cancel) => Arc::new(cancel),
            Err(e) => {
                let how = candidate.abort();
                drop(candidate);
                let err = Error::new(ErrorKind::System, format!("could not create a pipe: {e}; {how}"));
                return Err((err, Waiters(waiters)));
            }
        };
        let outcome = Arc::new(Mutex::new(None));
        let (watched, cancel_fd, slot, trigger) =
            (Arc::clone(&candidate), cancel.read.as_raw_fd(), Arc::clone(&outcome), Arc::clone(trigger));
        let keep_cancel = Arc::clone(&cancel);
        let watcher = std::thread::Builder::new().name("lameduck-upgrade".into()).spawn(move || {
            let _cancel = keep_cancel; // the descriptor stays open while we poll it
            let result = watched.watch(timeout, confirm, cancel_fd);
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
            trigger.wake();
        });
        match watcher {
            Ok(watcher) => {
                // Shared from now on: a lame-duck that starts before the outcome is known must
                // not drain sockets the new process may already be accepting on.
                listener::mark_passed_on(&candidate.passed_on, true);
                self.in_flight = Some(InFlight { candidate, cancel, outcome, watcher: Some(watcher), waiters });
                Ok(())
            }
            Err(e) => {
                let how = candidate.abort();
                drop((candidate, cancel, outcome));
                let err = Error::new(ErrorKind::System, format!("could not start the upgrade thread: {e}; {how}"));
                Err((err, Waiters(waiters)))
            }
        }
    }

    /// The upgrade's outcome, once the watcher has one. On success the new process takes over
    /// here: `point_pid_file` names it in the pid file first (if that fails, the upgrade fails
    /// and the new process is terminated), then it is told to carry on.
    pub(crate) fn poll(&mut self, point_pid_file: impl FnOnce(u32) -> Result<(), String>) -> Option<Outcome> {
        let upgrade = self.in_flight.as_ref()?;
        let result = upgrade.outcome.lock().unwrap_or_else(PoisonError::into_inner).take()?;
        let mut upgrade = self.in_flight.take().expect("checked above");
        if let Some(watcher) = upgrade.watcher.take() {
            let _ = watcher.join();
        }
        Some(Self::settle(upgrade, result, point_pid_file))
    }

    /// Lame-duck began: the new process is terminated unless it is ready already (the watcher
    /// then reports either outcome, which [`Coordinator::poll`] picks up).
    pub(crate) fn cancel(&self) {
        if let Some(upgrade) = &self.in_flight {
            upgrade.cancel.cancel();
        }
    }

    /// At the end of the run: an upgrade still in flight is canceled (its process terminated)
    /// and waited for, so no half-started generation outlives the run unnoticed.
    pub(crate) fn finish(&mut self, point_pid_file: impl FnOnce(u32) -> Result<(), String>) -> Option<Outcome> {
        let mut upgrade = self.in_flight.take()?;
        upgrade.cancel.cancel();
        if let Some(watcher) = upgrade.watcher.take() {
            let _ = watcher.join();
        }
        let result = upgrade.outcome.lock().unwrap_or_else(PoisonError::into_inner).take();
        let result = result.unwrap_or_else(|| Err(Error::new(ErrorKind::Canceled, "upgrade canceled: the run ended")));
        Some(Self::settle(upgrade, result, point_pid_file))
    }

    fn settle(upgrade: InFlight, result: Result<(), Error>, point_pid_file: impl FnOnce(u32) -> Result<(), String>) -> Outcome {
        // Release the pipes and the pidfd before anyone hears the outcome, so a caller that
        // counts descriptors right after `upgrade` returns sees none of ours.
        let InFlight { candidate, cancel, waiters, .. } = upgrade;
        let (pid, passed_on) = (candidate.pid, candidate.passed_on.clone());
        let result = result.and_then(|()| {
            // Before anyone hears the new process took over. A pid file that cannot name it
            // would name this process for ever after it exits (a supervisor would think the
            // service dead, or signal a reused pid): that upgrade fails instead.
            if let Err(err) = point_pid_file(pid) {
                let how = candidate.abort();
                return Err(Error::new(ErrorKind::UpgradeFailed, format!("{err}; new process {pid} not used: {how}")));
            }
            candidate.hand_over();
            Ok(())
        });
        drop((candidate, cancel));
        if result.is_err() {
            listener::mark_passed_on(&passed_on, false);
        }
        Outcome { pid, result, waiters: Waiters(waiters) }
    }
}
