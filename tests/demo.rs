//! `bash scripts/demo.sh` driven the way a person drives it, on a pseudo-terminal: the script
//! is a session leader with the pty as its controlling terminal, so Ctrl-C (the byte 0x03
//! written to the pty's master) makes the kernel send SIGINT to the terminal's foreground
//! process group, as a real terminal does.
//!
//! - The printed walkthrough: the slow request it prints, with Ctrl-C pressed while it runs,
//!   gets its full answer; a new connection is refused afterwards; the output has README's
//!   sample lines in order; the script exits 0.
//! - `kill -HUP <pid>` (a zero-downtime upgrade): the new process answers, the old one exits,
//!   the script stays in the foreground and says so, and Ctrl-C on the terminal still stops
//!   the new process; then the script exits and no process of the demo is left.
//!
//! Everything waits on events (output, answers, process exits), with generous limits; the
//! first run builds the release library, which takes a while. Every process of the demo's
//! session is killed, by pid, when a test ends, passed or failed.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// For `cargo build --release` and the C compile before the walkthrough is printed.
const BUILD_LIMIT: Duration = Duration::from_secs(900);
/// For anything else.
const LIMIT: Duration = Duration::from_secs(60);

/// The demos share `target/demo` and the port namespace: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A pseudo-terminal pair; both ends close-on-exec (the child gets the slave by dup2).
fn open_pty() -> (OwnedFd, OwnedFd) {
    // SAFETY: plain libc calls; each returned descriptor is checked and owned exactly once.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(master >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = OwnedFd::from_raw_fd(master);
        assert_eq!(libc::grantpt(master.as_raw_fd()), 0);
        assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()), 0);
        let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(slave >= 0, "open pty slave: {}", std::io::Error::last_os_error());
        (master, OwnedFd::from_raw_fd(slave))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A process's state letter, parent, process group and session, from /proc; None once it is gone.
fn proc_stat(pid: i32) -> Option<(char, i32, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f[0].chars().next()?, f[1].parse().ok()?, f[2].parse().ok()?, f[3].parse().ok()?))
}

/// Running: present and not a zombie (an exited process nobody has reaped yet).
fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, ..)| state != 'Z')
}

/// Every live process of a session.
fn session_members(sid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
            if proc_stat(pid).is_some_and(|(state, _, _, s)| s == sid && state != 'Z') {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Everything the terminal showed, and whether every writer has closed it.
#[derive(Default)]
struct Screen {
    bytes: Vec<u8>,
    closed: bool,
}

/// The demo on its terminal.
struct Demo {
    child: Child,
    port: u16,
    master: File,
    screen: Arc<(Mutex<Screen>, Condvar)>,
    /// Every pid the test saw belong to the demo, killed at the end if still running.
    seen: Mutex<Vec<i32>>,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl Demo {
    fn start() -> Demo {
        let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let port = free_port();
        let (master, slave) = open_pty();
        let mut cmd = Command::new("bash");
        cmd.arg("scripts/demo.sh").current_dir(common::repo()).env("PORT", port.to_string());
        for name in ["PERIOD_MS", "DRAIN_MS", "MAX_CONNECTIONS"] {
            cmd.env_remove(name); // the defaults, as README shows them
        }
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // A terminal's job-control signals as a shell would leave them.
                for signal in [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP] {
                    libc::signal(signal, libc::SIG_DFL);
                }
                // A new session with the pty as its controlling terminal: this process group
                // is then the terminal's foreground group, which Ctrl-C signals.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("bash runs");
        drop(cmd); // our copies of the slave: the terminal closes when the demo's processes exit
        let master = File::from(master);
        let screen = Arc::new((Mutex::new(Screen::default()), Condvar::new()));
        let mut reader = master.try_clone().unwrap();
        let shared = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                // EIO once every holder of the slave has closed it.
                let n = reader.read(&mut buf).unwrap_or(0);
                let mut s = shared.0.lock().unwrap_or_else(|e| e.into_inner());
                if n == 0 {
                    s.closed = true;
                    shared.1.notify_all();
                    return;
                }
                s.bytes.extend_from_slice(&buf[..n]);
                shared.1.notify_all();
            }
        });
        let demo = Demo { child, port, master, screen, seen: Mutex::new(Vec::new()), _one_at_a_time: guard };
        demo.saw(demo.child.id() as i32);
        // The walkthrough comes once the library and the server are built.
        demo.wait_for("Demo: a C HTTP server", BUILD_LIMIT);
        demo
    }

    /// The screen, even after a test thread panicked holding it.
    fn screen(&self) -> std::sync::MutexGuard<'_, Screen> {
        self.screen.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn saw(&self, pid: i32) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
    }

    /// The terminal's text so far, as lines (the terminal writes "\r\n").
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.screen().bytes).replace('\r', "")
    }

    /// Waits until the terminal shows `needle` (at or after byte `from` of the text); returns
    /// the line it is on and where that line ends.
    fn wait_for_from(&self, needle: &str, from: usize, limit: Duration) -> (String, usize) {
        let start = Instant::now();
        let mut s = self.screen();
        loop {
            let text = String::from_utf8_lossy(&s.bytes).replace('\r', "");
            if let Some(at) = text.get(from..).and_then(|t| t.find(needle)).map(|i| i + from) {
                let begin = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                return (text[begin..end].to_string(), end);
            }
            let left = limit.checked_sub(start.elapsed());
            assert!(left.is_some() && !s.closed, "the demo never printed {needle:?} (within {limit:?}); it printed:\n{text}");
            s = self.screen.1.wait_timeout(s, left.unwrap()).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn wait_for(&self, needle: &str, limit: Duration) -> String {
        self.wait_for_from(needle, 0, limit).0
    }

    /// Types Ctrl-C on the terminal.
    fn ctrl_c(&self) {
        (&self.master).write_all(b"\x03").unwrap();
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the script to exit, then for the terminal to close (every process of the demo
    /// gone); returns the script's status.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < limit, "demo.sh did not exit within {limit:?}; it printed:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut s = self.screen();
        while !s.closed {
            let left = limit.checked_sub(start.elapsed());
            assert!(left.is_some(), "demo.sh exited, but a process still holds its terminal: {:?}", session_members(self.sid()));
            s = self.screen.1.wait_timeout(s, left.unwrap()).unwrap_or_else(|e| e.into_inner()).0;
        }
        status
    }

    /// The demo's session: setsid made the script its leader.
    fn sid(&self) -> i32 {
        self.child.id() as i32
    }

    /// GET `path`; the status and body. The server's pid (every hello names it) is noted.
    fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let answer = get(self.port, path)?;
        if let Some(pid) = pid_of(&answer.1) {
            self.saw(pid);
        }
        Ok(answer)
    }

    /// The pid that answers `/` now.
    fn answering_pid(&self) -> i32 {
        let (status, body) = self.get("/").unwrap_or_else(|e| panic!("GET / failed: {e}; the demo printed:\n{}", self.text()));
        assert_eq!(status, 200, "{body}");
        pid_of(&body).unwrap_or_else(|| panic!("no pid in {body:?}"))
    }

    /// Fails if any process of the demo is still running.
    fn assert_nothing_left(&self) {
        let mut left = session_members(self.sid());
        left.extend(self.seen.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().filter(|&p| alive(p) && is_demo(p)));
        left.sort_unstable();
        left.dedup();
        assert!(left.is_empty(), "processes of the demo still running: {left:?}; it printed:\n{}", self.text());
    }
}

/// Whether `pid` is (still) one of the demo's programs, so that a recycled pid is left alone.
fn is_demo(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("http_server") || String::from_utf8_lossy(&c).contains("demo.sh"))
}

impl Drop for Demo {
    fn drop(&mut self) {
        let sid = self.sid();
        let mut pids = session_members(sid);
        pids.extend(self.seen.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().filter(|&p| is_demo(p)));
        for pid in pids {
            let ours = proc_stat(pid).is_some_and(|(_, _, _, s)| s == sid) || is_demo(pid);
            if alive(pid) && ours {
                // SAFETY: kill(2) on a process of the demo this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pid_of(body: &str) -> Option<i32> {
    body.strip_prefix("hello from lameduck (pid ")?.split(')').next()?.parse().ok()
}

/// One HTTP/1.1 request on a new connection; the status and the whole body.
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(LIMIT))?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status =
        line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(format!("no status line: {line:?}")))?;
    let mut length = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("the connection closed in the headers".into()));
        }
        if line.trim_end().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().map_err(|_| bad(line.clone()))?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// README's sample output of the demo: the plain block with the lame-duck lines.
fn readme_sample() -> Vec<String> {
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    let mut plain: Vec<Vec<String>> = Vec::new();
    let mut open: Option<bool> = None; // in a block; whether it is a plain one
    for line in readme.lines() {
        match open {
            None if line.starts_with("```") => {
                open = Some(line == "```");
                if line == "```" {
                    plain.push(Vec::new());
                }
            }
            None => {}
            Some(_) if line == "```" => open = None,
            Some(true) => plain.last_mut().unwrap().push(line.to_string()),
            Some(false) => {}
        }
    }
    plain.into_iter().find(|b| b.iter().any(|l| l.contains("entering lame-duck mode"))).expect("README shows the demo's output")
}

/// Fails unless `lines` appear in `text`, in this order, each on a line of its own.
fn assert_in_order(text: &str, lines: &[String]) {
    let shown: Vec<&str> = text.lines().map(|l| l.trim_start_matches("^C")).collect();
    let mut at = 0;
    for want in lines {
        match shown[at..].iter().position(|l| l == want) {
            Some(i) => at += i + 1,
            None => {
                panic!("the demo did not print {want:?} (after line {at}); README's sample is {lines:#?}; it printed:\n{text}")
            }
        }
    }
}

/// The slow request the walkthrough tells the reader to run.
fn walkthrough_slow_path(demo: &Demo) -> String {
    let line = demo.wait_for("press Ctrl-C while it runs", LIMIT);
    let url = line.split_whitespace().find(|w| w.contains("/sleep?ms=")).unwrap_or_else(|| panic!("no slow request in {line:?}"));
    let prefix = format!("http://127.0.0.1:{}", demo.port);
    url.strip_prefix(&prefix).unwrap_or_else(|| panic!("{url} is not on port {}", demo.port)).to_string()
}

#[test]
fn ctrl_c_while_the_slow_request_runs_lets_it_finish() {
    let mut demo = Demo::start();
    let slow = walkthrough_slow_path(&demo);
    demo.wait_for("demo: state READY", LIMIT);
    let pid = demo.answering_pid();

    let port = demo.port;
    let path = slow.clone();
    let request = std::thread::spawn(move || get(port, &path));
    demo.wait_for(&format!("demo: request GET {slow}"), LIMIT);
    demo.ctrl_c();
    demo.wait_for("demo: stopped accepting new connections", LIMIT);
    match TcpStream::connect(("127.0.0.1", port)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("a new connection after Ctrl-C was not refused: {other:?}"),
    }
    let answer = request.join().unwrap();
    let ms = slow.rsplit('=').next().unwrap();
    match &answer {
        Ok((200, body)) if *body == format!("slept {ms} ms\n") => {}
        _ => panic!("the slow request did not get its answer: {answer:?}; the demo printed:\n{}", demo.text()),
    }
    let status = demo.wait_exit(LIMIT);
    assert!(status.success(), "demo.sh exited with {status}; it printed:\n{}", demo.text());
    assert!(!alive(pid), "the server {pid} is still running");
    assert_in_order(&demo.text(), &readme_sample());
    demo.assert_nothing_left();
}

#[test]
fn after_an_upgrade_ctrl_c_still_stops_the_new_process() {
    let mut demo = Demo::start();
    demo.wait_for("demo: state READY", LIMIT);
    let old = demo.answering_pid();

    // SAFETY: kill(2) on the demo's server, which this test started.
    assert_eq!(unsafe { libc::kill(old, libc::SIGHUP) }, 0);
    let start = Instant::now();
    let new = loop {
        let pid = demo.answering_pid(); // the listener is shared: every request is answered
        if pid != old {
            break pid;
        }
        assert!(start.elapsed() < LIMIT, "no new process answers after SIGHUP; the demo printed:\n{}", demo.text());
        std::thread::sleep(Duration::from_millis(10));
    };
    let start = Instant::now();
    while alive(old) {
        assert!(start.elapsed() < LIMIT, "the old process {old} did not exit after handing over");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(demo.running(), "demo.sh exited with the old process; the new one {new} is left in the background");
    let ended = demo.wait_for("demo: run ended", LIMIT); // the old process's, the first
    assert_eq!(ended, "demo: run ended cleanly", "the old process did not hand over cleanly:\n{}", demo.text());
    let upgraded = format!("demo: upgraded: now pid {new}; Ctrl-C still stops it");
    let (_, after_upgrade) = demo.wait_for_from(&upgraded, 0, LIMIT);
    assert_eq!(
        proc_stat(new).map(|(_, _, pgrp, _)| pgrp),
        Some(demo.sid()),
        "the new process is in the terminal's foreground group"
    );
    assert_eq!(demo.answering_pid(), new);

    demo.ctrl_c();
    let status = demo.wait_exit(LIMIT);
    assert!(status.success(), "demo.sh exited with {status}; it printed:\n{}", demo.text());
    assert!(!alive(new), "the new process {new} is still running");
    assert_in_order(&demo.text()[after_upgrade..], &readme_sample());
    demo.assert_nothing_left();
    let walkthrough = demo.wait_for("kill -HUP", LIMIT);
    assert!(walkthrough.contains("upgrade"), "the walkthrough shows the upgrade: {walkthrough:?}");
    let after_hup = demo.wait_for("After kill -HUP", LIMIT);
    assert!(after_hup.contains("Ctrl-C stops it"), "the walkthrough says what Ctrl-C does after an upgrade: {after_hup:?}");
}
