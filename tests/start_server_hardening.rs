//! `start_server` against a local attacker (another unprivileged user) and against being
//! killed or fed bad numbers at any instant:
//!
//! - a spoofed `READY=1` from another uid on a worker's notify socket is ignored (and logged
//!   once); squatting the notify socket names does not delay an upgrade;
//! - the pid file and the status file's temporary are never written through a planted symlink
//!   (or hard link, or FIFO); `--stop` refuses a symlinked pid file;
//! - out-of-range numbers are clean errors at startup and warnings at run time, never a panic
//!   that orphans the workers;
//! - a SIGKILLed start_server's workers get `--signal-on-term` (PR_SET_PDEATHSIG) and exit;
//! - workers never inherit the lameduck library's private `LAMEDUCK_*` variables;
//! - `--restart` fails at once when start_server goes away while it waits.
//!
//! Every wait is for an event (a log line, a file, a socket), with generous limits.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Proc;

/// A limit on waiting for an event, never an expected duration.
const LIMIT: Duration = Duration::from_secs(60);

/// The start_server under test: ours, or the one `START_SERVER_HARDENING_BIN` names (to see
/// these tests fail against a build without the hardening).
fn ours() -> PathBuf {
    std::env::var_os("START_SERVER_HARDENING_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_start_server")), PathBuf::from)
}

fn scratch(name: &str) -> PathBuf {
    let dir = common::scratch_dir(&format!("start-server-hardening-{name}"));
    // The attacker (another uid) runs with its working directory at /; nothing here needs to be
    // readable by it, but the directory must not be private to the tests by accident either.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The status file's `generation:pid` entries.
fn status(path: &Path) -> Vec<(u64, i32)> {
    read(path)
        .lines()
        .filter_map(|l| {
            let (g, p) = l.split_once(':')?;
            Some((g.parse().ok()?, p.parse().ok()?))
        })
        .collect()
}

fn generations(path: &Path) -> Vec<u64> {
    status(path).into_iter().map(|(g, _)| g).collect()
}

/// Whether `pid` has exited (gone, or a zombie nobody reaped yet).
fn exited(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for the process.
    let gone = unsafe { libc::kill(pid, 0) } != 0;
    gone || read(Path::new(&format!("/proc/{pid}/stat"))).rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'))
}

/// A running start_server, stopped with SIGTERM (so it stops its workers) when dropped.
struct Running {
    proc: Proc,
}

impl Running {
    fn start(cmd: Command) -> Running {
        Running { proc: Proc::spawn(cmd) }
    }

    fn line(&self, needle: &str) -> String {
        self.proc.wait_line(true, needle, LIMIT)
    }

    fn stderr(&self) -> String {
        self.proc.text().1
    }

    /// The pid in the `n`th "starting new worker" line.
    fn worker(&self, n: usize) -> i32 {
        let line = self.proc.wait_nth_line("starting new worker ", n, LIMIT);
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    fn finish(mut self) -> (Option<i32>, String) {
        self.proc.signal(libc::SIGTERM);
        let proc = std::mem::replace(&mut self.proc, Proc::spawn(Command::new("true")));
        let (status, stderr) = proc.finish(LIMIT);
        (status.code(), stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.proc.terminate(Duration::from_secs(10));
    }
}

/// A worker that becomes ready only when `$DIR/go-<generation>` exists, and then reports
/// READY=1 from a child process (a descendant, as a shell wrapper's systemd-notify is), which
/// stays alive until the status file lists its generation. On TERM it leaves
/// `$DIR/term-<generation>` and exits.
const GATED_WORKER: &str = r#"
import os, signal, socket, time
d, gen, status = os.environ["DIR"], os.environ["SERVER_STARTER_GENERATION"], os.environ["STATUS"]
def on_term(*_):
    open(os.path.join(d, f"term-{gen}"), "w").close()
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
while not os.path.exists(os.path.join(d, f"go-{gen}")):
    time.sleep(0.02)
address = "\0" + os.environ["NOTIFY_SOCKET"][1:]
child = os.fork()
if child == 0:
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", address)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if any(line.startswith(gen + ":") for line in open(status)):
                break
        except OSError:
            pass
        time.sleep(0.02)
    os._exit(0)
os.waitpid(child, 0)
while True:
    time.sleep(3600)
"#;

/// start_server with the gated worker and an interval far longer than any test: only an
/// accepted READY=1 makes a worker count as started.
fn gated(dir: &Path) -> Running {
    let worker = dir.join("worker.py");
    std::fs::write(&worker, GATED_WORKER).unwrap();
    let status = dir.join("status");
    let mut cmd = Command::new(ours());
    cmd.args([format!("--port=127.0.0.1:{}", common::free_port()), "--interval=600".into(), format!("--status-file={}", status.display())])
        .arg("--")
        .arg("python3")
        .arg(&worker)
        .env("DIR", dir)
        .env("STATUS", &status);
    Running::start(cmd)
}

/// What an attacker does: every abstract socket whose name contains `start_server` in
/// /proc/net/unix gets READY=1. Prints how many it sent to.
const SPOOF: &str = r#"
import socket
sent = 0
for line in open("/proc/net/unix").read().splitlines()[1:]:
    fields = line.split()
    if len(fields) >= 8 and fields[7].startswith("@") and "start_server" in fields[7]:
        try:
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1\nSTATUS=spoofed", "\0" + fields[7][1:])
            sent += 1
        except OSError:
            pass
print(sent)
"#;

fn attacker_python(uid: u32, gid: u32, code: &str) -> Command {
    // /usr/bin/python3: the attacker cannot reach a python under root's home (pyenv).
    let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let mut cmd = Command::new(python);
    cmd.args(["-c", code]).current_dir("/");
    common::run_as(&mut cmd, uid, gid);
    cmd
}

#[test]
fn a_ready_spoofed_by_another_user_is_ignored() {
    let Some((uid, gid)) = common::attacker_user() else {
        eprintln!("not root: skipping the second-uid READY=1 spoofing test");
        return;
    };
    let dir = scratch("spoof");
    std::fs::write(dir.join("go-1"), "").unwrap();
    let run = gated(&dir);
    let status_path = dir.join("status");
    wait_until("generation 1", || generations(&status_path) == [1]);
    let first = run.worker(1);
    run.proc.signal(libc::SIGHUP);
    let second = run.worker(2);

    // Twice: the second batch must not log again (once per worker).
    for _ in 0..2 {
        let (code, stdout, stderr) = common::run_limited(attacker_python(uid, gid, SPOOF), LIMIT);
        assert!(code.success(), "the attacker failed: {stderr}");
        let sent: usize = stdout.trim().parse().unwrap();
        assert!(sent >= 2, "the attacker found the notify sockets in /proc/net/unix ({sent})");
    }
    let ignored = run.line(&format!("(not worker {second})"));
    assert!(ignored.contains(&format!("uid {uid}")), "{ignored}");
    let stderr = run.stderr();
    assert!(!stderr.contains("new worker is now running"), "accepted on a spoofed READY=1:\n{stderr}");
    assert_eq!(generations(&status_path), [1], "the new worker is still starting");
    assert!(!dir.join("term-1").exists(), "the old worker was not signalled");

    // The real READY=1 (from the worker's child) still works.
    std::fs::write(dir.join("go-2"), "").unwrap();
    run.line(&format!("new worker is now running, sending TERM to old workers:{first}"));
    wait_until("generation 2 alone", || generations(&status_path) == [2]);
    wait_until("the old worker's TERM", || dir.join("term-1").exists());
    let stderr = run.stderr();
    assert_eq!(stderr.matches(&format!("(not worker {second})")).count(), 1, "logged once per worker:\n{stderr}");
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stderr}");
}

/// Binds the names the notify sockets used to have (`start_server/<pid>/<generation>`) and
/// holds them.
const SQUAT: &str = r#"
import socket, sys, time
held = []
for generation in range(1, 200):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind("\0start_server/%s/%d" % (sys.argv[1], generation))
        held.append(s)
    except OSError:
        pass
print(len(held), flush=True)
time.sleep(600)
"#;

#[test]
fn squatted_notify_names_do_not_delay_an_upgrade() {
    let dir = scratch("squat");
    for generation in 1..=3 {
        std::fs::write(dir.join(format!("go-{generation}")), "").unwrap();
    }
    let run = gated(&dir);
    let status_path = dir.join("status");
    wait_until("generation 1", || generations(&status_path) == [1]);
    let mut squat = match common::attacker_user() {
        Some((uid, gid)) => attacker_python(uid, gid, SQUAT),
        None => {
            eprintln!("not root: squatting as this user instead of a second one");
            let mut cmd = Command::new("python3");
            cmd.args(["-c", SQUAT]);
            cmd
        }
    };
    squat.arg(run.proc.pid().to_string());
    let squatter = Proc::spawn(squat);
    let held: usize = squatter.wait_line(false, "", LIMIT).trim().parse().unwrap();
    assert!(held >= 190, "{held}");
    for n in 1..=2 {
        run.proc.signal(libc::SIGHUP);
        // --interval is 600 s: only a READY=1 on a working notify socket gets here in time.
        run.proc.wait_nth_line("new worker is now running", n, LIMIT);
        wait_until("the new generation alone", || generations(&status_path) == [n as u64 + 1]);
    }
    drop(squatter);
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stderr}");
}

/// A root-owned (when root) 0600 file with a secret in it.
fn victim(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn assert_untouched(path: &Path, content: &str) {
    assert_eq!(read(path), content, "{} was written to", path.display());
    assert_eq!(std::fs::metadata(path).unwrap().mode() & 0o7777, 0o600, "{} changed mode", path.display());
}

fn start_server_output(args: &[String]) -> (Option<i32>, String) {
    let mut cmd = Command::new(ours());
    cmd.args(args);
    let (status, _, stderr) = common::run_limited(cmd, LIMIT);
    (status.code(), stderr)
}

#[test]
fn planted_pid_files_are_refused_and_their_targets_untouched() {
    let dir = common::shared_dir("start-server-pidfile");
    let secret = "secret\n";
    let target = victim(&dir, "victim", secret);
    let serve = |pid_file: &Path| {
        start_server_output(&[format!("--pid-file={}", pid_file.display()), "--port=127.0.0.1:0".into(), "--".into(), "sleep".into(), "60".into()])
    };

    let link = dir.join("pid");
    common::plant_symlink(&target, &link);
    let (code, stderr) = serve(&link);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains(&format!("failed to open file:{}:it is a symbolic link", link.display())), "{stderr}");
    assert!(!stderr.contains("starting new worker"), "{stderr}");
    assert_untouched(&target, secret);

    let hard = dir.join("pid-hard");
    std::fs::hard_link(&target, &hard).unwrap();
    let (code, stderr) = serve(&hard);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains(&hard.display().to_string()) && stderr.contains("hard links"), "{stderr}");
    assert_untouched(&target, secret);

    let fifo = dir.join("pid-fifo");
    let c_fifo = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o644) }, 0);
    let (code, stderr) = serve(&fifo);
    assert_eq!(code, Some(255), "a FIFO is refused at once, without blocking: {stderr}");
    assert!(stderr.contains(&fifo.display().to_string()), "{stderr}");

    let a_dir = dir.join("pid-dir");
    std::fs::create_dir(&a_dir).unwrap();
    let (code, stderr) = serve(&a_dir);
    assert_eq!(code, Some(255), "{stderr}");

    // --stop and --restart through a symlinked pid file: refused; the pid it names is not
    // signalled.
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let names_pid = victim(&dir, "victim-pid", &format!("{}\n", sleeper.id()));
    let link = dir.join("pid-to-sleeper");
    common::plant_symlink(&names_pid, &link);
    let status_file = dir.join("status");
    std::fs::write(&status_file, "1:1\n").unwrap();
    for args in [vec!["--stop".to_string()], vec!["--restart".into(), format!("--status-file={}", status_file.display())]] {
        let mut args = args;
        args.push(format!("--pid-file={}", link.display()));
        let (code, stderr) = start_server_output(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("it is a symbolic link"), "{stderr}");
        assert!(sleeper.try_wait().unwrap().is_none(), "{args:?} signalled the pid behind the symlink");
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_planted_status_temporary_is_not_followed() {
    let dir = scratch("status");
    let secret = "secret\n";
    let target = victim(&dir, "victim", secret);
    let status_path = dir.join("status");
    // The temporary is named after start_server's pid: a shell plants the link for its own pid,
    // then becomes start_server (exec keeps the pid).
    let mut cmd = Command::new("sh");
    cmd.args(["-c", r#"ln -s "$VICTIM" "$STATUS.$$" && exec "$BIN" --port=127.0.0.1:0 --interval=0.1 --status-file="$STATUS" -- sleep 600"#])
        .env("VICTIM", &target)
        .env("STATUS", &status_path)
        .env("BIN", ours());
    let run = Running::start(cmd);
    let planted = dir.join(format!("status.{}", run.proc.pid()));
    wait_until("generation 1", || generations(&status_path) == [1]);
    run.line("already exists (not ours)");
    run.proc.signal(libc::SIGHUP);
    wait_until("generation 2 alone", || generations(&status_path) == [2]);
    assert!(std::fs::symlink_metadata(&status_path).unwrap().file_type().is_file(), "the status file is a file of its own");
    assert_eq!(std::fs::read_link(&planted).unwrap(), target, "the planted link is left as it was");
    assert_untouched(&target, secret);
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("status."))
        .collect();
    assert_eq!(leftovers, [format!("status.{}", run.proc.pid())], "no temporary left behind");
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert_untouched(&target, secret);
}

#[test]
fn out_of_range_numbers_fail_at_startup_without_a_panic() {
    let dir = scratch("numbers");
    let envdir = dir.join("env");
    std::fs::create_dir_all(&envdir).unwrap();
    std::fs::write(envdir.join("KILL_OLD_DELAY"), "1e20\n").unwrap();
    let envdir_option = format!("--envdir={}", envdir.display());
    // (extra arguments, environment, what the message must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--interval=1e20"], vec![], "1e20"),
        (vec!["--interval=1e19"], vec![], "1e19"),
        (vec!["--interval=NaN"], vec![], "NaN"),
        (vec!["--interval=-1"], vec![], "-1"),
        (vec!["--interval=99999999999999999999"], vec![], "99999999999999999999"),
        (vec!["--kill-old-delay=1e20"], vec![], "1e20"),
        (vec!["--auto-restart-interval=inf"], vec![], "inf"),
        (vec!["--port=127.0.0.1:0=2147483647"], vec![], "2147483647"),
        (vec![], vec![("KILL_OLD_DELAY", "1e20")], "KILL_OLD_DELAY=\"1e20\""),
        (vec![], vec![("ENABLE_AUTO_RESTART", "1"), ("AUTO_RESTART_INTERVAL", "1e20")], "AUTO_RESTART_INTERVAL=\"1e20\""),
        (vec![], vec![("KILL_OLD_DELAY", "NaN")], "KILL_OLD_DELAY=\"NaN\""),
        (vec![], vec![("KILL_OLD_DELAY", "-5")], "KILL_OLD_DELAY=\"-5\""),
        (vec![], vec![("AUTO_RESTART_INTERVAL", "18446744073709551616")], "AUTO_RESTART_INTERVAL=\"18446744073709551616\""),
        (vec![envdir_option.as_str()], vec![], "KILL_OLD_DELAY=\"1e20\""),
    ];
    for (args, env, named) in cases {
        let mut cmd = Command::new(ours());
        cmd.arg("--port=127.0.0.1:0").args(&args).args(["--", "sleep", "60"]);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let (status, _, stderr) = common::run_limited(cmd, Duration::from_secs(20));
        let what = format!("{args:?} {env:?}");
        assert!(!status.success(), "{what}: started");
        assert_ne!(status.code(), Some(101), "{what}: panicked: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert!(stderr.contains(named), "{what}: the message names {named}: {stderr}");
        assert!(!stderr.contains("starting new worker"), "{what}: {stderr}");
        if !env.is_empty() || args.iter().any(|a| a.starts_with("--envdir") || a.starts_with("--port")) {
            assert_eq!(status.code(), Some(255), "{what}: {stderr}");
        }
    }
}

/// Writes an envdir file atomically (a dot file is not read), so start_server never sees half.
fn put(envdir: &Path, name: &str, content: &[u8]) {
    let tmp = envdir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, envdir.join(name)).unwrap();
}

#[test]
fn bad_envdir_values_at_run_time_are_warnings_and_upgrades_go_on() {
    let dir = scratch("envdir");
    let envdir = dir.join("env");
    std::fs::create_dir_all(&envdir).unwrap();
    put(&envdir, "KILL_OLD_DELAY", b"0\n");
    put(&envdir, "FOO", b"one\n");
    let status_path = dir.join("status");
    let mut cmd = Command::new(ours());
    cmd.args([
        format!("--port=127.0.0.1:{}", common::free_port()),
        format!("--status-file={}", status_path.display()),
        format!("--envdir={}", envdir.display()),
        "--".into(),
        "python3".into(),
        common::repo().join("tests/start_server/worker.py").display().to_string(),
    ])
    .env("REPORT_DIR", &dir);
    let run = Running::start(cmd);
    wait_until("generation 1", || generations(&status_path) == [1]);

    put(&envdir, "KILL_OLD_DELAY", b"1e20\n");
    put(&envdir, "AUTO_RESTART_INTERVAL", b"NaN\n");
    put(&envdir, "BAD", b"a\0b\n");
    put(&envdir, "FOO", b"two\n");
    for generation in [2, 3] {
        run.proc.signal(libc::SIGHUP);
        wait_until(&format!("generation {generation} alone"), || generations(&status_path) == [generation]);
    }
    let stderr = run.stderr();
    for warning in ["ignoring KILL_OLD_DELAY=\"1e20\"", "ignoring AUTO_RESTART_INTERVAL=\"NaN\"", "BAD: its value contains a NUL byte"] {
        assert_eq!(stderr.matches(warning).count(), 1, "{warning:?} logged once:\n{stderr}");
    }
    assert!(!stderr.contains("sleeping"), "the old KILL_OLD_DELAY (0) stays in force:\n{stderr}");
    let report = dir.join("3.env");
    wait_until("generation 3's report", || report.exists());
    assert!(read(&report).contains("FOO=two\n"), "the good values still apply");
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn workers_get_the_signal_on_term_when_start_server_is_killed() {
    let dir = scratch("pdeathsig");
    let (port, status_path) = (common::free_port(), dir.join("status"));
    let mut cmd = Command::new(ours());
    cmd.args([
        format!("--port=127.0.0.1:{port}"),
        format!("--status-file={}", status_path.display()),
        "--signal-on-term=USR1".into(),
        "--".into(),
        "python3".into(),
        common::repo().join("tests/start_server/worker.py").display().to_string(),
    ])
    .env("REPORT_DIR", &dir);
    let run = Running::start(cmd);
    wait_until("generation 1", || generations(&status_path) == [1]);
    let worker = status(&status_path)[0].1;
    assert!(common::get_body(port, LIMIT).starts_with("1:"));
    run.proc.signal(libc::SIGKILL);
    let start = Instant::now();
    while !exited(worker) {
        if start.elapsed() > LIMIT {
            // SAFETY: cleaning up the orphan this test made.
            unsafe { libc::kill(worker, libc::SIGKILL) };
            panic!("worker {worker} outlived its start_server");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read(&dir.join(format!("signal-{worker}"))), "USR1", "the worker got --signal-on-term");
    wait_until("the port to be free", || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
}

#[test]
fn lameduck_private_variables_never_reach_workers() {
    let dir = scratch("env");
    let envdir = dir.join("envdir");
    std::fs::create_dir_all(&envdir).unwrap();
    put(&envdir, "LAMEDUCK_FROM_ENVDIR", b"1\n");
    put(&envdir, "FOO", b"bar\n");
    let report = r#"env > "$DIR/.env.tmp" && mv "$DIR/.env.tmp" "$DIR/env.$SERVER_STARTER_GENERATION"; exec sleep 600"#;
    let mut cmd = Command::new(ours());
    cmd.args([
        format!("--port=127.0.0.1:{}", common::free_port()),
        format!("--port=127.0.0.1:{}", common::free_port()),
        format!("--envdir={}", envdir.display()),
        "--interval=0.1".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        report.into(),
    ])
    .env("DIR", &dir)
    .env("LAMEDUCK_OWNED_FDS", "3")
    .env("LAMEDUCK_READY_FD", "5")
    .env("LAMEDUCK_READY_PID", "1")
    .env("LISTEN_FDNAMES", "stale")
    .env("NOTIFY_SOCKET", "");
    let run = Running::start(cmd);
    for generation in [1, 2] {
        if generation == 2 {
            run.proc.signal(libc::SIGHUP);
        }
        let worker = run.worker(generation);
        let path = dir.join(format!("env.{generation}"));
        wait_until(&path.display().to_string(), || path.exists());
        let env = read(&path);
        let lines: Vec<&str> = env.lines().collect();
        assert!(!lines.iter().any(|l| l.starts_with("LAMEDUCK_")), "generation {generation}:\n{env}");
        for wanted in [
            format!("SERVER_STARTER_GENERATION={generation}"),
            "FOO=bar".to_string(),
            "LISTEN_FDS=2".into(),
            format!("LISTEN_PID={worker}"),
        ] {
            assert!(lines.contains(&wanted.as_str()), "{wanted} in generation {generation}:\n{env}");
        }
        assert!(lines.iter().any(|l| l.starts_with("NOTIFY_SOCKET=@start_server/")), "{env}");
        assert!(lines.iter().any(|l| l.starts_with("SERVER_STARTER_PORT=127.0.0.1:")), "{env}");
        assert!(!lines.iter().any(|l| l.starts_with("LISTEN_FDNAMES=")), "{env}");
    }
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn restart_fails_fast_when_start_server_goes_away() {
    let dir = scratch("restart");
    let (pid_file, status_path) = (dir.join("pid"), dir.join("status"));
    let files = [format!("--pid-file={}", pid_file.display()), format!("--status-file={}", status_path.display())];
    // Generation 1 serves; every later one exits at once, well within --interval: --restart
    // would wait for it (Perl's: forever).
    let script = r#"[ "$SERVER_STARTER_GENERATION" = 1 ] || exit 1; exec python3 "$WORKER""#;
    let mut cmd = Command::new(ours());
    cmd.args([format!("--port=127.0.0.1:{}", common::free_port()), "--interval=2".into()])
        .args(&files)
        .args(["--", "sh", "-c", script])
        .env("WORKER", common::repo().join("tests/start_server/worker.py"));
    let run = Running::start(cmd);
    wait_until("generation 1", || generations(&status_path) == [1]);
    let mut restart = Command::new(ours());
    restart.arg("--restart").args(&files);
    let restart = Proc::spawn(restart);
    run.line("seems to have failed to start");
    run.proc.signal(libc::SIGKILL);
    let killed = Instant::now();
    let (status, stderr) = restart.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(stderr.contains(&format!("start_server (pid:{}) exited before a new generation took over", run.proc.pid())), "{stderr}");
    assert!(killed.elapsed() < Duration::from_secs(20), "it took {:?}", killed.elapsed());
}
