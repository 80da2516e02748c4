//! `start_server`: a superdaemon compatible with Perl's Server::Starter 0.35.
//!
//! It binds the ports, keeps a stable pid for supervisors, and runs the real server as a
//! child that it replaces generation by generation on SIGHUP. Workers find their sockets in
//! `SERVER_STARTER_PORT` (and, when they sit at fd 3.., in `LISTEN_FDS`/`LISTEN_PID` too).
//! See `start_server --help`, and README.md for what it does beyond Perl's.

/// A line on stderr that never panics: a dead `| cmd` logger, a full disk or a closed terminal
/// must not bring start_server down (and orphan its workers), so write errors are ignored, as
/// Perl ignores them. The line goes out in one `write`: the workers share this stderr, and
/// `writeln!` on the unbuffered stderr writes each piece separately, so their lines would land
/// inside ours.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = std::io::stderr().write_all(format!("{}\n", format_args!($($arg)*)).as_bytes());
    }};
}

mod bind;
mod cli;
mod files;
mod notify;
mod settings;
mod signals;
mod supervisor;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cli::Cli;

/// Perl's `die`: the message on stderr, exit status 255.
fn die(message: impl std::fmt::Display) -> ExitCode {
    die_with(255, message)
}

/// Perl's `die` after a failed system call exits with errno: the same here.
fn die_with(code: u8, message: impl std::fmt::Display) -> ExitCode {
    log!("{message}");
    ExitCode::from(code)
}

fn errno_code(err: &std::io::Error) -> u8 {
    err.raw_os_error().and_then(|e| u8::try_from(e).ok()).filter(|e| *e != 0).unwrap_or(255)
}

fn main() -> ExitCode {
    let cli = match Cli::parse(std::env::args_os().skip(1)) {
        Ok(cli) => cli,
        Err(cli::Usage(message)) => {
            log!("{message}");
            log!("{}", cli::USAGE);
            return ExitCode::from(1);
        }
    };
    if cli.help {
        print!("{}", cli::USAGE);
        return ExitCode::SUCCESS;
    }
    if cli.version {
        println!("0.35 (lameduck start_server {})", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if cli.stop {
        return stop(&cli);
    }
    if cli.restart {
        return restart(&cli);
    }
    serve(cli)
}

/// Sends `signal` to the start_server whose pid file is `path` (open as `file`, naming `pid`),
/// only if a start_server holds the file's lock: otherwise the file is stale (its
/// start_server was SIGKILLed, say) and `pid` may be anyone's by now. Race-free: a pidfd is
/// taken on `pid` first; the lock, still held after that, proves the start_server that wrote
/// `pid` was alive all along (a live process's pid is never reused), so the pidfd is it, and
/// the signal goes to it even if it exits and its pid is reused right after. (Kernels without
/// pidfds, before 5.3: plain kill(2) after the lock check.)
fn signal_server(path: &str, file: &std::fs::File, pid: i32, signal: i32) -> Result<(), (u8, String)> {
    use std::os::fd::AsFd;
    let failed = |err: std::io::Error| {
        (errno_code(&err), format!("failed to send SIG{} to the server process:{err}", signals::name_of(signal)))
    };
    let pidfd = match lameduck::sys::pidfd_open(pid) {
        Ok(pidfd) => Some(pidfd),
        Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => None,
        Err(err) => {
            // ESRCH: no such process. The lock check below says why, if it is stale.
            files::locked_by_start_server(path, file).map_err(|m| (2, m))?;
            return Err(failed(err));
        }
    };
    files::locked_by_start_server(path, file).map_err(|m| (2, m))?;
    let sent = match &pidfd {
        Some(pidfd) => lameduck::sys::pidfd_send_signal(pidfd.as_fd(), signal),
        // SAFETY: kill(2) on the pid the locked pid file names.
        None => match unsafe { libc::kill(pid, signal) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        },
    };
    sent.map_err(failed)
}

/// `--stop`: TERM to the running start_server, then wait until it has exited (its pid file
/// lock is released).
fn stop(cli: &Cli) -> ExitCode {
    let Some(pid_file) = &cli.pid_file else {
        return die("--stop option requires --pid-file to be set as well");
    };
    let (file, pid) = match files::read_pid(pid_file) {
        Ok(found) => found,
        Err(message) => {
            log!("{message}");
            return ExitCode::from(2);
        }
    };
    // (Checked again, race-free, by signal_server: here so a stale file is not "stopping".)
    if let Err(message) = files::locked_by_start_server(pid_file, &file) {
        return die_with(2, message);
    }
    log!("stop_server (pid:{}) stopping now (pid:{pid})...", std::process::id());
    if let Err((code, message)) = signal_server(pid_file, &file, pid, libc::SIGTERM) {
        return die_with(code, message);
    }
    // SAFETY: flock on the descriptor we opened; blocks until start_server releases it by exiting.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
    ExitCode::SUCCESS
}

/// Whether the start_server with `pid`, holding the lock on the pid file `file`, is gone: no
/// such process, or nobody holds the lock (it exited, or it is a zombie not reaped yet).
fn server_gone(pid: i32, file: &std::fs::File) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let no_process = unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    // SAFETY: a non-blocking flock on a descriptor we own; it succeeds only when start_server
    // no longer holds its lock (and then it is released at once when we exit).
    no_process || unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(file), libc::LOCK_EX | libc::LOCK_NB) } == 0
}

/// `--restart`: HUP, then wait until the status file lists exactly one generation, a newer
/// one than before (Perl waits for exactly max+1 and never returns if that attempt failed).
/// If start_server goes away meanwhile, it fails at once; while it waits it says so every
/// 10 seconds, so a new generation that keeps failing to start is not a silent hang.
fn restart(cli: &Cli) -> ExitCode {
    let (Some(pid_file), Some(status_file)) = (&cli.pid_file, &cli.status_file) else {
        return die("--restart option requires --pid-file and --status-file to be set as well");
    };
    let (file, pid) = match files::read_pid(pid_file) {
        Ok(found) => found,
        Err(message) => return die_with(2, message),
    };
    let generations = match files::read_generations(status_file) {
        Ok(g) => g,
        Err(e) => return die(format!("failed to open file:{status_file}:{e}")),
    };
    let Some(&newest) = generations.iter().max() else {
        return die("no active process found in the status file");
    };
    if let Err((code, message)) = signal_server(pid_file, &file, pid, libc::SIGHUP) {
        return die_with(code, message);
    }
    let start = Instant::now();
    let mut next_report = Duration::from_secs(10);
    loop {
        if server_gone(pid, &file) {
            return die(format!("start_server (pid:{pid}) exited before a new generation took over"));
        }
        let generations = match files::read_generations(status_file) {
            Ok(g) => g,
            Err(e) => return die(format!("failed to open file:{status_file}:{e}")),
        };
        if generations.len() == 1 && generations[0] > newest {
            return ExitCode::SUCCESS;
        }
        let waited = start.elapsed();
        if waited > Duration::from_secs(600) {
            return die(format!("the new generation did not take over within 600 seconds (status: {generations:?})"));
        }
        if waited >= next_report {
            next_report += Duration::from_secs(10);
            log!(
                "still waiting for a generation after {newest} to take over ({} s; status file lists {generations:?}; a new worker that fails to start is retried every --interval)",
                waited.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn serve(cli: Cli) -> ExitCode {
    if cli.command.is_empty() {
        return die("server program not specified");
    }
    if cli.daemonize && cli.log_file.is_none() {
        return die("Usage: --log-file option must be specified together with --daemonize");
    }
    let signal = |option: &Option<String>, what: &str| -> Result<i32, String> {
        let name = option.as_deref().unwrap_or("TERM");
        signals::by_name(name).ok_or_else(|| format!("unknown signal name for --{what}: {name}"))
    };
    let (signal_on_hup, signal_on_term) =
        match (signal(&cli.signal_on_hup, "signal-on-hup"), signal(&cli.signal_on_term, "signal-on-term")) {
            (Ok(h), Ok(t)) => (h, t),
            (Err(e), _) | (_, Err(e)) => return die(e),
        };
    if !files::program_exists(Path::new(&cli.command[0]), cli.dir.as_deref()) {
        return die(format!("server program not found: {}", cli.command[0].to_string_lossy()));
    }
    let specs: Vec<bind::PortSpec> = match cli.ports.iter().map(|p| bind::PortSpec::parse(p)).collect() {
        Ok(specs) => specs,
        Err(e) => return die(e),
    };
    // The options only set variables (as Perl puts them in %ENV): workers get them, and the
    // supervisor reads them (the envdir over them over the environment). start_server's own
    // environment is never changed.
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    if cli.enable_auto_restart {
        env.push(("ENABLE_AUTO_RESTART".into(), "1".into()));
    }
    for (name, value) in
        [("AUTO_RESTART_INTERVAL", &cli.auto_restart_interval), ("KILL_OLD_DELAY", &cli.kill_old_delay), ("ENVDIR", &cli.envdir)]
    {
        if let Some(value) = value {
            env.push((name.into(), value.into()));
        }
    }
    let mut envdir = files::EnvDir::new(cli.envdir.clone().map(OsString::from).or_else(|| std::env::var_os("ENVDIR")));
    envdir.reload();
    let settings = match settings::Settings::at_startup(|name| supervisor::lookup(&envdir, &env, name)) {
        Ok(s) => s,
        Err(e) => return die(e),
    };

    // Locked first, so a second instance fails here rather than on a busy port; the lock
    // survives --daemonize's forks (it belongs to the open file).
    // Above every descriptor a socket may be placed on (3.., or an explicit =FD).
    // (=FD is at most bind::MAX_FD, so this cannot overflow.)
    let highest_socket_fd = 3 + (specs.len() + cli.paths.len()) as i32 + specs.iter().filter_map(|s| s.fd).max().unwrap_or(0);
    let mut pid_file = match cli.pid_file.as_deref().map(|p| files::PidFile::lock(p, highest_socket_fd + 1)).transpose() {
        Ok(p) => p,
        Err(e) => return die(e),
    };
    // Perl opens the log before binding, so the logger (`| cmd`) never inherits a socket.
    if let Some(log) = &cli.log_file {
        if let Err(e) = files::redirect_output(log) {
            return die(e);
        }
    }
    log!("start_server (pid:{}) starting now...", std::process::id());
    let backlog = cli.backlog.unwrap_or(libc::SOMAXCONN);
    let mut sockets = Vec::new();
    for spec in &specs {
        match bind::bind_port(spec, backlog) {
            Ok(s) => sockets.push(s),
            Err(e) => return die(e),
        }
    }
    for path in &cli.paths {
        match bind::bind_path(path, backlog) {
            Ok(s) => sockets.push(s),
            Err(e) => return cleanup_and_die(&sockets, e),
        }
    }
    let fds = match bind::place(&sockets) {
        Ok(fds) => fds,
        Err(e) => return cleanup_and_die(&sockets, e),
    };
    env.push(("SERVER_STARTER_PORT".into(), bind::server_starter_port(&sockets, &fds).into()));
    // systemd-style workers: LISTEN_FDS only describes descriptors 3, 4, … in order.
    let contiguous = !fds.is_empty() && fds.iter().enumerate().all(|(i, fd)| *fd == 3 + i as i32);
    let notify_socket = std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty());

    if cli.daemonize {
        if let Err(e) = files::daemonize(fds.contains(&0)) {
            return cleanup_and_die(&sockets, e);
        }
    }
    // Written by the final process (after --daemonize's forks; the lock came along).
    if let Some(pid_file) = pid_file.as_mut() {
        if let Err(e) = pid_file.write_pid() {
            return cleanup_and_die(&sockets, e);
        }
    }
    let signal_pipe = match signals::SignalPipe::install(&[libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGCHLD]) {
        Ok(p) => p,
        Err(e) => return cleanup_and_die(&sockets, format!("failed to install signal handlers:{e}")),
    };
    let config = supervisor::Config {
        command: cli.command.clone(),
        dir: cli.dir.clone(),
        interval: cli.interval.unwrap_or(Duration::from_secs(1)),
        signal_on_hup,
        signal_on_term,
        status_file: cli.status_file.clone(),
        listen_fds: contiguous.then_some(fds.len()),
        notify_socket,
        env,
    };
    supervisor::Supervisor::new(config, signal_pipe, envdir, settings).run();

    if let Some(path) = &cli.status_file {
        let _ = std::fs::remove_file(path);
    }
    remove_paths(&sockets);
    drop(pid_file); // removes it and releases the lock last: `--stop` returns only now
    ExitCode::SUCCESS
}

/// Removes the `--path` sockets, each only if its path is still the socket we bound (same
/// device and inode): a file that replaced it meanwhile is someone else's and stays.
fn remove_paths(sockets: &[bind::Socket]) {
    for socket in sockets {
        if let Some(path) = &socket.path {
            if bind::still_ours(socket) {
                let _ = std::fs::remove_file(path);
            } else {
                log!("not removing {}: it is no longer the socket start_server bound", path.display());
            }
        }
    }
}

fn cleanup_and_die(sockets: &[bind::Socket], message: impl std::fmt::Display) -> ExitCode {
    remove_paths(sockets);
    die(message)
}
