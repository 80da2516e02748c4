//! The lifecycle through the Rust API: what C cannot express (panicking hooks, a binding's
//! own error objects carried through) and the host-owned-signal mode the Python and Node
//! wrappers use. Runners here never install handlers, so tests can run in parallel.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lameduck::{Context, ErrorKind, HookError, Options, RepeatSignalPolicy, Runner, Server, SignalOwner, State};

type Hook = Box<dyn Fn(&Context) -> Result<(), HookError> + Send + Sync>;

struct TestServer {
    /// `None`: serve until shutdown returns Ok or close is called.
    serve: Option<Hook>,
    shutdown: Hook,
    close: Box<dyn Fn() -> Result<(), HookError> + Send + Sync>,
    closes: AtomicUsize,
    stopped: AtomicBool,
}

impl Server for TestServer {
    fn serve(&self, ctx: &Context) -> Result<(), HookError> {
        match &self.serve {
            Some(serve) => serve(ctx),
            None => {
                while !self.stopped.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            }
        }
    }
    fn shutdown(&self, ctx: &Context) -> Result<(), HookError> {
        let result = (self.shutdown)(ctx);
        if result.is_ok() {
            self.stopped.store(true, Ordering::SeqCst);
        }
        result
    }
    fn close(&self) -> Result<(), HookError> {
        self.closes.fetch_add(1, Ordering::SeqCst);
        self.stopped.store(true, Ordering::SeqCst);
        (self.close)()
    }
}

fn test_server(
    serve: Option<Hook>,
    shutdown: Hook,
    close: Box<dyn Fn() -> Result<(), HookError> + Send + Sync>,
) -> Arc<TestServer> {
    Arc::new(TestServer { serve, shutdown, close, closes: AtomicUsize::new(0), stopped: AtomicBool::new(false) })
}

fn server(shutdown: Hook, close: Box<dyn Fn() -> Result<(), HookError> + Send + Sync>) -> Arc<TestServer> {
    test_server(None, shutdown, close)
}

fn host_options() -> Options {
    Options {
        signal_owner: SignalOwner::Host,
        signals: vec![libc::SIGTERM],
        logger: None,
        period: Duration::from_millis(100),
        close_timeout: Duration::from_secs(5),
        ..Options::default()
    }
}

fn run_in_background(runner: Arc<Runner>) -> std::thread::JoinHandle<Result<(), lameduck::Error>> {
    let handle = std::thread::spawn({
        let runner = Arc::clone(&runner);
        move || runner.run()
    });
    runner.wait_ready(Some(Duration::from_secs(10))).unwrap();
    handle
}

#[test]
fn serve_panic_becomes_a_panic_error_and_failed_state() {
    let s = test_server(Some(Box::new(|_| panic!("serve exploded"))), Box::new(|_| Ok(())), Box::new(|| Ok(())));
    let runner = Runner::new(s, host_options()).unwrap();
    let err = runner.run().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panic);
    assert!(err.message().contains("serve hook panicked: serve exploded"), "{}", err.message());
    assert_eq!(runner.state(), State::Failed);
}

#[test]
fn shutdown_panic_is_reported_and_close_still_bounds_the_run() {
    let s = server(Box::new(|_| panic!("shutdown exploded")), Box::new(|| Ok(())));
    let runner = Arc::new(Runner::new(s.clone(), host_options()).unwrap());
    let handle = run_in_background(Arc::clone(&runner));
    runner.stop();
    let err = handle.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panic);
    assert!(err.message().contains("shutdown hook panicked: shutdown exploded"), "{}", err.message());
    assert_eq!(s.closes.load(Ordering::SeqCst), 1, "serve still ran at the deadline, so close was called");
    assert_eq!(runner.state(), State::Stopped);
}

#[test]
fn close_panic_is_part_of_the_expired_message() {
    let s = server(Box::new(|_| Err(HookError::deadline_exceeded())), Box::new(|| panic!("close exploded")));
    let runner = Arc::new(Runner::new(s, host_options()).unwrap());
    let handle = run_in_background(Arc::clone(&runner));
    runner.deliver_signal(libc::SIGTERM).unwrap();
    let err = handle.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Expired);
    assert!(err.is_expired() && !err.is_failed());
    assert_eq!(err.message(), "Lame-duck period has expired + close hook panicked: close exploded");
}

#[test]
fn a_binding_error_object_is_carried_through_as_the_cause() {
    #[derive(Debug, PartialEq)]
    struct PyException(&'static str);
    let s = server(
        Box::new(|_| Err(HookError::new(1, "ValueError: bad").with_payload(Box::new(PyException("original"))))),
        Box::new(|| Ok(())),
    );
    let runner = Arc::new(Runner::new(s, host_options()).unwrap());
    let handle = run_in_background(Arc::clone(&runner));
    runner.stop();
    let mut err = handle.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ShutdownFailed);
    assert_eq!(err.message(), "ValueError: bad");
    let mut cause = err.take_cause().unwrap();
    let payload = cause.take_payload().unwrap();
    assert_eq!(payload.downcast_ref::<PyException>(), Some(&PyException("original")));
}

#[test]
fn state_observer_panic_does_not_break_the_run() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut options = host_options();
    options.state_observer = Some(Arc::new({
        let seen = Arc::clone(&seen);
        move |_old: State, new: State| {
            seen.lock().unwrap().push(new);
            if new == State::Ready {
                panic!("observer exploded");
            }
        }
    }));
    let s = server(Box::new(|_| Ok(())), Box::new(|| Ok(())));
    let runner = Arc::new(Runner::new(s, options).unwrap());
    let handle = run_in_background(Arc::clone(&runner));
    runner.stop();
    handle.join().unwrap().unwrap();
    assert_eq!(seen.lock().unwrap().last(), Some(&State::Stopped));
}

#[test]
fn host_delivered_signals_follow_the_repeat_policy() {
    let mut options = host_options();
    options.period = Duration::from_secs(60);
    options.repeat_signal = RepeatSignalPolicy::Force;
    let s = server(
        Box::new(|ctx| {
            ctx.wait(None);
            Err(HookError::deadline_exceeded())
        }),
        Box::new(|| Ok(())),
    );
    let runner = Arc::new(Runner::new(s.clone(), options).unwrap());
    let handle = run_in_background(Arc::clone(&runner));
    assert_eq!(runner.deliver_signal(libc::SIGINT).unwrap_err().kind(), ErrorKind::InvalidArgument);
    let start = Instant::now();
    runner.deliver_signal(libc::SIGTERM).unwrap();
    while runner.state() != State::ShuttingDown {
        std::thread::sleep(Duration::from_millis(1));
    }
    runner.deliver_signal(libc::SIGTERM).unwrap();
    let err = handle.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Forced);
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(s.closes.load(Ordering::SeqCst), 1);
}

#[test]
fn wait_ready_times_out_then_reports_a_run_that_never_became_ready() {
    let mut options = host_options();
    options.explicit_ready = true;
    let s = test_server(
        Some(Box::new(|_| {
            std::thread::sleep(Duration::from_millis(100));
            Err(HookError::new(3, "bind failed"))
        })),
        Box::new(|_| Ok(())),
        Box::new(|| Ok(())),
    );
    let runner = Arc::new(Runner::new(s, options).unwrap());
    assert_eq!(runner.wait_ready(Some(Duration::from_millis(1))).unwrap_err().kind(), ErrorKind::Timeout);
    let handle = std::thread::spawn({
        let runner = Arc::clone(&runner);
        move || runner.run()
    });
    assert_eq!(runner.wait_ready(None).unwrap_err().kind(), ErrorKind::NotRunning);
    let err = handle.join().unwrap().unwrap_err();
    assert_eq!((err.kind(), err.code(), err.message()), (ErrorKind::Failed, 3, "bind failed"));
    assert!(err.is_failed());
}

#[test]
fn run_function_validates_before_starting() {
    let s = server(Box::new(|_| Ok(())), Box::new(|| Ok(())));
    let err = lameduck::run(s, Options { period: Duration::ZERO, ..host_options() }).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

/// A repeated signal during the drain delay forces the close before `shutdown` was ever called:
/// the run waits for `close` and `serve` only (a hook that never started is not "still
/// running"), ends `Forced` at once, and abandons nothing.
#[test]
fn forced_during_the_drain_delay_never_waits_for_shutdown() {
    let calls = Arc::new(AtomicUsize::new(0));
    let shutdowns = Arc::clone(&calls);
    let server = server(
        Box::new(move |_| {
            shutdowns.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }),
        Box::new(|| Ok(())),
    );
    let options = Options { drain_delay: Duration::from_secs(30), close_timeout: Duration::from_secs(20), ..host_options() };
    let runner = Arc::new(Runner::new(server.clone(), options).unwrap());
    let handle = run_in_background(Arc::clone(&runner));
    runner.deliver_signal(libc::SIGTERM).unwrap();
    while runner.state() != State::Draining {
        std::thread::sleep(Duration::from_millis(1));
    }
    let started = Instant::now();
    runner.deliver_signal(libc::SIGTERM).unwrap();
    let err = handle.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Forced, "{}", err.message());
    assert!(!err.message().contains("abandoned"), "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(10), "the run waited for a hook that never started");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "shutdown is never called in a forced drain");
    assert_eq!(server.closes.load(Ordering::SeqCst), 1);
    assert_eq!(runner.state(), State::Stopped);
}
