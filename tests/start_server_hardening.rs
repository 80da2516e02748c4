//! `start_server` against a local attacker (another unprivileged user) and against being
//! killed or fed bad numbers at any instant:
//!
//! - another user cannot reach a worker's notify socket at all (it is in a private 0700
//!   directory), so flooding it delays nothing; a `READY=1` from a process of start_server's own
//!   user that is not the worker's is ignored (and logged once);
//! - the pid file, the status file's temporary and the `--log-file` are never written through a
//!   planted symlink (or hard link, or FIFO); `--stop`/`--restart` signal nothing through a
//!   symlinked, foreign or stale (unlocked) pid file;
//! - a FIFO in the envdir blocks nothing; a `--path` socket that was replaced is not removed;
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
    std::env::var_os("START_SERVER_HARDENING_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_start_server")), PathBuf::from)
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

fn generations(path: &Path) -> Vec<u64> {
    common::status_entries(path).into_iter().map(|(g, _)| g).collect()
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
/// says so on stderr first (`worker <generation> sends READY=1`) and stays alive until the
/// status file lists its generation (or the worker is gone). On TERM it leaves
/// `$DIR/term-<generation>` and exits.
const GATED_WORKER: &str = r#"
import os, signal, socket, sys, time
d, gen, status = os.environ["DIR"], os.environ["SERVER_STARTER_GENERATION"], os.environ["STATUS"]
def on_term(*_):
    open(os.path.join(d, f"term-{gen}"), "w").close()
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
while not os.path.exists(os.path.join(d, f"go-{gen}")):
    time.sleep(0.02)
address = os.environ["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\0" + address[1:]
worker = os.getpid()
child = os.fork()
if child == 0:
    sys.stderr.write(f"worker {gen} sends READY=1\n")
    sys.stderr.flush()
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", address)
    # Until start_server has surely read it (or the worker is gone: a child that slept through
    # its generation's time in the status file must not hold the test's stderr pipe open).
    deadline = time.time() + 120
    while time.time() < deadline and os.getppid() == worker:
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
    cmd.args([
        format!("--port=127.0.0.1:{}", common::free_port()),
        "--interval=600".into(),
        format!("--status-file={}", status.display()),
    ])
    .arg("--")
    .arg("python3")
    .arg(&worker)
    .env("DIR", dir)
    .env("STATUS", &status);
    Running::start(cmd)
}

fn attacker_python(uid: u32, gid: u32, code: &str) -> Command {
    // /usr/bin/python3: the attacker cannot reach a python under root's home (pyenv).
    let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let mut cmd = Command::new(python);
    cmd.args(["-c", code]).current_dir("/");
    common::run_as(&mut cmd, uid, gid);
    cmd
}

/// A worker's `NOTIFY_SOCKET`, from `/proc/<pid>/environ`, once it has exec'd (until then
/// /proc shows start_server's own environment: waited for until `SERVER_STARTER_GENERATION`
/// is there, which start_server's own environment lacks).
fn notify_socket_of(pid: i32) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let has = |environ: &[u8], name: &[u8]| environ.split(|b| *b == 0).find_map(|e| e.strip_prefix(name)).map(<[u8]>::to_vec);
    // One read for both: the worker may exec again in between (a `python3` shim execs the real
    // one), and /proc shows an empty environment for the instant of an exec.
    let mut environ = Vec::new();
    wait_until(&format!("worker {pid} to exec"), || {
        environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        has(&environ, b"SERVER_STARTER_GENERATION=").is_some()
    });
    let entry = has(&environ, b"NOTIFY_SOCKET=").expect("NOTIFY_SOCKET is set");
    PathBuf::from(std::ffi::OsString::from_vec(entry))
}

/// Removes the private notify directory a SIGKILLed start_server left behind (harmless, but a
/// test should not leave litter), found through one of its workers' `NOTIFY_SOCKET`.
struct NotifyDirLitter(Option<PathBuf>);

impl NotifyDirLitter {
    fn of_worker(pid: i32) -> NotifyDirLitter {
        let socket = notify_socket_of(pid);
        NotifyDirLitter(
            socket
                .parent()
                .filter(|d| d.file_name().is_some_and(|n| n.to_string_lossy().starts_with("start_server.")))
                .map(Path::to_path_buf),
        )
    }
}

impl Drop for NotifyDirLitter {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn a_ready_from_a_process_that_is_not_the_workers_is_ignored() {
    let dir = scratch("spoof");
    std::fs::write(dir.join("go-1"), "").unwrap();
    let run = gated(&dir);
    let status_path = dir.join("status");
    wait_until("generation 1", || generations(&status_path) == [1]);
    let first = run.worker(1);
    run.proc.signal(libc::SIGHUP);
    let second = run.worker(2);

    // This test process runs as start_server's user and can reach the socket, but it is not the
    // new worker nor one of its descendants (and it is alive, so start_server can tell). Twice:
    // the second must not be logged again (once per worker).
    let address = notify_socket_of(second);
    let spoofer = std::os::unix::net::UnixDatagram::unbound().unwrap();
    for _ in 0..2 {
        match address.to_str().and_then(|a| a.strip_prefix('@')) {
            // (an abstract name: START_SERVER_HARDENING_BIN is an older build)
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let abstract_address = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
                spoofer.send_to_addr(b"READY=1\nSTATUS=spoofed", &abstract_address).unwrap();
            }
            None => {
                spoofer.send_to(b"READY=1\nSTATUS=spoofed", &address).unwrap();
            }
        }
    }
    let ignored_mark = format!("(not worker {second})");
    wait_until("the spoofed READY=1 to be handled", || {
        let stderr = run.stderr();
        stderr.contains(&ignored_mark) || stderr.contains("new worker is now running")
    });
    assert!(!run.stderr().contains("new worker is now running"), "accepted on a spoofed READY=1:\n{}", run.stderr());
    let ignored = run.line(&ignored_mark);
    // SAFETY: getuid cannot fail.
    assert!(ignored.contains(&format!("pid {} uid {}", std::process::id(), unsafe { libc::getuid() })), "{ignored}");

    // The real READY=1 (from the worker's child) still works. A spoofed READY=1 accepted in the
    // loop pass that logged "ignored" would have logged "new worker is now running" before the
    // worker's child said it sends READY=1 (which only go-2 lets it do).
    std::fs::write(dir.join("go-2"), "").unwrap();
    run.line(&format!("new worker is now running, sending TERM to old workers:{first}"));
    wait_until("generation 2 alone", || generations(&status_path) == [2]);
    wait_until("the old worker's TERM", || dir.join("term-1").exists());
    let stderr = run.stderr();
    let sends = stderr.find("worker 2 sends READY=1").expect("the worker's child reported READY=1");
    let accepted = stderr.find("new worker is now running").unwrap();
    assert!(sends < accepted, "accepted before the real READY=1, on the spoofed one:\n{stderr}");
    assert!(stderr.find(&format!("(not worker {second})")).unwrap() < sends, "{stderr}");
    assert_eq!(stderr.matches(&format!("(not worker {second})")).count(), 1, "logged once per worker:\n{stderr}");
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stderr}");
}

/// What an attacker does: every unix socket whose path contains `start_server` in
/// /proc/net/unix (other tests' too) gets `READY=1` and a connect, argv[1] times over. Prints
/// `path P` per socket, `attempts N`, `sent N` (what got through) and `error ERRNO N` lines.
const FLOOD: &str = r#"
import errno, socket, sys
paths = []
for line in open("/proc/net/unix").read().splitlines()[1:]:
    fields = line.split()
    if len(fields) >= 8 and "start_server" in fields[7]:
        paths.append(fields[7])
sent, errors = 0, {}
for path in paths:
    address = "\0" + path[1:] if path.startswith("@") else path
    for _ in range(int(sys.argv[1])):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.setblocking(False)
        try:
            s.sendto(b"READY=1\nSTATUS=spoofed", address)
            sent += 1
        except OSError as e:
            errors[errno.errorcode.get(e.errno, str(e.errno))] = errors.get(errno.errorcode.get(e.errno, str(e.errno)), 0) + 1
        try:
            s.connect(address)
            sent += 1
        except OSError as e:
            errors[errno.errorcode.get(e.errno, str(e.errno))] = errors.get(errno.errorcode.get(e.errno, str(e.errno)), 0) + 1
        s.close()
for path in paths:
    print("path", path)
print("attempts", 2 * int(sys.argv[1]) * len(paths))
print("sent", sent)
for name, count in sorted(errors.items()):
    print("error", name, count)
"#;

#[test]
fn other_users_cannot_reach_the_notify_socket_and_a_flood_delays_nothing() {
    let dir = scratch("flood");
    std::fs::write(dir.join("go-1"), "").unwrap();
    let run = gated(&dir);
    let status_path = dir.join("status");
    wait_until("generation 1", || generations(&status_path) == [1]);
    let first = run.worker(1);
    // The worker's socket: a path in a private directory of start_server's user.
    let address = notify_socket_of(first);
    assert!(address.is_absolute(), "a socket path, not an abstract name: {}", address.display());
    let private = address.parent().unwrap().to_path_buf();
    let meta = std::fs::symlink_metadata(&private).unwrap();
    assert!(meta.is_dir() && meta.mode() & 0o7777 == 0o700, "{}: {:o}", private.display(), meta.mode());
    // SAFETY: geteuid cannot fail.
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    assert!(read(Path::new("/proc/net/unix")).contains(&address.display().to_string()), "listed, as every bound socket");

    run.proc.signal(libc::SIGHUP);
    let second = run.worker(2);
    let second_address = notify_socket_of(second);
    assert_eq!(second_address.parent(), Some(private.as_path()), "one directory per start_server");
    match common::attacker_user() {
        Some((uid, gid)) => {
            // 2 × 2000 datagrams and connects per socket: enough to fill any receive queue.
            let mut flood = attacker_python(uid, gid, FLOOD);
            flood.arg("2000");
            let (code, stdout, stderr) = common::run_limited(flood, LIMIT);
            assert!(code.success(), "the attacker failed: {stderr}");
            let lines: Vec<&str> = stdout.lines().collect();
            for path in [&address, &second_address] {
                assert!(
                    lines.contains(&format!("path {}", path.display()).as_str()),
                    "the attacker found {}:\n{stdout}",
                    path.display()
                );
            }
            assert!(lines.contains(&"sent 0"), "the attacker reached a notify socket:\n{stdout}");
            let attempts = lines.iter().find_map(|l| l.strip_prefix("attempts ")).unwrap();
            let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("error ")).collect();
            assert_eq!(errors, [&format!("error EACCES {attempts}").as_str()], "every attempt: permission denied:\n{stdout}");
        }
        None => eprintln!("not root: no second user to flood the notify socket; only its directory's mode was checked"),
    }
    // --interval is 600 s: only a READY=1 that got through gets here in time.
    std::fs::write(dir.join("go-2"), "").unwrap();
    run.line(&format!("new worker is now running, sending TERM to old workers:{first}"));
    wait_until("generation 2 alone", || generations(&status_path) == [2]);
    assert!(!run.stderr().contains("ignored a notification"), "nothing but the worker reached it:\n{}", run.stderr());
    assert!(!address.exists(), "the old worker's socket went with it");
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!private.exists(), "the private directory is removed at exit");
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

/// start_server with the file option `option` (`--pid-file`, `--log-file`) at `path` and a
/// worker that sleeps: its exit code and stderr (the tests expect it to refuse at once).
fn serve_with_file(option: &str, path: &Path) -> (Option<i32>, String) {
    start_server_output(&[
        format!("{option}={}", path.display()),
        "--port=127.0.0.1:0".into(),
        "--".into(),
        "sleep".into(),
        "60".into(),
    ])
}

#[test]
fn planted_pid_files_are_refused_and_their_targets_untouched() {
    let dir = common::shared_dir("start-server-pidfile");
    let secret = "secret\n";
    let target = victim(&dir, "victim", secret);
    let serve = |path: &Path| serve_with_file("--pid-file", path);

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

/// Runs `script` with `sh -c` as the attacker (from `/`), or as this user when not root.
fn as_attacker(script: &str, env: &[(&str, &Path)]) {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]).current_dir("/");
    for (name, value) in env {
        cmd.env(name, value);
    }
    match common::attacker_user() {
        Some((uid, gid)) => {
            common::run_as(&mut cmd, uid, gid);
        }
        None => eprintln!("not root: no second user; running {script:?} as this user"),
    }
    let (status, _, stderr) = common::run_limited(cmd, LIMIT);
    assert!(status.success(), "{script}: {stderr}");
}

/// A process that blocks TERM and HUP, so a signal sent to it stays pending (and visible in
/// /proc) instead of killing it at some later instant: whether it was signalled can be
/// checked at once, without waiting.
struct Sleeper(Proc);

impl Sleeper {
    fn start() -> Sleeper {
        let mut cmd = Command::new("python3");
        cmd.args([
            "-c",
            "import signal, time; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP}); print('blocked', flush=True); time.sleep(600)",
        ]);
        let sleeper = Proc::spawn(cmd);
        sleeper.wait_line(false, "blocked", LIMIT);
        Sleeper(sleeper)
    }

    fn pid(&self) -> i32 {
        self.0.pid()
    }

    /// The signals pending for it (process-wide and for its thread), as `/proc` shows them.
    fn pending(&self) -> String {
        let status = read(Path::new(&format!("/proc/{}/status", self.pid())));
        status.lines().filter(|l| l.starts_with("ShdPnd:") || l.starts_with("SigPnd:")).collect::<Vec<_>>().join(" ")
    }

    fn assert_not_signalled(&self, what: &str) {
        assert!(!exited(self.pid()), "{what}: the sleeper died");
        assert_eq!(self.pending(), "SigPnd:\t0000000000000000 ShdPnd:\t0000000000000000", "{what} signalled pid {}", self.pid());
    }
}

#[test]
fn stop_and_restart_signal_nothing_without_a_start_server_holding_the_pid_file() {
    let dir = common::shared_dir("start-server-stale-pid");
    let sleeper = Sleeper::start();
    let status_file = dir.join("status");
    std::fs::write(&status_file, "1:1\n").unwrap();
    let commands = |pid_file: &Path| -> Vec<Vec<String>> {
        let pid_file = format!("--pid-file={}", pid_file.display());
        vec![
            vec!["--stop".into(), pid_file.clone()],
            vec!["--restart".into(), pid_file, format!("--status-file={}", status_file.display())],
        ]
    };

    // Planted by another user: a regular file naming the sleeper.
    let planted = dir.join("planted-pid");
    as_attacker(r#"echo "$PID" > "$FILE""#, &[("PID", Path::new(&sleeper.pid().to_string())), ("FILE", &planted)]);
    if common::attacker_user().is_some() {
        for args in commands(&planted) {
            let (code, stderr) = start_server_output(&args);
            assert_eq!(code, Some(2), "{args:?}: {stderr}");
            assert!(stderr.contains(&format!("failed to open file:{}:owned by uid", planted.display())), "{args:?}: {stderr}");
            sleeper.assert_not_signalled(&format!("{args:?}"));
        }
    }

    // Stale: ours, a regular file with one link, but no start_server holds its lock (it was
    // SIGKILLed, say, and its pid now belongs to the sleeper).
    let stale = dir.join("stale-pid");
    std::fs::write(&stale, format!("{}\n", sleeper.pid())).unwrap();
    for args in commands(&stale) {
        let (code, stderr) = start_server_output(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("no start_server holds the lock on {}: it is not running", stale.display())),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("stopping now"), "{args:?}: {stderr}");
        sleeper.assert_not_signalled(&format!("{args:?}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_planted_status_temporary_is_not_followed() {
    let dir = common::shared_dir("start-server-status");
    let secret = "secret\n";
    let target = victim(&dir, "victim", secret);
    let status_path = dir.join("status");
    let mut cmd = Command::new(ours());
    cmd.args(["--port=127.0.0.1:0".to_string(), "--interval=0.1".into(), format!("--status-file={}", status_path.display())])
        .args(["--", "sleep", "600"]);
    let run = Running::start(cmd);
    wait_until("generation 1", || generations(&status_path) == [1]);
    // Another user plants the temporary's predictable name (the status file plus our pid)...
    let planted = dir.join(format!("status.{}", run.proc.pid()));
    common::plant_symlink(&target, &planted);
    run.proc.signal(libc::SIGHUP);
    run.line("already exists (not ours)");
    wait_until("generation 2 alone", || generations(&status_path) == [2]);
    assert!(std::fs::symlink_metadata(&status_path).unwrap().file_type().is_file(), "the status file is a file of its own");
    assert_eq!(std::fs::read_link(&planted).unwrap(), target, "the planted link is left as it was");
    assert_untouched(&target, secret);

    // ... and replaces the status file itself by a link: the next update renames a new file
    // over the link (the link goes, its target is untouched).
    as_attacker(r#"ln -sfn "$VICTIM" "$STATUS""#, &[("VICTIM", &target), ("STATUS", &status_path)]);
    assert!(std::fs::symlink_metadata(&status_path).unwrap().file_type().is_symlink());
    run.proc.signal(libc::SIGHUP);
    wait_until("generation 3 alone, in a file of its own", || {
        std::fs::symlink_metadata(&status_path).is_ok_and(|m| m.file_type().is_file()) && generations(&status_path) == [3]
    });
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
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_log_file_is_never_reached_through_a_planted_link_or_a_foreign_file() {
    let dir = common::shared_dir("start-server-log");
    let secret = "secret\n";
    let target = victim(&dir, "victim", secret);
    let serve = |path: &Path| serve_with_file("--log-file", path);
    let link = dir.join("log");
    common::plant_symlink(&target, &link);
    let (code, stderr) = serve(&link);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains(&format!("failed to open file:{}:it is a symbolic link", link.display())), "{stderr}");
    assert_untouched(&target, secret);

    let hard = dir.join("log-hard");
    std::fs::hard_link(&target, &hard).unwrap();
    let (code, stderr) = serve(&hard);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains(&hard.display().to_string()) && stderr.contains("hard links"), "{stderr}");
    assert_untouched(&target, secret);

    if common::attacker_user().is_some() {
        let foreign = dir.join("log-foreign");
        as_attacker(r#": > "$FILE""#, &[("FILE", &foreign)]);
        let (code, stderr) = serve(&foreign);
        assert_eq!(code, Some(255), "{stderr}");
        assert!(stderr.contains(&format!("failed to open file:{}:owned by uid", foreign.display())), "{stderr}");
        assert_eq!(read(&foreign), "", "nothing was written to it");
    }

    // A FIFO with no reader: refused at once (O_NONBLOCK), never waited on.
    let fifo = dir.join("log-fifo");
    let c_fifo = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o644) }, 0);
    let (code, stderr) = serve(&fifo);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains(&fifo.display().to_string()), "{stderr}");

    // A new file is made, and an existing one of ours is appended to.
    let fresh = dir.join("fresh.log");
    for round in 1..=2 {
        let mut cmd = Command::new(ours());
        cmd.args([format!("--log-file={}", fresh.display()), "--port=127.0.0.1:0".into(), "--interval=0.1".into()])
            .args(["--", "sleep", "600"]);
        let run = Running::start(cmd);
        wait_until("the log", || read(&fresh).matches("starting new worker").count() == round);
        let (code, _) = run.finish();
        assert_eq!(code, Some(0));
        wait_until("exiting, in the log", || read(&fresh).matches("exiting").count() == round);
    }
    assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o022, 0, "not writable by others");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fifo_in_the_envdir_blocks_nothing() {
    let dir = scratch("envdir-fifo");
    let envdir = dir.join("env");
    std::fs::create_dir_all(&envdir).unwrap();
    put(&envdir, "FOO", b"one\n");
    for name in ["PIPE", ".later-pipe"] {
        let c_fifo = std::ffi::CString::new(envdir.join(name).display().to_string()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o644) }, 0);
    }
    std::os::unix::fs::symlink(envdir.join("PIPE"), envdir.join("TO_PIPE")).unwrap();
    std::fs::write(dir.join("real"), "linked\n").unwrap();
    std::os::unix::fs::symlink(dir.join("real"), envdir.join("LINKED")).unwrap();
    let report = r#"env > "$DIR/.env.tmp" && mv "$DIR/.env.tmp" "$DIR/env.$SERVER_STARTER_GENERATION"; exec sleep 600"#;
    let status_path = dir.join("status");
    let mut cmd = Command::new(ours());
    cmd.args([
        "--port=127.0.0.1:0".to_string(),
        "--interval=0.1".into(),
        format!("--envdir={}", envdir.display()),
        format!("--status-file={}", status_path.display()),
        "--".into(),
        "sh".into(),
        "-c".into(),
        report.into(),
    ])
    .env("DIR", &dir);
    let run = Running::start(cmd);
    wait_until("generation 1", || generations(&status_path) == [1]);
    // One that appears at run time (a rename: the loop never sees a half-made name).
    std::fs::rename(envdir.join(".later-pipe"), envdir.join("LATER")).unwrap();
    for generation in [2, 3] {
        run.proc.signal(libc::SIGHUP);
        wait_until(&format!("generation {generation} alone"), || generations(&status_path) == [generation]);
    }
    let env_path = dir.join("env.3");
    wait_until("generation 3's environment", || env_path.exists());
    let env = read(&env_path);
    assert!(env.contains("FOO=one\n") && env.contains("LINKED=linked\n"), "{env}");
    assert!(!env.contains("PIPE=") && !env.contains("LATER="), "{env}");
    let stderr = run.stderr();
    for name in ["PIPE", "TO_PIPE", "LATER"] {
        let warning = format!("{}: a FIFO, not a regular file", envdir.join(name).display());
        assert_eq!(stderr.matches(&warning).count(), 1, "{warning:?} logged once:\n{stderr}");
    }
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "TERM still works: {stderr}");
}

#[test]
fn a_path_socket_replaced_meanwhile_is_not_removed_at_exit() {
    let dir = scratch("path");
    let (kept, replaced) = (dir.join("kept.sock"), dir.join("replaced.sock"));
    let status_path = dir.join("status");
    let mut cmd = Command::new(ours());
    cmd.args([
        format!("--path={}", kept.display()),
        format!("--path={}", replaced.display()),
        "--interval=0.1".into(),
        format!("--status-file={}", status_path.display()),
        "--".into(),
        "sleep".into(),
        "600".into(),
    ]);
    let run = Running::start(cmd);
    wait_until("generation 1", || generations(&status_path) == [1]);
    // Someone else's file now has the path (renamed over the socket).
    let other = dir.join(".other");
    std::fs::write(&other, "someone else's\n").unwrap();
    std::fs::rename(&other, &replaced).unwrap();
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(read(&replaced), "someone else's\n", "the file that replaced the socket is left alone:\n{stderr}");
    assert!(stderr.contains(&format!("not removing {}", replaced.display())), "{stderr}");
    assert!(std::fs::symlink_metadata(&kept).is_err(), "the socket that is still ours is removed");
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
    for warning in
        ["ignoring KILL_OLD_DELAY=\"1e20\"", "ignoring AUTO_RESTART_INTERVAL=\"NaN\"", "BAD: its value contains a NUL byte"]
    {
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
    let worker = common::status_entries(&status_path)[0].1;
    assert!(common::get_body(port, LIMIT).starts_with("1:"));
    let _litter = NotifyDirLitter::of_worker(worker);
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
        let notify = lines.iter().find_map(|l| l.strip_prefix("NOTIFY_SOCKET=")).expect("NOTIFY_SOCKET");
        let notify = Path::new(notify);
        assert!(notify.is_absolute(), "{env}");
        assert_eq!(notify.file_name().unwrap().to_string_lossy(), generation.to_string(), "{env}");
        assert!(notify.parent().unwrap().file_name().unwrap().to_string_lossy().starts_with("start_server."), "{env}");
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
    let _litter = NotifyDirLitter::of_worker(common::status_entries(&status_path)[0].1);
    run.proc.signal(libc::SIGKILL);
    let killed = Instant::now();
    let (status, stderr) = restart.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains(&format!("start_server (pid:{}) exited before a new generation took over", run.proc.pid())),
        "{stderr}"
    );
    assert!(killed.elapsed() < Duration::from_secs(20), "it took {:?}", killed.elapsed());
}
