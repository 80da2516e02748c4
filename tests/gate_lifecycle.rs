//! The connection gate inside a run (issue 13), through the Rust API: lame-duck drains the
//! gate, the shutdown phase lasts until the last permit is back, the deadline still bounds it,
//! and an accept loop blocked on a full gate stops at once. Runners here never install
//! handlers, so tests can run in parallel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lameduck::{
    Context, ErrorKind, GateError, GatePhase, HookError, OptionField, Options, Permit, Runner, Server, SignalOwner, State,
};

/// Generous: nothing here waits this long when it works.
const PATIENCE: Duration = Duration::from_secs(30);

fn options(period: Duration, max_connections: Option<usize>) -> Options {
    Options {
        signal_owner: SignalOwner::Host,
        signals: vec![libc::SIGTERM],
        logger: None,
        period,
        max_connections,
        ..Options::default()
    }
}

/// A server whose serve admits `connections` permits (handing them to the test), then sits
/// in the accept loop: `acquire` until the gate refuses. shutdown returns at once.
struct Acceptor {
    connections: usize,
    permits: Mutex<Option<mpsc::Sender<Permit>>>,
    /// What the blocked accept loop got back.
    refused: Mutex<Option<GateError>>,
    closes: AtomicUsize,
    shutdown_returned: mpsc::SyncSender<()>,
}

impl Server for Acceptor {
    fn serve(&self, ctx: &Context) -> Result<(), HookError> {
        let give = self.permits.lock().unwrap().take().unwrap();
        for _ in 0..self.connections {
            give.send(ctx.gate().acquire(Some(Instant::now() + PATIENCE)).unwrap()).unwrap();
        }
        ctx.ready();
        let refused = loop {
            match ctx.gate().acquire(None) {
                Ok(permit) => give.send(permit).unwrap(),
                Err(err) => break err,
            }
        };
        *self.refused.lock().unwrap() = Some(refused);
        Ok(())
    }
    fn shutdown(&self, _ctx: &Context) -> Result<(), HookError> {
        let _ = self.shutdown_returned.try_send(());
        Ok(())
    }
    fn close(&self) -> Result<(), HookError> {
        self.closes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Started {
    runner: Arc<Runner>,
    server: Arc<Acceptor>,
    permits: mpsc::Receiver<Permit>,
    shutdown_returned: mpsc::Receiver<()>,
    run: std::thread::JoinHandle<Result<(), lameduck::Error>>,
}

fn start(options: Options, connections: usize) -> Started {
    let (give, permits) = mpsc::channel();
    let (returned, shutdown_returned) = mpsc::sync_channel(1);
    let server = Arc::new(Acceptor {
        connections,
        permits: Mutex::new(Some(give)),
        refused: Mutex::new(None),
        closes: AtomicUsize::new(0),
        shutdown_returned: returned,
    });
    let runner =
        Arc::new(Runner::new(Arc::clone(&server) as Arc<dyn Server>, Options { explicit_ready: true, ..options }).unwrap());
    let run = std::thread::spawn({
        let runner = Arc::clone(&runner);
        move || runner.run()
    });
    runner.wait_ready(Some(PATIENCE)).unwrap();
    Started { runner, server, permits, shutdown_returned, run }
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn the_shutdown_phase_lasts_until_the_last_permit_is_back() {
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let logger = {
        let lines = Arc::clone(&lines);
        Arc::new(move |_: lameduck::Level, line: &str| lines.lock().unwrap().push(line.to_string()))
    };
    let s = start(Options { logger: Some(logger), ..options(PATIENCE, Some(2)) }, 2);
    let held: Vec<Permit> = (0..2).map(|_| s.permits.recv_timeout(PATIENCE).unwrap()).collect();
    until("the accept loop to wait on the full gate", || s.runner.gate().stats().waiting == 1);
    s.runner.stop();
    s.shutdown_returned.recv_timeout(PATIENCE).unwrap();
    until("serve to return (its accept loop was refused)", || s.server.refused.lock().unwrap().is_some());
    assert_eq!(*s.server.refused.lock().unwrap(), Some(GateError::Closed), "a blocked accept stops at once in lame-duck");
    assert_eq!(s.runner.gate().stats().phase, GatePhase::Draining);
    let mut held = held;
    held.pop();
    // Both hooks have returned, one connection is still open: the run must still be shutting down.
    until("the run to wait for the last connection", || {
        lines.lock().unwrap().iter().any(|l| l.starts_with("Waiting for ") && l.ends_with(" open connection(s) to close"))
    });
    assert!(!s.run.is_finished(), "the run ended with a connection still open");
    assert_eq!(s.runner.state(), State::ShuttingDown);
    drop(held);
    assert!(s.run.join().unwrap().is_ok());
    assert_eq!(s.server.closes.load(Ordering::SeqCst), 0, "no close: everything drained");
    let stats = s.runner.gate().stats();
    assert_eq!((stats.admitted, stats.total, stats.peak, stats.phase), (0, 2, 2, GatePhase::Closed));
}

#[test]
fn a_connection_never_released_is_cut_by_close_at_the_deadline() {
    let s = start(options(Duration::from_millis(50), Some(1)), 1);
    let held = s.permits.recv_timeout(PATIENCE).unwrap();
    s.runner.stop();
    let err = s.run.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Expired, "{err}");
    assert_eq!(s.server.closes.load(Ordering::SeqCst), 1);
    assert_eq!(s.runner.gate().stats().phase, GatePhase::Closed);
    assert_eq!(s.runner.gate().try_acquire().err(), Some(GateError::Closed), "nothing is admitted after the run");
    drop(held);
    assert_eq!(s.runner.gate().admitted(), 0);
}

#[test]
fn the_limit_changes_while_running_and_refuses_absurd_values() {
    let s = start(options(PATIENCE, Some(1)), 1);
    let first = s.permits.recv_timeout(PATIENCE).unwrap();
    until("the accept loop to wait", || s.runner.gate().stats().waiting == 1);
    assert_eq!(s.runner.set_max_connections(Some(3)).unwrap(), Some(0), "free slots before the change");
    let second = s.permits.recv_timeout(PATIENCE).unwrap();
    let third = s.permits.recv_timeout(PATIENCE).unwrap();
    until("the accept loop to wait again", || s.runner.gate().stats().waiting == 1);
    let err = s.runner.set_max_connections(Some(i32::MAX as usize + 1)).unwrap_err();
    assert_eq!((err.kind(), err.field()), (ErrorKind::InvalidArgument, Some(OptionField::MaxConnections)));
    assert_eq!(s.runner.gate().limit(), Some(3), "a refused limit changes nothing");
    assert_eq!(s.runner.set_max_connections(Some(1)).unwrap(), Some(0));
    drop(first);
    drop(second);
    assert!(s.permits.recv_timeout(Duration::from_millis(20)).is_err(), "2 → 1 open with limit 1: nothing new");
    assert_eq!(s.runner.set_max_connections(Some(2)).unwrap(), Some(0));
    let fourth = s.permits.recv_timeout(PATIENCE).unwrap();
    until("the accept loop to wait at 2 of 2", || s.runner.gate().stats().waiting == 1);
    s.runner.stop();
    until("lame-duck to drain the gate", || s.runner.gate().phase() == GatePhase::Draining);
    drop((third, fourth));
    assert!(s.run.join().unwrap().is_ok());
    assert_eq!(s.runner.gate().stats().total, 4);
}

#[test]
fn an_invalid_initial_limit_is_refused_before_anything_starts() {
    struct Never;
    impl Server for Never {
        fn serve(&self, _: &Context) -> Result<(), HookError> {
            unreachable!()
        }
        fn shutdown(&self, _: &Context) -> Result<(), HookError> {
            unreachable!()
        }
        fn close(&self) -> Result<(), HookError> {
            unreachable!()
        }
    }
    let err = Runner::new(Arc::new(Never), options(PATIENCE, Some(usize::MAX))).err().unwrap();
    assert_eq!((err.kind(), err.field()), (ErrorKind::InvalidArgument, Some(OptionField::MaxConnections)));
    assert!(err.message().contains("2147483647"), "{}", err.message());
    let runner = Runner::new(Arc::new(Never), options(PATIENCE, Some(0))).unwrap();
    assert_eq!(runner.gate().limit(), None, "0 means unlimited");
}
