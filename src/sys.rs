//! Linux system calls that have no portable equivalent, in one place, so that a port to
//! another Unix is a contained job (see README "Platforms").
//!
//! Calls go through `syscall(2)` where glibc's wrapper is newer than the oldest glibc we
//! support (2.17, the manylinux2014 baseline): `getrandom` came in glibc 2.25, so a binary
//! that called the wrapper would not load on older systems.

use std::io;

/// Fills `buf` with bytes from the kernel's random source (`getrandom(2)`, Linux 3.17), retrying
/// on `EINTR` and on short reads; never blocks once the system has booted its entropy pool.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let got = unsafe { libc::syscall(libc::SYS_getrandom, rest.as_mut_ptr(), rest.len(), 0) };
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        } else {
            filled += got as usize;
        }
    }
    Ok(())
}

/// `n` random bytes as lowercase hex (2n characters): unpredictable names for temporary files
/// and private sockets.
pub fn random_hex(n: usize) -> io::Result<String> {
    let mut bytes = vec![0u8; n];
    random_bytes(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_hex_has_the_length_asked_for_and_differs_between_calls() {
        let a = super::random_hex(8).unwrap();
        let b = super::random_hex(8).unwrap();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(super::random_hex(0).unwrap(), "");
    }
}
