//! Fleets behind a real haproxy, the full run (tests/fleet.rs is the short one; the harness is
//! tests/common/fleet.rs): two instances behind haproxy (checks `GET /ready` on lameduck's
//! health listener every 100 ms, `fall 1 rise 1`, `option redispatch`, `retries 3`,
//! `timeout connect 1s`), `wrk -t2 -c20` through it, for the C demo, the Python example (FastAPI
//! on uvicorn) and the Node example (`http`):
//! - rolling SIGTERM restarts with a fixed 1 s drain, and with the adaptive drain (quiet 200 ms,
//!   at most 1 s): stop one instance, wait for its exit, start it again, wait until haproxy has
//!   it UP, then the other;
//! - SIGHUP upgrades, one instance after the other;
//!
//! and, as the control, plain servers without lameduck (Node `http.createServer`, Python
//! `http.server`) restarted the same way. Each case first runs wrk for 2 s to warm the servers
//! up, then for 3 s with nothing changing: its p50 is the normal latency, and "slow" counts the
//! requests of the measured run that took more than that + 100 ms (from wrk's histogram); the
//! calm run's own count of those is shown beside it, for the machine's noise. Prints one block
//! per case, then a table.
//!
//!     cargo bench --bench fleet [-- --rounds N] [--quick] [--calm S] [--only c,python,node,plain]
//!
//! `--rounds` (default 20) rounds per case, each changing both instances; `--quick` is 3;
//! `--calm` the seconds of the calm run (default 3).
//! Needs haproxy, wrk, the project venv (.venv) and bindings/node built, as scripts/test-all.sh
//! sets them up. The C demo is built without sanitizers (`LAMEDUCK_C_MODE=plain`) unless
//! `LAMEDUCK_C_MODE` says otherwise.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::fleet::{self, App, Case, Change, Outcome, Programs};

const DRAIN_MS: u64 = 1000;
const QUIET_MS: u64 = 200;

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: this one takes
    // many minutes and needs the venv and the Node addon, so it runs only under `cargo bench`
    // (tests/fleet.rs is the short version in the test command).
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet: a benchmark; run it with `cargo bench --bench fleet` (tests/fleet.rs is the short version)");
        return;
    }
    let mut rounds = 20;
    let mut calm = 3;
    let mut only: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => rounds = args.next().and_then(|n| n.parse().ok()).expect("--rounds needs a number"),
            "--quick" => rounds = 3,
            "--calm" => calm = args.next().and_then(|n| n.parse().ok()).expect("--calm needs a number of seconds"),
            "--only" => only = Some(args.next().expect("--only needs a list").split(',').map(str::to_string).collect()),
            "--bench" => {} // cargo bench passes it
            other => panic!("unknown argument {other:?} (--rounds N, --quick, --calm S, --only c,python,node,plain)"),
        }
    }
    if std::env::var_os("LAMEDUCK_C_MODE").is_none() {
        std::env::set_var("LAMEDUCK_C_MODE", "plain");
    }
    let wanted = |name: &str| only.as_ref().map_or(true, |o| o.iter().any(|w| w == name));
    let mut apps: Vec<App> = [("c", App::C), ("python", App::Python), ("node", App::Node)]
        .into_iter()
        .filter(|(name, _)| wanted(name))
        .map(|(_, app)| app)
        .collect();
    if wanted("plain") {
        apps.extend([App::PlainNode, App::PlainPython]);
    }
    let baseline = Some(Duration::from_secs(calm));
    let mut cases = Vec::new();
    for &app in &apps {
        if app.lameduck() {
            cases.push(Case { app, change: Change::Restart, drain_ms: DRAIN_MS, quiet_ms: 0, rounds, baseline });
            cases.push(Case { app, change: Change::Restart, drain_ms: DRAIN_MS, quiet_ms: QUIET_MS, rounds, baseline });
            cases.push(Case { app, change: Change::Upgrade, drain_ms: DRAIN_MS, quiet_ms: QUIET_MS, rounds, baseline });
        } else {
            cases.push(Case { app, change: Change::Restart, drain_ms: 0, quiet_ms: 0, rounds, baseline });
        }
    }
    let dir = common::scratch_dir("fleet-bench");
    let programs = Programs::new(&apps, &dir);
    println!("load average before: {}", load_average());
    let mut outcomes = Vec::new();
    for case in &cases {
        let out = fleet::run(&programs, case);
        println!("{}", out.summary());
        // The plain servers' own complaints (a reset client) are expected: not shown.
        let trouble = if case.app.lameduck() { &out.trouble[..] } else { &[] };
        for line in trouble.iter().chain(&out.failed_requests).take(6) {
            println!("    {line}");
        }
        outcomes.push(out);
    }
    println!("load average after: {}\n", load_average());
    table(&outcomes);
    let _ = std::fs::remove_dir_all(&dir);
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// One row per case; times in ms.
fn table(outcomes: &[Outcome]) {
    println!(
        "| case | changes | requests | errors c/r/w/t | non-2xx | 5xx | p50 | p99 | max | > base+100 ms | mean drain | DOWN \
         | retries/redispatches |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
    for o in outcomes {
        let w = &o.wrk;
        let slow = o.baseline.as_ref().map_or("-".into(), |b| format!("{} (calm: p50 {}, {})", w.slow, ms(b.p50_us), b.slow));
        let drain = o.mean_drain().map_or("-".into(), |d| format!("{:.0}", d.as_secs_f64() * 1000.0));
        println!(
            "| {} | {} | {} | {}/{}/{}/{} | {} | {} | {} | {} | {} | {slow} | {drain} | {} | {}/{} |",
            o.title,
            o.changes,
            w.requests,
            w.connect,
            w.read,
            w.write,
            w.timeout,
            w.status,
            o.fe_5xx,
            ms(w.p50_us),
            ms(w.p99_us),
            ms(w.max_us),
            o.downs,
            o.retries,
            o.redispatches
        );
    }
}
