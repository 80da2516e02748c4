//! The systemd units in `examples/systemd/`, run the way systemd runs them. The committed unit
//! files are the source of truth: each test reads the `.service` (and `.socket`), runs its
//! `ExecStart=` (each program mapped to the one this build made, the port moved to a free one),
//! for the demo under `systemd-socket-activate` with the socket's `ListenStream=` and
//! `FileDescriptorName=`, and plays the service manager itself:
//! - it owns the notify socket and reads each datagram's sender from `SCM_CREDENTIALS`, as
//!   systemd does to apply `NotifyAccess=`; it follows `MAINPID=`;
//! - a reload is SIGHUP to the main process (`Type=notify-reload`), which must answer
//!   `RELOADING=1` with a `MONOTONIC_USEC=` taken after the signal, then `READY=1`;
//! - a stop is SIGTERM to the processes the unit's `KillMode=` names, and every process of the
//!   unit must then exit, with status 0, within `TimeoutStopSec=`;
//! - it is the subreaper that orphaned generations are reparented to, as the manager is.
//!
//! What systemd itself does with these units (252 and 254, as a user manager) was seen by hand,
//! not here: see README "systemd units". Where the outcome depends on systemd's own behaviour
//! (`KillMode=`, `ExitType=`, `NotifyAccess=`), the manager here behaves as those were seen to.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::load::Load;
use common::Proc;

const LIMIT: Duration = Duration::from_secs(30);

fn demo() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| common::build_c("http_server_systemd", &["examples/http_server.c"]))
}

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(name)).find(|p| p.exists())
}

// ---- Unit files -----------------------------------------------------------------------------

/// A unit file's assignments, in order: (section, key, value).
struct Unit {
    name: String,
    settings: Vec<(String, String, String)>,
}

impl Unit {
    fn load(name: &str) -> Unit {
        let path = common::repo().join("examples/systemd").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Unit { name: name.to_string(), settings: parse_unit(&text).unwrap_or_else(|e| panic!("{name}: {e}")) }
    }

    /// Every value assigned to `key` in `[section]`.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.settings.iter().filter(|(s, k, _)| s == section && k == key).map(|(_, _, v)| v.as_str()).collect()
    }

    /// The value of a single-valued setting: the last assignment wins, as in systemd.
    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.all(section, key).pop()
    }

    /// A time setting of `[Service]`, or systemd's default (90 s for both start and stop).
    fn timeout(&self, key: &str) -> Duration {
        self.get("Service", key).map_or(Duration::from_secs(90), timespan)
    }

    /// `ExecStart=`'s words. Plain words only: no quotes, `$` variables, `%` specifiers or
    /// `-@:+!` prefixes, which this test would misread, so it says so instead.
    fn command(&self) -> Vec<String> {
        let all = self.all("Service", "ExecStart");
        assert_eq!(all.len(), 1, "{}: one ExecStart= (Type=notify-reload allows no more)", self.name);
        let words: Vec<String> = all[0].split_whitespace().map(str::to_string).collect();
        for w in &words {
            assert!(!w.contains(['"', '\'', '$', '%', '\\']), "{}: this test reads plain words only, not {w:?}", self.name);
        }
        assert!(words[0].starts_with('/'), "{}: the program is an absolute path, without prefixes", self.name);
        words
    }

    fn notify_access(&self) -> &str {
        self.get("Service", "NotifyAccess").unwrap_or("main") // the default for Type=notify*
    }

    fn kill_mode(&self) -> &str {
        self.get("Service", "KillMode").unwrap_or("control-group")
    }
}

/// systemd's unit file syntax: `[Section]` headers, `Key=Value` lines (whitespace around both
/// trimmed), `#`/`;` comment lines, and a trailing backslash continuing a line.
fn parse_unit(text: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut settings = Vec::new();
    let mut section: Option<String> = None;
    let mut pending = String::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with(['#', ';'])) {
            continue;
        }
        let line = if pending.is_empty() { trimmed.to_string() } else { format!("{pending} {trimmed}") };
        if let Some(head) = line.strip_suffix('\\') {
            pending = head.trim_end().to_string();
            continue;
        }
        pending.clear();
        if let Some(name) = line.strip_prefix('[') {
            section = Some(name.strip_suffix(']').ok_or_else(|| format!("line {}: {line:?} is not a section", i + 1))?.into());
        } else {
            let (key, value) = line.split_once('=').ok_or_else(|| format!("line {}: {line:?} is not Key=Value", i + 1))?;
            let section = section.clone().ok_or_else(|| format!("line {}: {key} outside any section", i + 1))?;
            settings.push((section, key.trim().to_string(), value.trim().to_string()));
        }
    }
    Ok(settings)
}

/// A systemd time span: `30s`, `1min 30s`, `500ms`, a bare number of seconds.
fn timespan(text: &str) -> Duration {
    let mut total = Duration::ZERO;
    for part in text.split_whitespace() {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        let n: u64 = digits.parse().unwrap_or_else(|_| panic!("time span {text:?}: this test reads finite spans only"));
        let millis = match &part[digits.len()..] {
            "" | "s" | "sec" | "second" | "seconds" => 1000,
            "ms" | "msec" => 1,
            "m" | "min" | "minute" | "minutes" => 60_000,
            "h" | "hr" | "hour" | "hours" => 3_600_000,
            unit => panic!("time span {text:?}: unit {unit:?} not understood here"),
        };
        total += Duration::from_millis(n * millis);
    }
    total
}

/// The value of option `flag` (`--flag N`) in a command's words, if given.
fn option<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    words.windows(2).find(|w| w[0] == flag).map(|w| w[1].as_str())
}

/// The value of a `--flag=VALUE` word.
fn option_eq<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    words.iter().find_map(|w| w.strip_prefix(flag)?.strip_prefix('='))
}

/// The C demo's options in milliseconds, with its defaults (`examples/http_server.c`).
fn demo_ms(words: &[String], flag: &str, default: u64) -> Duration {
    Duration::from_millis(option(words, flag).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{flag} {v}"))))
}

/// How long the demo may take to stop once SIGTERM arrives, for the options in `words`: the
/// drain delay, the lame-duck period, the close hook's timeout (the core's default: the demo
/// does not change it), and the demo's own wait for its connection threads after the run
/// (2 s, `examples/http_server.c`).
fn demo_stop_budget(words: &[String]) -> Duration {
    demo_ms(words, "--drain", 0)
        + demo_ms(words, "--period", 3000)
        + lameduck::Options::default().close_timeout
        + Duration::from_secs(2)
}

/// The unit's command as this test runs it: `address` replaced by `local` in every word, and
/// each absolute path mapped by its file name to the program this build made.
fn local_command(words: &[String], address: &str, local: &str) -> Vec<String> {
    words
        .iter()
        .map(|w| {
            let w = w.replace(address, local);
            if !w.starts_with('/') {
                return w;
            }
            match Path::new(&w).file_name().and_then(|n| n.to_str()) {
                Some("lameduck-demo") => demo().display().to_string(),
                Some("start_server") => env!("CARGO_BIN_EXE_start_server").to_string(),
                _ => panic!("{w}: no program of this build is installed under that name"),
            }
        })
        .collect()
}

/// The unit's address, which the test moves to a free port on 127.0.0.1.
fn local_address(address: &str) -> String {
    assert!(address.starts_with("127.0.0.1:"), "{address}: these tests talk to 127.0.0.1 only");
    format!("127.0.0.1:{}", common::free_port())
}

// ---- The service manager ---------------------------------------------------------------------

/// One notification, with the sender's pid as the kernel vouches for it.
#[derive(Debug, Clone)]
struct Note {
    pid: i32,
    text: String,
}

impl Note {
    fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a process of the unit under test.
    unsafe { libc::kill(pid, signal) };
}

/// The manager's side of one unit: the notify socket, the main process, every process the
/// unit has had as its main one, and the unit's processes: the process group its first process
/// leads, which every generation inherits (as systemd has a cgroup; reparented processes stay
/// in it). Whatever happens, the group is killed and reaped at the end.
struct Manager {
    dir: PathBuf,
    socket: UnixDatagram,
    group: i32,
    main: i32,
    /// The main process was not this manager's child when it became the main one: systemd's
    /// "alien" main process, which it does not wait for once signalled.
    alien: bool,
    mains: Vec<i32>,
    notes: Vec<Note>,
}

impl Manager {
    fn new(name: &str) -> Manager {
        // Orphans come to us, as they come to systemd (PID 1, or a user manager's subreaper).
        // SAFETY: prctl(2) with an integer argument.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
        let dir = common::scratch_dir(&format!("systemd-{name}"));
        let socket = UnixDatagram::bind(dir.join("notify")).unwrap();
        lameduck::sys::pass_credentials(socket.as_raw_fd()).unwrap();
        Manager { dir, socket, group: 0, main: 0, alien: false, mains: Vec::new(), notes: Vec::new() }
    }

    /// Starts the unit's first process, the main one, in a process group of its own.
    fn start(&mut self, mut cmd: Command) -> Proc {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let proc = Proc::spawn(cmd);
        self.group = proc.pid();
        self.set_main(proc.pid());
        proc
    }

    fn notify_socket(&self) -> String {
        self.dir.join("notify").display().to_string()
    }

    /// The main process is now `pid` (the one started, or a `MAINPID=`).
    fn set_main(&mut self, pid: i32) {
        // SAFETY: getpid cannot fail.
        self.alien = lameduck::sys::parent_pid(pid) != Some(unsafe { libc::getpid() });
        self.main = pid;
        self.mains.push(pid);
    }

    /// The next notification, waited for (bounded); `what` says what is expected.
    fn next(&mut self, what: &str) -> Note {
        let mut poll = libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let mut buf = [0u8; 4096];
        let start = Instant::now();
        loop {
            let left = LIMIT.checked_sub(start.elapsed()).unwrap_or_else(|| {
                panic!("no notification within {LIMIT:?}, expecting {what}; received so far: {:?}", self.notes)
            });
            // SAFETY: poll on one descriptor we own.
            unsafe { libc::poll(&mut poll, 1, left.as_millis() as i32) };
            if let Some(d) = lameduck::sys::recv_with_credentials(self.socket.as_raw_fd(), &mut buf).unwrap() {
                let note = Note { pid: d.pid, text: String::from_utf8_lossy(&buf[..d.len]).into_owned() };
                self.notes.push(note.clone());
                return note;
            }
        }
    }

    /// The next notification, which must come from the main process: in these runs nothing
    /// needs more than `NotifyAccess=main`.
    fn next_from_main(&mut self, what: &str) -> Note {
        let note = self.next(what);
        assert_eq!(note.pid, self.main, "expecting {what} from the main process, got {note:?}; all: {:?}", self.notes);
        note
    }

    /// `RELOADING=1` with a `MONOTONIC_USEC=` not before `begin`, as `Type=notify-reload`
    /// requires (systemd ignores an older one: it cannot be the answer to this reload).
    fn reloading(&mut self, begin: u64) {
        let note = self.next_from_main("RELOADING=1 + MONOTONIC_USEC= after SIGHUP");
        assert!(note.has("RELOADING=1"), "{note:?}");
        let usec: u64 = note.value("MONOTONIC_USEC").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{note:?}"));
        assert!(usec >= begin, "MONOTONIC_USEC={usec} is before the reload began ({begin}): systemd would ignore it");
    }

    /// Every process of the unit still running: the members of its process group that are not
    /// zombies (`/proc/<pid>/stat`). Not only generations: a sanitizer's helper process, say.
    fn processes(&self) -> Vec<i32> {
        let running_in_group = |pid: &i32| -> Option<bool> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect(); // state, ppid, pgrp, …
            Some(fields.first()? != &"Z" && fields.get(2)?.parse() == Ok(self.group))
        };
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|pid| self.group > 0 && running_in_group(pid) == Some(true))
            .collect()
    }

    /// Stops the unit as systemd does for its `KillMode=`: SIGTERM to every process of the
    /// unit (`control-group`), or to the main process only (`mixed`, `process`). systemd 252
    /// and 254 were seen not to wait for an alien main process in the latter modes: they send
    /// SIGKILL at once, to the whole unit for `mixed`.
    fn stop(&self, kill_mode: &str) {
        match kill_mode {
            "control-group" => self.processes().into_iter().for_each(|p| kill(p, libc::SIGTERM)),
            "mixed" | "process" => {
                kill(self.main, libc::SIGTERM);
                if self.alien {
                    let victims = if kill_mode == "mixed" { self.processes() } else { vec![self.main] };
                    victims.into_iter().for_each(|p| kill(p, libc::SIGKILL));
                }
            }
            other => panic!("KillMode={other}: not what a lameduck unit wants"),
        }
    }

    /// Waits (bounded) for main process `pid` to exit and reaps it: our child, or an orphan
    /// reparented to us (until then waitpid says ECHILD: its parent still runs). None when
    /// `limit` passes first.
    fn reap(&self, pid: i32, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            let mut status = 0;
            // SAFETY: waitpid on one pid, without blocking.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reaps main process `pid` within `limit` and checks it ended as it should: with status
    /// 0, or, for one that is no longer the main process, killed by the stop's SIGTERM (it can
    /// arrive between the end of its run and its exit, when the default action is back; systemd
    /// counts that as a clean exit too).
    fn exits_cleanly(&self, pid: i32, limit: Duration, proc: &Proc) {
        let status =
            self.reap(pid, limit).unwrap_or_else(|| panic!("process {pid} still runs after {limit:?}: {:?}", proc.text()));
        let clean = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        let terminated = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM && pid != self.main;
        assert!(clean || terminated, "process {pid}: wait status {status:#x}; {:?}", proc.text());
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        for pid in self.processes() {
            kill(pid, libc::SIGKILL);
        }
        // Our children among them (the first process, orphans reparented to us), whether or
        // not they were ever a main one.
        let start = Instant::now();
        while self.group > 0 && start.elapsed() < Duration::from_secs(5) {
            let mut status = 0;
            // SAFETY: waitpid on the members of one process group, without blocking.
            match unsafe { libc::waitpid(-self.group, &mut status, libc::WNOHANG) } {
                -1 => break, // none left that is ours
                0 => std::thread::sleep(Duration::from_millis(5)),
                _ => {}
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The inode of the socket at `/proc/<pid>/fd/<fd>`.
fn socket_inode(pid: i32, fd: i32) -> String {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    let link = link.to_string_lossy().into_owned();
    assert!(link.starts_with("socket:["), "fd {fd} of {pid} is {link}");
    link
}

/// Whether process `pid` holds the socket `inode` (at any descriptor).
fn holds(pid: i32, inode: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|l| l.to_string_lossy() == inode)
}

/// `GET /sleep?ms=N` on a new connection, on a thread: its body.
fn slow_request(port: u16, ms: u64) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.write_all(format!("GET /sleep?ms={ms} HTTP/1.0\r\n\r\n").as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.rsplit("\r\n\r\n").next().unwrap_or("").trim().to_string()
    })
}

/// The environment systemd gives a service (nothing of ours), plus the notify socket and the
/// sanitizer settings the C demo's test build needs.
fn service_environment(manager: &Manager) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("NOTIFY_SOCKET".into(), manager.notify_socket()),
        ("ASAN_OPTIONS".into(), "detect_leaks=1:halt_on_error=1:abort_on_error=0".into()),
        ("UBSAN_OPTIONS".into(), "halt_on_error=1:print_stacktrace=1".into()),
    ]
}

/// The demo unit started by its socket, as systemd starts it: `systemd-socket-activate`
/// listens on the unit's address (moved to a free port), names the descriptor, and execs the
/// `ExecStart=` command on the first connection (same pid). Returns the process, the port,
/// the unit and the socket's `ListenStream=`.
fn start_demo_unit(activate: &Path, manager: &mut Manager) -> (Proc, u16, Unit, String) {
    let (socket, service) = (Unit::load("lameduck-demo.socket"), Unit::load("lameduck-demo.service"));
    let listen = socket.get("Socket", "ListenStream").expect("ListenStream=").to_string();
    let name = socket.get("Socket", "FileDescriptorName").expect("FileDescriptorName=");
    assert!(socket.get("Socket", "Accept").map_or(true, |a| matches!(a, "no" | "false")), "one service for all connections");
    assert_eq!(service.get("Service", "Type"), Some("notify-reload"));
    let words = service.command();
    assert_eq!(
        option(&words, "--listen"),
        Some(listen.as_str()),
        "ExecStart's --listen names ListenStream=, so it takes that socket"
    );
    let local = local_address(&listen);
    let port: u16 = local.rsplit(':').next().unwrap().parse().unwrap();
    let mut cmd = Command::new(activate);
    cmd.env_clear().args(["-l", &local, &format!("--fdname={name}")]);
    for (k, v) in service_environment(manager) {
        cmd.arg(format!("--setenv={k}={v}"));
    }
    cmd.args(local_command(&words, &listen, &local));
    let proc = manager.start(cmd);
    proc.wait_line(true, &format!("Listening on {local}"), LIMIT);
    (proc, port, service, local)
}

// ---- Tests ----------------------------------------------------------------------------------

/// READY=1, three reloads back to back (each SIGHUP sent the moment the previous reload ended,
/// as systemd runs a queued `systemctl reload`), each answered RELOADING=1 + MONOTONIC_USEC=,
/// then MAINPID=<new pid> + READY=1 from the old main process, all under keep-alive load that
/// never sees a refused connection or a failed request; then a stop right after the last
/// reload, with a slow request in flight on each of the last two generations: STOPPING=1, both
/// requests answered, every generation gone within TimeoutStopSec, the main one with status 0.
#[test]
fn demo_unit_reloads_and_stops_as_systemd_expects() {
    let Some(activate) = tool("systemd-socket-activate") else {
        eprintln!("systemd-socket-activate is not installed; skipping");
        return;
    };
    let mut manager = Manager::new("demo");
    let (proc, port, service, local) = start_demo_unit(&activate, &mut manager);
    let load = Load::start(port, 4); // the first connection starts the service
    let ready = manager.next_from_main("READY=1 once listening");
    assert_eq!(ready.text, "READY=1");
    proc.wait_line(false, &format!("listening on http://{local} (inherited)"), LIMIT);
    let socket = socket_inode(proc.pid(), 3);
    load.wait_for_more(20, LIMIT);

    let (mut reloads, mut slow) = (Vec::new(), Vec::new());
    for n in 1..=3 {
        if n == 3 {
            slow.push(slow_request(port, 2000)); // on the generation about to hand over
            proc.wait_nth_line("demo: request GET /sleep?ms=2000", 1, LIMIT);
        }
        let (old, begin, sent) = (manager.main, lameduck::notify::monotonic_usec(), Instant::now());
        kill(old, libc::SIGHUP);
        manager.reloading(begin);
        let done = manager.next_from_main("MAINPID=<new pid> + READY=1 once the new generation is ready");
        assert!(done.has("READY=1"), "{done:?}");
        let new: i32 = done.value("MAINPID").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{done:?}"));
        assert_ne!(new, old);
        assert_eq!(lameduck::sys::parent_pid(new), Some(old), "the new main process is one of the unit's");
        assert!(holds(new, &socket), "generation {new} holds the activated socket");
        manager.set_main(new);
        reloads.push(sent.elapsed());
    }
    slow.push(slow_request(port, 2000)); // on the new main process
    proc.wait_nth_line("demo: request GET /sleep?ms=2000", 2, LIMIT);
    load.wait_for_more(20, LIMIT);
    let served = load.stop_expecting_no_loss(); // refused connections included

    let (limit, stopped) = (service.timeout("TimeoutStopSec"), Instant::now());
    manager.stop(service.kill_mode());
    let stopping = manager.next_from_main("STOPPING=1 once lame-duck begins");
    assert!(stopping.has("STOPPING=1"), "{stopping:?}");
    for request in slow {
        assert_eq!(request.join().unwrap(), "slept 2000 ms", "a request in flight at the stop is answered");
    }
    for pid in manager.mains.clone() {
        manager.exits_cleanly(pid, limit.saturating_sub(stopped.elapsed()), &proc);
    }
    let stop = stopped.elapsed();
    assert!(manager.processes().is_empty(), "the unit's processes are all gone");
    assert_eq!(manager.notes.len(), 8, "READY, 3 × (RELOADING, MAINPID + READY), STOPPING: {:?}", manager.notes);
    eprintln!(
        "reloads (SIGHUP to MAINPID + READY=1): {reloads:?}; stop: {stop:?} (TimeoutStopSec {limit:?}); {served} requests served"
    );
}

/// The old generation SIGKILLed mid-upgrade (right after it started the new one): the new one
/// carries on and tells systemd `MAINPID=<its pid>` + `READY=1` itself. systemd hears that only
/// with the unit's `NotifyAccess=all`, and keeps the unit (its main process died, others run)
/// only with `ExitType=cgroup` (systemd 254 seen to; without it, the unit fails and is stopped).
#[test]
fn demo_unit_carries_on_when_the_old_generation_is_killed_mid_upgrade() {
    let Some(activate) = tool("systemd-socket-activate") else {
        eprintln!("systemd-socket-activate is not installed; skipping");
        return;
    };
    let mut manager = Manager::new("orphan");
    let (proc, port, service, _) = start_demo_unit(&activate, &mut manager);
    assert!(common::get_body(port, LIMIT).starts_with("hello from lameduck"));
    manager.next_from_main("READY=1 once listening");
    let socket = socket_inode(proc.pid(), 3);
    assert_eq!(service.get("Service", "ExitType"), Some("cgroup"), "else systemd stops the unit when its main process dies");
    assert_eq!(service.notify_access(), "all", "systemd hears a process that is not the main one only with NotifyAccess=all");
    let (old, begin) = (manager.main, lameduck::notify::monotonic_usec());
    kill(old, libc::SIGHUP);
    manager.reloading(begin);
    let line = proc.wait_line(true, "lameduck: Started new process ", LIMIT);
    let new: i32 = line.split("Started new process ").nth(1).and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap();
    kill(old, libc::SIGKILL);
    let status = manager.reap(old, LIMIT).unwrap();
    assert!(libc::WIFSIGNALED(status), "the old generation was killed: {status:#x}");

    let note = manager.next("MAINPID=<new pid> + READY=1 from the new generation itself");
    assert_eq!(note.pid, new, "{note:?}");
    assert_eq!((note.value("MAINPID"), note.has("READY=1")), (Some(new.to_string().as_str()), true), "{note:?}");
    manager.set_main(new);
    assert!(holds(new, &socket));
    assert!(common::get_body(port, LIMIT).contains(&format!("(pid {new})")));

    let (limit, stopped) = (service.timeout("TimeoutStopSec"), Instant::now());
    manager.stop(service.kill_mode());
    assert!(manager.next_from_main("STOPPING=1").has("STOPPING=1"));
    manager.exits_cleanly(new, limit.saturating_sub(stopped.elapsed()), &proc);
}

/// start_server as a `Type=notify-reload` unit: it stays the main process (never a MAINPID=),
/// says READY=1 once its worker is ready, and for each reload RELOADING=1 + MONOTONIC_USEC=,
/// then READY=1 once the new worker is, under load with no failed request. A stop with a slow
/// request in flight: KillMode=mixed sends SIGTERM to start_server alone, which passes one TERM
/// to its worker: the request is answered, nothing is forced, everything exits 0.
#[test]
fn start_server_unit_reloads_and_stops_as_systemd_expects() {
    let service = Unit::load("lameduck-start-server.service");
    assert_eq!(service.get("Service", "Type"), Some("notify-reload"));
    assert!(service.get("Service", "ExecReload").is_none(), "notify-reload: systemd sends SIGHUP itself");
    let words = service.command();
    let address = option_eq(&words, "--port").expect("start_server --port=").to_string();
    let worker = &words[words.iter().position(|w| w == "--").expect("-- before the worker") + 1..];
    assert_eq!(option(worker, "--listen"), Some(address.as_str()), "the worker takes start_server's socket");
    let local = local_address(&address);
    let port: u16 = local.rsplit(':').next().unwrap().parse().unwrap();

    let mut manager = Manager::new("start-server");
    let command = local_command(&words, &address, &local);
    let mut cmd = Command::new(&command[0]);
    cmd.env_clear().args(&command[1..]).envs(service_environment(&manager));
    let proc = manager.start(cmd);
    assert!(manager.next_from_main("READY=1 once the worker is ready").has("READY=1"));
    let load = Load::start(port, 4);
    load.wait_for_more(20, LIMIT);
    for _ in 0..2 {
        let begin = lameduck::notify::monotonic_usec();
        kill(manager.main, libc::SIGHUP);
        manager.reloading(begin);
        let ready = manager.next_from_main("READY=1 once the new worker is ready");
        assert!(ready.has("READY=1") && ready.value("MAINPID").is_none(), "{ready:?}");
    }
    load.wait_for_more(20, LIMIT);
    let slow = slow_request(port, 2000);
    proc.wait_nth_line("demo: request GET /sleep?ms=2000", 1, LIMIT);
    load.stop_expecting_no_loss();

    let (limit, stopped) = (service.timeout("TimeoutStopSec"), Instant::now());
    manager.stop(service.kill_mode());
    assert!(manager.next_from_main("STOPPING=1").has("STOPPING=1"));
    assert_eq!(slow.join().unwrap(), "slept 2000 ms");
    manager.exits_cleanly(manager.main, limit.saturating_sub(stopped.elapsed()), &proc);
    assert!(manager.processes().is_empty(), "start_server waited for its workers");
    let (_, stderr) = proc.text();
    assert!(!stderr.contains("forcing close"), "a worker had a second TERM:\n{stderr}");
    assert_eq!(manager.notes.len(), 6, "READY, 2 × (RELOADING, READY), STOPPING: {:?}", manager.notes);
}

/// An upgrade signal refused before anything starts (here: the pid file cannot be written)
/// still ends the reload for systemd: RELOADING=1 + MONOTONIC_USEC=, then READY=1 with the
/// reason in STATUS=, as after a failed upgrade. Before, nothing was sent, and under
/// Type=notify-reload `systemctl reload` hung until the start timeout (90 s) failed it.
#[test]
fn a_refused_reload_signal_still_ends_the_reload() {
    let mut manager = Manager::new("refused");
    let pid_file = manager.dir.join("demo.pid");
    let mut cmd = common::c_command(demo());
    cmd.args(["--port", "0", "--pid-file"]).arg(&pid_file).env("NOTIFY_SOCKET", manager.notify_socket());
    let proc = manager.start(cmd);
    assert_eq!(manager.next_from_main("READY=1").text, "READY=1");
    std::fs::remove_file(&pid_file).unwrap();
    std::fs::create_dir(&pid_file).unwrap(); // the pid file cannot be pointed at a new process
    let begin = lameduck::notify::monotonic_usec();
    kill(manager.main, libc::SIGHUP);
    manager.reloading(begin);
    let ready = manager.next_from_main("READY=1 with the reason");
    assert!(ready.has("READY=1"), "{ready:?}");
    let status = ready.value("STATUS").unwrap_or_default();
    assert!(status.starts_with("upgrade refused: could not write the pid file"), "{ready:?}");
    let (_, stderr) = proc.text();
    assert!(!stderr.contains("Started new process"), "{stderr}");

    kill(manager.main, libc::SIGTERM);
    assert!(manager.next_from_main("STOPPING=1").has("STOPPING=1"));
    manager.exits_cleanly(manager.main, LIMIT, &proc);
}

/// The units' timeouts cover what they wait for: TimeoutStopSec (after which systemd sends
/// SIGKILL) at least the lame-duck budget of the command's options, and for the demo
/// TimeoutStartSec (also the limit of a reload) at least the upgrade timeout plus the
/// confirmation window.
#[test]
fn unit_timeouts_cover_the_lame_duck_budget() {
    let demo_unit = Unit::load("lameduck-demo.service");
    let words = demo_unit.command();
    let stop = demo_stop_budget(&words);
    assert!(demo_unit.timeout("TimeoutStopSec") >= stop, "TimeoutStopSec < drain + period + close timeout + 2 s = {stop:?}");
    let reload = demo_ms(&words, "--upgrade-timeout", 60_000) + demo_ms(&words, "--upgrade-confirm", 1000);
    assert!(demo_unit.timeout("TimeoutStartSec") >= reload, "TimeoutStartSec < upgrade timeout + confirmation = {reload:?}");

    let start_server = Unit::load("lameduck-start-server.service");
    let words = start_server.command();
    let worker = &words[words.iter().position(|w| w == "--").unwrap() + 1..];
    let stop = demo_stop_budget(worker);
    assert!(start_server.timeout("TimeoutStopSec") >= stop, "TimeoutStopSec < the worker's budget {stop:?}");
}

/// `systemd-analyze verify` accepts the units (copies naming this build's programs, which it
/// checks exist): no warning at all, but `Type=notify-reload` unknown to a systemd before 253.
#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(analyze) = tool("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed; skipping");
        return;
    };
    let dir = common::scratch_dir("systemd-verify");
    let names = ["lameduck-demo.socket", "lameduck-demo.service", "lameduck-start-server.service"];
    let mut paths = Vec::new();
    for name in names {
        let text = std::fs::read_to_string(common::repo().join("examples/systemd").join(name)).unwrap();
        let text = text
            .replace("/usr/local/bin/lameduck-demo", &demo().display().to_string())
            .replace("/usr/local/bin/start_server", env!("CARGO_BIN_EXE_start_server"));
        std::fs::write(dir.join(name), text).unwrap();
        paths.push(dir.join(name));
    }
    let version = Command::new(&analyze).arg("--version").output().unwrap();
    let version: u32 = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("systemd-analyze --version: systemd N (…)");
    let (status, stdout, stderr) = common::run_limited(
        {
            let mut cmd = Command::new(&analyze);
            cmd.args(["verify", "--man=no"]).args(&paths);
            cmd
        },
        LIMIT,
    );
    let complaints: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| !(version < 253 && l.ends_with("Failed to parse service type, ignoring: notify-reload")))
        .collect();
    assert!(status.success() && complaints.is_empty(), "systemd {version}: {status}: {complaints:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unit_syntax_and_time_spans_are_read_as_systemd_reads_them() {
    let text = "# comment\n[Unit]\nDescription = a b \n; other comment\n[Service]\nExecStart=/bin/x \\\n  --y 1\nKillMode=mixed\nKillMode=control-group\n";
    let unit = Unit { name: "t".into(), settings: parse_unit(text).unwrap() };
    assert_eq!(unit.get("Unit", "Description"), Some("a b"));
    assert_eq!(unit.command(), ["/bin/x", "--y", "1"]);
    assert_eq!(unit.kill_mode(), "control-group", "the last assignment wins");
    assert_eq!(unit.notify_access(), "main");
    assert_eq!(unit.timeout("TimeoutStopSec"), Duration::from_secs(90));
    assert!(parse_unit("Key=outside").is_err());
    assert!(parse_unit("[Service]\nno equals sign").is_err());
    assert_eq!(timespan("1min 30s"), Duration::from_secs(90));
    assert_eq!(timespan("500ms"), Duration::from_millis(500));
    assert_eq!(timespan("20"), Duration::from_secs(20));
}
