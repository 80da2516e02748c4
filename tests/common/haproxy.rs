//! A real haproxy in front of servers this test started, and the small process helpers the
//! balancer tests share (tests/haproxy.rs, tests/fleet.rs, benches/fleet.rs): haproxy runs in
//! the foreground (`-db`) as our child, with an admin stats socket read for every server's
//! status and counters (`show stat`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::Proc;

/// `name` on PATH, or in the sbin directories Debian installs haproxy to (which a non-root
/// PATH often lacks). A missing tool fails the test: skipping would hide the scenario.
pub fn required_tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').filter(|d| !d.is_empty()).chain(["/usr/sbin", "/usr/local/sbin", "/sbin"]);
    if let Some(found) = dirs.map(|d| PathBuf::from(d).join(name)).find(|p| p.is_file()) {
        return found;
    }
    panic!(
        "`{name}` is not installed (not on PATH={path}, nor in /usr/sbin): this test needs a real {name}; \
         install it with `apt-get install -y {name}` (scripts/test-all.sh does)"
    )
}

pub fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a pid this test started (directly or through an upgrade).
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

/// Whether `pid` is a running (not zombie) process.
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit(')').next().and_then(|rest| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Whether `pid` runs and its command line contains `needle` (so a reused pid is never hit).
pub fn runs(pid: i32, needle: &[u8]) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    alive(pid) && cmdline.windows(needle.len()).any(|w| w == needle)
}

/// Waits until `f` gives a value; panics after `limit` with `what()`.
pub fn wait_for<T>(limit: Duration, what: impl Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {}", what());
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The pid in a `GET /` answer ("... (pid N)"), asked directly (not through haproxy) on a
/// fresh connection: the process that accepted it.
pub fn answering_pid(port: u16) -> Option<i32> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.split("(pid ").nth(1)?.split(')').next()?.parse().ok()
}

/// One row of `show stat`, by column name.
pub type Row = HashMap<String, String>;

/// haproxy with the configuration `config` (its `global` section must name `socket` as its
/// `stats socket`), frontend `fe` and backend `be` with the servers `servers`.
pub struct Haproxy {
    pub proc: Proc,
    socket: PathBuf,
    servers: Vec<String>,
}

impl Haproxy {
    pub fn start(haproxy: &Path, dir: &Path, config: &str, socket: PathBuf, servers: &[&str]) -> Haproxy {
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).unwrap();
        let mut cmd = Command::new(haproxy);
        cmd.arg("-db").arg("-f").arg(&cfg);
        Haproxy { proc: Proc::spawn(cmd), socket, servers: servers.iter().map(|s| s.to_string()).collect() }
    }

    /// Its output so far, and whether it still runs.
    pub fn text(&self) -> String {
        let (out, err) = self.proc.text();
        let state = if alive(self.proc.pid()) { "running" } else { "EXITED" };
        format!("haproxy {state}; stdout: {out}\nstderr: {err}")
    }

    /// `show stat`: the backend's server rows by server name, and the frontend's row as "fe".
    pub fn try_stats(&self) -> Option<HashMap<String, Row>> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(b"show stat\n").ok()?;
        let mut csv = String::new();
        s.read_to_string(&mut csv).ok()?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let rows: HashMap<String, Row> = lines
            .map(|l| header.iter().map(|h| h.to_string()).zip(l.split(',').map(str::to_string)).collect::<Row>())
            .filter_map(|r| {
                let (px, sv) = (r.get("pxname")?.as_str(), r.get("svname")?.as_str());
                match (px, sv) {
                    ("fe", "FRONTEND") => Some(("fe".to_string(), r)),
                    ("be", name) if self.servers.iter().any(|s| s == name) => Some((name.to_string(), r)),
                    _ => None,
                }
            })
            .collect();
        (rows.len() == self.servers.len() + 1).then_some(rows)
    }

    pub fn stats(&self, limit: Duration) -> HashMap<String, Row> {
        wait_for(limit, || format!("haproxy's stats socket: {}", self.text()), || self.try_stats())
    }

    /// A numeric counter of server `server` (or of the frontend, "fe").
    pub fn counter(&self, server: &str, field: &str, limit: Duration) -> u64 {
        self.stats(limit)[server][field].parse().unwrap_or(0)
    }

    /// Whether haproxy has server `server` UP after a passed check.
    pub fn is_up(&self, server: &str) -> bool {
        self.try_stats().is_some_and(|s| s.get(server).is_some_and(|r| r["status"] == "UP" && r["check_status"] == "L7OK"))
    }

    /// haproxy's "Server be/x is DOWN" warnings so far.
    pub fn down_warnings(&self) -> Vec<String> {
        let (_, log) = self.proc.text();
        log.lines().filter(|l| l.starts_with("[WARNING]") && l.contains(" is DOWN")).map(str::to_string).collect()
    }
}
