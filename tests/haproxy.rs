//! A real load balancer in front of the C demo (`examples/http_server.c`): two instances, each
//! with a 1 s drain delay and a pid file, behind haproxy, which health-checks `GET /health`
//! every 100 ms and takes a server out of rotation after a single failed check (`fall 1`).
//! Under `wrk -c20` keep-alive load through haproxy, each instance is upgraded 20 times by
//! SIGHUP (alternating), and neither the client nor the balancer may notice: no non-2xx
//! answer, no socket error, and no server ever marked DOWN.
//!
//! An upgrade is a hand-over, not a stop: the old process must not go on accepting on the
//! socket it shares with its successor during the drain delay, or the balancer's checks that it
//! accepts get 503 and haproxy pulls a port that is serving. Likewise no process may accept a
//! check on the shared socket while its state says "not serving" (a new generation before its
//! state reads READY, an old one after it left it).
//!
//! A new generation refuses a SIGHUP until its predecessor has handed over (after the
//! confirmation window), so each upgrade waits for the new generation's "handed over" line.
//!
//! Needs `haproxy` and `wrk` (scripts/test-all.sh installs both); fails when either is missing.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::haproxy::{alive, answering_pid, kill, read_pid, required_tool, runs, wait_for, Haproxy};
use common::{free_port, Proc};

/// Limit for each awaited event; generous, for a busy 2-core machine under load.
const LIMIT: Duration = Duration::from_secs(30);
const UPGRADES_EACH: usize = 20;
const DRAIN_MS: u64 = 1000;
const CHECK_INTER_MS: u64 = 100;
const SERVERS: [&str; 2] = ["a", "b"];
/// What a new generation logs once its predecessor has handed over (it may upgrade from then on).
const HANDED_OVER: &str = "The previous generation handed over; this process is the current generation";

/// One demo instance: its first process (whose pipes every later generation inherits), port,
/// pid file and current generation.
struct Instance {
    name: &'static str,
    proc: Proc,
    port: u16,
    pid_file: PathBuf,
    current: i32,
    /// Upgrades of this instance so far.
    upgrades: usize,
}

/// Everything the test started. Drop kills what is left, by pid, without waiting on anything
/// unbounded: wrk and haproxy (our children, killed and reaped), and every demo generation that
/// is still running (checked against its command line, so a reused pid is never hit).
struct Fleet {
    binary: PathBuf,
    dir: PathBuf,
    demos: Vec<Instance>,
    generations: Vec<i32>,
    haproxy: Option<Haproxy>,
    wrk: Option<Proc>,
}

impl Fleet {
    fn is_demo(&self, pid: i32) -> bool {
        runs(pid, self.binary.as_os_str().as_encoded_bytes())
    }

    fn start_demo(&mut self, name: &'static str) {
        let pid_file = self.dir.join(format!("{name}.pid"));
        let mut cmd = common::c_command(&self.binary);
        // A 10 s lame-duck period: on a loaded machine an old process may need more than the default
        // 3 s to finish the keep-alive connections haproxy holds to it.
        cmd.args(["--port", "0", "--period", "10000", "--drain", &DRAIN_MS.to_string(), "--pid-file"]).arg(&pid_file);
        let proc = Proc::spawn(cmd);
        self.generations.push(proc.pid());
        let line = proc.wait_line(false, "listening on http://127.0.0.1:", LIMIT);
        let port = line.rsplit(':').next().unwrap().split_whitespace().next().unwrap().parse().unwrap();
        proc.wait_line(true, "demo: state READY", LIMIT);
        assert_eq!(read_pid(&pid_file), Some(proc.pid()), "the pid file names the first generation");
        let current = proc.pid();
        self.demos.push(Instance { name, proc, port, pid_file, current, upgrades: 0 });
    }

    fn start_haproxy(&mut self, haproxy: &std::path::Path, frontend: u16) {
        let socket = self.dir.join("haproxy.sock");
        let servers: String = self
            .demos
            .iter()
            .map(|d| format!("    server {} 127.0.0.1:{} check inter {CHECK_INTER_MS}ms fall 1 rise 1\n", d.name, d.port))
            .collect();
        // Check timeouts are generous: a slow answer on a loaded machine is not the flap this
        // test is about; a 503 or a refused connection is.
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
             \x20   timeout connect 5s\n\
             \x20   timeout client 60s\n\
             \x20   timeout server 60s\n\
             \x20   timeout check 5s\n\
             \x20   timeout http-keep-alive 60s\n\
             frontend fe\n\
             \x20   bind 127.0.0.1:{frontend}\n\
             \x20   default_backend be\n\
             backend be\n\
             \x20   balance roundrobin\n\
             \x20   option httpchk GET /health\n\
             \x20   http-check expect status 200\n\
             {servers}",
            socket = socket.display(),
        );
        self.haproxy = Some(Haproxy::start(haproxy, &self.dir, &config, socket, &SERVERS));
        // Ready once both servers passed a check.
        wait_for(
            LIMIT,
            || format!("haproxy to see both servers UP: {}", self.haproxy_text()),
            || SERVERS.iter().all(|s| self.haproxy.as_ref().unwrap().is_up(s)).then_some(()),
        );
    }

    fn haproxy_text(&self) -> String {
        self.haproxy.as_ref().map(Haproxy::text).unwrap_or_default()
    }

    fn stats(&self) -> std::collections::HashMap<String, common::haproxy::Row> {
        self.haproxy.as_ref().unwrap().stats(LIMIT)
    }

    fn counter(&self, server: &str, field: &str) -> u64 {
        self.stats()[server][field].parse().unwrap_or(0)
    }

    /// SIGHUP to instance `i`'s current generation; waits until the new one is ready (it wrote
    /// the pid file), answers on the port, and haproxy goes on sending that server requests.
    fn upgrade(&mut self, i: usize) {
        let old = self.demos[i].current;
        let (pid_file, port, name) = (self.demos[i].pid_file.clone(), self.demos[i].port, self.demos[i].name);
        kill(old, libc::SIGHUP);
        let new = wait_for(
            LIMIT,
            || format!("a new generation of {name} (old pid {old}): {}", self.demos[i].proc.text().1),
            || read_pid(&pid_file).filter(|&p| p != old),
        );
        self.demos[i].upgrades += 1;
        self.demos[i].proc.wait_nth_line(HANDED_OVER, self.demos[i].upgrades, LIMIT);
        self.generations.push(new);
        self.demos[i].current = new;
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
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.wrk.take(); // Proc's drop: SIGKILL and reap
        self.haproxy.take();
        for &pid in &self.generations {
            if self.is_demo(pid) {
                // SAFETY: kill(2) on a live demo generation this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // The first generations are our children: `Proc`'s drop reaps them.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// wrk's summary: (requests, non-2xx answers, socket errors connect/read/write/timeout).
fn parse_wrk(out: &str) -> (u64, u64, [u64; 4]) {
    let number = |s: &str| s.trim().trim_end_matches(',').parse::<u64>().unwrap();
    let requests = out.lines().find(|l| l.contains(" requests in ")).map(|l| number(l.split_whitespace().next().unwrap()));
    let non_2xx = out.lines().find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:")).map_or(0, number);
    let mut socket = [0; 4];
    if let Some(line) = out.lines().find_map(|l| l.trim().strip_prefix("Socket errors:")) {
        for (slot, part) in socket.iter_mut().zip(line.split(',')) {
            *slot = number(part.split_whitespace().last().unwrap());
        }
    }
    (requests.unwrap_or_else(|| panic!("no request count in wrk's output:\n{out}")), non_2xx, socket)
}

#[test]
fn twenty_upgrades_of_each_instance_behind_haproxy_lose_no_request_and_no_health_check() {
    let haproxy = required_tool("haproxy");
    let wrk = required_tool("wrk");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("haproxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let binary = common::build_c("http_server_haproxy", &["examples/http_server.c"]);
    let mut fleet = Fleet { binary, dir, demos: Vec::new(), generations: Vec::new(), haproxy: None, wrk: None };
    for name in SERVERS {
        fleet.start_demo(name);
    }
    let frontend = free_port();
    fleet.start_haproxy(&haproxy, frontend);

    let mut cmd = Command::new(&wrk);
    cmd.args(["-t1", "-c20", "-d600s", "--timeout", "10s"]).arg(format!("http://127.0.0.1:{frontend}/"));
    fleet.wrk = Some(Proc::spawn(cmd)); // its stdout is a pipe: nothing shows before it exits
    for name in SERVERS {
        let served = fleet.counter(name, "hrsp_2xx");
        wait_for(
            LIMIT,
            || format!("load through haproxy to reach {name}"),
            || (fleet.counter(name, "hrsp_2xx") >= served + 100).then_some(()),
        );
    }

    let started = Instant::now();
    for _ in 0..UPGRADES_EACH {
        for i in 0..fleet.demos.len() {
            fleet.upgrade(i);
        }
    }
    let upgrading = started.elapsed();

    // Every handed-over generation drains and exits; the checks run all along.
    let current: Vec<i32> = fleet.demos.iter().map(|d| d.current).collect();
    let old: Vec<i32> = fleet.generations.iter().copied().filter(|p| !current.contains(p)).collect();
    wait_for(
        LIMIT,
        || format!("the old generations to exit: {:?}", old.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()),
        || old.iter().all(|&p| !alive(p)).then_some(()),
    );
    // A check sent just before the last old process went is answered within a few intervals.
    std::thread::sleep(Duration::from_millis(5 * CHECK_INTER_MS));

    let load = fleet.wrk.take().unwrap();
    load.signal(libc::SIGINT); // wrk stops, prints its summary and exits
    load.wait_line(false, "Transfer/sec", LIMIT);
    let wrk_out = load.text().0;
    drop(load);
    let (requests, non_2xx, [connect, read, write, timeout]) = parse_wrk(&wrk_out);

    let stats = fleet.stats();
    let field = |server: &str, f: &str| stats[server][f].parse::<u64>().unwrap_or(0);
    let flaps: Vec<u64> = SERVERS.iter().map(|s| field(s, "chkdown")).collect();
    let statuses: Vec<&str> = SERVERS.iter().map(|s| stats[*s]["status"].as_str()).collect();
    let (_, haproxy_log) = fleet.haproxy.as_ref().unwrap().proc.text();
    let down_lines = haproxy_log.lines().filter(|l| l.starts_with("[WARNING]") && l.contains(" is DOWN")).count();
    let sum = |f: &str| SERVERS.iter().map(|s| field(s, f)).sum::<u64>();
    let report = format!(
        "{} SIGHUP upgrades ({UPGRADES_EACH} of each instance, drain delay {DRAIN_MS} ms) in {upgrading:.1?} under \
         wrk -c20 through haproxy: {requests} requests, {non_2xx} non-2xx, socket errors: connect {connect}, \
         read {read}, write {write}, timeout {timeout}; health flaps (UP->DOWN): a {}, b {} ({down_lines} \
         'is DOWN' warnings from haproxy), failed checks {}; haproxy->server connection errors {}, response \
         errors {}, retries {}, redispatches {}; final status {statuses:?}",
        fleet.generations.len() - SERVERS.len(),
        flaps[0],
        flaps[1],
        sum("chkfail"),
        sum("econ"),
        sum("eresp"),
        sum("wretr"),
        sum("wredis"),
    );
    println!("{report}");

    // Stop the last generations cleanly.
    for &pid in &current {
        kill(pid, libc::SIGTERM);
    }
    wait_for(LIMIT, || format!("the last generations {current:?} to exit"), || current.iter().all(|&p| !alive(p)).then_some(()));
    let haproxy_down: Vec<&str> =
        haproxy_log.lines().filter(|l| l.starts_with("[WARNING]") && l.contains(" is DOWN")).take(5).collect();
    // `option dontlog-normal`: haproxy logs only the requests that went wrong.
    let failed_requests: Vec<&str> = haproxy_log.lines().filter(|l| l.contains(" fe be/")).take(10).collect();

    let demo_trouble: Vec<String> = fleet
        .demos
        .iter()
        .flat_map(|d| {
            let (_, stderr) = d.proc.text();
            let notable = ["still open at the deadline", "run ended: ", "Upgrade failed", "AddressSanitizer", "runtime error"];
            stderr
                .lines()
                .filter(|l| notable.iter().any(|n| l.contains(n)))
                .map(|l| format!("{}: {l}", d.name))
                .collect::<Vec<_>>()
        })
        .take(10)
        .collect();

    assert!(requests >= 1000, "the load did not run: {report}\n{wrk_out}");
    assert!(
        non_2xx == 0 && connect + read + write + timeout == 0 && flaps == [0, 0] && down_lines == 0,
        "the upgrades were visible through haproxy: {report}\nwrk:\n{wrk_out}\nhaproxy (first DOWN lines): {haproxy_down:#?}\n\
         haproxy (first failed requests): {failed_requests:#?}\n\
         demos (first troubles): {demo_trouble:#?}"
    );
}
