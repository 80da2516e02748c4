//! The C demo server (`examples/http_server.c`) under `ld_runner_run`, talked to by a real
//! HTTP client over 127.0.0.1 while it receives real signals.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::Proc;

const LIMIT: Duration = Duration::from_secs(30);

fn server_binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| common::build_c("http_server", &["examples/http_server.c"]))
}

fn start(args: &[&str]) -> (Proc, u16) {
    let mut cmd = common::c_command(server_binary());
    cmd.args(["--port", "0"]).args(args);
    let proc = Proc::spawn(cmd);
    let line = proc.wait_line(false, "listening on http://127.0.0.1:", LIMIT);
    let port = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    (proc, port)
}

/// Sends one HTTP/1.1 request and returns the open stream (the answer is read later).
fn send_request(port: u16, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    s
}

fn read_response(mut s: TcpStream) -> String {
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

fn get(port: u16, path: &str) -> String {
    read_response(send_request(port, path))
}

#[test]
fn in_flight_request_completes_and_new_connections_are_refused() {
    let (proc, port) = start(&["--period", "10000"]);
    assert!(get(port, "/").starts_with("HTTP/1.1 200 OK"));
    let slow = send_request(port, "/sleep?ms=1500");
    proc.wait_line(true, "demo: request GET /sleep?ms=1500", LIMIT);
    proc.signal(libc::SIGTERM);
    proc.wait_line(true, "demo: stopped accepting new connections", LIMIT);
    let refused = TcpStream::connect(("127.0.0.1", port)).expect_err("the listener is closed");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    let answer = read_response(slow);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "in-flight request lost: {answer:?}");
    assert!(answer.contains("slept 1500 ms"));
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("lameduck: Received signal [terminated]; entering lame-duck mode for 10s"), "{stderr}");
    assert!(stderr.contains("lameduck: Completed lame-duck mode"), "{stderr}");
    assert!(stderr.contains("demo: run ended cleanly"), "{stderr}");
}

#[test]
fn request_longer_than_the_period_expires_and_close_drops_it() {
    let (proc, port) = start(&["--period", "300"]);
    let slow = send_request(port, "/sleep?ms=20000");
    proc.wait_line(true, "demo: request GET /sleep?ms=20000", LIMIT);
    proc.signal(libc::SIGINT);
    let answer = read_response(slow);
    assert_eq!(answer, "", "close must cut the request short");
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("lameduck: Lame-duck period has expired"), "{stderr}");
    assert!(stderr.contains("demo: run ended: lame-duck period expired; close was called"), "{stderr}");
}

#[test]
fn drain_delay_keeps_serving_but_reports_not_ready() {
    let (proc, port) = start(&["--drain", "4000"]);
    proc.wait_line(true, "demo: state READY", LIMIT); // "listening" is printed before the run starts
    assert!(get(port, "/health").starts_with("HTTP/1.1 200 OK"));
    proc.signal(libc::SIGTERM);
    proc.wait_line(true, "draining for 4s, then entering lame-duck mode for 3s", LIMIT);
    proc.wait_line(true, "demo: state DRAINING", LIMIT); // the log line comes just before the state
    let health = get(port, "/health"); // still accepting during the drain...
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.contains("DRAINING"), "{health}"); // ...but not ready
    assert!(get(port, "/").starts_with("HTTP/1.1 200 OK"));
    proc.wait_line(true, "demo: stopped accepting new connections", LIMIT);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn second_signal_forces_close() {
    let (proc, port) = start(&["--period", "60000"]);
    let slow = send_request(port, "/sleep?ms=60000");
    proc.wait_line(true, "demo: request GET /sleep?ms=60000", LIMIT);
    proc.signal(libc::SIGTERM);
    proc.wait_line(true, "demo: stopped accepting new connections", LIMIT);
    proc.signal(libc::SIGTERM);
    assert_eq!(read_response(slow), "");
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Received signal [terminated] again; forcing close now"), "{stderr}");
    assert!(stderr.contains("forced by a repeated signal"), "{stderr}");
}

/// Connections still waiting in the listener's queue when lame-duck begins are accepted and
/// answered, not reset: the demo stops its listener with `ld_listen_shut` before it closes it.
/// (Closing it undrained lost about 0.75 requests per restart behind haproxy.)
#[test]
fn connections_queued_when_lame_duck_begins_are_answered() {
    let (proc, port) = start(&["--period", "10000"]);
    proc.wait_line(true, "demo: the listener is ours alone", LIMIT);
    assert!(get(port, "/").starts_with("HTTP/1.1 200 OK"));
    // Stopped, the demo accepts nothing: the kernel completes the handshakes and queues the
    // connections with their requests.
    proc.signal(libc::SIGSTOP);
    let queued: Vec<TcpStream> = (0..100).map(|_| send_request(port, "/")).collect();
    proc.signal(libc::SIGTERM); // handled once it runs again: lame-duck begins with a full queue
    proc.signal(libc::SIGCONT);
    for (i, s) in queued.into_iter().enumerate() {
        let answer = read_response(s);
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "queued connection {i} was not answered: {answer:?}");
    }
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("demo: stopping the listener"), "{stderr}");
    assert!(!stderr.contains("queued connection(s) with 503"), "every queued connection got a slot: {stderr}");
}

/// How one fresh connection attempt ended.
#[derive(Debug, PartialEq)]
enum Attempt {
    /// An HTTP answer (its first line).
    Answered(String),
    /// `connect` failed with `ECONNREFUSED`: the listener is closed.
    Refused,
    /// Anything else: reset or closed after the connect without an answer, or no connect.
    Lost(String),
}

/// One fresh connection: connect (at most LIMIT), send `GET /` with `Connection: close`, read
/// the answer to its end. Returns the outcome and the segments its socket retransmitted
/// (`TCP_INFO`'s `tcpi_total_retrans`, read after the connect, failed or not, and again at the
/// end): a SYN the server dropped is retransmitted by the kernel only after the initial RTO of
/// 1 s, so any retransmission on 127.0.0.1 means this client was left waiting. A count, not a
/// time: nothing here depends on how busy the machine is. The connect is non-blocking (then
/// `poll` and `SO_ERROR`): a failed blocking `connect` resets the socket's counters.
fn attempt(port: u16) -> (Attempt, u32) {
    // SAFETY: a fresh socket, owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    assert!(fd >= 0);
    // SAFETY: just created, ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: an all-zero sockaddr_in is valid; the fields are set below.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = port.to_be();
    addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
    let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: connect with a local sockaddr_in of the size given.
    let started = unsafe { libc::connect(raw, (&addr as *const libc::sockaddr_in).cast(), size) } == 0;
    let mut error = if started { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap_or(0) };
    if error == libc::EINPROGRESS {
        let mut pfd = libc::pollfd { fd: raw, events: libc::POLLOUT, revents: 0 };
        // SAFETY: one valid pollfd.
        error = if unsafe { libc::poll(&mut pfd, 1, LIMIT.as_millis() as i32) } == 1 {
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt into `error`, a local int of the size given.
            unsafe { libc::getsockopt(raw, libc::SOL_SOCKET, libc::SO_ERROR, (&mut error as *mut i32).cast(), &mut len) };
            error
        } else {
            libc::ETIMEDOUT
        };
    }
    let connected = error == 0;
    let error = std::io::Error::from_raw_os_error(error);
    let retransmitted = || {
        // SAFETY: an all-zero tcp_info is valid; getsockopt fills at most its size.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: as above, on our socket.
        let r = unsafe {
            libc::getsockopt(raw, libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut libc::tcp_info).cast(), &mut len)
        };
        assert_eq!(r, 0, "TCP_INFO");
        info.tcpi_total_retrans
    };
    if !connected {
        let outcome = match error.raw_os_error() {
            Some(libc::ECONNREFUSED) => Attempt::Refused,
            _ => Attempt::Lost(format!("connect: {error}")),
        };
        return (outcome, retransmitted());
    }
    let at_connect = retransmitted();
    let mut stream = TcpStream::from(fd.try_clone().unwrap());
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let mut answer = String::new();
    let sent = stream.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let read = sent.and_then(|()| stream.read_to_string(&mut answer));
    let total = retransmitted().max(at_connect);
    match (read, answer.lines().next()) {
        (_, Some(first)) if first.starts_with("HTTP/1.1 ") => (Attempt::Answered(first.to_string()), total),
        (result, _) => (Attempt::Lost(format!("after the connect: {result:?}, {answer:?}")), total),
    }
}

/// Lame-duck that must wait for a slot (the gate is full, a slow request holds it, another
/// client is queued): the demo stops its listener at once (`ld_listen_shut`), so a storm of
/// clients arriving meanwhile is refused at once. No attempt may need a SYN retransmission:
/// with the drop filter on for the whole drain (`ld_listen_drain`, as the demo did) each one
/// waited out the 1 s RTO, and was refused only once the slot freed and the listener closed.
/// The storm begins once the demo says it stopped accepting, or 1 s into lame-duck, whichever
/// comes first: the old demo said so only after the drain, and had its filter on until then
/// (the slow request lasts 4 s).
#[test]
fn a_client_storm_while_lame_duck_waits_for_a_slot_is_refused_at_once() {
    let (proc, port) = start(&["--period", "10000", "--max-connections", "1"]);
    proc.wait_line(true, "demo: state READY", LIMIT);
    let slow = send_request(port, "/sleep?ms=4000");
    proc.wait_line(true, "demo: request GET /sleep?ms=4000", LIMIT);
    let queued = send_request(port, "/"); // waits in the backlog for the slot
    proc.signal(libc::SIGTERM);
    proc.wait_line(true, "entering lame-duck mode", LIMIT);
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while !proc.text().1.contains("demo: stopped accepting new connections") && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let storm: Vec<_> = (0..4)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) && seen.len() < 200 {
                    seen.push(attempt(port));
                }
                seen
            })
        })
        .collect();
    let mut proc = proc;
    let status = proc.wait_exit(LIMIT);
    stop.store(true, Ordering::Relaxed);
    let attempts: Vec<(Attempt, u32)> = storm.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(!attempts.is_empty());
    for (i, (outcome, retransmitted)) in attempts.iter().enumerate() {
        assert!(
            matches!(outcome, Attempt::Refused) || matches!(outcome, Attempt::Answered(a) if a.starts_with("HTTP/1.1 200")),
            "attempt {i} was neither served nor refused: {outcome:?}"
        );
        assert_eq!(
            *retransmitted, 0,
            "attempt {i} ({outcome:?}) needed a retransmission: its SYN was dropped, and it waited out the 1 s RTO"
        );
    }
    assert!(read_response(slow).starts_with("HTTP/1.1 200 OK"), "the request in flight completes");
    assert!(read_response(queued).starts_with("HTTP/1.1 200 OK"), "the client queued when lame-duck began is served");
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "{:?}", proc.text());
}

/// `--health ADDRESS` serves the library's `/ready` on a port of its own, and `--drain-quiet MS`
/// ends the `--drain` delay early: once that port has answered a probe "not ready" and no new
/// connection came for MS. The drain delay here (20 s) is longer than any wait below, so the
/// "Drain ended after" line can only come from the adaptive drain.
#[test]
fn health_and_drain_quiet_flags_serve_ready_and_end_the_drain_early() {
    let health = common::free_port();
    let address = format!("127.0.0.1:{health}");
    let (proc, port) = start(&["--drain", "20000", "--drain-quiet", "300", "--health", &address]);
    proc.wait_line(true, "demo: state READY", LIMIT);
    let ready = get(health, "/ready");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(get(port, "/").starts_with("HTTP/1.1 200 OK"));
    proc.signal(libc::SIGTERM);
    proc.wait_line(true, "draining for 20s (less once no new connection came for 300ms)", LIMIT);
    proc.wait_line(true, "demo: state DRAINING", LIMIT);
    // A balancer's probe: "not ready" from the trigger on, while the demo still serves.
    let not_ready = get(health, "/ready");
    assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
    assert!(get(port, "/").starts_with("HTTP/1.1 200 OK"));
    let ended = proc.wait_line(true, "Drain ended after", Duration::from_secs(15));
    assert!(ended.contains("no new connection for 300ms and 1 readiness probe(s) answered not ready"), "{ended}");
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// A bad `--health` or `--drain-quiet` value is an error with a message, not a crash or a run
/// without it: a malformed address and a non-number are usage errors (exit 2); a quiet time not
/// shorter than the drain delay is refused by the library (exit 1, its message).
#[test]
fn bad_health_and_drain_quiet_values_are_errors() {
    let cases: [(&[&str], i32, &str); 5] = [
        (&["--health", "127.0.0.1:99999"], 2, "demo: --health 127.0.0.1:99999 is not an address to listen on"),
        (&["--health", "::1:8081"], 2, "demo: --health ::1:8081 is not an address to listen on"),
        (&["--drain-quiet", "soon"], 2, "demo: --drain-quiet needs a non-negative number"),
        (&["--drain-quiet", "86400001", "--drain", "1000"], 2, "demo: --drain-quiet 86400001 is too large"),
        (
            &["--drain", "500", "--drain-quiet", "500"],
            1,
            "drain quiet time 500ms is invalid: it must be shorter than the drain delay",
        ),
    ];
    for (args, code, message) in cases {
        let mut cmd = common::c_command(server_binary());
        cmd.args(["--port", "0"]).args(args);
        let (status, _, stderr) = common::run_limited(cmd, LIMIT);
        assert_eq!(status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("AddressSanitizer") && !stderr.contains("runtime error"), "{args:?}: {stderr}");
    }
}
