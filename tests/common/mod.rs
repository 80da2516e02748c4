//! Shared by the integration tests: building C programs against the freshly built
//! `liblameduck.so`, and running child processes with a time limit.
#![allow(dead_code)]

pub mod fleet;
pub mod haproxy;
pub mod load;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How C programs are built and run: `LAMEDUCK_C_MODE=asan` (default: AddressSanitizer +
/// UBSan, leaks included), `valgrind` (plain build under memcheck), or `plain`.
pub fn c_mode() -> String {
    std::env::var("LAMEDUCK_C_MODE").unwrap_or_else(|_| "asan".into())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A directory holding `liblameduck.so.0` (the SONAME) and `liblameduck.so`, copied from the
/// cdylib cargo built for this test run.
pub fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
        let built = deps.join("liblameduck.so");
        assert!(built.exists(), "cargo did not build {}", built.display());
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("clib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&built, dir.join("liblameduck.so.0")).unwrap();
        let link = dir.join("liblameduck.so");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("liblameduck.so.0", &link).unwrap();
        dir
    })
}

/// Compiles C `sources` into `name` with warnings as errors, linked to liblameduck.
pub fn build_c(name: &str, sources: &[&str]) -> PathBuf {
    let lib = lib_dir();
    let out = lib.join(name);
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-pthread", "-g", "-O1"]);
    if c_mode() == "asan" {
        cmd.args(["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]);
    }
    cmd.arg("-I").arg(repo().join("include"));
    for s in sources {
        cmd.arg(repo().join(s));
    }
    cmd.arg("-L").arg(lib).arg("-llameduck").arg(format!("-Wl,-rpath,{}", lib.display())).arg("-o").arg(&out);
    let output = cmd.output().expect("a C compiler (cc) is installed");
    assert!(output.status.success(), "compiling {sources:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    out
}

/// A command for a built C program, wrapped in valgrind in valgrind mode.
pub fn c_command(program: &Path) -> Command {
    let mut cmd = if c_mode() == "valgrind" {
        let mut c = Command::new("valgrind");
        c.args([
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite",
        ]);
        c.arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.env("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1:abort_on_error=0")
        .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1");
    cmd
}

/// Waits for `child` with a limit; kills it (and fails) when the limit passes.
pub fn wait_with_limit(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not finish within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs a command to completion with a time limit; returns (status, stdout, stderr).
pub fn run_limited(mut cmd: Command, limit: Duration) -> (ExitStatus, String, String) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = wait_with_limit(&mut child, limit);
    (status, out_reader.join().unwrap(), err_reader.join().unwrap())
}

/// A child process whose stdout and stderr lines are collected as they arrive, so tests can
/// wait for events (a log line) instead of sleeping. Killed on drop if still running.
pub struct Proc {
    child: Child,
    lines: std::sync::Arc<(std::sync::Mutex<Lines>, std::sync::Condvar)>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
pub struct Lines {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    /// When each stderr line arrived (for measuring the time between two events).
    pub stderr_at: Vec<Instant>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        use std::io::BufRead;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // A program file written by this test process (copied, then renamed into place) can
        // be held open for writing for a moment by another test's fork that has not exec'd
        // yet: exec then fails with ETXTBSY. Retrying is the standard remedy.
        let mut attempts = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other.unwrap(),
            }
        };
        let lines = std::sync::Arc::new((std::sync::Mutex::new(Lines::default()), std::sync::Condvar::new()));
        let mut readers = Vec::new();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (is_err, stream) in [(false, Box::new(out) as Box<dyn Read + Send>), (true, Box::new(err))] {
            let lines = std::sync::Arc::clone(&lines);
            readers.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut l = lines.0.lock().unwrap();
                    if is_err {
                        l.stderr.push(line);
                        l.stderr_at.push(Instant::now());
                    } else {
                        l.stdout.push(line)
                    }
                    lines.1.notify_all();
                }
            }));
        }
        Proc { child, lines, readers }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until a line on stdout (`on_stderr` false) or stderr contains `needle`.
    pub fn wait_line(&self, on_stderr: bool, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        let mut l = self.lines.0.lock().unwrap();
        loop {
            let list = if on_stderr { &l.stderr } else { &l.stdout };
            if let Some(found) = list.iter().find(|line| line.contains(needle)) {
                return found.clone();
            }
            let left = limit.checked_sub(start.elapsed()).unwrap_or_else(|| {
                panic!("no line containing {needle:?} within {limit:?}; stdout: {:?}; stderr: {:?}", l.stdout, l.stderr)
            });
            l = self.lines.1.wait_timeout(l, left).unwrap().0;
        }
    }

    /// When the first stderr line containing `needle` arrived, if one did.
    pub fn stderr_line_time(&self, needle: &str) -> Option<Instant> {
        let l = self.lines.0.lock().unwrap();
        l.stderr.iter().zip(&l.stderr_at).find(|(line, _)| line.contains(needle)).map(|(_, &at)| at)
    }

    /// Waits until `n` lines on stderr contain `needle`; returns the `n`th.
    pub fn wait_nth_line(&self, needle: &str, n: usize, limit: Duration) -> String {
        let start = Instant::now();
        let mut l = self.lines.0.lock().unwrap();
        loop {
            if let Some(found) = l.stderr.iter().filter(|line| line.contains(needle)).nth(n - 1) {
                return found.clone();
            }
            let left = limit
                .checked_sub(start.elapsed())
                .unwrap_or_else(|| panic!("no {n} lines containing {needle:?} within {limit:?}; stderr: {:?}", l.stderr));
            l = self.lines.1.wait_timeout(l, left).unwrap().0;
        }
    }

    /// Waits until a stdout line at index `from` or later contains `needle`; returns its index,
    /// or None when `limit` passes first.
    pub fn wait_stdout_from(&self, needle: &str, from: usize, limit: Duration) -> Option<usize> {
        let start = Instant::now();
        let mut l = self.lines.0.lock().unwrap();
        loop {
            if let Some(i) = l.stdout.iter().skip(from).position(|line| line.contains(needle)) {
                return Some(from + i);
            }
            let left = limit.checked_sub(start.elapsed())?;
            l = self.lines.1.wait_timeout(l, left).unwrap().0;
        }
    }

    /// A handle that adds lines of the test's own among the stdout lines (a probe's result,
    /// a moment that passed), so they take their place in the order of the process's lines.
    pub fn notes(&self) -> Notes {
        Notes(std::sync::Arc::clone(&self.lines))
    }

    /// The stdout lines so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().stdout.clone()
    }

    /// Waits (bounded) for the process to exit, without waiting for its output to end (a
    /// grandchild may still hold the pipes); None if it is still running at `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits (bounded) until every holder of the process's stdout and stderr has closed them,
    /// so that every line written is collected; false if some holder is still alive at `limit`.
    pub fn wait_output_end(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while self.readers.iter().any(|r| !r.is_finished()) {
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        true
    }

    /// All stdout and stderr lines so far.
    pub fn text(&self) -> (String, String) {
        let l = self.lines.0.lock().unwrap();
        (l.stdout.join("\n"), l.stderr.join("\n"))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Waits for exit (bounded); returns the status and all stderr text.
    pub fn finish(mut self, limit: Duration) -> (ExitStatus, String) {
        let status = wait_with_limit(&mut self.child, limit);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let stderr = self.lines.0.lock().unwrap().stderr.join("\n");
        (status, stderr)
    }
}

/// Adds lines to a [`Proc`]'s stdout lines, from any thread (see [`Proc::notes`]).
#[derive(Clone)]
pub struct Notes(std::sync::Arc<(std::sync::Mutex<Lines>, std::sync::Condvar)>);

impl Notes {
    pub fn add(&self, line: String) {
        self.0 .0.lock().unwrap().stdout.push(line);
        self.0 .1.notify_all();
    }
}

impl Proc {
    /// SIGTERM, then (after `limit`) SIGKILL; waits for the exit. For teardown of a supervisor
    /// whose children must be stopped by it, not orphaned.
    pub fn terminate(&mut self, limit: Duration) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < limit {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A free 127.0.0.1 TCP port (free when asked; tests bind it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An empty scratch directory for one test, under cargo's target tmp dir, named after the test
/// and this process.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `GET /` over HTTP/1.0 on a new connection to 127.0.0.1:`port`; the body, trimmed ("" when
/// the connection failed mid-answer). Panics when it cannot connect.
pub fn get_body(port: u16, limit: Duration) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.rsplit("\r\n\r\n").next().unwrap_or("").trim().to_string()
}

/// The name of the unprivileged user the hardening tests play an attacker as.
pub const ATTACKER: &str = "lameduck-attacker";

/// The uid and gid of [`ATTACKER`], created (`useradd -M -r`, no home, no login) when absent;
/// None when not running as root (the caller skips). Safe when several tests, or several test
/// processes, get here at once: whoever creates the user first wins, the others find it.
pub fn attacker_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    static USER: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *USER.get_or_init(|| {
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, ATTACKER]).stderr(Stdio::null()).output().ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok().filter(|_| out.status.success())
        };
        for _ in 0..50 {
            if let (Some(uid), Some(gid)) = (id("-u"), id("-g")) {
                return Some((uid, gid));
            }
            // Fails harmlessly when another process just created it, or holds /etc/passwd's lock.
            let _ = Command::new("useradd")
                .args(["-M", "-r", "-s", "/usr/sbin/nologin", ATTACKER])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if id("-u").is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        eprintln!("could not create the user {ATTACKER}");
        None
    })
}

/// Makes `cmd` run as `uid`/`gid` with no supplementary groups (set in the child before exec).
pub fn run_as(cmd: &mut Command, uid: u32, gid: u32) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setgroups/setgid/setuid are async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// An empty directory that any local user can write, without the sticky bit (so the kernel's
/// `protected_symlinks` does not stop root from following a link planted there: the code under
/// test must). Under the system temp dir, which every user can reach (the checkout may sit in a
/// private home directory).
pub fn shared_dir(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("lameduck-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Plants `link` → `target` as another local user would: made by [`ATTACKER`]'s uid (in a
/// [`shared_dir`]). Without root there is no second user: then this user plants it, which the
/// code under test must refuse all the same (said on stderr).
pub fn plant_symlink(target: &Path, link: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Some((uid, gid)) = attacker_user() else {
        eprintln!("not root: no second user to plant {}; planting it as this user", link.display());
        std::os::unix::fs::symlink(target, link).unwrap();
        return;
    };
    let mut ln = Command::new("ln");
    ln.arg("-s").arg(target).arg(link).current_dir("/");
    run_as(&mut ln, uid, gid);
    let (status, _, stderr) = run_limited(ln, Duration::from_secs(60));
    assert!(status.success(), "the attacker could not plant {}: {stderr}", link.display());
    assert_eq!(std::fs::symlink_metadata(link).unwrap().uid(), uid, "planted by the attacker");
}

/// Makes `source` (a descriptor of this process) appear at `target` in the program `cmd` runs,
/// inherited across exec, as systemd or a previous generation would place it. A `source` that
/// already is `target` only loses its close-on-exec flag (dup2 onto itself would keep it).
pub fn place_fd(cmd: &mut Command, source: i32, target: i32) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: dup2/fcntl are async-signal-safe system calls on descriptors this process owns.
    unsafe {
        cmd.pre_exec(move || {
            let placed = if source == target { libc::fcntl(target, libc::F_SETFD, 0) } else { libc::dup2(source, target) };
            if placed < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        })
    }
}

/// A start_server status file's `generation:pid` entries, in file order (none when it is
/// missing; lines that are not `N:PID` are skipped).
pub fn status_entries(path: &Path) -> Vec<(u64, i32)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (g, p) = l.split_once(':')?;
            Some((g.parse().ok()?, p.parse().ok()?))
        })
        .collect()
}
