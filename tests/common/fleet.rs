//! A fleet behind a real haproxy: two instances of one server, under `wrk -t2 -c20` through
//! haproxy, restarted (SIGTERM, wait for the exit, start again, wait until haproxy has it UP)
//! or upgraded (SIGHUP) one after the other, round after round. One harness for the short run
//! in tests/fleet.rs (which asserts) and the long one in benches/fleet.rs (which prints).
//!
//! haproxy checks `GET /ready` every 100 ms on each instance's health port (lameduck's built-in
//! listener; the plain control servers answer it on their own port), takes a server out after
//! one failed check and back after one passed (`fall 1 rise 1`), and retries a failed connect
//! up to 3 times, the last on the other server (`retries 3`, `option redispatch`), with a 1 s
//! connect timeout.
//!
//! What the client saw comes from wrk's own counters and latency histogram (a Lua `done`
//! prints them: requests, socket errors, answers ≥ 400, p50/p99/max, and the requests slower
//! than a threshold); the 5xx and the DOWN transitions from haproxy's stats socket; each drain
//! (DRAINING → SHUTTING_DOWN) from the arrival times of the servers' "state" lines.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::haproxy::{alive, answering_pid, kill, read_pid, required_tool, runs, wait_for, Haproxy};
use super::Proc;

/// Limit for each awaited event; generous, for a busy 2-core machine under load.
pub const LIMIT: Duration = Duration::from_secs(30);
pub const CHECK_INTER_MS: u64 = 100;
const SERVERS: [&str; 2] = ["a", "b"];
/// What a new generation logs once its predecessor has handed over (it may upgrade from then on).
const HANDED_OVER: &str = "The previous generation handed over; this process is the current generation";
/// Lines of a server's output worth showing when something went wrong.
const NOTABLE: [&str; 8] =
    ["run ended: ", "Upgrade failed", "AddressSanitizer", "runtime error", "Traceback", "Error", "expired", "still open"];

/// wrk's `done`: one line of numbers (latencies in µs). `FLEET_SLOW_US` is the threshold for
/// "slow" (`auto`: this run's own p50 + 100 ms); the histogram is walked bucket by bucket
/// (`latency(i)`: value and count).
const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local given = os.getenv("FLEET_SLOW_US") or "0"
  local limit = given == "auto" and latency:percentile(50) + 100000 or tonumber(given)
  local slow, recorded = 0, 0
  for i = 1, #latency do
    local value, count = latency(i)
    recorded = recorded + count
    if limit > 0 and value > limit then slow = slow + count end
  end
  local e = summary.errors
  io.write(string.format("fleet-wrk: requests=%d connect=%d read=%d write=%d timeout=%d status=%d p50=%d p99=%d max=%d slow=%d recorded=%d\n",
    summary.requests, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max, slow, recorded))
end
"#;

/// The server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    /// examples/http_server.c
    C,
    /// examples/python/balanced.py (FastAPI on uvicorn, through lameduck.asgi)
    Python,
    /// examples/node/balanced.js (http)
    Node,
    /// The controls, without lameduck: `http.createServer` killed by SIGTERM...
    PlainNode,
    /// ...and `python3 -m http.server`.
    PlainPython,
}

impl App {
    pub fn name(self) -> &'static str {
        match self {
            App::C => "C demo",
            App::Python => "Python FastAPI/uvicorn",
            App::Node => "Node http",
            App::PlainNode => "plain Node http (control)",
            App::PlainPython => "plain Python http.server (control)",
        }
    }

    pub fn lameduck(self) -> bool {
        matches!(self, App::C | App::Python | App::Node)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// SIGTERM, wait for the exit, start a new process on the same ports.
    Restart,
    /// SIGHUP: a new generation takes the sockets over.
    Upgrade,
}

/// One scenario: which server, what is done to it, with which drain, how many rounds (each
/// round changes both instances, one after the other).
#[derive(Clone, Debug)]
pub struct Case {
    pub app: App,
    pub change: Change,
    pub drain_ms: u64,
    /// The adaptive drain's quiet time (0: a fixed drain of `drain_ms`).
    pub quiet_ms: u64,
    pub rounds: usize,
    /// A calm wrk run this long first, whose p50 is the "normal" latency.
    pub baseline: Option<Duration>,
}

impl Case {
    pub fn title(&self) -> String {
        let change = match self.change {
            Change::Restart => "rolling SIGTERM restarts",
            Change::Upgrade => "SIGHUP upgrades",
        };
        let drain = if !self.app.lameduck() {
            "no lameduck".to_string()
        } else if self.change == Change::Upgrade {
            "health listener, hand-over (no drain)".to_string()
        } else if self.quiet_ms == 0 {
            format!("health listener, fixed drain {} ms", self.drain_ms)
        } else {
            format!("health listener, adaptive drain (quiet {} ms, at most {} ms)", self.quiet_ms, self.drain_ms)
        };
        format!("{}: {} rounds of {change}, {drain}", self.app.name(), self.rounds)
    }
}

/// The programs a run uses: haproxy, wrk, the C demo (built once), the project venv's Python.
pub struct Programs {
    haproxy: PathBuf,
    wrk: PathBuf,
    c_demo: Option<PathBuf>,
    python: PathBuf,
    /// A directory whose node_modules/lameduck is bindings/node, for NODE_PATH.
    node_path: PathBuf,
}

impl Programs {
    /// Finds the tools (failing when one is missing), and builds the C demo when `apps` has it.
    /// Python is `LAMEDUCK_FLEET_PYTHON`, else the project venv's.
    pub fn new(apps: &[App], dir: &Path) -> Programs {
        let c_demo = apps.contains(&App::C).then(|| super::build_c("http_server_fleet", &["examples/http_server.c"]));
        let python = std::env::var_os("LAMEDUCK_FLEET_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| super::repo().join(".venv/bin/python"));
        if apps.contains(&App::Python) {
            assert!(python.exists(), "{}: no such Python (scripts/test-all.sh makes the venv first)", python.display());
        }
        let node_path = dir.join("node-path");
        let modules = node_path.join("node_modules");
        std::fs::create_dir_all(&modules).unwrap();
        let link = modules.join("lameduck");
        if !link.exists() {
            std::os::unix::fs::symlink(super::repo().join("bindings/node"), &link).unwrap();
        }
        Programs { haproxy: required_tool("haproxy"), wrk: required_tool("wrk"), c_demo, python, node_path }
    }
}

/// What wrk's `done` printed.
#[derive(Clone, Debug, Default)]
pub struct Wrk {
    pub requests: u64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    /// Answers with a status ≥ 400.
    pub status: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Requests slower than `FLEET_SLOW_US`.
    pub slow: u64,
}

impl Wrk {
    fn parse(out: &str) -> Wrk {
        let line =
            out.lines().find_map(|l| l.strip_prefix("fleet-wrk: ")).unwrap_or_else(|| panic!("no numbers from wrk:\n{out}"));
        let v: HashMap<&str, u64> =
            line.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k, v.parse().unwrap())).collect();
        Wrk {
            requests: v["requests"],
            connect: v["connect"],
            read: v["read"],
            write: v["write"],
            timeout: v["timeout"],
            status: v["status"],
            p50_us: v["p50"],
            p99_us: v["p99"],
            max_us: v["max"],
            slow: v["slow"],
        }
    }

    pub fn socket_errors(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

/// What one case measured.
#[derive(Debug)]
pub struct Outcome {
    pub title: String,
    pub wrk: Wrk,
    /// The calm run, when there was one (its `slow`: above its own p50 + 100 ms); `wrk.slow`
    /// counts above its p50 + 100 ms.
    pub baseline: Option<Wrk>,
    /// 5xx answers haproxy sent the client.
    pub fe_5xx: u64,
    /// UP → DOWN transitions haproxy counted, and its "is DOWN" warnings.
    pub downs: u64,
    pub down_warnings: Vec<String>,
    /// Connects haproxy retried, and requests it sent to the other server after failed
    /// connects (`wretr`, `wredis`): failures the client did not see, as delays.
    pub retries: u64,
    pub redispatches: u64,
    /// Each restart's drain, DRAINING → SHUTTING_DOWN.
    pub drains: Vec<Duration>,
    /// Restarts whose adaptive drain ended early ("Drain ended after": on haproxy's probe).
    pub early_drains: usize,
    /// Restarts or upgrades done.
    pub changes: usize,
    pub elapsed: Duration,
    /// Notable lines from the servers, and exits that were not clean.
    pub trouble: Vec<String>,
    /// haproxy's log of requests that failed or were retried (`option dontlog-normal`: only those).
    pub failed_requests: Vec<String>,
}

impl Outcome {
    /// What the client lost: socket errors and answers ≥ 400.
    pub fn losses(&self) -> u64 {
        self.wrk.socket_errors() + self.wrk.status
    }

    pub fn mean_drain(&self) -> Option<Duration> {
        let n = u32::try_from(self.drains.len()).ok().filter(|&n| n > 0)?;
        Some(self.drains.iter().sum::<Duration>() / n)
    }

    pub fn summary(&self) -> String {
        let w = &self.wrk;
        let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
        let slow = match &self.baseline {
            Some(b) => format!(
                "{} above {} ms (calm run: {} requests, p50 {} ms, p99 {} ms, max {} ms, {} above its p50 + 100 ms)",
                w.slow,
                ms(b.p50_us + 100_000),
                b.requests,
                ms(b.p50_us),
                ms(b.p99_us),
                ms(b.max_us),
                b.slow
            ),
            None => "-".into(),
        };
        let drain = self.mean_drain().map_or("-".into(), |d| {
            format!("{:.0} ms ({} of {} ended early)", d.as_secs_f64() * 1000.0, self.early_drains, self.drains.len())
        });
        format!(
            "{}\n  {} changes in {:.1?}: {} requests; errors connect {} read {} write {} timeout {}; status>=400 {}; \
             5xx {}; p50 {} ms, p99 {} ms, max {} ms; slow: {slow}; mean drain {drain}; DOWN {}; haproxy retries {}, \
             redispatches {}",
            self.title,
            self.changes,
            self.elapsed,
            w.requests,
            w.connect,
            w.read,
            w.write,
            w.timeout,
            w.status,
            self.fe_5xx,
            ms(w.p50_us),
            ms(w.p99_us),
            ms(w.max_us),
            self.downs,
            self.retries,
            self.redispatches,
        )
    }
}

struct Instance {
    name: &'static str,
    port: u16,
    health: u16,
    pid_file: PathBuf,
    /// The process started last by hand; after upgrades, later generations share its pipes.
    proc: Proc,
    current: i32,
    /// Upgrades since `proc` was started.
    upgrades: usize,
}

/// Everything a case started. Drop kills what is left, by pid: wrk and haproxy (children,
/// killed and reaped), every generation still running (checked against its command line), and
/// the instances' processes.
struct Fleet<'a> {
    programs: &'a Programs,
    case: &'a Case,
    dir: PathBuf,
    instances: Vec<Instance>,
    /// Processes restarted out (kept for their output).
    retired: Vec<Proc>,
    /// Every pid an upgrade started.
    generations: Vec<i32>,
    haproxy: Option<Haproxy>,
    wrk: Option<Proc>,
    drains: Vec<Duration>,
    /// Restarts whose adaptive drain ended early ("Drain ended after").
    early_drains: usize,
    trouble: Vec<String>,
}

impl Fleet<'_> {
    /// What identifies this case's server processes in /proc/PID/cmdline.
    fn marker(&self) -> Vec<u8> {
        match self.case.app {
            App::C => self.programs.c_demo.as_ref().unwrap().as_os_str().as_encoded_bytes().to_vec(),
            App::Python => super::repo().join("examples/python/balanced.py").into_os_string().into_encoded_bytes(),
            App::Node => super::repo().join("examples/node/balanced.js").into_os_string().into_encoded_bytes(),
            App::PlainNode | App::PlainPython => self.dir.as_os_str().as_encoded_bytes().to_vec(),
        }
    }

    fn command(&self, port: u16, health: u16, pid_file: &Path) -> Command {
        let repo = super::repo();
        let mut cmd = match self.case.app {
            App::C => super::c_command(self.programs.c_demo.as_ref().unwrap()),
            App::Python => {
                let mut c = Command::new(&self.programs.python);
                c.arg(repo.join("examples/python/balanced.py"));
                c
            }
            App::Node => {
                let mut c = Command::new("node");
                c.arg(repo.join("examples/node/balanced.js")).env("NODE_PATH", self.programs.node_path.join("node_modules"));
                c
            }
            App::PlainNode => {
                let mut c = Command::new("node");
                // The directory as an argument marks the process as ours (see `marker`).
                c.arg("-e")
                    .arg(
                        "require('http').createServer((q, s) => s.end(`hello (pid ${process.pid})\\n`))\
                         .listen(Number(process.argv[1]), '127.0.0.1')",
                    )
                    .arg(port.to_string())
                    .arg(&self.dir);
                return c;
            }
            App::PlainPython => {
                let www = self.dir.join("www");
                std::fs::create_dir_all(&www).unwrap();
                std::fs::write(www.join("ready"), "ready\n").unwrap();
                let mut c = Command::new("python3");
                c.args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"]).arg(&www);
                return c;
            }
        };
        cmd.args(["--port", &port.to_string(), "--health", &format!("127.0.0.1:{health}")]);
        cmd.args(["--drain", &self.case.drain_ms.to_string(), "--drain-quiet", &self.case.quiet_ms.to_string()]);
        // A 10 s lame-duck period: on a loaded machine an old process may need more than the
        // default 3 s to finish the keep-alive connections haproxy holds to it.
        cmd.args(["--period", "10000", "--pid-file"]).arg(pid_file);
        cmd
    }

    /// Starts instance `name` (or starts it again, on the same ports); waits until it serves.
    fn spawn(&self, name: &str, port: u16, health: u16, pid_file: &Path) -> Proc {
        let proc = Proc::spawn(self.command(port, health, pid_file));
        if self.case.app.lameduck() {
            proc.wait_line(true, "state READY", LIMIT);
            wait_for(
                LIMIT,
                || format!("{name}'s pid file to name {}", proc.pid()),
                || (read_pid(pid_file) == Some(proc.pid())).then_some(()),
            );
        } else {
            wait_for(
                LIMIT,
                || format!("{name} ({}) to listen on {port}: {:?}", self.case.app.name(), proc.text()),
                || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
            );
        }
        proc
    }

    fn start_instance(&mut self, name: &'static str) {
        let (port, health) = (super::free_port(), super::free_port());
        let pid_file = self.dir.join(format!("{name}.pid"));
        let proc = self.spawn(name, port, health, &pid_file);
        let current = proc.pid();
        self.instances.push(Instance { name, port, health, pid_file, proc, current, upgrades: 0 });
    }

    fn haproxy(&self) -> &Haproxy {
        self.haproxy.as_ref().unwrap()
    }

    fn haproxy_text(&self) -> String {
        self.haproxy.as_ref().map(Haproxy::text).unwrap_or_default()
    }

    fn counter(&self, server: &str, field: &str) -> u64 {
        self.haproxy().counter(server, field, LIMIT)
    }

    fn start_haproxy(&mut self, frontend: u16) {
        let socket = self.dir.join("haproxy.sock");
        let servers: String = self
            .instances
            .iter()
            .map(|d| {
                let port = if self.case.app.lameduck() { format!(" port {}", d.health) } else { String::new() };
                format!("    server {} 127.0.0.1:{} check{port} inter {CHECK_INTER_MS}ms fall 1 rise 1\n", d.name, d.port)
            })
            .collect();
        // A check's read timeout is generous: a slow answer on a loaded machine is not the flap
        // this is about; a 503 or a refused connection is.
        let config = format!(
            "global\n\
             \x20   stats socket {socket} mode 600 level admin\n\
             \x20   stats timeout 30s\n\
             \x20   log stderr format raw local0 info\n\
             defaults\n\
             \x20   mode http\n\
             \x20   log global\n\
             \x20   option httplog\n\
             \x20   option dontlog-normal\n\
             \x20   option redispatch\n\
             \x20   retries 3\n\
             \x20   timeout connect 1s\n\
             \x20   timeout client 60s\n\
             \x20   timeout server 60s\n\
             \x20   timeout check 5s\n\
             \x20   timeout http-keep-alive 60s\n\
             frontend fe\n\
             \x20   bind 127.0.0.1:{frontend}\n\
             \x20   default_backend be\n\
             backend be\n\
             \x20   balance roundrobin\n\
             \x20   option httpchk GET /ready\n\
             \x20   http-check expect status 200\n\
             {servers}",
            socket = socket.display(),
        );
        self.haproxy = Some(Haproxy::start(&self.programs.haproxy, &self.dir, &config, socket, &SERVERS));
        wait_for(
            LIMIT,
            || format!("haproxy to see both servers UP: {}", self.haproxy_text()),
            || SERVERS.iter().all(|s| self.haproxy().is_up(s)).then_some(()),
        );
    }

    fn wrk_command(&self, frontend: u16, duration: Duration, slow_us: String) -> Command {
        let script = self.dir.join("fleet.lua");
        std::fs::write(&script, WRK_SCRIPT).unwrap();
        let mut cmd = Command::new(&self.programs.wrk);
        cmd.args(["-t2", "-c20", "--timeout", "10s", &format!("-d{}s", duration.as_secs().max(1)), "-s"])
            .arg(&script)
            .arg(format!("http://127.0.0.1:{frontend}/"))
            .env("FLEET_SLOW_US", slow_us);
        cmd
    }

    /// SIGTERM to instance `i`, its drain timed; once it has exited, a new process on the same
    /// ports; then waits until haproxy has it UP again (after having seen it DOWN, for lameduck
    /// servers: their drain lasts until haproxy got a 503).
    fn restart(&mut self, i: usize) {
        let name = self.instances[i].name;
        let downs = self.counter(name, "chkdown");
        let old = &mut self.instances[i].proc;
        kill(old.pid(), libc::SIGTERM);
        let status = old.wait_exit(LIMIT).unwrap_or_else(|| panic!("{name} did not exit after SIGTERM: {:?}", old.text()));
        // Nobody else holds its pipes (no upgrade started a generation from it): all its lines.
        assert!(old.wait_output_end(LIMIT), "{name}'s output did not end");
        if self.case.app.lameduck() {
            if !status.success() {
                self.trouble.push(format!("{name} (pid {}) exited with {status}", old.pid()));
            }
            match (old.stderr_line_time("state DRAINING"), old.stderr_line_time("state SHUTTING_DOWN")) {
                (Some(from), Some(to)) => self.drains.push(to.saturating_duration_since(from)),
                _ => self.trouble.push(format!("{name} (pid {}) did not drain: {:?}", old.pid(), old.text().1)),
            }
            self.early_drains += usize::from(old.stderr_line_time("Drain ended after").is_some());
        }
        let (port, health, pid_file) = (self.instances[i].port, self.instances[i].health, self.instances[i].pid_file.clone());
        let new = self.spawn(name, port, health, &pid_file);
        self.instances[i].current = new.pid();
        self.instances[i].upgrades = 0;
        let old = std::mem::replace(&mut self.instances[i].proc, new);
        self.retired.push(old);
        let lameduck = self.case.app.lameduck();
        wait_for(
            LIMIT,
            || format!("haproxy to have {name} UP again: {}", self.haproxy_text()),
            || ((!lameduck || self.counter(name, "chkdown") > downs) && self.haproxy().is_up(name)).then_some(()),
        );
    }

    /// SIGHUP to instance `i`'s current generation; waits until the new one is ready (it wrote
    /// the pid file and its predecessor handed over), answers on the port, and haproxy goes on
    /// sending that server requests.
    fn upgrade(&mut self, i: usize) {
        let old = self.instances[i].current;
        let (pid_file, port, name) = (self.instances[i].pid_file.clone(), self.instances[i].port, self.instances[i].name);
        kill(old, libc::SIGHUP);
        let new = wait_for(
            LIMIT,
            || format!("a new generation of {name} (old pid {old}): {}", self.instances[i].proc.text().1),
            || read_pid(&pid_file).filter(|&p| p != old),
        );
        self.instances[i].upgrades += 1;
        self.instances[i].proc.wait_nth_line(HANDED_OVER, self.instances[i].upgrades, LIMIT);
        self.generations.push(new);
        self.instances[i].current = new;
        wait_for(
            LIMIT,
            || format!("pid {new} ({name}) to answer on port {port}"),
            || (answering_pid(port) == Some(new)).then_some(()),
        );
        let served = self.counter(name, "hrsp_2xx");
        wait_for(
            LIMIT,
            || format!("haproxy to send {name} more requests: {}", self.haproxy_text()),
            || (self.counter(name, "hrsp_2xx") >= served + 20).then_some(()),
        );
    }

    /// SIGTERM to every current process; waits until all are gone.
    fn stop_all(&mut self) {
        let current: Vec<i32> = self.instances.iter().map(|d| d.current).collect();
        for &pid in &current {
            kill(pid, libc::SIGTERM);
        }
        wait_for(
            LIMIT,
            || format!("the last processes {current:?} to exit"),
            || current.iter().all(|&p| !alive(p)).then_some(()),
        );
    }

    fn notable_lines(&self) -> Vec<String> {
        let procs = self.instances.iter().map(|d| (d.name, &d.proc)).chain(self.retired.iter().map(|p| ("restarted", p)));
        procs
            .flat_map(|(name, proc)| {
                let (out, err) = proc.text();
                [out, err]
                    .into_iter()
                    .flat_map(|text| text.lines().map(str::to_string).collect::<Vec<_>>())
                    .filter(|l| NOTABLE.iter().any(|n| l.contains(n)))
                    .map(move |l| format!("{name}: {l}"))
                    .collect::<Vec<_>>()
            })
            .take(20)
            .collect()
    }
}

impl Drop for Fleet<'_> {
    fn drop(&mut self) {
        self.wrk.take(); // Proc's drop: SIGKILL and reap
        self.haproxy.take();
        let marker = self.marker();
        for &pid in &self.generations {
            if runs(pid, &marker) {
                // SAFETY: kill(2) on a live server generation this run started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // The processes started by hand are our children: `Proc`'s drop kills and reaps them.
        self.instances.clear();
        self.retired.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `case` from start to end; cleans up everything it started, also when it panics.
pub fn run(programs: &Programs, case: &Case) -> Outcome {
    let slug: String = format!("{:?}-{:?}-{}", case.app, case.change, case.quiet_ms).to_lowercase();
    let mut fleet = Fleet {
        programs,
        case,
        dir: super::scratch_dir(&format!("fleet-{slug}")),
        instances: Vec::new(),
        retired: Vec::new(),
        generations: Vec::new(),
        haproxy: None,
        wrk: None,
        drains: Vec::new(),
        early_drains: 0,
        trouble: Vec::new(),
    };
    for name in SERVERS {
        fleet.start_instance(name);
    }
    let frontend = super::free_port();
    fleet.start_haproxy(frontend);

    let baseline = case.baseline.map(|d| {
        // A fresh process is slower for its first requests (JIT, imports, caches): warm up first,
        // so the calm run measures the normal latency, not the start.
        let warm = Duration::from_secs(2);
        let (status, out, err) = super::run_limited(fleet.wrk_command(frontend, warm, "0".into()), warm + LIMIT);
        assert!(status.success(), "the warm-up wrk run failed: {out}\n{err}");
        let (status, out, err) = super::run_limited(fleet.wrk_command(frontend, d, "auto".into()), d + LIMIT);
        assert!(status.success(), "the calm wrk run failed: {out}\n{err}");
        Wrk::parse(&out)
    });
    let slow = baseline.as_ref().map_or("0".into(), |b| (b.p50_us + 100_000).to_string());
    // Stopped by SIGINT (wrk then prints its numbers); the hour is only a bound.
    fleet.wrk = Some(Proc::spawn(fleet.wrk_command(frontend, Duration::from_secs(3600), slow)));
    for name in SERVERS {
        let served = fleet.counter(name, "hrsp_2xx");
        wait_for(
            LIMIT,
            || format!("load through haproxy to reach {name}"),
            || (fleet.counter(name, "hrsp_2xx") >= served + 100).then_some(()),
        );
    }
    let downs_before: u64 = SERVERS.iter().map(|s| fleet.counter(s, "chkdown")).sum();
    let warnings_before = fleet.haproxy().down_warnings().len();

    let started = Instant::now();
    let mut changes = 0;
    for _ in 0..case.rounds {
        for i in 0..fleet.instances.len() {
            match case.change {
                Change::Restart => fleet.restart(i),
                Change::Upgrade => fleet.upgrade(i),
            }
            changes += 1;
        }
    }
    let elapsed = started.elapsed();

    // Every handed-over generation finishes and exits; the checks run all along.
    let current: Vec<i32> = fleet.instances.iter().map(|d| d.current).collect();
    let old: Vec<i32> = fleet.generations.iter().copied().filter(|p| !current.contains(p)).collect();
    wait_for(
        LIMIT,
        || format!("the old generations to exit: {:?}", old.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()),
        || old.iter().all(|&p| !alive(p)).then_some(()),
    );
    // A check sent just before the last old process went is answered within a few intervals.
    std::thread::sleep(Duration::from_millis(5 * CHECK_INTER_MS));

    let load = fleet.wrk.take().unwrap();
    load.signal(libc::SIGINT);
    load.wait_line(false, "fleet-wrk: ", LIMIT);
    let wrk = Wrk::parse(&load.text().0);
    drop(load);

    let stats = fleet.haproxy().stats(LIMIT);
    let field = |server: &str, f: &str| stats[server][f].parse::<u64>().unwrap_or(0);
    let downs = SERVERS.iter().map(|s| field(s, "chkdown")).sum::<u64>() - downs_before;
    let fe_5xx = field("fe", "hrsp_5xx");
    let retries = SERVERS.iter().map(|s| field(s, "wretr")).sum();
    let redispatches = SERVERS.iter().map(|s| field(s, "wredis")).sum();
    let down_warnings = fleet.haproxy().down_warnings().split_off(warnings_before);
    let (_, haproxy_log) = fleet.haproxy().proc.text();
    let failed_requests = haproxy_log.lines().filter(|l| l.contains(" fe be/")).take(10).map(str::to_string).collect();
    if case.app.lameduck() {
        fleet.stop_all();
    }
    let mut trouble = std::mem::take(&mut fleet.trouble);
    trouble.extend(fleet.notable_lines());
    Outcome {
        title: case.title(),
        wrk,
        baseline,
        fe_5xx,
        downs,
        down_warnings,
        retries,
        redispatches,
        drains: std::mem::take(&mut fleet.drains),
        early_drains: fleet.early_drains,
        changes,
        elapsed,
        trouble,
        failed_requests,
    }
}
