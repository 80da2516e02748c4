//! systemd's notify protocol: datagrams such as `READY=1` to the socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). The variable stays in the
//! environment, because the next generation becomes the main process and notifies too.
//! Without `NOTIFY_SOCKET` every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::time::Duration;

/// Sends one notification; returns false when there is no notify socket or sending failed.
pub(crate) fn systemd(message: &str) -> bool {
    static SOCKET: OnceLock<Option<String>> = OnceLock::new();
    let Some(path) = SOCKET.get_or_init(|| std::env::var("NOTIFY_SOCKET").ok().filter(|p| !p.is_empty())) else {
        return false;
    };
    send(path, message).is_ok()
}

/// Sends one notification datagram to `path` (a socket path, or `@name` for the abstract
/// namespace), as `sd_notify` does. Used by `start_server` to pass messages on to systemd.
pub fn send(path: &str, message: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?; // std makes it close-on-exec
    socket.set_write_timeout(Some(Duration::from_secs(1)))?;
    if let Some(name) = path.strip_prefix('@') {
        let address = crate::sys::abstract_socket_address(name.as_bytes())?;
        socket.send_to_addr(message.as_bytes(), &address)?;
    } else {
        socket.send_to(message.as_bytes(), path)?;
    }
    Ok(())
}

/// `CLOCK_MONOTONIC` in microseconds, for `RELOADING=1` + `MONOTONIC_USEC=`.
pub fn monotonic_usec() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("lameduck-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();

        let name = format!("lameduck-notify-test-{}", std::process::id());
        let address = crate::sys::abstract_socket_address(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&address).unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        assert!(monotonic_usec() > 0);
    }
}
