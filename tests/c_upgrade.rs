//! Zero-downtime upgrades of the C demo server (`examples/http_server.c`), driven the way an
//! operator drives them: `kill -HUP`, a binary replaced on disk, systemd's socket activation,
//! Perl's `start_server`, a notify socket standing in for systemd. A keep-alive load runs
//! through every upgrade and must see no failed request at all.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::load::Load;
use common::Proc;

const LIMIT: Duration = Duration::from_secs(30);

fn demo() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| common::build_c("http_server_upgrade", &["examples/http_server.c"]))
}

fn scratch_dir(name: &str) -> PathBuf {
    common::scratch_dir(&format!("upgrade-{name}"))
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a pid this test started (directly or through an upgrade).
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

/// Every process the upgrades started; whatever happens to the test, they are killed at the end.
#[derive(Default)]
struct Generations(Vec<i32>);

impl Generations {
    /// Parses the pid out of the old process's "New process N is ready" line.
    fn took_over(&mut self, line: &str) -> i32 {
        let pid = line.split("New process ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().parse().unwrap();
        self.0.push(pid);
        pid
    }
}

impl Drop for Generations {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: as in `kill`; a process that already exited just makes this fail.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// SIGHUP to the current generation, `times` times, each time waiting for the new one to take
/// over and for the load to go on; returns the last generation's pid.
fn upgrade_by_sighup(proc: &Proc, first: i32, times: usize, generations: &mut Generations, load: &Load) -> i32 {
    let mut current = first;
    for n in 1..=times {
        kill(current, libc::SIGHUP);
        current = generations.took_over(&proc.wait_nth_line("lameduck: New process ", n, LIMIT));
        load.wait_for_more(20, LIMIT);
    }
    current
}

fn port_of(proc: &Proc) -> u16 {
    let line = proc.wait_line(false, "listening on http://127.0.0.1:", LIMIT);
    line.rsplit(':').next().unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// A free 127.0.0.1 port, and its `HOST:PORT`.
fn free_address() -> (u16, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    (port, format!("127.0.0.1:{port}"))
}

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(name)).find(|p| p.exists())
}

#[test]
fn eight_sighup_upgrades_lose_no_request() {
    let mut cmd = common::c_command(demo());
    cmd.args(["--port", "0", "--period", "5000"]);
    let proc = Proc::spawn(cmd);
    let port = port_of(&proc);
    proc.wait_line(true, "demo: state READY", LIMIT);
    let mut generations = Generations::default();
    let load = Load::start(port, 4);
    load.wait_for_more(20, LIMIT);
    let current = upgrade_by_sighup(&proc, proc.pid(), 8, &mut generations, &load);
    load.stop_expecting_no_loss();
    let (stdout, _) = proc.text();
    let inherited = format!("listening on http://127.0.0.1:{port} (inherited)");
    assert_eq!(stdout.matches(&inherited).count(), 8, "every generation takes over the one socket:\n{stdout}");
    kill(current, libc::SIGTERM);
    proc.wait_nth_line("demo: run ended cleanly", 9, LIMIT);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.matches("lameduck: Reported ready to the previous generation").count(), 8, "{stderr}");
    assert!(stderr.contains("lameduck: Received signal [hangup]; upgrading: starting a new process"), "{stderr}");
    assert!(stderr.contains("is ready; entering lame-duck mode for 5s"), "{stderr}");
}

/// Puts `source` at `path` the way a deploy does (copy, then rename over). The copy is made by
/// `cp`, not by this multi-threaded test process: a file we held open for writing could be
/// inherited for a moment by another test's fork and make its exec fail with ETXTBSY.
fn deploy(source: &Path, path: &Path) {
    let next = path.with_extension("next");
    let status = Command::new("cp").arg(source).arg(&next).status().unwrap();
    assert!(status.success());
    std::fs::rename(&next, path).unwrap();
}

/// Replaces `path` with a shell script (a bad deploy).
fn deploy_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let source = path.with_extension("script");
    std::fs::write(&source, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o755)).unwrap();
    deploy(&source, path);
}

fn deploy_binary(path: &Path) {
    deploy(demo(), path);
}

#[test]
fn failed_upgrades_roll_back_and_the_old_process_keeps_serving() {
    let dir = scratch_dir("failures");
    let server = dir.join("server");
    deploy_binary(&server);
    let mut cmd = common::c_command(&server);
    cmd.args(["--port", "0", "--period", "5000", "--upgrade-timeout", "1000"]);
    let proc = Proc::spawn(cmd);
    let (pid, port) = (proc.pid(), port_of(&proc));
    proc.wait_line(true, "demo: state READY", LIMIT);
    let (fd_dir, task_dir) = (format!("/proc/{pid}/fd"), format!("/proc/{pid}/task"));
    let (fds_before, threads_before) = (count_entries(&fd_dir), count_entries(&task_dir));
    let mut generations = Generations::default();
    let load = Load::start(port, 4);
    load.wait_for_more(20, LIMIT);

    // The new binary exits at once.
    deploy_script(&server, "exit 3");
    kill(pid, libc::SIGHUP);
    let line = proc.wait_nth_line("Upgrade failed: ", 1, LIMIT);
    assert!(line.contains("exited with status 3 before it was ready; still serving"), "{line}");
    load.wait_for_more(20, LIMIT);

    // The new binary never reports ready; a second HUP meanwhile is refused (busy).
    deploy_script(&server, "exec sleep 600");
    kill(pid, libc::SIGHUP);
    proc.wait_nth_line("lameduck: Started new process ", 2, LIMIT);
    kill(pid, libc::SIGHUP);
    proc.wait_line(true, "Received signal [hangup]; not upgrading: an upgrade is already in progress (new process ", LIMIT);
    let line = proc.wait_nth_line("Upgrade failed: ", 2, LIMIT);
    assert!(line.contains("was not ready within 1s; stopped it with SIGTERM"), "{line}");
    load.wait_for_more(20, LIMIT);

    // The new binary reports ready and exits at once: within the confirmation window, so this
    // process, which never stopped serving, simply goes on.
    deploy_script(&server, "echo READY=1 >&$LAMEDUCK_READY_FD; exit 0");
    kill(pid, libc::SIGHUP);
    let line = proc.wait_nth_line("Upgrade failed: ", 3, LIMIT);
    assert!(line.contains("exited with status 0 within 1s of reporting ready; still serving"), "{line}");
    load.wait_for_more(20, LIMIT);

    // The new binary binds a socket of its own and never takes the one handed over: it does not
    // report ready, and after its listen timeout says which listener nobody took.
    let other = dir.join("other.sock");
    deploy_script(&server, &format!("exec {} \"$@\" --listen unix:{} --listen-timeout 300", demo().display(), other.display()));
    kill(pid, libc::SIGHUP);
    let line = proc.wait_nth_line("Upgrade failed: ", 4, LIMIT);
    let untaken = format!("cannot take over: no listen() call took fd 3 (127.0.0.1:{port}) within 300ms");
    assert!(line.contains(&untaken) && line.contains("stopped it with SIGTERM"), "{line}");
    load.wait_for_more(20, LIMIT);

    // The binary is gone.
    std::fs::remove_file(&server).unwrap();
    kill(pid, libc::SIGHUP);
    let line = proc.wait_nth_line("Upgrade failed: ", 5, LIMIT);
    assert!(line.contains(&format!("cannot start {}: No such file or directory", server.display())), "{line}");
    load.wait_for_more(20, LIMIT);
    load.stop_expecting_no_loss();

    // Once the load's connections are gone, nothing the failures used is left behind; then
    // 50 failures in a row leave the counts exactly where they were.
    let settled = Instant::now();
    while (count_entries(&fd_dir), count_entries(&task_dir)) != (fds_before, threads_before) {
        assert!(
            settled.elapsed() < LIMIT,
            "fds {} (was {fds_before}), threads {} (was {threads_before})",
            count_entries(&fd_dir),
            count_entries(&task_dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    deploy_script(&server, "exit 1");
    for n in 6..56 {
        kill(pid, libc::SIGHUP);
        proc.wait_nth_line("Upgrade failed: ", n, LIMIT);
    }
    assert_eq!(count_entries(&fd_dir), fds_before, "descriptors leaked by 50 failed upgrades");
    assert_eq!(count_entries(&task_dir), threads_before, "threads leaked by 50 failed upgrades");
    assert!(proc.text().1.matches("demo: state UPGRADING").count() >= 55);

    // A good binary again: the upgrade goes through.
    let load = Load::start(port, 4);
    load.wait_for_more(20, LIMIT);
    deploy_binary(&server);
    kill(pid, libc::SIGHUP);
    let current = generations.took_over(&proc.wait_nth_line("lameduck: New process ", 1, LIMIT));
    load.wait_for_more(20, LIMIT);
    load.stop_expecting_no_loss();
    kill(current, libc::SIGTERM);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Reads notify datagrams until one contains `needle`; returns all of them.
fn notifications_until(socket: &UnixDatagram, needle: &str, seen: &mut Vec<String>) {
    let mut buf = [0u8; 512];
    while !seen.iter().any(|m| m.contains(needle)) {
        let n = socket.recv(&mut buf).unwrap_or_else(|e| panic!("no {needle:?} notification ({e}); got {seen:?}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

#[test]
fn pid_file_and_systemd_notifications_follow_the_generations() {
    let dir = scratch_dir("notify");
    let (notify_path, pid_file) = (dir.join("notify"), dir.join("server.pid"));
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(LIMIT)).unwrap();
    let mut cmd = common::c_command(demo());
    cmd.args(["--port", "0", "--pid-file"]).arg(&pid_file).env("NOTIFY_SOCKET", &notify_path);
    let proc = Proc::spawn(cmd);
    let mut generations = Generations::default();
    let mut seen = Vec::new();
    notifications_until(&notify, "READY=1", &mut seen);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), format!("{}\n", proc.pid()));

    kill(proc.pid(), libc::SIGHUP);
    notifications_until(&notify, "MAINPID=", &mut seen);
    let current = generations.took_over(&proc.wait_line(true, "lameduck: New process ", LIMIT));
    let reloading = seen.iter().find(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC=")).expect("RELOADING=1 first");
    let usec: u64 = reloading.rsplit('=').next().unwrap().parse().unwrap();
    assert!(usec > 0);
    assert!(seen.contains(&format!("MAINPID={current}\nREADY=1")), "{seen:?}");
    // The new generation wrote the pid file before it reported ready.
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), format!("{current}\n"));
    proc.wait_line(true, "demo: run ended cleanly", LIMIT); // the old process is gone...
    assert!(pid_file.exists(), "...and left the pid file to its successor");
    assert!(!seen.iter().any(|m| m.contains("STOPPING=1")), "a hand-off is not a stop: {seen:?}");

    kill(current, libc::SIGTERM);
    notifications_until(&notify, "STOPPING=1", &mut seen);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!pid_file.exists(), "the last generation removes the pid file");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn unix_get(path: &Path) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn unix_socket_path_survives_the_hand_off_and_goes_with_the_last_generation() {
    let dir = scratch_dir("unix");
    let socket = dir.join("http.sock");
    let mut cmd = common::c_command(demo());
    cmd.arg("--listen").arg(&socket);
    let proc = Proc::spawn(cmd);
    let mut generations = Generations::default();
    proc.wait_line(true, "demo: state READY", LIMIT);
    assert!(unix_get(&socket).starts_with("HTTP/1.1 200 OK"));
    kill(proc.pid(), libc::SIGHUP);
    let current = generations.took_over(&proc.wait_line(true, "lameduck: New process ", LIMIT));
    proc.wait_line(true, "demo: run ended cleanly", LIMIT);
    assert!(socket.exists(), "the old process handed the socket on: it must not unlink it");
    let answer = unix_get(&socket);
    assert!(answer.contains(&format!("(pid {current})")), "{answer}");
    kill(current, libc::SIGTERM);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!socket.exists(), "the last generation removes the socket path");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn socket_activated_server_keeps_its_socket_across_upgrades() {
    let Some(activate) = tool("systemd-socket-activate") else {
        eprintln!("systemd-socket-activate is not installed; skipping");
        return;
    };
    let (port, address) = free_address();
    // A second socket nobody takes is passed on by every generation, but never waited for.
    let (_, unused) = free_address();
    let mut cmd = Command::new(activate);
    cmd.args(["-l", &address, "-l", &unused, "--fdname=http:spare"]).arg(demo()).args(["--listen", &address]);
    let proc = Proc::spawn(cmd);
    let mut generations = Generations::default();
    proc.wait_line(true, &format!("Listening on {address}"), LIMIT);
    let load = Load::start(port, 4); // the first connection activates the demo
    load.wait_for_more(20, LIMIT);
    // systemd-socket-activate exec()s the demo: same pid
    let current = upgrade_by_sighup(&proc, proc.pid(), 3, &mut generations, &load);
    load.stop_expecting_no_loss();
    let (stdout, _) = proc.text();
    assert_eq!(stdout.matches(&format!("listening on http://{address} (inherited)")).count(), 4, "{stdout}");
    kill(current, libc::SIGTERM);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}"); // and every generation closed our pipes
}

#[test]
fn worker_under_perl_start_server_hup_loses_no_request() {
    let Some(start_server) = tool("start_server") else {
        eprintln!("start_server (libserver-starter-perl) is not installed; skipping");
        return;
    };
    let (port, address) = free_address();
    let mut cmd = Command::new(start_server);
    cmd.arg(format!("--port={address}")).args(["--interval=1", "--"]).arg(demo()).args(["--listen", &address]);
    let proc = Proc::spawn(cmd);
    proc.wait_line(true, "demo: state READY", LIMIT);
    let load = Load::start(port, 4);
    load.wait_for_more(20, LIMIT);
    for n in 1..=2 {
        proc.signal(libc::SIGHUP); // start_server: new worker, then TERM to the old one
        proc.wait_nth_line("lameduck: Received signal [terminated]; entering lame-duck mode", n, LIMIT);
        proc.wait_nth_line("demo: run ended cleanly", n, LIMIT);
        load.wait_for_more(20, LIMIT);
    }
    load.stop_expecting_no_loss();
    proc.signal(libc::SIGTERM);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// The state letter in /proc/PID/stat ('Z' for a zombie), or None when the process is gone.
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
}

/// The pid in the demo's answer, `hello from lameduck (pid N)`, or None when nothing answers.
fn answering_pid(port: u16) -> Option<i32> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(LIMIT)).ok()?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split("(pid ").nth(1)?.split(')').next()?.parse().ok()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The old process is SIGKILLed (an OOM kill, a careless operator) at each point of the
/// handshake, 10 times each, under load: when the new process has only just started (the
/// program is a wrapper that kills its parent and then execs the server), while the new one
/// starts, and right after it reported ready. Every time the new process carries on as the
/// current generation: it serves the port, it did not die of SIGPIPE writing READY=1 to a dead
/// reader, and the pid file names it.
#[test]
fn the_old_process_killed_mid_handshake_leaves_the_new_one_serving() {
    let dir = scratch_dir("sigkill");
    let (server, pid_file, child_pid_file) = (dir.join("server"), dir.join("server.pid"), dir.join("child.pid"));
    let real = dir.join("real-server");
    deploy(demo(), &real);
    deploy_binary(&server);
    let mut cmd = common::c_command(&server);
    // A confirmation window far longer than the test, so each kill surely lands before the
    // old process hands over, however slow the machine.
    cmd.args(["--port", "0", "--period", "3000", "--upgrade-confirm", "60000", "--pid-file"]).arg(&pid_file);
    let mut proc = Proc::spawn(cmd);
    let port = port_of(&proc);
    proc.wait_line(true, "demo: state READY", LIMIT);
    let mut generations = Generations::default();
    let load = Load::start(port, 4);
    load.wait_for_more(20, LIMIT);
    let mut current = proc.pid();
    let (mut started, mut reported, mut carried_on) = (0, 0, 0);
    for point in ["as the new process starts", "while it starts", "right after it reported ready"] {
        if point == "as the new process starts" {
            // bash's exec -a keeps argv[0], so the next upgrade starts this wrapper again.
            let script = dir.join("wrapper");
            let body = format!(
                "#!/bin/bash\necho $$ > {}\nkill -9 $PPID\nexec -a \"$0\" {} \"$@\"\n",
                child_pid_file.display(),
                real.display()
            );
            std::fs::write(&script, body).unwrap();
            std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            deploy(&script, &server);
        } else {
            deploy_binary(&server);
        }
        for _ in 0..10 {
            let _ = std::fs::remove_file(&child_pid_file);
            kill(current, libc::SIGHUP);
            let new = match point {
                "as the new process starts" => {
                    wait_until("the wrapper's pid", || std::fs::read_to_string(&child_pid_file).is_ok_and(|t| t.ends_with('\n')));
                    started += 1; // the old one may or may not have logged "Started new process"
                    std::fs::read_to_string(&child_pid_file).unwrap().trim().parse().unwrap()
                }
                _ => {
                    started += 1;
                    let line = proc.wait_nth_line("lameduck: Started new process ", started, LIMIT);
                    let new: i32 = line.split("Started new process ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
                    if point == "right after it reported ready" {
                        reported += 1;
                        proc.wait_nth_line("lameduck: Reported ready to the previous generation", reported, LIMIT);
                    }
                    kill(current, libc::SIGKILL);
                    new
                }
            };
            generations.0.push(new);
            carried_on += 1;
            proc.wait_nth_line("carrying on as the current generation", carried_on, LIMIT);
            // It may carry on before its run is READY; an upgrade signal needs READY.
            proc.wait_nth_line("demo: state READY", carried_on + 1, LIMIT);
            wait_until("the new process to answer", || answering_pid(port) == Some(new));
            wait_until("the pid file to name the new process", || {
                std::fs::read_to_string(&pid_file).is_ok_and(|t| t.trim() == new.to_string())
            });
            wait_until("the old process to be dead", || matches!(process_state(current), None | Some('Z')));
            assert!(process_state(new).is_some_and(|s| s != 'Z'), "new process {new} died ({point})");
            load.wait_for_more(20, LIMIT);
            current = new;
        }
        if point == "as the new process starts" {
            // The old lines may say "Started new process" or not: count what is there.
            started = proc.text().1.matches("lameduck: Started new process ").count();
        }
    }
    let (ok, errors) = load.stop();
    eprintln!(
        "30 SIGKILLs of the old process mid-handshake: {ok} requests answered, {} cut with the killed processes",
        errors.len()
    );
    let (_, stderr) = proc.text();
    assert!(!stderr.contains("signal 13"), "no process died of SIGPIPE:\n{stderr}");
    kill(current, libc::SIGTERM);
    wait_until("the last generation to exit", || matches!(process_state(current), None | Some('Z')));
    assert!(!pid_file.exists(), "the last generation removes the pid file");
    proc.terminate(LIMIT);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A stop during the confirmation window cancels the upgrade: the new process (which had
/// reported ready) is terminated, and the pid file, which never named it, is removed by the
/// old process as the last generation.
#[test]
fn a_stop_during_the_confirmation_window_cancels_and_leaves_no_stale_pid_file() {
    let dir = scratch_dir("confirm-stop");
    let pid_file = dir.join("server.pid");
    let mut cmd = common::c_command(demo());
    cmd.args(["--port", "0", "--upgrade-confirm", "60000", "--pid-file"]).arg(&pid_file);
    let proc = Proc::spawn(cmd);
    proc.wait_line(true, "demo: state READY", LIMIT);
    let mut generations = Generations::default();
    kill(proc.pid(), libc::SIGHUP);
    let line = proc.wait_line(true, "lameduck: Started new process ", LIMIT);
    generations.0.push(line.split("Started new process ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap());
    proc.wait_line(true, "lameduck: Reported ready to the previous generation", LIMIT);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), proc.pid().to_string(), "not handed over yet");
    proc.signal(libc::SIGTERM);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
    // "before it took over" once the old process has read READY=1, "before it was ready" if the
    // SIGTERM beat that read (the child's "Reported ready" line comes first): both are a cancel.
    assert!(stderr.contains("upgrade canceled: lame-duck began before it "), "{stderr}");
    assert!(!pid_file.exists(), "the pid file is removed, not left naming a dead process");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A process started with a readiness *pipe* (by an older lameduck, or another launcher) reports
/// ready on it and is then the current generation at once: the pipe carries nothing back.
#[test]
fn a_readiness_pipe_from_an_older_generation_still_works() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let dir = scratch_dir("pipe");
    let pid_file = dir.join("server.pid");
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array; both ends are ours.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: just created, owned by nobody else.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The channel is bound to the process it is for, as LISTEN_PID binds LISTEN_FDS: `exec`
    // keeps the shell's pid, so $$ is the demo's.
    let mut cmd = common::c_command(Path::new("/bin/sh"));
    cmd.args(["-c", "LAMEDUCK_READY_PID=$$ exec \"$0\" \"$@\""]).arg(demo());
    cmd.args(["--port", "0", "--pid-file"]).arg(&pid_file).env("LAMEDUCK_READY_FD", "9");
    common::place_fd(&mut cmd, write_end.as_raw_fd(), 9);
    let proc = Proc::spawn(cmd);
    drop(write_end);
    let mut reader = std::fs::File::from(read_end);
    let mut line = String::new();
    reader.read_to_string(&mut line).unwrap(); // EOF once the report is written and closed
    assert_eq!(line, "READY=1\n");
    proc.wait_line(true, "lameduck: Reported ready to the previous generation", LIMIT);
    wait_until("the pid file", || std::fs::read_to_string(&pid_file).is_ok_and(|t| t.trim() == proc.pid().to_string()));
    proc.signal(libc::SIGTERM);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("carrying on"), "the pipe's silence is not a dead predecessor:\n{stderr}");
    assert!(!pid_file.exists(), "as the current generation it removes its pid file");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn nonblocking_read(file: &mut std::fs::File) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETFL on a descriptor this test owns.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    file.read(&mut [0u8; 64])
}

/// `LAMEDUCK_READY_FD` is trusted only by the process `LAMEDUCK_READY_PID` names, and only when
/// it is a channel: a variable that came through another program (start_server used to forward
/// it) or that names the server's own listener is ignored, and its descriptor left alone.
#[test]
fn a_readiness_fd_that_is_not_this_process_channel_is_ignored_and_untouched() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // Not bound to this process: a pipe at fd 9 that nobody may write to or close.
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array; both ends are ours.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: just created, owned by nobody else.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut cmd = common::c_command(demo());
    cmd.args(["--port", "0"]).env("LAMEDUCK_READY_FD", "9");
    common::place_fd(&mut cmd, write_end.as_raw_fd(), 9);
    let proc = Proc::spawn(cmd);
    drop(write_end);
    proc.wait_line(true, "without LAMEDUCK_READY_PID naming this process is not meant for it; ignoring it", LIMIT);
    proc.wait_line(true, "demo: state READY", LIMIT);
    assert!(common::get_body(port_of(&proc), LIMIT).contains("hello"));
    let mut reader = std::fs::File::from(read_end);
    let read = nonblocking_read(&mut reader);
    assert_eq!(read.map_err(|e| e.kind()), Err(std::io::ErrorKind::WouldBlock), "nothing written to fd 9, and it is still open");
    proc.signal(libc::SIGTERM);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");

    // Bound to this process, but naming its own (socket-activated) listener: writing READY=1
    // there used to kill the C demo with SIGPIPE.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let mut cmd = common::c_command(Path::new("/bin/sh"));
    cmd.args(["-c", "LISTEN_PID=$$ LAMEDUCK_READY_PID=$$ exec \"$0\" \"$@\""]).arg(demo()).args(["--listen", &address]);
    cmd.env("LISTEN_FDS", "1").env("LAMEDUCK_READY_FD", "3");
    common::place_fd(&mut cmd, listener.as_raw_fd(), 3);
    let proc = Proc::spawn(cmd);
    proc.wait_line(true, "LAMEDUCK_READY_FD=\"3\" names a listening socket, not a readiness channel; ignoring it", LIMIT);
    proc.wait_line(true, "demo: state READY", LIMIT);
    assert!(proc.text().0.contains("(inherited)"), "the demo serves on the inherited socket");
    assert!(common::get_body(listener.local_addr().unwrap().port(), LIMIT).contains("hello"));
    drop(listener);
    proc.signal(libc::SIGTERM);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// An upgrade that could not point the pid file at the new process (the path became a
/// directory, or someone planted a symlink there) is refused before anything starts, the old
/// process goes on serving, and what a planted symlink points at is never touched, not even at
/// the final stop. (Should the pid file break between that check and the hand-over, the new
/// process is terminated instead: `settle_upgrade`.)
#[test]
fn an_upgrade_that_cannot_write_the_pid_file_fails_and_the_old_process_goes_on() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::shared_dir("pidfile-fails");
    let pid_file = dir.join("server.pid");
    let mut cmd = common::c_command(demo());
    cmd.args(["--port", "0", "--upgrade-confirm", "0", "--pid-file"]).arg(&pid_file);
    let proc = Proc::spawn(cmd);
    let (pid, port) = (proc.pid(), port_of(&proc));
    proc.wait_line(true, "demo: state READY", LIMIT);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), format!("{pid}\n"));

    std::fs::remove_file(&pid_file).unwrap();
    std::fs::create_dir(&pid_file).unwrap();
    std::fs::write(pid_file.join("keep"), "x").unwrap();
    kill(pid, libc::SIGHUP);
    // Seen before anything is started: no process serves for a while only to be terminated.
    let line = proc.wait_line(true, "not upgrading: ", LIMIT);
    assert!(line.contains(&format!("could not write the pid file {}: it is a directory", pid_file.display())), "{line}");
    assert!(line.contains("no new process started"), "{line}");
    assert!(common::get_body(port, LIMIT).contains(&format!("(pid {pid})")));

    std::fs::remove_dir_all(&pid_file).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, format!("{pid}\n")).unwrap(); // even "our" pid: never removed through a link
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    common::plant_symlink(&victim, &pid_file);
    kill(pid, libc::SIGHUP);
    let line = proc.wait_nth_line("not upgrading: ", 2, LIMIT);
    assert!(line.contains("it is a symbolic link; refusing to write through it"), "{line}");
    assert!(common::get_body(port, LIMIT).contains(&format!("(pid {pid})")));
    proc.signal(libc::SIGTERM);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("Started new process"), "nothing was started:\n{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), format!("{pid}\n"));
    assert_eq!(std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::symlink_metadata(&pid_file).unwrap().file_type().is_symlink(), "the link is left alone");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 2, "no temporary left behind: {leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The identity of a unix socket file travels with its descriptor from the process that bound
/// it: a file that replaced the socket before an upgrade is not the lineage's to remove (the
/// successor used to read the identity afresh and then deleted the replacement).
#[test]
fn a_file_that_replaced_the_unix_socket_is_never_removed() {
    let dir = scratch_dir("unix-replaced");
    let socket = dir.join("http.sock");
    let mut cmd = common::c_command(demo());
    cmd.arg("--listen").arg(&socket);
    let proc = Proc::spawn(cmd);
    let mut generations = Generations::default();
    proc.wait_line(true, "demo: state READY", LIMIT);
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, "someone else's file\n").unwrap();
    kill(proc.pid(), libc::SIGHUP);
    let current = generations.took_over(&proc.wait_line(true, "lameduck: New process ", LIMIT));
    proc.wait_line(true, "demo: run ended cleanly", LIMIT);
    kill(current, libc::SIGTERM);
    let (status, stderr) = proc.finish(LIMIT);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "someone else's file\n");
    std::fs::remove_dir_all(&dir).unwrap();
}
