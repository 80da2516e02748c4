//! The cross-language conformance suite: every scenario in `tests/conformance/scenarios.toml`,
//! run by the C, Python and Node drivers as real processes with real signals, checked against
//! one set of expectations. `tests/conformance/README.md` is the protocol.
//!
//! `cargo test --test conformance` runs the C driver. `LAMEDUCK_CONFORMANCE=c,python,node`
//! (as `scripts/test-all.sh` sets it, once the packages are built) runs and requires those
//! languages; `LAMEDUCK_CONFORMANCE_PYTHON` is the Python to use (default: the project venv's).
//! `LAMEDUCK_CONFORMANCE_ONLY=text` runs only the scenarios whose name contains `text`.
mod common;

use common::{Notes, Proc};
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How long any one wait may take: generous, since CI machines can be busy; a passing run
/// waits on events and never comes near it.
const LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Lang {
    C,
    Python,
    Node,
}

impl Lang {
    fn parse(name: &str) -> Lang {
        match name.trim() {
            "c" => Lang::C,
            "python" => Lang::Python,
            "node" => Lang::Node,
            other => panic!("LAMEDUCK_CONFORMANCE: unknown language {other:?} (c, python, node)"),
        }
    }

    fn command(self) -> Command {
        let dir = common::repo().join("tests/conformance");
        match self {
            Lang::C => {
                static DRIVER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
                let program = DRIVER.get_or_init(|| common::build_c("conformance_driver", &["tests/conformance/c_driver.c"]));
                common::c_command(program)
            }
            Lang::Python => {
                let python = std::env::var_os("LAMEDUCK_CONFORMANCE_PYTHON")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| common::repo().join(".venv/bin/python"));
                assert!(python.exists(), "{}: no such Python (scripts/test-all.sh makes the venv first)", python.display());
                let mut cmd = Command::new(python);
                cmd.arg(dir.join("python_driver.py"));
                cmd
            }
            Lang::Node => {
                let mut cmd = Command::new("node");
                cmd.arg(dir.join("node_driver.js"));
                cmd
            }
        }
    }
}

/// One scenario, with `{port}` and `{port2}` already replaced.
struct Scenario {
    name: String,
    args: Vec<String>,
    steps: Vec<String>,
    inherit: Option<String>,
    expect: toml::Table,
}

fn scenarios() -> Vec<toml::Table> {
    let path = common::repo().join("tests/conformance/scenarios.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let list = doc.get("scenario").and_then(|s| s.as_array()).expect("[[scenario]] entries");
    list.iter().map(|s| s.as_table().expect("a scenario is a table").clone()).collect()
}

/// A scalar option value as the drivers take it: `true`, `300`, `SIGTERM,SIGINT`.
fn token(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(items) if items.is_empty() => "none".into(),
        toml::Value::Array(items) => items.iter().map(token).collect::<Vec<_>>().join(","),
        other => panic!("option value {other} is not a scalar"),
    }
}

fn instantiate(raw: &toml::Table) -> Scenario {
    let port = common::free_port();
    let port2 = std::iter::repeat_with(common::free_port).find(|p| *p != port).unwrap();
    let fill = |s: &str| s.replace("{port}", &port.to_string()).replace("{port2}", &port2.to_string());
    let name = raw["name"].as_str().expect("name").to_string();
    let known = ["name", "doc", "options", "g1", "steps", "inherit", "expect"];
    for key in raw.keys() {
        assert!(known.contains(&key.as_str()), "scenario {name}: unknown key {key:?}");
    }
    let mut args = Vec::new();
    for (prefix, table) in [("", raw.get("options")), ("g1.", raw.get("g1"))] {
        if let Some(table) = table {
            for (key, value) in table.as_table().unwrap_or_else(|| panic!("scenario {name}: {prefix}options")) {
                args.push(fill(&format!("{prefix}{key}={}", token(value))));
            }
        }
    }
    let steps = raw
        .get("steps")
        .map(|s| s.as_array().unwrap().iter().map(|s| fill(s.as_str().expect("a step is a string"))).collect())
        .unwrap_or_default();
    let inherit = raw.get("inherit").map(|s| fill(s.as_str().unwrap()));
    let expect_keys = [
        "result",
        "cause",
        "abandoned",
        "message",
        "message_prefix",
        "message_contains",
        "option",
        "calls",
        "states",
        "logs",
        "no_logs",
        "absent_logs",
        "events",
        "exit",
    ];
    for key in raw.get("expect").and_then(|e| e.as_table()).expect("expect").keys() {
        assert!(expect_keys.contains(&key.as_str()), "scenario {name}: unknown expectation {key:?}");
    }
    let expect_text = toml::to_string(raw.get("expect").expect("expect")).unwrap();
    let expect = fill(&expect_text).parse().unwrap();
    Scenario { name, args, steps, inherit, expect }
}

fn signal_number(name: &str) -> i32 {
    match name {
        "SIGINT" => libc::SIGINT,
        "SIGTERM" => libc::SIGTERM,
        "SIGHUP" => libc::SIGHUP,
        "SIGUSR1" => libc::SIGUSR1,
        "SIGUSR2" => libc::SIGUSR2,
        "SIGQUIT" => libc::SIGQUIT,
        other => panic!("unknown signal {other}"),
    }
}

/// What one run of one scenario printed, and how it ended.
struct Transcript {
    lines: Vec<String>,
    stderr: String,
    exit: Option<std::process::ExitStatus>,
    problems: Vec<String>,
}

/// Runs `scenario` with `lang`'s driver: performs the steps, waits for the end, cleans up.
fn run(lang: Lang, scenario: &Scenario) -> Transcript {
    let mut cmd = lang.command();
    cmd.args(&scenario.args).env_remove("CONFORMANCE_GEN");
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "SERVER_STARTER_PORT"] {
        cmd.env_remove(var);
    }
    let inherited = scenario.inherit.as_ref().map(|address| {
        let socket = std::net::TcpListener::bind(address).unwrap();
        cmd.env("SERVER_STARTER_PORT", format!("{address}=3"));
        common::place_fd(&mut cmd, socket.as_raw_fd(), 3);
        socket
    });
    let mut proc = Proc::spawn(cmd);
    let notes = proc.notes();
    let mut problems = Vec::new();
    let mut connections = Vec::new();
    let mut marks = Vec::new();
    for step in &scenario.steps {
        let (verb, rest) = step.split_once(' ').unwrap_or((step, ""));
        match verb {
            "await" => match proc.wait_stdout_from(rest, 0, LIMIT) {
                Some(_) => {}
                None => {
                    problems.push(format!("step {step:?}: no such line within {LIMIT:?}"));
                    break;
                }
            },
            "signal" => {
                let mut words = rest.split_whitespace();
                let signal = signal_number(words.next().expect("signal NAME"));
                let generation = words.next().unwrap_or("g0");
                match generation_pid(&proc.stdout_lines(), generation) {
                    // SAFETY: kill(2) on a pid that a driver of this run reported as its own.
                    Some(pid) => assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}"),
                    None => {
                        problems.push(format!("step {step:?}: {generation} never started"));
                        break;
                    }
                }
            }
            "connect" => connections.push(std::net::TcpStream::connect(("127.0.0.1", rest.parse::<u16>().unwrap())).unwrap()),
            "probe" => {
                if let Err(problem) = probe(&proc, rest) {
                    problems.push(format!("step {step:?}: {problem}"));
                }
            }
            "mark" => {
                let (name, ms) = rest.split_once(' ').expect("mark NAME MS");
                marks.push(mark(&notes, name, Duration::from_millis(ms.parse().expect("mark NAME MS"))));
            }
            other => panic!("scenario {}: unknown step {other:?}", scenario.name),
        }
    }
    let exit = proc.wait_exit(LIMIT);
    if exit.is_none() {
        problems.push(format!("g0 did not exit within {LIMIT:?}"));
    }
    // Later generations print their result before they exit; wait for each, then make sure
    // nothing this run started is left.
    let lines = proc.stdout_lines();
    for generation in ["g1", "g2"] {
        if let Some(pid) = generation_pid(&lines, generation) {
            if proc.wait_stdout_from(&format!("{generation} result "), 0, LIMIT).is_none() {
                problems.push(format!("{generation} did not finish within {LIMIT:?}"));
            }
            // SAFETY: kill(2) on a pid a driver reported; it may be gone already (ESRCH).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    drop(connections);
    drop(inherited);
    if !proc.wait_output_end(LIMIT) {
        problems.push(format!("the output did not end within {LIMIT:?}: a process of this run is still alive"));
    }
    // A moment still to come comes now: after everything the run printed.
    for (stop, thread) in marks {
        drop(stop);
        thread.join().unwrap();
    }
    let (_, stderr) = proc.text();
    Transcript { lines: proc.stdout_lines(), stderr, exit, problems }
}

/// `mark NAME MS`: `MS` from now the line `harness NAME` joins the output (at the end of the
/// run if that comes first), so `events` can say what happened before or after that moment.
/// Drop the sender to end it early.
fn mark(notes: &Notes, name: &str, after: Duration) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (stop, stopped) = mpsc::channel::<()>();
    let (notes, line) = (notes.clone(), format!("harness {name}"));
    (
        stop,
        std::thread::spawn(move || {
            let _ = stopped.recv_timeout(after);
            notes.add(line);
        }),
    )
}

/// `probe gN PATH STATUS [= TEXT | json KEY=VALUE ...]`: one GET over HTTP/1.1 to the health
/// listener generation N reported (`gN health ADDRESS`), noted as `harness probe gN PATH
/// STATUS`; Err says what did not match.
fn probe(proc: &Proc, rest: &str) -> Result<(), String> {
    let mut words = rest.splitn(4, ' ');
    let (generation, path, want) = match (words.next(), words.next(), words.next()) {
        (Some(g), Some(p), Some(s)) => (g, p, s.parse::<u16>().expect("probe gN PATH STATUS")),
        _ => panic!("probe gN PATH STATUS [= TEXT | json KEY=VALUE ...], not {rest:?}"),
    };
    let check = words.next().unwrap_or("");
    let prefix = format!("{generation} health ");
    proc.wait_stdout_from(&prefix, 0, LIMIT).ok_or_else(|| format!("{generation} reported no health address"))?;
    let lines = proc.stdout_lines();
    let address = lines.iter().find_map(|l| l.strip_prefix(&prefix)).ok_or("no health line")?.to_string();
    let (status, content_type, body) = match http_get(&address, path) {
        Ok(answer) => answer,
        Err(err) => {
            proc.notes().add(format!("harness probe {generation} {path} failed"));
            return Err(format!("GET http://{address}{path}: {err}"));
        }
    };
    proc.notes().add(format!("harness probe {generation} {path} {status}"));
    let got = format!("got {status}, {content_type}, {body:?}");
    if status != want {
        return Err(format!("expected status {want}; {got}"));
    }
    if let Some(text) = check.strip_prefix("= ") {
        if body != format!("{text}\n") || !content_type.starts_with("text/plain") {
            return Err(format!("expected the text/plain body {text:?} and a newline; {got}"));
        }
    } else if let Some(members) = check.strip_prefix("json ") {
        if content_type != "application/json" {
            return Err(format!("expected application/json; {got}"));
        }
        for member in members.split_whitespace() {
            let (key, value) = member.split_once('=').expect("json KEY=VALUE");
            let text = format!("\"{key}\":{value}");
            let found = body.match_indices(&text).any(|(i, _)| matches!(body[i + text.len()..].chars().next(), Some(',' | '}')));
            if !found {
                return Err(format!("expected the member {text}; {got}"));
            }
        }
    } else if !check.is_empty() {
        panic!("probe: {check:?} is neither `= TEXT` nor `json KEY=VALUE ...`");
    }
    Ok(())
}

/// One GET on a new connection (`Connection: close`): the status, the Content-Type and the body.
fn http_get(address: &str, path: &str) -> Result<(u16, String, String), String> {
    let socket: std::net::SocketAddr = address.parse().map_err(|e| format!("{address:?}: {e}"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, LIMIT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(LIMIT)).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("reading the answer: {e} (so far {answer:?})"))?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
    let mut head = head.split("\r\n");
    let status = head
        .next()
        .and_then(|line| line.strip_prefix("HTTP/1.1 "))
        .and_then(|line| line.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP/1.1 status line: {answer:?}"))?;
    let content_type = head
        .filter_map(|h| h.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map_or("", |(_, value)| value.trim());
    Ok((status, content_type.to_string(), body.to_string()))
}

fn generation_pid(lines: &[String], generation: &str) -> Option<i32> {
    let prefix = format!("{generation} start pid=");
    lines.iter().find_map(|l| l.strip_prefix(&prefix)).and_then(|pid| pid.trim().parse().ok())
}

/// The expectations that `transcript` fails, as messages.
fn check(lang: Lang, scenario: &Scenario, t: &Transcript) -> Vec<String> {
    let mut problems = t.problems.clone();
    let g0: Vec<&str> = t.lines.iter().filter_map(|l| l.strip_prefix("g0 ")).collect();
    let result = g0.iter().find_map(|l| l.strip_prefix("result "));
    let fields: Vec<&str> = result.map(|r| r.split_whitespace().collect()).unwrap_or_default();
    let expect = &scenario.expect;
    let str_of = |key: &str| expect.get(key).map(token);
    if let Some(kind) = str_of("result") {
        match fields.first() {
            Some(got) if *got == kind => {}
            got => problems.push(format!("result: expected {kind}, got {got:?}")),
        }
    }
    for (key, default) in [("cause", "none"), ("abandoned", "false")] {
        if result.is_none() {
            break;
        }
        let want = format!("{key}={}", str_of(key).unwrap_or_else(|| default.into()));
        if !fields.contains(&want.as_str()) {
            problems.push(format!("result: expected {want}, got {result:?}"));
        }
    }
    let message = g0.iter().find_map(|l| l.strip_prefix("message "));
    if let Some(want) = str_of("message") {
        if message != Some(want.as_str()) {
            problems.push(format!("message: expected {want:?}, got {message:?}"));
        }
    }
    if let Some(want) = str_of("message_prefix") {
        if !message.is_some_and(|m| m.starts_with(&want)) {
            problems.push(format!("message: expected {want:?}…, got {message:?}"));
        }
    }
    if let Some(want) = str_of("message_contains") {
        if !message.is_some_and(|m| m.contains(&want)) {
            problems.push(format!("message: expected …{want:?}…, got {message:?}"));
        }
    }
    if let Some(key) = str_of("option") {
        let refused = g0.iter().find_map(|l| l.strip_prefix("refused "));
        let spellings = option_spellings(lang, &key);
        let named = |text: Option<&str>| text.is_some_and(|t| spellings.iter().any(|s| t.starts_with(s)));
        if !named(message) && !named(refused) {
            problems.push(format!("option: expected the error to name {spellings:?}; message {message:?}, refused {refused:?}"));
        }
    }
    if let Some(calls) = expect.get("calls").and_then(|c| c.as_table()) {
        for (hook, want) in calls {
            let got = g0.iter().filter(|l| **l == format!("enter {hook}")).count() as i64;
            if Some(got) != want.as_integer() {
                problems.push(format!("calls: expected {hook} entered {want} times, got {got}"));
            }
        }
    }
    if let Some(states) = expect.get("states").and_then(|s| s.as_array()) {
        let want: Vec<String> = states.iter().map(token).collect();
        let got: Vec<String> = g0
            .iter()
            .filter_map(|l| l.strip_prefix("state "))
            .filter_map(|s| s.split_whitespace().nth(1))
            .map(String::from)
            .collect();
        if want != got {
            problems.push(format!("states: expected {want:?}, got {got:?}"));
        }
    }
    let logs: Vec<&str> =
        g0.iter().filter_map(|l| l.strip_prefix("log ")).filter_map(|l| l.split_once(' ')).map(|(_, text)| text).collect();
    if let Some(want) = expect.get("logs").and_then(|s| s.as_array()) {
        let want: Vec<String> = want.iter().map(token).collect();
        if let Some(missing) = first_missing(&want, &logs) {
            problems.push(format!("logs: expected, in order, {want:?}; missing {missing:?} in {logs:?}"));
        }
    }
    if expect.get("no_logs").and_then(|b| b.as_bool()) == Some(true) && !logs.is_empty() {
        problems.push(format!("no_logs: got {logs:?}"));
    }
    for absent in expect.get("absent_logs").and_then(|s| s.as_array()).into_iter().flatten().map(token) {
        if let Some(found) = logs.iter().find(|l| l.contains(&absent)) {
            problems.push(format!("absent_logs: {absent:?} is in {found:?}"));
        }
    }
    if let Some(want) = expect.get("events").and_then(|s| s.as_array()) {
        let want: Vec<String> = want.iter().map(token).collect();
        let all: Vec<&str> = t.lines.iter().map(String::as_str).collect();
        if let Some(missing) = first_missing(&want, &all) {
            problems.push(format!("events: expected, in order, {want:?}; missing {missing:?}"));
        }
    }
    let want_exit =
        str_of("exit").unwrap_or_else(|| if str_of("result").as_deref() == Some("ok") { "0".into() } else { "1".into() });
    if let Some(status) = t.exit {
        let got = match (status.code(), status.signal()) {
            (Some(code), _) => code.to_string(),
            (None, Some(sig)) => signal_name(sig),
            _ => format!("{status:?}"),
        };
        if got != want_exit {
            problems.push(format!("exit: expected {want_exit}, got {got}"));
        }
    }
    problems
}

/// The first of `want` (prefixes, in order) that `have` does not contain after the previous one.
fn first_missing<'a>(want: &'a [String], have: &[&str]) -> Option<&'a str> {
    let mut rest = have.iter();
    want.iter().find(|w| !rest.any(|h| starts_like(h, w))).map(String::as_str)
}

/// `line` starts with `pattern`, where `{*}` in the pattern stands for any text.
fn starts_like(line: &str, pattern: &str) -> bool {
    let mut pieces = pattern.split("{*}");
    let Some(rest) = pieces.next().and_then(|first| line.strip_prefix(first)) else { return false };
    pieces.try_fold(rest, |rest, piece| rest.find(piece).map(|i| &rest[i + piece.len()..])).is_some()
}

/// How an option's error starts, naming it in `lang` (expectation `option`, by driver key):
/// Python and Node prefix the message with the option's keyword (`drain_quiet=0.1: …`); in C a
/// setter that refuses a value names itself (the driver's `refused` line), and `ld_runner_new`,
/// which checks options against each other, starts with the core's words for the option.
fn option_spellings(lang: Lang, key: &str) -> Vec<&'static str> {
    match (key, lang) {
        ("health", Lang::C) => vec!["ld_options_set_health_address"],
        ("health", Lang::Python | Lang::Node) => vec!["health="],
        ("drain_quiet_ms", Lang::C) => vec!["ld_options_set_drain_quiet_ms", "drain quiet time"],
        ("drain_quiet_ms", Lang::Python) => vec!["drain_quiet="],
        ("drain_quiet_ms", Lang::Node) => vec!["drainQuiet="],
        _ => panic!("option: no spellings of {key:?} for {lang:?} (add them to option_spellings)"),
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGABRT => "SIGABRT".into(),
        other => format!("signal {other}"),
    }
}

fn languages() -> Vec<Lang> {
    match std::env::var("LAMEDUCK_CONFORMANCE") {
        Ok(list) => list.split(',').filter(|s| !s.trim().is_empty()).map(Lang::parse).collect(),
        Err(_) => {
            println!("conformance: C only; scripts/test-all.sh runs Python and Node too (LAMEDUCK_CONFORMANCE=c,python,node)");
            vec![Lang::C]
        }
    }
}

#[test]
fn every_scenario_gives_the_same_outcome_in_every_language() {
    let only = std::env::var("LAMEDUCK_CONFORMANCE_ONLY").unwrap_or_default();
    let raw: Vec<toml::Table> =
        scenarios().into_iter().filter(|s| s["name"].as_str().is_some_and(|n| n.contains(only.as_str()))).collect();
    assert!(!raw.is_empty(), "no scenario matches LAMEDUCK_CONFORMANCE_ONLY={only:?}");
    let jobs: Vec<(Lang, toml::Table)> = languages().into_iter().flat_map(|l| raw.iter().map(move |s| (l, s.clone()))).collect();
    let total = jobs.len();
    let queue = Arc::new(Mutex::new(jobs));
    let failures = Arc::new(Mutex::new(Vec::new()));
    // A few at a time: each scenario mostly waits (on a signal, a deadline), and the waits are
    // events with generous limits, so this stays correct on a busy machine.
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (queue, failures) = (Arc::clone(&queue), Arc::clone(&failures));
            std::thread::spawn(move || loop {
                let Some((lang, raw)) = queue.lock().unwrap().pop() else { break };
                let scenario = instantiate(&raw);
                let transcript = run(lang, &scenario);
                let problems = check(lang, &scenario, &transcript);
                if !problems.is_empty() {
                    failures.lock().unwrap().push(format!(
                        "--- {} ({lang:?}) {}:\n  {}\n  output:\n    {}\n  stderr:\n    {}",
                        scenario.name,
                        scenario.args.join(" "),
                        problems.join("\n  "),
                        transcript.lines.join("\n    "),
                        transcript.stderr.replace('\n', "\n    ")
                    ));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    println!("conformance: {} of {total} scenario runs passed", total - failures.len());
    assert!(failures.is_empty(), "{} of {total} scenario runs failed:\n{}", failures.len(), failures.join("\n"));
}
