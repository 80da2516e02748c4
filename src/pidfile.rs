//! The pid file: written atomically (a temporary file in the same directory, then `rename`),
//! so a reader never sees it empty or half-written, and removed only by the process it names.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

fn temporary_path(path: &Path, pid: u32) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{pid}.tmp"))
}

/// Writes `pid` and a newline to `path`, atomically.
pub(crate) fn write(path: &Path, pid: u32) -> io::Result<()> {
    let temporary = temporary_path(path, pid);
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(format!("{pid}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Removes `path` if it still names `pid` (a later generation may have taken it over).
pub(crate) fn remove_if_ours(path: &Path, pid: u32) {
    if std::fs::read_to_string(path).is_ok_and(|text| text.trim() == pid.to_string()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_atomically_and_removed_only_by_its_owner() {
        let dir = std::env::temp_dir().join(format!("lameduck-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.pid");
        write(&path, 1234).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1234\n");
        write(&path, 5678).unwrap();
        remove_if_ours(&path, 1234);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "5678\n", "not ours any more");
        remove_if_ours(&path, 5678);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no temporary file left");
        assert!(write(&dir.join("missing/dir/x.pid"), 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
