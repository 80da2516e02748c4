//! The built-in health listener and the adaptive drain (issue 14), through the Rust API, over
//! real sockets with a real HTTP/1.1 exchange: every endpoint in every phase, bad requests,
//! clients that hold connections, and the drain ending once the balancer has stopped sending.
//! Runners here never install handlers, so tests can run in parallel. `wrk` (which
//! scripts/test-all.sh installs) loads the listener in every phase.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lameduck::{Context, ErrorKind, HookError, Level, OptionField, Options, Runner, Server, SignalOwner, State};

/// Generous: nothing here waits this long when it works.
const PATIENCE: Duration = Duration::from_secs(30);

/// serve waits for lame-duck; shutdown returns at once, and when `stuck` neither shutdown
/// nor close ever returns.
struct Waiter {
    stuck: bool,
    stopped: (Mutex<bool>, std::sync::Condvar),
}

fn waiter(stuck: bool) -> Waiter {
    Waiter { stuck, stopped: Default::default() }
}

impl Server for Waiter {
    fn serve(&self, _ctx: &Context) -> Result<(), HookError> {
        let (lock, changed) = &self.stopped;
        let mut stopped = lock.lock().unwrap();
        while !*stopped {
            stopped = changed.wait(stopped).unwrap();
        }
        Ok(())
    }
    fn shutdown(&self, _ctx: &Context) -> Result<(), HookError> {
        *self.stopped.0.lock().unwrap() = true;
        self.stopped.1.notify_all();
        if self.stuck {
            std::thread::sleep(Duration::from_secs(3600));
        }
        Ok(())
    }
    fn close(&self) -> Result<(), HookError> {
        if self.stuck {
            std::thread::sleep(Duration::from_secs(3600));
        }
        Ok(())
    }
}

/// Log lines, and a channel that says when one containing `watch` arrives.
struct Log {
    lines: Arc<Mutex<Vec<String>>>,
}

fn options(log: &Log) -> Options {
    let lines = Arc::clone(&log.lines);
    Options {
        signal_owner: SignalOwner::Host,
        signals: vec![libc::SIGTERM],
        logger: Some(Arc::new(move |_: Level, line: &str| lines.lock().unwrap().push(line.to_string()))),
        health_address: Some("127.0.0.1:0".into()),
        ..Options::default()
    }
}

/// Starts the run on a thread; returns the runner once ready, and the run's result channel.
fn start(server: Waiter, options: Options) -> (Arc<Runner>, mpsc::Receiver<Result<(), lameduck::Error>>) {
    let runner = Arc::new(Runner::new(Arc::new(server), options).unwrap());
    let (tx, rx) = mpsc::channel();
    let r = Arc::clone(&runner);
    std::thread::spawn(move || tx.send(r.run()).unwrap());
    runner.wait_ready(Some(PATIENCE)).unwrap();
    (runner, rx)
}

/// One request on a new connection; the status line's code and the body.
fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    parse(&answer)
}

fn parse(answer: &str) -> (u16, String) {
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not HTTP: {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + PATIENCE;
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn has_line(log: &Log, needle: &str) -> bool {
    log.lines.lock().unwrap().iter().any(|l| l.contains(needle))
}

#[test]
fn every_endpoint_in_every_phase() {
    let log = Log { lines: Arc::default() };
    let options = Options { drain_delay: Duration::from_secs(60), ..options(&log) };
    let (runner, done) = start(waiter(false), options);
    let address = runner.health_address().expect("the listener is up once ready");
    assert!(address.starts_with("127.0.0.1:") && !address.ends_with(":0"), "{address}");
    assert_eq!(get(&address, "/ready"), (200, "ready\n".into()));
    assert_eq!(get(&address, "/readyz?full=1"), (200, "ready\n".into()));
    assert_eq!(get(&address, "/live"), (200, "live\n".into()));
    let (status, body) = get(&address, "/health");
    assert_eq!(status, 200);
    let pid = std::process::id();
    assert!(
        body.starts_with(&format!("{{\"state\":\"READY\",\"ready\":true,\"live\":true,\"pid\":{pid},\"generation\":1,")),
        "{body}"
    );
    assert!(body.contains("\"connections\":{\"limit\":null,\"admitted\":0"), "{body}");
    assert_eq!(get(&address, "/").0, 404);
    // In-process answers are the same.
    assert_eq!(runner.health("/ready").status, 200);

    runner.stop();
    wait_for("DRAINING", || runner.state() == State::Draining);
    assert_eq!(get(&address, "/ready"), (503, "not ready: DRAINING\n".into()));
    assert_eq!(get(&address, "/live").0, 200, "a process in lame-duck is alive");
    let (status, body) = get(&address, "/health");
    assert_eq!(status, 503);
    assert!(body.contains("\"state\":\"DRAINING\",\"ready\":false,\"live\":true"), "{body}");
    // A signal after the stop is the same event; the next one forces close.
    runner.deliver_signal(libc::SIGTERM).unwrap();
    runner.deliver_signal(libc::SIGTERM).unwrap();
    assert!(done.recv_timeout(PATIENCE).unwrap().unwrap_err().is_forced());
}

#[test]
fn the_listener_closes_when_the_run_ends_and_ready_fails_through_shutdown() {
    let log = Log { lines: Arc::default() };
    let (runner, done) = start(waiter(false), Options { period: Duration::from_secs(5), ..options(&log) });
    let address = runner.health_address().unwrap();
    runner.stop();
    done.recv_timeout(PATIENCE).unwrap().unwrap();
    assert_eq!(runner.health_address(), None);
    let refused = TcpStream::connect(&address).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");
    // In-process answers still work after the run.
    assert_eq!(runner.health("/ready").status, 503);
    assert!(has_line(&log, &format!("Health checks on {address}")), "{:?}", log.lines.lock().unwrap());
}

#[test]
fn bad_requests_get_400_and_the_listener_goes_on() {
    let log = Log { lines: Arc::default() };
    let (runner, done) = start(waiter(false), options(&log));
    let address = runner.health_address().unwrap();
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /ready HTTP/9.9\r\n\r\n",
        b"GET /ready HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        b"\x00\xff\xfe\r\n\r\n",
        b"GET /ready HTTP/1.1\r\nbroken header\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.write_all(bad).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert_eq!(parse(&answer).0, 400, "{bad:?} → {answer:?}");
    }
    let mut stream = TcpStream::connect(&address).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(&vec![b'A'; 20_000]).unwrap_or(());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert_eq!(parse(&answer).0, 400, "a head over 8 KiB");
    let mut stream = TcpStream::connect(&address).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    // POST is 405 and the connection stays usable (keep-alive); then HEAD has no body.
    stream.write_all(b"POST /ready HTTP/1.1\r\n\r\nHEAD /live HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && answer.contains("Allow: GET, HEAD\r\n"), "{answer}");
    let second = answer.split("HTTP/1.1 ").nth(2).expect("a second answer on the same connection");
    assert!(second.starts_with("200 OK\r\n") && second.ends_with("\r\n\r\n"), "HEAD: no body: {second:?}");
    assert_eq!(get(&address, "/ready").0, 200, "the listener goes on");
    runner.stop();
    done.recv_timeout(PATIENCE).unwrap().unwrap();
}

#[test]
fn clients_holding_connections_never_block_probes() {
    let log = Log { lines: Arc::default() };
    let (runner, done) = start(waiter(false), options(&log));
    let address = runner.health_address().unwrap();
    // More idle (and half-sent) connections than the listener serves at once.
    let mut holders = Vec::new();
    for i in 0..100 {
        let mut s = TcpStream::connect(&address).unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: slow").unwrap();
        }
        holders.push(s);
    }
    for _ in 0..20 {
        assert_eq!(get(&address, "/ready").0, 200);
    }
    // Keep-alive: many requests on one connection, pipelined.
    let mut stream = TcpStream::connect(&address).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut requests = "GET /live HTTP/1.1\r\n\r\n".repeat(50);
    requests.push_str("GET /live HTTP/1.1\r\nConnection: close\r\n\r\n");
    stream.write_all(requests.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 51);
    drop(holders);
    runner.stop();
    done.recv_timeout(PATIENCE).unwrap().unwrap();
}

#[test]
fn live_fails_once_hooks_are_abandoned() {
    let log = Log { lines: Arc::default() };
    let options = Options { period: Duration::from_millis(100), close_timeout: Duration::from_millis(200), ..options(&log) };
    let (runner, done) = start(waiter(true), options);
    let address = runner.health_address().unwrap();
    runner.stop();
    let err = done.recv_timeout(PATIENCE).unwrap().unwrap_err();
    assert!(err.abandoned(), "{err:?}");
    // The listener stays while the abandoned hook runs, and says the process is stuck.
    assert_eq!(get(&address, "/live"), (503, "not live: stuck in STOPPED\n".into()));
    assert_eq!(get(&address, "/ready").0, 503);
    drop(runner); // freeing the runner closes it
    wait_for("the listener to close", || TcpStream::connect(&address).is_err());
}

#[test]
fn invalid_options_are_refused_naming_the_field() {
    let log = Log { lines: Arc::default() };
    for (options, field, needle) in [
        (Options { health_address: Some("nonsense:port".into()), ..options(&log) }, OptionField::HealthAddress, "health address"),
        (
            Options { drain_quiet: Duration::from_millis(10), ..options(&log) },
            OptionField::DrainQuiet,
            "shorter than the drain delay",
        ),
    ] {
        let err = Runner::new(Arc::new(waiter(false)), options).err().unwrap();
        assert_eq!((err.kind(), err.field()), (ErrorKind::InvalidArgument, Some(field)));
        assert!(err.message().contains(needle), "{}", err.message());
    }
    // A port in use: the run fails before serve is called, naming the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let runner =
        Runner::new(Arc::new(waiter(false)), Options { health_address: Some(address.clone()), ..options(&log) }).unwrap();
    let err = runner.run().unwrap_err();
    assert!(err.message().contains(&format!("health address {address}")), "{}", err.message());
    assert_eq!(runner.state(), State::Failed);
}

#[test]
fn the_adaptive_drain_ends_once_a_probe_failed_and_connections_stopped() {
    let log = Log { lines: Arc::default() };
    let fixed = Duration::from_secs(20);
    let options = Options { drain_delay: fixed, drain_quiet: Duration::from_millis(200), ..options(&log) };
    let (runner, done) = start(waiter(false), options);
    let address = runner.health_address().unwrap();
    runner.stop();
    wait_for("DRAINING", || runner.state() == State::Draining);
    // Connections keep coming (through the gate) for a while: the drain goes on meanwhile.
    let gate = Arc::clone(runner.gate());
    for _ in 0..10 {
        drop(gate.try_acquire().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let last_admission = Instant::now();
    assert_eq!(runner.state(), State::Draining, "new connections keep the drain going");
    // Quiet now, but this balancer probes and has not seen "not ready": still draining.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(runner.state(), State::Draining, "no failed probe yet");
    assert!(!has_line(&log, "Drain ended"));
    let probed = Instant::now();
    assert_eq!(get(&address, "/ready").0, 503);
    done.recv_timeout(PATIENCE).unwrap().unwrap();
    let ended = Instant::now();
    assert!(ended < probed + fixed, "the drain ended before its fixed delay");
    assert!(ended >= last_admission + Duration::from_millis(200));
    let lines = log.lines.lock().unwrap();
    let line = lines.iter().find(|l| l.contains("Drain ended after")).unwrap_or_else(|| panic!("{lines:?}"));
    assert!(line.contains("no new connection for 200ms and 1 readiness probe(s) answered not ready"), "{line}");
}

#[test]
fn without_probes_the_quiet_time_alone_ends_the_drain_and_without_it_the_delay_does() {
    let log = Log { lines: Arc::default() };
    let quick = Options {
        health_address: None,
        drain_delay: Duration::from_secs(20),
        drain_quiet: Duration::from_millis(100),
        ..options(&log)
    };
    let (runner, done) = start(waiter(false), quick);
    let stopped = Instant::now();
    runner.stop();
    done.recv_timeout(PATIENCE).unwrap().unwrap();
    assert!(stopped.elapsed() < Duration::from_secs(20));
    assert!(has_line(&log, "no new connection for 100ms"), "{:?}", log.lines.lock().unwrap());

    // Off (the default): the whole drain delay.
    let log = Log { lines: Arc::default() };
    let delay = Duration::from_millis(600);
    let fixed = Options { health_address: None, drain_delay: delay, ..options(&log) };
    let (runner, done) = start(waiter(false), fixed);
    let stopped = Instant::now();
    runner.stop();
    done.recv_timeout(PATIENCE).unwrap().unwrap();
    assert!(stopped.elapsed() >= delay);
    assert!(!has_line(&log, "Drain ended"));
}

/// Runs `wrk` for `seconds` against `url`; its summary.
fn wrk(url: &str, seconds: u32) -> String {
    let out = std::process::Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{seconds}s"), "--timeout", "10s", url])
        .output()
        .expect("wrk is needed (scripts/test-all.sh installs it)");
    assert!(out.status.success(), "wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (requests, non-2xx) from a wrk summary; socket errors fail the test.
fn wrk_counts(summary: &str) -> (u64, u64) {
    assert!(!summary.contains("Socket errors"), "{summary}");
    let requests = summary
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().parse::<u64>().unwrap()))
        .unwrap_or_else(|| panic!("{summary}"));
    let non_2xx = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:").map(|n| n.trim().parse::<u64>().unwrap()))
        .unwrap_or(0);
    (requests, non_2xx)
}

#[test]
fn the_listener_holds_under_load_in_every_phase() {
    let log = Log { lines: Arc::default() };
    let options = Options { drain_delay: Duration::from_secs(60), ..options(&log) };
    let (runner, done) = start(waiter(false), options);
    let address = runner.health_address().unwrap();
    let (requests, non_2xx) = wrk_counts(&wrk(&format!("http://{address}/ready"), 2));
    assert!(requests > 100 && non_2xx == 0, "READY: {requests} requests, {non_2xx} not 200");
    runner.stop();
    wait_for("DRAINING", || runner.state() == State::Draining);
    let (requests, non_2xx) = wrk_counts(&wrk(&format!("http://{address}/ready"), 2));
    assert!(requests > 100 && non_2xx == requests, "DRAINING: {requests} requests, {non_2xx} 503");
    let (requests, non_2xx) = wrk_counts(&wrk(&format!("http://{address}/live"), 1));
    assert!(requests > 100 && non_2xx == 0, "alive in lame-duck: {requests} requests, {non_2xx} not 200");
    runner.deliver_signal(libc::SIGTERM).unwrap();
    runner.deliver_signal(libc::SIGTERM).unwrap();
    assert!(done.recv_timeout(PATIENCE).unwrap().unwrap_err().is_forced());
}
