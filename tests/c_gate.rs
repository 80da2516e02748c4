//! The C demo (`examples/http_server.c`) with a connection limit (`--max-connections`, issue
//! 13): real clients on 127.0.0.1, real signals. Clients above the limit wait in the listen
//! backlog (the server does not call accept while its gate is full): the tests read that
//! backlog from the kernel (`/proc/net/tcp`: a listening socket's `rx_queue` is its accept
//! queue), so "not admitted" is the server's own state, not a guess from a timeout.
//!
//! Every wait is on an event (an answer, an EOF, a log line, the backlog's length) with a
//! generous limit; the demo is killed on drop.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::Proc;

const LIMIT: Duration = Duration::from_secs(60);

fn server_binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| common::build_c("http_server_gate", &["examples/http_server.c"]))
}

fn start(args: &[&str]) -> (Proc, u16) {
    let mut cmd = common::c_command(server_binary());
    cmd.args(["--port", "0"]).args(args);
    let proc = Proc::spawn(cmd);
    let line = proc.wait_line(false, "listening on http://127.0.0.1:", LIMIT);
    let port = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    proc.wait_line(true, "demo: state READY", LIMIT);
    (proc, port)
}

/// Connections waiting in the accept queue of the listener on 127.0.0.1:`port`.
fn backlog(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 4 && f[1] == local && f[3] == "0A" {
            let rx = f[4].split(':').nth(1).unwrap();
            return usize::from_str_radix(rx, 16).unwrap();
        }
    }
    panic!("no listener on 127.0.0.1:{port} in /proc/net/tcp");
}

fn wait_backlog(port: u16, want: usize, what: &str) {
    let start = Instant::now();
    loop {
        let now = backlog(port);
        if now == want {
            return;
        }
        assert!(start.elapsed() < LIMIT, "{what}: the backlog stayed at {now}, expected {want}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One client connection, read without blocking as answers arrive.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Complete responses received (status line, headers, body).
    answers: Vec<String>,
    /// The server closed its side (read 0).
    eof: bool,
    /// We closed our writing side (the client is done).
    released: bool,
    error: Option<std::io::Error>,
}

impl Client {
    fn connect(port: u16, request: &str) -> Client {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect refused: {e}"));
        stream.write_all(request.as_bytes()).unwrap();
        stream.set_nonblocking(true).unwrap();
        Client { stream, buf: Vec::new(), answers: Vec::new(), eof: false, released: false, error: None }
    }

    fn live(&self) -> bool {
        !self.eof && self.error.is_none()
    }

    /// Reads what has arrived; splits complete responses off the buffer.
    fn read_available(&mut self) {
        let mut chunk = [0u8; 4096];
        while self.live() {
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => self.error = Some(e),
            }
        }
        while let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                .unwrap_or(0);
            if self.buf.len() < end + 4 + length {
                break;
            }
            let whole: Vec<u8> = self.buf.drain(..end + 4 + length).collect();
            self.answers.push(String::from_utf8_lossy(&whole).to_string());
        }
    }

    /// Done: no more requests (FIN); the server closes its side once it has seen it.
    fn release(&mut self) {
        self.released = true;
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Many clients, pumped from one thread with poll(2).
struct Crowd {
    clients: Vec<Client>,
    /// The most clients answered and not yet released at once: each of them is still open on
    /// the server (it closes a kept-alive connection only after the client's FIN), so this
    /// never exceeds what the server admitted.
    most_held: usize,
}

impl Crowd {
    fn new() -> Crowd {
        Crowd { clients: Vec::new(), most_held: 0 }
    }

    fn add(&mut self, port: u16, n: usize, request: &str) -> std::ops::Range<usize> {
        let from = self.clients.len();
        for _ in 0..n {
            self.clients.push(Client::connect(port, request));
        }
        from..self.clients.len()
    }

    fn held(&self) -> usize {
        self.clients.iter().filter(|c| !c.answers.is_empty() && !c.released && c.live()).count()
    }

    fn answered(&self, range: std::ops::Range<usize>) -> usize {
        self.clients[range].iter().filter(|c| !c.answers.is_empty()).count()
    }

    fn pump(&mut self, timeout_ms: i32) {
        let mut fds: Vec<libc::pollfd> = self
            .clients
            .iter()
            .filter(|c| c.live())
            .map(|c| libc::pollfd { fd: c.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        if !fds.is_empty() {
            // SAFETY: a valid array of pollfds for the sockets we own.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        }
        for c in &mut self.clients {
            c.read_available();
        }
        self.most_held = self.most_held.max(self.held());
        let errors: Vec<String> =
            self.clients.iter().enumerate().filter_map(|(i, c)| c.error.as_ref().map(|e| format!("client {i}: {e}"))).collect();
        assert!(errors.is_empty(), "connections failed (reset?): {errors:?}");
    }

    fn wait_until(&mut self, what: &str, mut done: impl FnMut(&Crowd) -> bool) {
        let start = Instant::now();
        loop {
            self.pump(0);
            if done(self) {
                return;
            }
            assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
            self.pump(20);
        }
    }

    /// Releases every answered client still held in `range`, and waits until the server has
    /// closed them and admitted at least one more (unless every client has been answered).
    fn release_held_and_wait_for_more(&mut self, range: std::ops::Range<usize>) {
        let before = self.answered(range.clone());
        let held: Vec<usize> =
            range.clone().filter(|&i| !self.clients[i].answers.is_empty() && !self.clients[i].released).collect();
        self.release_and_wait(&held);
        if before < range.len() {
            self.wait_until("the next clients to be admitted", |c| c.answered(range.clone()) > before);
        }
    }

    /// Releases the clients in `which` and waits until the server closed each one (it has
    /// then given its permit back: the demo releases it before closing the socket).
    fn release_and_wait(&mut self, which: &[usize]) {
        for &i in which {
            self.clients[i].release();
        }
        self.wait_until("the server to close the released connections", |c| which.iter().all(|&i| c.clients[i].eof));
    }
}

/// `GET /health`: the JSON body.
fn health(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("Content-Type: application/json"), "{out}");
    out.split("\r\n\r\n").nth(1).unwrap().trim().to_string()
}

/// A number (or `null`) from the demo's /health JSON, by key.
fn field(json: &str, key: &str) -> Option<u64> {
    let at = json.find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("no {key} in {json}")) + key.len() + 3;
    let value: String = json[at..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    if value == "null" {
        None
    } else {
        Some(value.parse().unwrap_or_else(|_| panic!("{key} is {value:?} in {json}")))
    }
}

const KEEP_ALIVE: &str = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// Sends `signal` once per step and waits for the demo to say each new limit.
fn step_limit(proc: &Proc, signal: i32, limits: impl Iterator<Item = u64>) -> String {
    let mut last = String::new();
    for limit in limits {
        let needle = format!("demo: max connections now {limit} (");
        let seen = proc.text().1.lines().filter(|l| l.contains(&needle)).count();
        proc.signal(signal);
        last = proc.wait_nth_line(&needle, seen + 1, LIMIT);
    }
    last
}

#[test]
fn limit_10_with_100_clients_admits_at_most_10_and_serves_all() {
    let (proc, port) = start(&["--max-connections", "10"]);
    let mut crowd = Crowd::new();
    let all = crowd.add(port, 100, KEEP_ALIVE); // each connect succeeded: none refused
    crowd.wait_until("10 answers", |c| c.answered(all.clone()) >= 10);
    // The server accepted 10 and left the other 90 in its listen backlog.
    wait_backlog(port, 90, "90 clients waiting");
    crowd.pump(0);
    assert_eq!(crowd.answered(all.clone()), 10);
    while crowd.answered(all.clone()) < 100 {
        crowd.release_held_and_wait_for_more(all.clone());
        assert!(crowd.most_held <= 10, "{} clients held an answered connection at once", crowd.most_held);
    }
    let held: Vec<usize> = all.clone().filter(|&i| !crowd.clients[i].released).collect();
    crowd.release_and_wait(&held);
    for (i, c) in crowd.clients.iter().enumerate() {
        assert_eq!(c.answers.len(), 1, "client {i}");
        assert!(c.answers[0].starts_with("HTTP/1.1 200 OK"), "client {i}: {}", c.answers[0]);
    }
    assert!(crowd.most_held <= 10, "{}", crowd.most_held);
    let json = health(port);
    assert_eq!(field(&json, "limit"), Some(10), "{json}");
    assert_eq!(field(&json, "peak"), Some(10), "the server never admitted more than 10: {json}");
    assert_eq!(field(&json, "admitted"), Some(1), "only /health's own connection: {json}");
    assert_eq!(field(&json, "total"), Some(101), "{json}");
    proc.signal(libc::SIGTERM);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn raising_admits_waiting_clients_and_lowering_closes_none_and_admits_none_until_below() {
    let (proc, port) = start(&["--max-connections", "10"]);
    let mut crowd = Crowd::new();
    let all = crowd.add(port, 100, KEEP_ALIVE);
    crowd.wait_until("10 answers", |c| c.answered(all.clone()) >= 10);
    wait_backlog(port, 90, "90 clients waiting at limit 10");
    assert_eq!(crowd.most_held, 10);

    // SIGUSR1 ×40: 10 → 50. Each raise admits a waiting client at once.
    let raised = Instant::now();
    step_limit(&proc, libc::SIGUSR1, 11..=50);
    crowd.wait_until("50 answers after raising to 50", |c| c.answered(all.clone()) >= 50);
    wait_backlog(port, 50, "50 clients waiting at limit 50");
    eprintln!("10 -> 50 admitted 40 waiting clients in {:?}", raised.elapsed());
    crowd.pump(0);
    assert_eq!(crowd.answered(all.clone()), 50);

    // SIGUSR2 ×45: 50 → 5, with 50 open. None is closed.
    let lowered = step_limit(&proc, libc::SIGUSR2, (5..=49).rev());
    assert!(lowered.contains("(50 admitted"), "lowering closes nothing: {lowered}");
    let admitted: Vec<usize> = all.clone().filter(|&i| !crowd.clients[i].answers.is_empty()).collect();
    for &i in &admitted {
        crowd.clients[i].stream.write_all(KEEP_ALIVE.as_bytes()).unwrap();
    }
    crowd.wait_until("a second answer on each of the 50 open connections", |c| {
        admitted.iter().all(|&i| c.clients[i].answers.len() == 2)
    });
    assert!(admitted.iter().all(|&i| !crowd.clients[i].eof), "a connection was closed by lowering the limit");

    // 45 close: 5 are open, the limit is 5: nobody new is admitted.
    crowd.release_and_wait(&admitted[..45]);
    crowd.pump(0);
    assert_eq!(backlog(port), 50, "a client was admitted with 5 open at limit 5");
    assert_eq!(crowd.answered(all.clone()), 50);
    crowd.most_held = crowd.held();
    assert_eq!(crowd.most_held, 5);

    // One more closes: 4 open, one new is admitted, promptly.
    crowd.release_and_wait(&admitted[45..46]);
    crowd.wait_until("one new answer with 4 open at limit 5", |c| c.answered(all.clone()) == 51);
    wait_backlog(port, 49, "49 clients waiting");

    // The rest, in waves; never more than 5 at once from now on.
    while crowd.answered(all.clone()) < 100 {
        crowd.release_held_and_wait_for_more(all.clone());
    }
    assert!(crowd.most_held <= 5, "{} held at once at limit 5", crowd.most_held);
    let json = health(port);
    assert_eq!((field(&json, "limit"), field(&json, "peak"), field(&json, "total")), (Some(5), Some(50), Some(101)), "{json}");
    proc.signal(libc::SIGTERM);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// Lame-duck with a full gate and clients queued behind it: the idle kept-alive connections are
/// closed after the demo's grace, the queued clients are then admitted and answered, a slow
/// request in flight completes, and the run ends when the last connection is gone, long before
/// its 30 s period: the run waits for the gate, not for the period.
#[test]
fn lame_duck_with_a_full_gate_serves_the_queue_and_ends_when_the_gate_is_empty() {
    let (proc, port) = start(&["--max-connections", "10", "--period", "30000"]);
    let mut crowd = Crowd::new();
    let idle = crowd.add(port, 9, KEEP_ALIVE);
    crowd.wait_until("9 answers", |c| c.answered(idle.clone()) == 9);
    let slow = crowd.add(port, 1, "GET /sleep?ms=5000 HTTP/1.1\r\nHost: x\r\n\r\n");
    proc.wait_line(true, "demo: request GET /sleep?ms=5000", LIMIT);
    let queued = crowd.add(port, 20, KEEP_ALIVE);
    wait_backlog(port, 20, "20 clients queued behind the full gate");
    let term = Instant::now();
    proc.signal(libc::SIGTERM);
    proc.wait_line(true, "demo: lame-duck: admitting only the connections already queued", LIMIT);
    crowd.wait_until("every client to be answered or closed", |c| c.clients.iter().all(|c| c.eof));
    for i in queued.clone() {
        let c = &crowd.clients[i];
        assert_eq!(c.answers.len(), 1, "queued client {i} got no answer");
        assert!(c.answers[0].starts_with("HTTP/1.1 200 OK") && c.answers[0].contains("Connection: close"), "{}", c.answers[0]);
    }
    let slow_answer = &crowd.clients[slow.start].answers;
    assert!(slow_answer.len() == 1 && slow_answer[0].contains("slept 5000 ms"), "the slow request: {slow_answer:?}");
    assert!(idle.clone().all(|i| crowd.clients[i].answers.len() == 1), "the idle ones were closed cleanly, not answered twice");
    let (status, stderr) = proc.finish(LIMIT);
    let took = term.elapsed();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("demo: run ended cleanly"), "{stderr}");
    // The hooks returned with connections still open (the slow one at least): the run waited.
    let waiting = stderr.lines().find(|l| l.starts_with("lameduck: Waiting for ") && l.ends_with(" open connection(s) to close"));
    assert!(waiting.is_some(), "{stderr}");
    assert!(took < Duration::from_secs(25), "the run ended {took:?} after SIGTERM: it waited for the period, not the gate");
}

/// Lame-duck with a full gate that never empties: the accept loop, blocked on the gate,
/// stops waiting for new connections at once (before the deadline); at the deadline close cuts
/// every connection the gate lists (in-flight requests and a half-sent one blocked in recv)
/// and the clients still queued are refused with a 503, not reset.
#[test]
fn close_at_the_deadline_cuts_what_is_left_and_refuses_the_queue_cleanly() {
    let (proc, port) = start(&["--max-connections", "10", "--period", "2000"]);
    let mut crowd = Crowd::new();
    let sleepers = crowd.add(port, 9, "GET /sleep?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n");
    proc.wait_nth_line("demo: request GET /sleep?ms=60000", 9, LIMIT);
    let half = crowd.add(port, 1, "GET / HTTP/1.1\r\nHost: x\r\n"); // no blank line: the server waits in recv
    wait_backlog(port, 0, "the half-sent request accepted");
    let queued = crowd.add(port, 5, KEEP_ALIVE);
    wait_backlog(port, 5, "5 clients queued behind the full gate");
    let term = Instant::now();
    proc.signal(libc::SIGTERM);
    crowd.wait_until("every connection to end", |c| c.clients.iter().all(|c| c.eof));
    let took = term.elapsed();
    for i in sleepers.clone().chain(half.clone()) {
        assert!(crowd.clients[i].answers.is_empty(), "client {i} was answered: {:?}", crowd.clients[i].answers);
    }
    for i in queued {
        let a = &crowd.clients[i].answers;
        assert!(a.len() == 1 && a[0].starts_with("HTTP/1.1 503"), "queued client {i}: {a:?}");
    }
    assert!(took < Duration::from_secs(20), "the connections were cut {took:?} after SIGTERM");
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let at = |needle: &str| stderr.find(needle).unwrap_or_else(|| panic!("no {needle:?} in {stderr}"));
    // Blocked on the full gate, the accept loop heard lame-duck at once, not at the deadline.
    assert!(at("demo: lame-duck: admitting only the connections already queued") < at("lameduck: Lame-duck period has expired"));
    assert!(stderr.contains("demo: close: cut 10 open connection(s)"), "{stderr}");
    assert!(stderr.contains("demo: refused 5 queued connection(s) with 503"), "{stderr}");
    assert!(stderr.contains("demo: run ended: lame-duck period expired; close was called"), "{stderr}");
    // Every connection ended once cut, the half-sent one too (its thread was blocked in recv).
    assert!(!stderr.contains("still open at exit"), "{stderr}");
}

#[test]
fn counts_are_right_after_10000_connections() {
    let (proc, port) = start(&["--max-connections", "3"]);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..2500 {
                    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    s.set_read_timeout(Some(LIMIT)).unwrap();
                    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
                    let mut out = String::new();
                    s.read_to_string(&mut out).unwrap();
                    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let json = health(port);
    assert_eq!(field(&json, "total"), Some(10_001), "{json}");
    assert_eq!(field(&json, "admitted"), Some(1), "{json}");
    assert_eq!(field(&json, "waiting"), Some(0), "{json}");
    assert_eq!(field(&json, "limit"), Some(3), "{json}");
    let peak = field(&json, "peak").unwrap();
    assert!((1..=3).contains(&peak), "{json}");
    proc.signal(libc::SIGTERM);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn unlimited_by_default_and_the_signals_say_the_limit() {
    let (proc, port) = start(&[]);
    let json = health(port);
    assert_eq!(field(&json, "limit"), None, "{json}");
    assert!(json.contains("\"state\":\"READY\""), "{json}");
    proc.signal(libc::SIGUSR1);
    proc.wait_line(true, "demo: max connections now unlimited (", LIMIT);
    proc.signal(libc::SIGUSR2); // from unlimited: the connections open now, at least 1
    proc.wait_line(true, "demo: max connections now 1 (", LIMIT);
    proc.signal(libc::SIGUSR2);
    proc.wait_nth_line("demo: max connections now 1 (", 2, LIMIT); // never below 1
    proc.signal(libc::SIGUSR1);
    proc.wait_line(true, "demo: max connections now 2 (", LIMIT);
    assert_eq!(field(&health(port), "limit"), Some(2));
    proc.signal(libc::SIGTERM);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn invalid_max_connections_is_refused_and_help_documents_it() {
    let (status, _, stderr) = common::run_limited(
        {
            let mut c = common::c_command(server_binary());
            c.args(["--port", "0", "--max-connections", "2147483648"]);
            c
        },
        LIMIT,
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--max-connections 2147483648 is too large"), "{stderr}");
    let (status, stdout, _) = common::run_limited(
        {
            let mut c = common::c_command(server_binary());
            c.arg("--help");
            c
        },
        LIMIT,
    );
    assert_eq!(status.code(), Some(0));
    for needle in ["--max-connections N", "SIGUSR1", "SIGUSR2", "demo: max connections now N"] {
        assert!(stdout.contains(needle), "--help does not mention {needle}: {stdout}");
    }
}
