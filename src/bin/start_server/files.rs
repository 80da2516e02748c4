//! The files start_server keeps: the pid file (locked while running), the status file
//! (`GEN:PID` lines, replaced atomically), the envdir, and the log file or command.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Why an existing file is not one start_server will write its pid into (or, for `--stop` and
/// `--restart`, believe), or None: it must be a regular file with one link, owned by our euid.
fn refuse_pid_file(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid(2) cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_file() {
        Some("not a regular file".into())
    } else if meta.nlink() != 1 {
        Some(format!("it has {} hard links (refusing to write through a planted link)", meta.nlink()))
    } else if meta.uid() != me {
        Some(format!("owned by uid {}, not by uid {me} that we run as", meta.uid()))
    } else {
        None
    }
}

/// The error text for opening `path`: a symlink (ELOOP under O_NOFOLLOW) says so.
fn open_error(path: &str, e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::ELOOP) {
        format!("failed to open file:{path}:it is a symbolic link (refusing to follow it)")
    } else {
        format!("failed to open file:{path}:{e}")
    }
}

/// The pid file, open and exclusively locked (flock) for as long as start_server runs, so
/// `--stop` can wait for the lock to learn that it exited.
pub struct PidFile {
    path: String,
    file: std::fs::File,
}

impl PidFile {
    /// Opens and locks the pid file on a descriptor at or above `min_fd` (below it the
    /// sockets are placed for the workers). The pid is written later by `write_pid`.
    ///
    /// Never through a symlink (`O_NOFOLLOW`), and an existing file must be a regular file of
    /// ours with one link: someone who can write the directory must not make start_server
    /// (often root) truncate another file. Nothing is written before these checks. Created
    /// 0644 (less the umask); `O_NONBLOCK`/`O_NOCTTY` so a planted FIFO or terminal cannot
    /// block or adopt us before it is refused.
    pub fn lock(path: &str, min_fd: i32) -> Result<PidFile, String> {
        use std::os::fd::FromRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| open_error(path, &e))?;
        let meta = opened.metadata().map_err(|e| format!("failed to open file:{path}:{e}"))?;
        if let Some(why) = refuse_pid_file(&meta) {
            return Err(format!("failed to open file:{path}:{why}"));
        }
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
        // Emptied at once: until `write_pid`, a locked file must never name an earlier
        // start_server's pid, which `--stop` would then signal.
        file.set_len(0).map_err(|e| format!("failed to write file:{path}:{e}"))?;
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

/// `--stop`/`--restart`: the pid in the pid file, and the open file (whose lock tells whether
/// start_server still runs). The file must pass the checks start_server makes when it writes
/// it (`O_NOFOLLOW`; a regular file with one link, owned by our euid): anyone who can write
/// the directory could otherwise put there a file naming any pid, for root to signal.
pub fn read_pid(path: &str) -> Result<(std::fs::File, i32), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| open_error(path, &e))?;
    let meta = file.metadata().map_err(|e| format!("failed to open file:{path}:{e}"))?;
    if let Some(why) = refuse_pid_file(&meta) {
        return Err(format!("failed to open file:{path}:{why}"));
    }
    let mut text = String::new();
    // At most a line's worth: a pid file is never large.
    (&mut file).take(64).read_to_string(&mut text).map_err(|e| format!("failed to read file:{path}:{e}"))?;
    let pid = text.trim().parse().ok().filter(|p: &i32| *p > 0).ok_or_else(|| format!("failed to read pid from file:{path}"))?;
    Ok((file, pid))
}

/// Whether a start_server holds the lock on the pid file open as `file`. Free: nobody does
/// (start_server is gone, SIGKILLed maybe, and the pid in the file may belong to anything by
/// now). The probe's own lock is released at once.
pub fn locked_by_start_server(path: &str, file: &std::fs::File) -> Result<(), String> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        // SAFETY: as above.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return Err(format!(
            "no start_server holds the lock on {path}: it is not running (the file is stale), so the pid in it is not signalled"
        ));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(())
    } else {
        Err(format!("failed to lock file:{path}:{err}"))
    }
}

/// Opens `path` (following symlinks) for reading without blocking or adopting a terminal, and
/// only when it is a regular file: a FIFO, a device or a directory is refused before any read.
/// Its type is checked with `stat` first, so no device is even opened, and again on the
/// descriptor, in case the name was swapped in between.
fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let kind = |meta: &std::fs::Metadata| -> Option<&'static str> {
        let t = meta.file_type();
        if t.is_file() {
            None
        } else if t.is_dir() {
            Some("a directory")
        } else if t.is_fifo() {
            Some("a FIFO")
        } else if t.is_char_device() || t.is_block_device() {
            Some("a device")
        } else if t.is_socket() {
            Some("a socket")
        } else {
            Some("not a regular file")
        }
    };
    let refuse = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}, not a regular file"));
    let before = std::fs::metadata(path)?;
    if let Some(what) = kind(&before) {
        return Err(refuse(what));
    }
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC).open(path)?;
    let after = file.metadata()?;
    if let Some(what) = kind(&after) {
        return Err(refuse(what));
    }
    if (after.dev(), after.ino()) != (before.dev(), before.ino()) {
        return Err(refuse("replaced while being opened"));
    }
    Ok(file)
}

/// Writes the status file: one `GEN:PID` line per worker, by generation (numerically), to a
/// new temporary file beside it, then renamed over it (so readers see one or the other).
///
/// The temporary is `F.<our pid>` (Perl's name), created with `O_CREAT|O_EXCL|O_NOFOLLOW`: it
/// is never an existing file or a symlink someone planted there. If that name exists, a
/// random suffix is tried instead, so a planted name can neither be followed nor block us.
pub fn write_status(path: &str, workers: &BTreeMap<u64, i32>) {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    let text: String = workers.iter().map(|(generation, pid)| format!("{generation}:{pid}\n")).collect();
    let mut temporary = format!("{path}.{}", std::process::id());
    for attempt in 0.. {
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temporary);
        match created {
            Ok(mut file) => {
                let result = file.write_all(text.as_bytes()).and_then(|_| std::fs::rename(&temporary, path));
                if let Err(e) = result {
                    log!("failed to write status file:{path}:{e}");
                    let _ = std::fs::remove_file(&temporary);
                }
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => {
                if !WARNED.swap(true, Ordering::Relaxed) {
                    log!("{temporary} already exists (not ours): writing the status file through another name");
                }
                match lameduck::sys::random_hex(8) {
                    Ok(suffix) => temporary = format!("{path}.{}.{suffix}", std::process::id()),
                    Err(e) => return log!("failed to write status file:{path}:{e}"),
                }
            }
            Err(e) => return log!("failed to write status file:{path}:{e}"),
        }
    }
}

/// The generations listed in a status file (an error when it cannot be read: start_server
/// removes it when it exits).
pub fn read_generations(path: &str) -> io::Result<Vec<u64>> {
    let mut text = String::new();
    // A status file lists a few generations: 1 MiB is plenty (a huge file cannot stall us).
    open_regular(Path::new(path))?.take(1 << 20).read_to_string(&mut text)?;
    Ok(text.lines().filter_map(|line| line.split_once(':').and_then(|(g, _)| g.trim().parse().ok())).collect())
}

/// The longest envdir value passed on: execve refuses a longer `NAME=value` string
/// (MAX_ARG_STRLEN, 128 KiB) with E2BIG, which would make every worker fail to start.
pub const MAX_ENV_VALUE: usize = 128 * 1024 - 256;

/// One envdir file: its variable's value (its first line), None when the file is empty (Perl
/// reads no line from it, so it sets nothing), or why it is skipped.
pub fn envdir_value(name: &OsStr, content: &[u8]) -> Result<Option<OsString>, String> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let name_bytes = name.as_bytes();
    if name_bytes.is_empty() || name_bytes.contains(&b'=') || name_bytes.contains(&0) {
        return Err("its name contains '=' or a NUL byte".into());
    }
    if content.is_empty() {
        return Ok(None);
    }
    // The first line, as Rust's `lines()` cuts it (a trailing "\r" goes too).
    let line = content.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.contains(&0) {
        return Err("its value contains a NUL byte".into());
    }
    if line.len() > MAX_ENV_VALUE {
        return Err(format!("its value is longer than {MAX_ENV_VALUE} bytes"));
    }
    Ok(Some(OsString::from_vec(line.to_vec())))
}

/// envdir: every non-dot file in the directory is a variable, its first line the value.
/// Re-read on every wake-up (Perl); start_server's own environment is never changed (each
/// worker gets these values through its `Command`), so a variable whose file was removed goes
/// back to what the environment had (Perl keeps the first envdir value instead).
#[derive(Default)]
pub struct EnvDir {
    dir: Option<OsString>,
    values: BTreeMap<OsString, OsString>,
    /// Skipped files already warned about (name and reason), so a bad file is logged once,
    /// not at every wake-up.
    warned: HashSet<(OsString, String)>,
}

impl EnvDir {
    pub fn new(dir: Option<OsString>) -> EnvDir {
        EnvDir { dir, ..EnvDir::default() }
    }

    /// Reads the directory again. A file that cannot be a variable (a NUL byte, `=` in its
    /// name, a value too long to exec, or not a regular file: a FIFO would block us for good)
    /// is skipped with one warning. Symlinks are followed (daemontools setups use them), but
    /// what they lead to must be a regular file too.
    pub fn reload(&mut self) {
        let mut values = BTreeMap::new();
        let entries = self.dir.as_ref().and_then(|dir| std::fs::read_dir(dir).ok());
        for entry in entries.into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name.as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let mut content = Vec::new();
            let file = match open_regular(&entry.path()) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    let why = e.to_string();
                    if self.warned.insert((name.clone(), why.clone())) {
                        log!("skipping envdir file {}: {why}", entry.path().display());
                    }
                    continue;
                }
                Err(_) => continue, // unreadable, or gone meanwhile: skipped, as Perl does
            };
            if file.take(MAX_ENV_VALUE as u64 + 2).read_to_end(&mut content).is_err() {
                continue;
            }
            match envdir_value(&name, &content) {
                Ok(Some(value)) => {
                    values.insert(name, value);
                }
                Ok(None) => {}
                Err(why) => {
                    if self.warned.insert((name.clone(), why.clone())) {
                        log!("skipping envdir file {}: {why}", entry.path().display());
                    }
                }
            }
        }
        self.values = values;
    }

    pub fn get(&self, name: &str) -> Option<&OsStr> {
        self.values.get(OsStr::new(name)).map(OsString::as_os_str)
    }

    pub fn values(&self) -> impl Iterator<Item = (&OsString, &OsString)> {
        self.values.iter()
    }
}

/// `--log-file`: appends stdout and stderr to a file, or pipes them to a command (`| cmd`).
///
/// The file is never reached through a symlink (`O_NOFOLLOW`), and an existing one must be a
/// regular file with one link, owned by our euid (or `/dev/null`): start_server often runs as
/// root, and whoever can write the log's directory must not make it append to another file.
/// `O_NONBLOCK`/`O_NOCTTY` so that a planted FIFO or terminal cannot block or adopt us before
/// it is refused. Created 0644 (less the umask) when missing.
pub fn redirect_output(target: &str) -> Result<(), String> {
    let fd: OwnedFd = if let Some(command) = target.trim_start().strip_prefix('|') {
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", command.trim()])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("failed to open pipe:{command}:{e}"))?;
        child.stdin.ok_or("failed to open pipe")?.into()
    } else {
        open_log_file(target)?.into()
    };
    io::stdout().flush().ok();
    // SAFETY: dup2 onto stdout and stderr; the original stays open until dropped.
    unsafe {
        libc::dup2(fd.as_raw_fd(), 1);
        libc::dup2(fd.as_raw_fd(), 2);
    }
    Ok(())
}

fn open_log_file(target: &str) -> Result<std::fs::File, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(target)
        .map_err(|e| open_error(target, &e))?;
    let meta = file.metadata().map_err(|e| format!("failed to open file:{target}:{e}"))?;
    // /dev/null (character device 1:3) is a common choice with --daemonize.
    let dev_null = meta.file_type().is_char_device() && meta.rdev() == lameduck::sys::null_device();
    if !dev_null {
        if let Some(why) = refuse_pid_file(&meta) {
            return Err(format!("failed to open file:{target}:{why}"));
        }
    }
    // Writes to a regular file never block anyway; the flag goes, as a log's should.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn envdir_values() {
        let v = |name: &str, content: &[u8]| envdir_value(OsStr::new(name), content);
        assert_eq!(v("FOO", b"value1\nignored\n"), Ok(Some("value1".into())));
        assert_eq!(v("FOO", b"a=b\r\n"), Ok(Some("a=b".into())));
        assert_eq!(v("FOO", b"\n"), Ok(Some("".into())));
        assert_eq!(v("FOO", b""), Ok(None));
        assert_eq!(v("FOO", b"ok\nnul \0 on a later line"), Ok(Some("ok".into())));
        assert!(v("FOO", b"a\0b\n").unwrap_err().contains("NUL"));
        assert!(v("A=B", b"x").unwrap_err().contains("'='"));
        assert!(v("FOO", &vec![b'x'; MAX_ENV_VALUE + 1]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_file_reads_or_is_skipped_without_panicking(name in any::<Vec<u8>>(), content in any::<Vec<u8>>()) {
            if let Ok(Some(value)) = envdir_value(&OsString::from_vec(name.clone()), &content) {
                // Whatever is accepted can be put in an environment without panicking.
                let mut command = std::process::Command::new("true");
                command.env(OsString::from_vec(name), &value);
                prop_assert!(!value.as_encoded_bytes().contains(&0) && !value.as_encoded_bytes().contains(&b'\n'));
            }
        }

        #[test]
        fn valid_values_round_trip(value in "[^\\x00\\n\\r]{0,64}", rest in any::<Vec<u8>>()) {
            let mut content = format!("{value}\n").into_bytes();
            content.extend(rest);
            prop_assert_eq!(envdir_value(OsStr::new("NAME"), &content), Ok(Some(OsString::from(value))));
        }
    }

    #[test]
    fn an_envdir_with_bad_files_keeps_the_good_ones() {
        let dir = std::env::temp_dir().join(format!("start-server-envdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("GOOD"), "yes\n").unwrap();
        std::fs::write(dir.join("BAD"), "a\0b\n").unwrap();
        std::fs::write(dir.join(".hidden"), "no\n").unwrap();
        let mut envdir = EnvDir::new(Some(dir.clone().into()));
        envdir.reload();
        envdir.reload();
        assert_eq!(envdir.values().collect::<Vec<_>>(), [(&OsString::from("GOOD"), &OsString::from("yes"))]);
        assert_eq!(envdir.warned.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn envdir_fifos_and_devices_are_skipped_without_blocking_and_links_to_files_are_read() {
        let dir = std::env::temp_dir().join(format!("start-server-envdir-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = std::ffi::CString::new(dir.join("PIPE").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::os::unix::fs::symlink(dir.join("PIPE"), dir.join("TO_PIPE")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("ZERO")).unwrap();
        std::fs::create_dir(dir.join("SUBDIR")).unwrap();
        std::fs::write(dir.join(".real"), "linked\n").unwrap();
        std::os::unix::fs::symlink(dir.join(".real"), dir.join("LINKED")).unwrap();
        let mut envdir = EnvDir::new(Some(dir.clone().into()));
        envdir.reload(); // would block for good on the FIFO (no writer), or read /dev/zero
        envdir.reload();
        assert_eq!(envdir.values().collect::<Vec<_>>(), [(&OsString::from("LINKED"), &OsString::from("linked"))]);
        let mut warned: Vec<String> = envdir.warned.iter().map(|(n, why)| format!("{}: {why}", n.to_string_lossy())).collect();
        warned.sort();
        assert_eq!(
            warned,
            [
                "PIPE: a FIFO, not a regular file",
                "SUBDIR: a directory, not a regular file",
                "TO_PIPE: a FIFO, not a regular file",
                "ZERO: a device, not a regular file"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
