//! The run's side of the health answers ([`crate::health`]): what they are computed from, the
//! readiness probes counted for the adaptive drain, and the built-in listener's lifetime.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use super::Shared;
use crate::error::{Error, ErrorKind};
use crate::health::server::HealthServer;
use crate::health::{self, Endpoint, Report, Snapshot};
use crate::state::State;

/// Kept in [`Shared`]: written by the coordinator and by whoever answers a probe.
pub(crate) struct HealthState {
    /// `/ready` answers given during this run (by the listener or `Runner::health`).
    pub(super) ready_probes: AtomicU64,
    /// Of those, the ones answered "not ready" once lame-duck had begun.
    pub(super) failed_ready_probes: AtomicU64,
    /// When `close` was called, in ns after `epoch` (0: not yet).
    close_started: AtomicU64,
    epoch: Instant,
    /// The run abandoned hooks that never returned: the process is stuck.
    pub(super) abandoned: AtomicBool,
    /// The built-in listener, while it runs.
    pub(super) server: Mutex<Option<HealthServer>>,
    /// Its socket is shared with start_server (which gives the port to the next worker).
    pub(super) shared_socket: AtomicBool,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            ready_probes: AtomicU64::new(0),
            failed_ready_probes: AtomicU64::new(0),
            close_started: AtomicU64::new(0),
            epoch: Instant::now(),
            abandoned: AtomicBool::new(false),
            server: Mutex::new(None),
            shared_socket: AtomicBool::new(false),
        }
    }
}

impl HealthState {
    pub(super) fn close_started(&self, now: Instant) {
        let ns = now.saturating_duration_since(self.epoch).as_nanos().max(1);
        self.close_started.store(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    fn closing_for(&self) -> Option<std::time::Duration> {
        let ns = self.close_started.load(Ordering::SeqCst);
        (ns != 0).then(|| self.epoch.elapsed().saturating_sub(std::time::Duration::from_nanos(ns)))
    }

    fn with_server<T>(&self, f: impl FnOnce(&HealthServer) -> T) -> Option<T> {
        self.server.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(f)
    }

    /// The listener starts answering (a new generation that became ready).
    pub(super) fn serve(&self) {
        self.with_server(HealthServer::serve);
    }

    /// The listener stops answering: another process answers for the port now.
    pub(super) fn release(&self) {
        self.with_server(HealthServer::release);
    }

    /// Stops the listener's thread and closes its socket.
    pub(super) fn stop(&self) {
        let server = self.server.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(server);
    }

    /// Where the listener listens, once it does.
    pub(super) fn address(&self) -> Option<String> {
        self.with_server(|s| s.address().to_string())
    }
}

impl Shared {
    /// What the health answers are computed from, now.
    pub(super) fn health_snapshot(&self) -> Snapshot {
        let state = self.public_state();
        let stuck_closing = state == State::Closing && self.health.closing_for().is_some_and(|t| t > self.options.close_timeout);
        Snapshot {
            state,
            live: !self.health.abandoned.load(Ordering::SeqCst) && !stuck_closing,
            pid: std::process::id(),
            generation: crate::generation::get().number,
            connections: self.gate.stats(),
        }
    }

    /// The answer for `path`, counting readiness probes for the adaptive drain: a "not ready"
    /// answered in lame-duck wakes the coordinator, which may end the drain on it.
    pub(super) fn health_report(&self, path: &str) -> Report {
        let report = health::answer(&self.health_snapshot(), path);
        if Endpoint::from_path(path) == Some(Endpoint::Ready) {
            self.health.ready_probes.fetch_add(1, Ordering::SeqCst);
            if report.status != 200 && self.trigger.triggered() {
                self.health.failed_ready_probes.fetch_add(1, Ordering::SeqCst);
                self.trigger.wake();
            }
        }
        report
    }
}

/// Takes the health listener (`listen`, so an inherited one is used) and starts its thread.
/// It answers at once, unless a previous generation still answers for the port (an upgrade)
/// or start_server runs us: then from readiness on.
pub(super) fn start(shared: &Arc<Shared>, address: &str) -> Result<(), Error> {
    let fd = crate::listener::listen(address, Some("lameduck-health")).map_err(|e| {
        Error::new(
            e.kind(),
            format!(
                "could not listen on the health address {address}: {} (under start_server, pass the health port to \
                 start_server too, so each worker inherits it)",
                e.message()
            ),
        )
    })?;
    use std::os::fd::AsRawFd;
    let shared_socket = crate::listener::is_shared(fd.as_raw_fd());
    let generation = crate::generation::get();
    let answering = generation.is_current() && !generation.supervised;
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let answer = Box::new(move |path: &str| match weak.upgrade() {
        Some(shared) => shared.health_report(path),
        None => Report { status: 503, content_type: "text/plain; charset=utf-8", body: "not ready: the run is over\n".into() },
    });
    let server = HealthServer::start(fd, answer, answering)
        .map_err(|e| Error::new(ErrorKind::System, format!("could not start the health listener on {address}: {e}")))?;
    shared.health.shared_socket.store(shared_socket, Ordering::SeqCst);
    *shared.health.server.lock().unwrap_or_else(PoisonError::into_inner) = Some(server);
    Ok(())
}
