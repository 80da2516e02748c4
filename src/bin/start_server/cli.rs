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

fn seconds(name: &str, value: &str) -> Result<Duration, Usage> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| Usage(format!("Value \"{value}\" invalid for option {name} (number expected)")))
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
                    cli.backlog = Some(
                        value
                            .trim()
                            .parse()
                            .ok()
                            .filter(|b: &i32| *b > 0)
                            .ok_or_else(|| Usage(format!("Value \"{value}\" invalid for option backlog (number expected)")))?,
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

Beyond Perl's Server::Starter: a worker that speaks systemd's notify protocol (every lameduck
worker does) counts as started as soon as it sends READY=1 on the private NOTIFY_SOCKET it is
given, instead of after --interval.
";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, Usage> {
        Cli::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn getopt_long_forms() {
        let cli = parse(&["--port=80", "--port", "127.0.0.1:81", "--int=2", "--env", "/e", "--daemonize", "--", "prog", "--port=1"]).unwrap();
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
}
