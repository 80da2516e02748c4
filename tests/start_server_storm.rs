//! `start_server` under stress, with real processes, real signals and real load:
//!
//! - a HUP storm (50 SIGHUPs 20 ms apart) with lameduck C workers (examples/http_server.c, 3 s
//!   lame-duck period) under keep-alive load, with slow requests started during the storm so old
//!   workers are still in lame-duck when later generations arrive. Nothing may be lost, and no
//!   worker may see a repeated signal: start_server sends each old worker `--signal-on-hup`
//!   once. The same storm runs against Perl's start_server when it is installed; its losses are
//!   printed, not asserted (it signals every old worker again at every generation);
//! - a TERM to start_server while an old worker is still in lame-duck: that worker already had
//!   its TERM, so it is not sent another (which would cut its requests);
//! - a SIGHUP to start_server's whole process group (a closed terminal, `kill -HUP -PGID`): the
//!   workers ignore it (lameduck under start_server does not upgrade itself), start_server
//!   makes one new generation, and `--stop` leaves nothing behind.
//!
//! The same storm with Python and Node workers lives in the bindings' suites
//! (bindings/python/tests/test_storm.py, bindings/node/test/storm.test.js), which run once
//! those packages are built.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use common::load::Load;
use common::Proc;

/// Generous: these are limits on waiting for events, never expected durations.
const LIMIT: Duration = Duration::from_secs(60);
/// The storm's generations start one after another: on a busy machine that takes a while.
const STORM_LIMIT: Duration = Duration::from_secs(240);
const HUPS: usize = 50;

/// The tests here each load the 2 cores fully: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ours() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_start_server"))
}

fn perl() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/start_server");
    path.exists().then_some(path)
}

fn demo() -> PathBuf {
    common::build_c("http_server_storm", &["examples/http_server.c"])
}

fn scratch(name: &str) -> PathBuf {
    common::scratch_dir(&format!("start-server-storm-{name}"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    let stat = read(Path::new(&format!("/proc/{pid}/stat")));
    stat.is_empty() || stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// Live (not zombie) processes in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = read(&entry.path().join("stat"));
        // pid (comm) state ppid pgrp ...
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            pids.push(pid);
        }
    }
    pids
}

/// A start_server in its own process group (so its workers can be found, and killed, by the
/// group). Dropping it sends TERM (start_server stops its workers), then SIGKILLs whatever is
/// left in the group.
struct Starter {
    proc: Proc,
    pgid: i32,
}

impl Starter {
    fn spawn(bin: &Path, args: &[String], worker: &[&std::ffi::OsStr]) -> Starter {
        let mut cmd = Command::new(bin);
        cmd.args(args).arg("--").args(worker).process_group(0);
        // Leaks and UB in the ASan demo fail it (exit status), like the other C tests.
        cmd.env("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1:abort_on_error=0")
            .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
            .env_remove("NOTIFY_SOCKET");
        let proc = Proc::spawn(cmd);
        let pgid = proc.pid();
        Starter { proc, pgid }
    }

    fn stderr(&self) -> String {
        self.proc.text().1
    }

    fn nth(&self, needle: &str, n: usize) -> String {
        self.proc.wait_nth_line(needle, n, LIMIT)
    }
}

impl Drop for Starter {
    fn drop(&mut self) {
        self.proc.terminate(Duration::from_secs(20));
        // SAFETY: kill(2) on the process group this test created; ESRCH when it is empty.
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
    }
}

/// `N` from every stderr line `starting new worker N`.
fn started(stderr: &str) -> Vec<i32> {
    stderr.lines().filter_map(|l| l.strip_prefix("starting new worker ")?.trim().parse().ok()).collect()
}

/// Every `... worker N died, status:S` line whose status is not 0 (Perl's raw wait status).
fn bad_exits(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains("worker ") && l.contains(" died, status:") && !l.ends_with(" died, status:0"))
        .map(str::to_string)
        .collect()
}

/// The core's log lines for a repeated stop signal ("Received signal [SIGTERM] again; forcing
/// close now ..."), and the demo's "connection(s) still open at the deadline".
fn repeat_signal_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains("again;") || l.contains("forcing close") || l.contains("still open at the deadline"))
        .map(str::to_string)
        .collect()
}

/// `GET /sleep?ms=2000` on its own connection; Ok once the whole 200 answer arrived.
fn slow_request(port: u16) -> JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.write_all(b"GET /sleep?ms=2000 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = String::new();
        let read = s.read_to_string(&mut answer);
        if answer.starts_with("HTTP/1.1 200") && answer.ends_with("slept 2000 ms\n") {
            Ok(())
        } else {
            Err(format!("answer {answer:?} ({read:?})"))
        }
    })
}

struct StormResult {
    /// HUPs start_server acted on: fewer than were sent when some arrived while one was still
    /// pending (the process not scheduled for 20 ms on a busy machine), as the kernel merges
    /// those.
    hups: usize,
    ok: u64,
    lost: Vec<String>,
    slow_lost: Vec<String>,
    stderr: String,
}

/// The HUP storm against `bin` (see the module doc); waits until it has settled: the slow
/// requests answered (or cut), every HUP acted on (each "received HUP" line has its "killing old
/// workers"), old workers all gone (one generation in the status file). Then stops start_server.
fn hup_storm(bin: &Path, extra: &[&str]) -> StormResult {
    let dir = scratch("hup");
    let (port, status) = (common::free_port(), dir.join("status"));
    let address = format!("127.0.0.1:{port}");
    let mut args = vec![format!("--port={address}"), format!("--status-file={}", status.display())];
    args.extend(extra.iter().map(|s| s.to_string()));
    let demo = demo();
    let worker = [demo.as_os_str(), "--listen".as_ref(), address.as_ref(), "--period".as_ref(), "3000".as_ref()];
    let run = Starter::spawn(bin, &args, &worker);
    run.nth("demo: state READY", 1);
    wait_until("generation 1", LIMIT, || common::status_entries(&status).len() == 1);

    let load = Load::start(port, 20);
    load.wait_for_more(50, LIMIT);
    let mut slow = Vec::new();
    for n in 1..=HUPS {
        run.proc.signal(libc::SIGHUP);
        if n % 10 == 5 {
            slow.push(slow_request(port));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let slow_lost: Vec<String> = slow.into_iter().filter_map(|t| t.join().unwrap().err()).collect();
    let count = |needle: &str| run.stderr().matches(needle).count();
    wait_until("the storm to settle", STORM_LIMIT, || {
        let hups = count("received HUP, spawning a new worker");
        hups > 0 && hups == count("killing old workers") && common::status_entries(&status).len() == 1
    });
    let hups = count("received HUP, spawning a new worker");
    load.wait_for_more(50, LIMIT);
    let (ok, lost) = load.stop();

    run.proc.signal(libc::SIGTERM);
    run.nth("exiting", 1);
    let stderr = run.stderr();
    drop(run);
    StormResult { hups, ok, lost, slow_lost, stderr }
}

#[test]
fn a_hup_storm_loses_nothing_and_signals_each_old_worker_once() {
    let _serial = serial();
    // A long interval: only the worker's READY=1 makes it count as started.
    let r = hup_storm(&ours(), &["--interval=10"]);
    eprintln!(
        "ours, C worker, {HUPS} HUPs sent, {} taken: {} requests ok, {} lost, {} of 5 slow requests lost",
        r.hups,
        r.ok,
        r.lost.len(),
        r.slow_lost.len()
    );
    let starts = started(&r.stderr);
    assert_eq!(starts.len(), r.hups + 1, "one worker per HUP taken:\n{}", r.stderr);
    assert!(r.lost.is_empty(), "{} of {} requests failed: {:?}\n{}", r.lost.len(), r.ok + r.lost.len() as u64, r.lost, r.stderr);
    assert!(r.slow_lost.is_empty(), "slow requests lost: {:?}\n{}", r.slow_lost, r.stderr);
    assert_eq!(repeat_signal_lines(&r.stderr), Vec::<String>::new(), "a worker saw a repeated signal:\n{}", r.stderr);
    assert_eq!(bad_exits(&r.stderr), Vec::<String>::new(), "every worker exits 0:\n{}", r.stderr);
    assert_eq!(r.stderr.matches(" died, status:0").count(), starts.len(), "every worker's exit is logged:\n{}", r.stderr);

    let Some(perl) = perl() else {
        eprintln!("Perl's start_server is not installed (libserver-starter-perl): not comparing");
        return;
    };
    // Perl's --interval is whole seconds and it waits out all of it for every generation
    // (50 s for this storm at its default of 1); 0 starts the next one at once.
    let p = hup_storm(&perl, &["--interval=0"]);
    eprintln!(
        "perl, C worker, {HUPS} HUPs sent, {} taken: {} requests ok, {} lost, {} of 5 slow requests lost, {} repeated-signal lines, {} workers died with a non-zero status",
        p.hups,
        p.ok,
        p.lost.len(),
        p.slow_lost.len(),
        repeat_signal_lines(&p.stderr).len(),
        bad_exits(&p.stderr).len()
    );
}

#[test]
fn a_group_sighup_gives_one_generation_and_stop_leaves_nothing() {
    let _serial = serial();
    let dir = scratch("group");
    let (port, status, pid_file) = (common::free_port(), dir.join("status"), dir.join("pid"));
    let address = format!("127.0.0.1:{port}");
    let args = vec![
        format!("--port={address}"),
        format!("--status-file={}", status.display()),
        format!("--pid-file={}", pid_file.display()),
        "--interval=10".to_string(),
    ];
    let demo = demo();
    let worker = [demo.as_os_str(), "--listen".as_ref(), address.as_ref(), "--period".as_ref(), "3000".as_ref()];
    let run = Starter::spawn(&ours(), &args, &worker);
    run.nth("demo: state READY", 1);
    wait_until("generation 1", LIMIT, || common::status_entries(&status).len() == 1);
    let (_, first) = common::status_entries(&status)[0];
    let load = Load::start(port, 4);
    load.wait_for_more(20, LIMIT);

    // SAFETY: kill(2) on the process group this test created.
    assert_eq!(unsafe { libc::kill(-run.pgid, libc::SIGHUP) }, 0);
    run.nth("received HUP, spawning a new worker", 1);
    run.nth(&format!("old worker {first} died, status:0"), 1);
    wait_until("generation 2 alone", LIMIT, || common::status_entries(&status).iter().map(|e| e.0).eq([2]));
    let (_, second) = common::status_entries(&status)[0];
    load.wait_for_more(20, LIMIT);
    let answers: Vec<String> = (0..10).map(|_| hello(port)).collect();
    let expected = format!("hello from lameduck (pid {second})");
    assert!(answers.iter().all(|a| *a == expected), "{answers:?}, expected {expected:?}\n{}", run.stderr());
    let mut members = group_members(run.pgid);
    members.sort_unstable();
    let mut want = vec![run.pgid, second];
    want.sort_unstable();
    assert_eq!(members, want, "start_server and one worker, nothing else:\n{}", run.stderr());
    load.stop_expecting_no_loss();

    let (code, _, stderr) = common::run_limited(
        {
            let mut c = Command::new(ours());
            c.arg("--stop").arg(format!("--pid-file={}", pid_file.display()));
            c
        },
        LIMIT,
    );
    assert_eq!(code.code(), Some(0), "{stderr}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing listens on {port} after --stop");
    let stderr = run.stderr();
    for pid in started(&stderr) {
        assert!(gone(pid), "worker {pid} is still alive after --stop:\n{stderr}");
    }
    assert_eq!(group_members(run.pgid), Vec::<i32>::new(), "nothing left in the group:\n{stderr}");
    assert_eq!(bad_exits(&stderr), Vec::<String>::new(), "{stderr}");
}

#[test]
fn term_during_an_old_workers_lame_duck_is_not_a_repeat() {
    let _serial = serial();
    let port = common::free_port();
    let address = format!("127.0.0.1:{port}");
    let demo = demo();
    let worker = [demo.as_os_str(), "--listen".as_ref(), address.as_ref(), "--period".as_ref(), "3000".as_ref()];
    let run = Starter::spawn(&ours(), &[format!("--port={address}"), "--interval=10".into()], &worker);
    run.nth("demo: state READY", 1);
    let slow = slow_request(port);
    run.nth("demo: request GET /sleep?ms=2000", 1);
    run.proc.signal(libc::SIGHUP);
    run.nth("killing old workers", 1);
    run.nth("entering lame-duck mode", 1);
    // The old worker already has its TERM: start_server's TERM to all workers skips it.
    run.proc.signal(libc::SIGTERM);
    run.nth("exiting", 1);
    let stderr = run.stderr();
    assert_eq!(slow.join().unwrap(), Ok(()), "{stderr}");
    assert_eq!(repeat_signal_lines(&stderr), Vec::<String>::new(), "{stderr}");
    assert_eq!(bad_exits(&stderr), Vec::<String>::new(), "{stderr}");
    let mut starts = started(&stderr);
    starts.sort_unstable();
    let everyone = starts.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    assert!(
        stderr.contains(&format!("received TERM, sending TERM to all workers:{everyone}")),
        "the log still lists every worker:\n{stderr}"
    );
}

/// `GET /` on a new connection; the body's first line.
fn hello(port: u16) -> String {
    common::get_body(port, LIMIT)
}
