//! The files start_server keeps: the pid file (locked while running), the status file
//! (`GEN:PID` lines, replaced atomically), the envdir, and the log file or command.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// The pid file, open and exclusively locked (flock) for as long as start_server runs, so
/// `--stop` can wait for the lock to learn that it exited.
pub struct PidFile {
    path: String,
    file: std::fs::File,
}

impl PidFile {
    /// Opens and locks the pid file on a descriptor at or above `min_fd` (below it the
    /// sockets are placed for the workers). The pid is written later by `write_pid`.
    pub fn lock(path: &str, min_fd: i32) -> Result<PidFile, String> {
        use std::os::fd::FromRawFd;
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("failed to open file:{path}:{e}"))?;
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; the copy becomes the file we keep.
        let moved = unsafe { libc::fcntl(opened.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min_fd) };
        if moved < 0 {
            return Err(format!("failed to open file:{path}:{}", io::Error::last_os_error()));
        }
        drop(opened);
        // SAFETY: as above.
        let file = unsafe { std::fs::File::from_raw_fd(moved) };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!("failed to lock file:{path}:another start_server is running"));
        }
        Ok(PidFile { path: path.to_string(), file })
    }

    /// Writes our pid (`PID\n`).
    pub fn write_pid(&mut self) -> Result<(), String> {
        use std::io::Seek;
        let pid = format!("{}\n", std::process::id());
        self.file
            .set_len(0)
            .and_then(|_| self.file.rewind())
            .and_then(|_| self.file.write_all(pid.as_bytes()))
            .map_err(|e| format!("failed to write file:{}:{e}", self.path))
    }

}

/// Removed when start_server exits, on every path out of `serve` (the daemonizing parents
/// leave with `_exit` and so keep it).
impl Drop for PidFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            log!("failed to remove pid file:{}:{e}", self.path);
        }
    }
}

/// Writes the status file: one `GEN:PID` line per worker, by generation (numerically), to
/// `F.<our pid>` and then renamed over `F`.
pub fn write_status(path: &str, workers: &BTreeMap<u64, i32>) {
    let text: String = workers.iter().map(|(generation, pid)| format!("{generation}:{pid}\n")).collect();
    let temporary = format!("{path}.{}", std::process::id());
    let result = std::fs::write(&temporary, text).and_then(|_| std::fs::rename(&temporary, path));
    if let Err(e) = result {
        log!("failed to write status file:{path}:{e}");
        let _ = std::fs::remove_file(&temporary);
    }
}

/// The generations listed in a status file.
pub fn read_generations(path: &str) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(':').and_then(|(g, _)| g.trim().parse().ok()))
        .collect()
}

/// envdir: every non-dot file in the directory is a variable, its first line the value.
/// Re-read before every new worker; a variable whose file was removed goes back to what the
/// environment had before any envdir was applied (Perl keeps the first envdir value instead).
#[derive(Default)]
pub struct EnvDir {
    /// The value each variable had before envdir touched it.
    original: HashMap<OsString, Option<OsString>>,
}

impl EnvDir {
    /// Applies `ENVDIR` (if set) to this process's environment, which workers inherit.
    /// start_server is single-threaded, so changing the environment is safe here.
    pub fn apply(&mut self) {
        let mut current: HashMap<OsString, OsString> = HashMap::new();
        if let Some(dir) = std::env::var_os("ENVDIR") {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if name.to_string_lossy().starts_with('.') || name.to_string_lossy().contains('=') {
                        continue;
                    }
                    let mut text = String::new();
                    if std::fs::File::open(entry.path()).and_then(|mut f| f.read_to_string(&mut text)).is_ok() {
                        // An empty file sets nothing (Perl reads no line from it).
                        if let Some(first) = text.lines().next() {
                            current.insert(name, first.into());
                        }
                    }
                }
            }
        }
        for (name, original) in &self.original {
            if !current.contains_key(name) {
                match original {
                    Some(value) => std::env::set_var(name, value),
                    None => std::env::remove_var(name),
                }
            }
        }
        for (name, value) in current {
            self.original.entry(name.clone()).or_insert_with(|| std::env::var_os(&name));
            std::env::set_var(&name, value);
        }
    }
}

/// `--log-file`: appends stdout and stderr to a file, or pipes them to a command (`| cmd`).
pub fn redirect_output(target: &str) -> Result<(), String> {
    let fd: OwnedFd = if let Some(command) = target.trim_start().strip_prefix('|') {
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", command.trim()])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("failed to open pipe:{command}:{e}"))?;
        child.stdin.ok_or("failed to open pipe")?.into()
    } else {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(target)
            .map_err(|e| format!("failed to open file:{target}:{e}"))?
            .into()
    };
    io::stdout().flush().ok();
    // SAFETY: dup2 onto stdout and stderr; the original stays open until dropped.
    unsafe {
        libc::dup2(fd.as_raw_fd(), 1);
        libc::dup2(fd.as_raw_fd(), 2);
    }
    Ok(())
}

/// `--daemonize`: fork, setsid, fork; the parents leave at once with `_exit` (nothing of
/// theirs is cleaned up, so the daemon keeps the sockets). Stdin becomes /dev/null unless a
/// socket was placed on fd 0.
pub fn daemonize(keep_stdin: bool) -> Result<(), String> {
    // SAFETY: fork/setsid/_exit in a single-threaded process; open/dup2 on fixed descriptors.
    unsafe {
        for step in 0..2 {
            match libc::fork() {
                -1 => return Err(format!("fork failed:{}", io::Error::last_os_error())),
                0 => {}
                _ => libc::_exit(0),
            }
            if step == 0 && libc::setsid() < 0 {
                return Err(format!("setsid failed:{}", io::Error::last_os_error()));
            }
        }
        if !keep_stdin {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            if null >= 0 {
                libc::dup2(null, 0);
                libc::close(null);
            }
        }
    }
    Ok(())
}

/// True when `path` names an executable file, or a bare name is found in `PATH`.
pub fn program_exists(program: &Path, dir: Option<&str>) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.as_os_str().to_string_lossy().contains('/') {
        return match dir {
            Some(d) if program.is_relative() => executable(&Path::new(d).join(program)),
            _ => executable(program),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path).any(|d| executable(&d.join(program)))
}
