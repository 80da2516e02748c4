//! `ld_listen` with the real tools: systemd's `systemd-socket-activate` and Perl's
//! Server::Starter `start_server`, driving the C demo server; and malformed environments,
//! which must give a clear error naming the value, never a crash.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::Proc;

const LIMIT: Duration = Duration::from_secs(30);

fn demo() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| common::build_c("http_server_listen", &["examples/http_server.c"]))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(name)).find(|p| p.exists())
}

#[test]
fn systemd_socket_activation() {
    let Some(activate) = tool("systemd-socket-activate") else {
        eprintln!("systemd-socket-activate is not installed; skipping");
        return;
    };
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(activate);
    cmd.args(["-l", &address, "--fdname=http"]).arg(demo()).args(["--listen", &address, "--period", "5000"]);
    let proc = Proc::spawn(cmd);
    proc.wait_line(true, &format!("Listening on {address}"), LIMIT);
    // systemd-socket-activate accepts nothing itself: the first connection starts the demo.
    let answer = get(port);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    proc.wait_line(false, &format!("listening on http://127.0.0.1:{port} (inherited)"), LIMIT);
    proc.wait_line(true, "demo: the listener is shared with other processes", LIMIT);
    proc.signal(libc::SIGTERM); // systemd-socket-activate exec()s the demo: same pid
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn server_starter_worker() {
    let Some(start_server) = tool("start_server") else {
        eprintln!("start_server (libserver-starter-perl) is not installed; skipping");
        return;
    };
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(start_server);
    cmd.arg(format!("--port={address}")).arg("--").arg(demo()).args(["--listen", &address, "--period", "5000"]);
    let proc = Proc::spawn(cmd);
    proc.wait_line(false, &format!("listening on http://127.0.0.1:{port} (inherited)"), LIMIT);
    assert!(get(port).starts_with("HTTP/1.1 200 OK"));
    proc.signal(libc::SIGTERM); // start_server forwards TERM to the worker, waits, exits 0
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("lameduck: Received signal [terminated]; entering lame-duck mode"), "{stderr}");
}

/// Runs the demo through `sh -c` so LISTEN_PID can be the demo's own pid ($$ survives exec).
fn demo_with_env(env: &str, extra: &str) -> (std::process::ExitStatus, String) {
    let script = format!("{env} exec {} --listen 127.0.0.1:{} {extra}", demo().display(), free_port());
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    let (status, _, stderr) = common::run_limited(cmd, LIMIT);
    (status, stderr)
}

#[test]
fn malformed_environments_are_clear_errors() {
    for (env, extra, needle) in [
        ("LISTEN_PID=$$ LISTEN_FDS=abc", "", "LISTEN_FDS=\"abc\" is not a number of descriptors"),
        ("LISTEN_PID=$$ LISTEN_FDS=-2", "", "LISTEN_FDS=\"-2\" is not a number"),
        ("LISTEN_PID=$$ LISTEN_FDS=99999999", "", "LISTEN_FDS=99999999 is out of range"),
        ("LISTEN_PID=nope LISTEN_FDS=1", "", "LISTEN_PID=\"nope\" is not a process id"),
        ("LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=a", "", "LISTEN_FDNAMES has 1 name(s) but LISTEN_FDS=2"),
        ("SERVER_STARTER_PORT='8080'", "", "SERVER_STARTER_PORT=\"8080\": entry \"8080\" is not KEY=FD"),
        ("SERVER_STARTER_PORT='x=3;=4'", "", "entry \"=4\" is not KEY=FD"),
    ] {
        let (status, stderr) = demo_with_env(env, extra);
        assert_eq!(status.code(), Some(1), "{env}: {stderr}");
        assert!(stderr.contains(needle), "{env}: {stderr}");
    }
}

#[test]
fn inherited_fd_that_is_not_a_listening_socket_is_refused() {
    // fd 3 is a file: matched by nothing, but checked when it is the only candidate by name.
    let script = format!(
        "LISTEN_PID=$$ LISTEN_FDS=1 SERVER_STARTER_PORT='127.0.0.1:{port}=3' exec {} --listen 127.0.0.1:{port} 3</dev/null",
        demo().display(),
        port = free_port()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    let (status, _, stderr) = common::run_limited(cmd, LIMIT);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("fd 3 from SERVER_STARTER_PORT is not a socket"), "{stderr}");
}

#[test]
fn variables_for_another_process_are_ignored() {
    let script = format!("LISTEN_PID=1 LISTEN_FDS=1 exec {} --listen 127.0.0.1:{} --period 100", demo().display(), free_port());
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    let proc = Proc::spawn(cmd);
    let line = proc.wait_line(false, "listening on http://127.0.0.1:", LIMIT);
    assert!(!line.contains("(inherited)"), "{line}");
    proc.wait_line(true, "lameduck: Waiting for signals", LIMIT);
    proc.signal(libc::SIGTERM); // sh exec()ed the demo: same pid
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// A `SERVER_STARTER_PORT` key is matched by its text, so the descriptor must really be bound
/// there: one bound elsewhere is an error naming both, not a server quietly on another port.
#[test]
fn a_server_starter_key_must_match_its_socket() {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let actual = listener.local_addr().unwrap();
    let claimed = free_port();
    let script = format!("SERVER_STARTER_PORT='127.0.0.1:{claimed}=3' exec {} --listen 127.0.0.1:{claimed}", demo().display());
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    common::place_fd(&mut cmd, listener.as_raw_fd(), 3);
    let (status, _, stderr) = common::run_limited(cmd, LIMIT);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let want = format!("SERVER_STARTER_PORT says fd 3 is 127.0.0.1:{claimed}, but fd 3 is bound to {actual}");
    assert!(stderr.contains(&want), "{stderr}");
}

/// The drain API's own C tests (`tests/c/test_listen.c`), one process per sub-test (the
/// listener registry is per process), under ASan/UBSan or valgrind like the other C tests.
fn drain_api_test(name: &str) {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    let program = PROGRAM.get_or_init(|| common::build_c("test_listen", &["tests/c/test_listen.c", "tests/c/common.c"]));
    let mut cmd = common::c_command(program);
    cmd.arg(name);
    let (status, stdout, stderr) = common::run_limited(cmd, LIMIT);
    assert!(
        status.success() && stdout.contains(&format!("ok {name}")),
        "C sub-test {name} failed ({status:?}):\n{stdout}\n{stderr}"
    );
}

#[test]
fn drain_of_an_own_listener_waits_for_the_accept_loop() {
    drain_api_test("own_listener");
}

#[test]
fn drain_parts_and_their_errors() {
    drain_api_test("parts_and_errors");
}

#[test]
fn shut_takes_the_queue_and_refuses_newcomers_at_once() {
    drain_api_test("shut_listener");
}

#[test]
fn an_inherited_listener_is_never_drained_whatever_was_called_first() {
    drain_api_test("inherited_listener");
}
