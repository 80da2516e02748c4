//! The pid file: written atomically (a temporary file in the same directory, then `rename`),
//! so a reader never sees it empty or half-written, and removed only by the process it names.
//!
//! Written the safe way for a directory another user can write (`/tmp`, a shared run dir):
//! the temporary is created with `O_CREAT|O_EXCL|O_NOFOLLOW` under an unpredictable name, so a
//! file or symlink planted there is never opened (another name is tried), and a symlink planted
//! at the pid file's own path is refused: root never writes, truncates or removes what a link
//! points at.

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How many unpredictable temporary names to try before giving up (each taken one means
/// someone planted a file there; sixteen in a row means someone is trying very hard).
const TEMPORARY_ATTEMPTS: usize = 16;

/// Refuses a pid file path that is a symlink or not a regular file (a FIFO, a device, a
/// directory): it was not written by us, and writing through or over it is what an attacker
/// who planted it wants.
fn check_target(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
        Ok(meta) if meta.file_type().is_symlink() => {
            Err(io::Error::other("it is a symbolic link; refusing to write through it (remove it, or use a private directory)"))
        }
        Ok(meta) if meta.file_type().is_file() => Ok(()),
        Ok(meta) => {
            let kind = if meta.is_dir() {
                "a directory"
            } else if meta.file_type().is_fifo() {
                "a FIFO"
            } else {
                "not a regular file"
            };
            Err(io::Error::other(format!("it is {kind}; refusing to replace it")))
        }
    }
}

/// Creates a new temporary next to `path`, never opening anything that already exists.
fn create_temporary(path: &Path) -> io::Result<(PathBuf, std::fs::File)> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut last = None;
    for _ in 0..TEMPORARY_ATTEMPTS {
        let temporary = path.with_file_name(format!(".{name}.{}.tmp", crate::sys::random_hex(8)?));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true) // O_CREAT|O_EXCL: a planted file or symlink is never opened
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temporary)
        {
            Ok(file) => return Ok((temporary, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no temporary name was free")))
}

/// Writes `pid` and a newline to `path`, atomically. Errors name what went wrong (the caller
/// adds the path).
pub(crate) fn write(path: &Path, pid: u32) -> io::Result<()> {
    check_target(path)?;
    let (temporary, mut file) = create_temporary(path)?;
    let result = (|| {
        file.write_all(format!("{pid}\n").as_bytes())?;
        file.sync_all()?;
        // rename replaces the directory entry itself: even a symlink planted at `path` since
        // the check above is replaced, never followed.
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Checks that `path` could be pointed at another pid right now (the same checks and the same
/// kind of temporary as [`write`]), without changing it: an upgrade looks before it starts a
/// process that it would otherwise have to terminate after it served.
pub(crate) fn check_writable(path: &Path) -> io::Result<()> {
    check_target(path)?;
    let (temporary, file) = create_temporary(path)?;
    drop(file);
    std::fs::remove_file(&temporary)
}

/// The pid a pid file names, read without following a symlink.
fn read_pid(path: &Path) -> Option<u32> {
    let mut text = String::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .ok()
        .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))?
        .take(64)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

/// Removes `path` if it still names `pid` (a later generation may have taken it over). A
/// symlink or anything but a regular file there is left alone: it is not ours.
pub(crate) fn remove_if_ours(path: &Path, pid: u32) {
    if read_pid(path) == Some(pid) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lameduck-pidfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn written_atomically_and_removed_only_by_its_owner() {
        let dir = scratch("owner");
        let path = dir.join("server.pid");
        write(&path, 1234).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1234\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777 & !0o022, 0o644 & !0o022);
        write(&path, 5678).unwrap();
        remove_if_ours(&path, 1234);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "5678\n", "not ours any more");
        remove_if_ours(&path, 5678);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no temporary file left");
        assert!(write(&dir.join("missing/dir/x.pid"), 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_symlink_is_refused_and_its_target_untouched() {
        let dir = scratch("symlink");
        let victim = dir.join("victim");
        std::fs::write(&victim, "secret\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.join("server.pid");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = write(&path, 42).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // The same when the link names the pid we would remove.
        std::fs::write(&victim, "42\n").unwrap();
        remove_if_ours(&path, 42);
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink(), "the link is not ours to remove");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "42\n");
        assert_eq!(std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(write(&path, 42).unwrap_err().to_string().contains("directory"));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_temporary_is_never_opened() {
        let dir = scratch("temporary");
        let victim = dir.join("victim");
        std::fs::write(&victim, "secret\n").unwrap();
        let path = dir.join("server.pid");
        // Whatever the name, the temporary is created with O_EXCL|O_NOFOLLOW: an existing
        // entry (here a symlink at a name it might pick) makes it pick another.
        let (temporary, file) = create_temporary(&path).unwrap();
        drop(file);
        std::fs::remove_file(&temporary).unwrap();
        std::os::unix::fs::symlink(&victim, &temporary).unwrap();
        let err =
            std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW).open(&temporary).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        write(&path, 7).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "7\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
