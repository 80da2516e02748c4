//! Fleets behind a real haproxy, the short run (the long one, with latencies, is
//! `cargo bench --bench fleet`): two instances of the C demo, the Python example (a FastAPI app
//! on uvicorn, `examples/python/balanced.py`) and the Node example (`http`,
//! `examples/node/balanced.js`), each with lameduck's health listener (haproxy checks its
//! `/ready` every 100 ms, `fall 1 rise 1`) and the adaptive drain, under `wrk -t2 -c20` through
//! haproxy; 3 rounds of rolling SIGTERM restarts and 3 rounds of SIGHUP upgrades of both
//! instances. The client must see no socket error, no answer ≥ 400 and haproxy no 5xx; an
//! upgrade must never get a server marked DOWN; every restart's drain must end early, on
//! haproxy's 503 (at most 5 s, so one that does not cannot hide).
//!
//! haproxy's retries hide a server that stops accepting while still in rotation (a refused
//! connect is retried after 1 s, then elsewhere): the client sees a delay, not an error. The
//! drain assertion catches that here; the bench counts the delays.
//!
//! The control, a plain Node `http.createServer` without lameduck restarted the same way, must
//! lose requests: the harness sees losses when there are some.
//!
//! `LAMEDUCK_FLEET` lists what runs: `c`, `python`, `node`, `plain` (the control); default
//! `c,plain`, since `cargo test` may run before the Python and Node packages are built.
//! scripts/test-all.sh runs `python,node` once they are. Needs haproxy and wrk.
mod common;

use common::fleet::{self, App, Case, Change, Programs};

const ROUNDS: usize = 3;

fn apps() -> Vec<App> {
    let list = std::env::var("LAMEDUCK_FLEET").unwrap_or_else(|_| "c,plain".into());
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| match s.trim() {
            "c" => App::C,
            "python" => App::Python,
            "node" => App::Node,
            "plain" => App::PlainNode,
            other => panic!("LAMEDUCK_FLEET: unknown entry {other:?} (c, python, node, plain)"),
        })
        .collect()
}

#[test]
fn restarts_and_upgrades_behind_haproxy_lose_nothing_and_the_plain_control_does() {
    let apps = apps();
    let dir = common::scratch_dir("fleet-programs");
    let programs = Programs::new(&apps, &dir);
    let mut failures = Vec::new();
    for &app in apps.iter().filter(|a| a.lameduck()) {
        for change in [Change::Restart, Change::Upgrade] {
            // At most 5 s: a drain that does not end early on haproxy's first 503 shows.
            let case = Case { app, change, drain_ms: 5000, quiet_ms: 200, rounds: ROUNDS, baseline: None };
            let out = fleet::run(&programs, &case);
            println!("{}", out.summary());
            let mut wrong = Vec::new();
            if out.wrk.requests < 1000 {
                wrong.push(format!("the load did not run ({} requests)", out.wrk.requests));
            }
            if out.losses() > 0 || out.fe_5xx > 0 {
                wrong.push(format!("the client lost {} requests, {} 5xx", out.losses(), out.fe_5xx));
            }
            if change == Change::Upgrade && (out.downs > 0 || !out.down_warnings.is_empty()) {
                wrong.push(format!("servers marked DOWN {} times: {:#?}", out.downs, out.down_warnings));
            }
            if change == Change::Restart && (out.drains.len() != out.changes || out.early_drains != out.changes) {
                wrong.push(format!(
                    "of {} restarts, {} drained and {} drains ended early (on haproxy's 503)",
                    out.changes,
                    out.drains.len(),
                    out.early_drains
                ));
            }
            if !out.trouble.is_empty() {
                wrong.push(format!("the servers reported trouble: {:#?}", out.trouble));
            }
            if !wrong.is_empty() {
                failures.push(format!("{}\n  {}\n  haproxy: {:#?}", out.summary(), wrong.join("\n  "), out.failed_requests));
            }
        }
    }
    if apps.contains(&App::PlainNode) {
        let case =
            Case { app: App::PlainNode, change: Change::Restart, drain_ms: 0, quiet_ms: 0, rounds: ROUNDS, baseline: None };
        let out = fleet::run(&programs, &case);
        println!("{}", out.summary());
        if out.losses() == 0 && out.fe_5xx == 0 {
            failures.push(format!("the control lost nothing: the harness would not see losses\n{}", out.summary()));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
