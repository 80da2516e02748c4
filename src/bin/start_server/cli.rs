//! The command line of Perl's `start_server` 0.35 (Getopt::Long): `--name=value` or
//! `--name value`, unambiguous prefixes (`--int=2` is `--interval=2`), repeatable `--port` and
//! `--path`, and the server program after the options (`--` ends them).

use std::ffi::OsString;
use std::time::Duration;

/// What the command line asks for.
#[derive(Debug, Default, Clone)]
pub struct Cli {
    pub ports: Vec<String>,
    pub paths: Vec<String>,
    pub dir: Option<String>,
    pub interval: Option<Duration>,
    pub signal_on_hup: Option<String>,
    pub signal_on_term: Option<String>,
    pub pid_file: Option<String>,
    pub status_file: Option<String>,
    pub envdir: Option<String>,
    pub log_file: Option<String>,
    pub daemonize: bool,
    pub backlog: Option<i32>,
    pub kill_old_delay: Option<String>,
    pub enable_auto_restart: bool,
    pub auto_restart_interval: Option<String>,
    pub restart: bool,
    pub stop: bool,
    pub help: bool,
    pub version: bool,
    /// The server program and its arguments.
    pub command: Vec<OsString>,
}

/// Options that take a value, then flags.
const WITH_VALUE: [&str; 13] = [
    "port",
    "path",
    "dir",
    "interval",
    "signal-on-hup",
    "signal-on-term",
    "pid-file",
    "status-file",
    "envdir",
    "log-file",
    "backlog",
    "kill-old-delay",
    "auto-restart-interval",
];
const FLAGS: [&str; 6] = ["daemonize", "enable-auto-restart", "restart", "stop", "help", "version"];

/// A command-line mistake, reported as Getopt::Long does (`Unknown option: bogus`).
#[derive(Debug)]
pub struct Usage(pub String);

fn full_name(given: &str) -> Result<&'static str, Usage> {
    let all = WITH_VALUE.iter().chain(FLAGS.iter());
    if let Some(exact) = all.clone().find(|n| **n == given) {
        return Ok(exact);
    }
    let matches: Vec<&'static str> = all.filter(|n| n.starts_with(given)).copied().collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(Usage(format!("Unknown option: {given}"))),
        _ => Err(Usage(format!("Option {given} is ambiguous ({})", matches.join(", ")))),
    }
}

/// `--interval` and the other durations: 0 to a year (see `settings`), or a usage error.
fn seconds(name: &str, value: &str) -> Result<Duration, Usage> {
    crate::settings::parse_seconds(value).map_err(|e| Usage(format!("Value \"{value}\" invalid for option {name} ({e})")))
}

impl Cli {
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, Usage> {
        let mut cli = Cli::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let Some(text) = arg.to_str().filter(|t| t.starts_with('-') && *t != "-") else {
                cli.command.push(arg); // the program and, after it, its arguments
                cli.command.extend(args.by_ref());
                break;
            };
            if text == "--" {
                cli.command.extend(args.by_ref());
                break;
            }
            let body = text.trim_start_matches('-');
            let (given, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let name = full_name(given)?;
            if FLAGS.contains(&name) {
                if inline.is_some() {
                    return Err(Usage(format!("Option {name} does not take an argument")));
                }
                match name {
                    "daemonize" => cli.daemonize = true,
                    "enable-auto-restart" => cli.enable_auto_restart = true,
                    "restart" => cli.restart = true,
                    "stop" => cli.stop = true,
                    "help" => cli.help = true,
                    _ => cli.version = true,
                }
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => args
                    .next()
                    .map(|v| v.to_string_lossy().into_owned())
                    .ok_or_else(|| Usage(format!("Option {name} requires an argument")))?,
            };
            match name {
                "port" => cli.ports.push(value),
                "path" => cli.paths.push(value),
                "dir" => cli.dir = Some(value),
                "interval" => cli.interval = Some(seconds(name, &value)?),
                "signal-on-hup" => cli.signal_on_hup = Some(value),
                "signal-on-term" => cli.signal_on_term = Some(value),
                "pid-file" => cli.pid_file = Some(value),
                "status-file" => cli.status_file = Some(value),
                "envdir" => cli.envdir = Some(value),
                "log-file" => cli.log_file = Some(value),
                "backlog" => {
                    cli.backlog =
                        Some(
                            value.trim().parse().ok().filter(|b: &i32| *b > 0).ok_or_else(|| {
                                Usage(format!("Value \"{value}\" invalid for option backlog (number expected)"))
                            })?,
                        )
                }
                "kill-old-delay" => cli.kill_old_delay = Some(seconds(name, &value).map(|_| value)?),
                _ => cli.auto_restart_interval = Some(seconds(name, &value).map(|_| value)?),
            }
        }
        Ok(cli)
    }
}

pub const USAGE: &str = "\
Usage:
    start_server [options] -- server-prog server-arg1 server-arg2 ...

    # start Plack using Starlet listening at TCP port 8000
    start_server --port=8000 -- plackup -s Starlet --max-workers=100 index.psgi

Options:
    --port=(port|host:port|port=fd|host:port=fd)
        TCP port to listen to (if omitted, will not bind to any ports). A
        `u' before the port binds UDP instead; [v6]:port binds IPv6 only.
    --path=path
        path at where to listen using unix socket (optional)
    --dir=path
        working directory, start_server do chdir to before exec (optional)
    --interval=seconds
        minimum interval (in seconds) to respawn the server program (default: 1)
    --signal-on-hup=SIGNAL
        name of the signal to be sent to the server process when start_server
        receives a SIGHUP (default: SIGTERM)
    --signal-on-term=SIGNAL
        name of the signal to be sent to the server process when start_server
        receives a SIGTERM (default: SIGTERM)
    --pid-file=filename
        if set, writes the process id of the start_server process to the file
    --status-file=filename
        if set, writes the status of the server process(es) to the file
    --envdir=ENVDIR
        directory that contains environment variables to the server processes.
        It is intended for use with `envdir` in `daemontools`. This can be
        overwritten by environment variable `ENVDIR`.
    --log-file=\"| cmd args...\" | filename
        if set, redirects STDOUT and STDERR to given file or command
    --daemonize
        deamonizes the server process (requires --log-file)
    --backlog=size
        specifies a listen backlog parameter, whose default is SOMAXCONN
    --enable-auto-restart
        enables automatic restart by time. This can be overwritten by
        environment variable `ENABLE_AUTO_RESTART`.
    --auto-restart-interval=seconds
        automatic restart interval (default 360). It is used with
        `--enable-auto-restart` option. This can be overwritten by environment
        variable `AUTO_RESTART_INTERVAL`.
    --kill-old-delay=seconds
        time to suspend to send a signal to the old worker. The default value
        is 5 when `--enable-auto-restart` is set, 0 otherwise. This can be
        overwritten by environment variable `KILL_OLD_DELAY`.
    --restart
        this is a wrapper command that reads the pid of the start_server
        process from --pid-file, sends SIGHUP to the process and waits until
        the server(s) of the older generation(s) die by monitoring the contents
        of the --status-file
    --stop
        this is a wrapper command that reads the pid of the start_server
        process from --pid-file, sends SIGTERM to the process.
    --help
        prints this help
    --version
        printd the version number

Beyond Perl's Server::Starter:
- A worker that speaks systemd's notify protocol (every lameduck worker does) counts as
  started as soon as it sends READY=1 on the private NOTIFY_SOCKET it is given, instead of
  after --interval. That socket is a path in a directory start_server makes for itself
  (mode 0700, under $XDG_RUNTIME_DIR or the temp directory, removed at exit), so no other
  user can reach it. Only datagrams sent by the worker itself or by a process it started
  count (a shell wrapper's systemd-notify; one that has exited before start_server could
  trace it counts only if it ran as start_server's user); others are ignored and logged once
  per worker. A worker that switches to another user before it notifies cannot reach the
  socket, and counts as started after --interval (as with Perl's).
- If start_server dies, even by SIGKILL, each worker is sent --signal-on-term (default TERM;
  a lameduck worker then finishes its requests) by the kernel (PR_SET_PDEATHSIG), instead of
  serving on as an orphan. The kernel clears this when a worker execs a set-user-ID,
  set-group-ID or file-capability program, and when the worker changes its effective or
  filesystem user or group id (setpriv/chpst/su-exec wrappers, servers that drop root); a
  worker's own children are not covered.
- Numbers (--interval, --kill-old-delay, --auto-restart-interval, KILL_OLD_DELAY and
  AUTO_RESTART_INTERVAL from the environment or the envdir) are seconds from 0 to 31536000
  (a year); anything else is an error at startup, and a warning that keeps the old value
  when the envdir changes at run time. An envdir file with a NUL byte or an '=' in its name,
  or one that is not a regular file (a FIFO, a device, a directory; symlinks are followed),
  is skipped with a warning.
- The pid file, the --log-file file and the status file are never written through a
  symlink; an existing pid file or log file must be a regular file with one link, owned by
  start_server's user (the log may also be /dev/null). A symlink at the status file's own
  path is replaced by the new status file (its target is untouched).
- --stop and --restart signal only a start_server that holds the pid file's lock: a pid
  file that is a symlink, not ours, or stale (nobody holds its lock) is an error, and the
  pid in it is not signalled.
- A --path socket is removed at exit only if its path still names the socket bound.
- Workers never inherit the lameduck library's private LAMEDUCK_* variables.
";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, Usage> {
        Cli::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn getopt_long_forms() {
        let cli =
            parse(&["--port=80", "--port", "127.0.0.1:81", "--int=2", "--env", "/e", "--daemonize", "--", "prog", "--port=1"])
                .unwrap();
        assert_eq!(cli.ports, ["80", "127.0.0.1:81"]);
        assert_eq!(cli.interval, Some(Duration::from_secs(2)));
        assert_eq!(cli.envdir.as_deref(), Some("/e"));
        assert!(cli.daemonize);
        assert_eq!(cli.command, ["prog", "--port=1"]);
        assert_eq!(parse(&["--bogus"]).unwrap_err().0, "Unknown option: bogus");
        assert!(parse(&["--s=x"]).unwrap_err().0.contains("ambiguous"));
        assert!(parse(&["--interval=abc"]).unwrap_err().0.contains("invalid for option interval"));
        assert!(parse(&["--port"]).unwrap_err().0.contains("requires an argument"));
        assert_eq!(parse(&["prog", "--stop"]).unwrap().command, ["prog", "--stop"]);
    }

    #[test]
    fn numbers_out_of_range_are_usage_errors() {
        for (option, value) in [
            ("interval", "1e20"),
            ("interval", "NaN"),
            ("interval", "-1"),
            ("interval", "inf"),
            ("kill-old-delay", "1e20"),
            ("auto-restart-interval", "99999999999999999999"),
            ("backlog", "99999999999"),
        ] {
            let e = parse(&[&format!("--{option}={value}"), "--", "true"]).unwrap_err().0;
            assert!(e.contains(&format!("Value \"{value}\" invalid for option {option}")), "{e}");
        }
        assert_eq!(parse(&["--interval=31536000"]).unwrap().interval, Some(Duration::from_secs(31_536_000)));
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;
        use std::os::unix::ffi::OsStringExt;

        /// Arguments that look like options (a name or a prefix, maybe `=value`) or anything.
        fn argument() -> impl Strategy<Value = OsString> {
            prop_oneof![
                any::<Vec<u8>>().prop_map(OsString::from_vec),
                (
                    proptest::sample::select(WITH_VALUE.iter().chain(FLAGS.iter()).copied().collect::<Vec<_>>()),
                    0usize..8,
                    proptest::option::of(any::<String>())
                )
                    .prop_map(|(name, cut, value)| {
                        let name = &name[..name.len().min(cut.max(1))];
                        OsString::from(match value {
                            Some(v) => format!("--{name}={v}"),
                            None => format!("--{name}"),
                        })
                    }),
                any::<String>().prop_map(|s| OsString::from(format!("-{s}"))),
            ]
        }

        fn value() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9/._:=-]{0,16}"
        }

        // Fewer cases than elsewhere: each one builds several strings, slow in a debug build
        // (the whole fuzz set stays within a few seconds).
        proptest! {
            #![proptest_config(ProptestConfig { cases: 800, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn any_arguments_parse_or_fail_without_panicking(args in proptest::collection::vec(argument(), 0..8)) {
                if let Ok(cli) = Cli::parse(args) {
                    if let Some(d) = cli.interval {
                        prop_assert!(d <= Duration::from_secs(u64::from(crate::settings::MAX_SECONDS)));
                    }
                    for v in cli.kill_old_delay.iter().chain(&cli.auto_restart_interval) {
                        prop_assert!(crate::settings::parse_seconds(v).is_ok());
                    }
                }
            }

            #[test]
            fn valid_command_lines_round_trip(
                ports in proptest::collection::vec(value(), 0..3),
                paths in proptest::collection::vec(value(), 0..2),
                pid_file in proptest::option::of(value()),
                status_file in proptest::option::of(value()),
                interval_ms in proptest::option::of(0u64..=u64::from(crate::settings::MAX_SECONDS) * 1000),
                delay in proptest::option::of(0u32..=crate::settings::MAX_SECONDS),
                backlog in proptest::option::of(1i32..=i32::MAX),
                daemonize in any::<bool>(),
                separate in any::<bool>(),
                command in proptest::collection::vec(any::<String>(), 0..4),
            ) {
                let mut args: Vec<String> = Vec::new();
                let mut option = |name: &str, v: &str| {
                    if separate {
                        args.push(format!("--{name}"));
                        args.push(v.to_string());
                    } else {
                        args.push(format!("--{name}={v}"));
                    }
                };
                for p in &ports { option("port", p); }
                for p in &paths { option("path", p); }
                if let Some(f) = &pid_file { option("pid-file", f); }
                if let Some(f) = &status_file { option("status-file", f); }
                if let Some(ms) = interval_ms { option("interval", &format!("{}.{:03}", ms / 1000, ms % 1000)); }
                if let Some(d) = delay { option("kill-old-delay", &d.to_string()); }
                if let Some(b) = backlog { option("backlog", &b.to_string()); }
                if daemonize { args.push("--daemonize".into()); }
                args.push("--".into());
                args.extend(command.iter().cloned());
                let cli = Cli::parse(args.iter().map(OsString::from)).unwrap();
                prop_assert_eq!(&cli.ports, &ports);
                prop_assert_eq!(&cli.paths, &paths);
                prop_assert_eq!(&cli.pid_file, &pid_file);
                prop_assert_eq!(&cli.status_file, &status_file);
                prop_assert_eq!(cli.interval.map(|d| (d.as_secs_f64() * 1000.0).round() as u64), interval_ms);
                prop_assert_eq!(cli.kill_old_delay, delay.map(|d| d.to_string()));
                prop_assert_eq!(cli.backlog, backlog);
                prop_assert_eq!(cli.daemonize, daemonize);
                prop_assert_eq!(cli.command, command.iter().map(OsString::from).collect::<Vec<_>>());
            }
        }
    }
}
