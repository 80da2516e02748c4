//! The built-in health listener: one thread, `poll(2)` over the listening socket, a wake pipe
//! and at most [`MAX_CONNECTIONS`] clients, so no client can hold it up: each has
//! [`CLIENT_TIMEOUT`] to send a request, and when all slots are taken the oldest client is
//! dropped for the new one. Nothing here blocks: the socket and the clients are non-blocking,
//! writes use `MSG_NOSIGNAL` (a client gone away is an error, never a SIGPIPE).
//!
//! The listener comes from [`crate::listener::listen`], so an upgrade hands it to the new
//! process like any other socket (one accept queue, never two processes racing to bind), and
//! systemd or start_server may pass it in. Whoever serves the port answers for it:
//! - a process with a previous generation still running binds (takes) it at the start but
//!   answers only once it is ready ([`HealthServer::serve`]), so the old one's "ready" is what
//!   probes see until then;
//! - a process that hands over stops answering ([`HealthServer::release`]) and the new one
//!   answers alone, so probes never see the old process's lame-duck states.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http::{self, Parsed, MAX_HEAD};
use super::Report;

/// Clients served at once; one more drops the oldest.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// How long a client has to send each request (from its connect, then from each answer).
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Computes the answer for a path (the runner's health rules, with its probe counting).
pub(crate) type Answer = Box<dyn Fn(&str) -> Report + Send>;

const HOLDING: u8 = 0;
const SERVING: u8 = 1;
const RELEASED: u8 = 2;
const STOPPED: u8 = 3;

struct Control {
    mode: AtomicU8,
    wake: OwnedFd,
}

impl Control {
    fn set(&self, mode: u8) {
        // Modes only move forward (holding → serving → released → stopped).
        self.mode.fetch_max(mode, Ordering::SeqCst);
        // SAFETY: one byte from a valid buffer to our pipe; a full pipe already wakes the thread.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }
}

/// The health listener's thread. Dropping it stops the thread and closes every socket.
pub(crate) struct HealthServer {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
    address: String,
}

impl HealthServer {
    /// Starts the thread on `listener` (made non-blocking here). `answering`: answer at once;
    /// otherwise hold the socket until [`HealthServer::serve`].
    pub(crate) fn start(listener: OwnedFd, answer: Answer, answering: bool) -> io::Result<HealthServer> {
        let address = crate::listener::bound_address_of(listener.as_raw_fd()).unwrap_or_else(|_| "?".into());
        set_nonblocking(listener.as_raw_fd())?;
        let (read, write) = pipe()?;
        let control = Arc::new(Control { mode: AtomicU8::new(if answering { SERVING } else { HOLDING }), wake: write });
        let thread_control = Arc::clone(&control);
        let thread = std::thread::Builder::new().name("lameduck-health".into()).spawn(move || {
            Loop { listener: Some(listener), wake: read, clients: Vec::new(), answer, control: thread_control }.run()
        })?;
        Ok(HealthServer { control, thread: Some(thread), address })
    }

    /// Starts answering (a process that held the socket while its predecessor answered).
    pub(crate) fn serve(&self) {
        self.control.set(SERVING);
    }

    /// Stops accepting and closes this process's copy of the socket (the new process answers
    /// now); clients already connected get their answers.
    pub(crate) fn release(&self) {
        self.control.set(RELEASED);
    }

    /// Where it listens (`getsockname`): `127.0.0.1:8081`, or a unix socket path.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.control.set(STOPPED);
        if let Some(thread) = self.thread.take() {
            // The last reference may go on the health thread itself (its answer held the runner).
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

struct Client {
    fd: OwnedFd,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Close once the output is written.
    closing: bool,
    deadline: Instant,
    since: Instant,
}

struct Loop {
    listener: Option<OwnedFd>,
    wake: OwnedFd,
    clients: Vec<Client>,
    answer: Answer,
    control: Arc<Control>,
}

impl Loop {
    fn run(mut self) {
        loop {
            let mode = self.control.mode.load(Ordering::SeqCst);
            if mode == STOPPED {
                return;
            }
            if mode == RELEASED {
                self.listener = None;
            }
            let now = Instant::now();
            self.clients.retain(|c| c.deadline > now);
            let accepting = mode == SERVING && self.listener.is_some();
            let mut fds = vec![libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            if accepting {
                let fd = self.listener.as_ref().map_or(-1, AsRawFd::as_raw_fd);
                fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
            }
            let first_client = fds.len();
            for c in &self.clients {
                let events = if c.output.is_empty() { libc::POLLIN } else { libc::POLLOUT };
                fds.push(libc::pollfd { fd: c.fd.as_raw_fd(), events, revents: 0 });
            }
            let timeout = self.clients.iter().map(|c| c.deadline).min().map_or(-1, |d| {
                let ms = d.saturating_duration_since(now).as_millis().saturating_add(1);
                i32::try_from(ms).unwrap_or(i32::MAX)
            });
            // SAFETY: `fds` is a valid array of pollfd for its length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                std::thread::sleep(Duration::from_millis(10)); // never spin on a persistent error
                continue;
            }
            if fds[0].revents != 0 {
                drain_pipe(self.wake.as_raw_fd());
            }
            // Clients first (their indexes match `fds`), then new ones.
            let mut gone = Vec::new();
            for (i, pfd) in fds[first_client..].iter().enumerate() {
                if pfd.revents == 0 {
                    continue;
                }
                if !self.service(i, pfd.revents) {
                    gone.push(i);
                }
            }
            for i in gone.into_iter().rev() {
                self.clients.swap_remove(i);
            }
            if accepting && fds[1].revents != 0 {
                self.accept_all();
            }
        }
    }

    /// Accepts what is queued; when full, the oldest client makes room.
    fn accept_all(&mut self) {
        let Some(listener) = &self.listener else { return };
        loop {
            // SAFETY: accept4 with no address buffers.
            let fd = unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                return; // EAGAIN (done), or an aborted connection, or out of descriptors: poll again
            }
            // SAFETY: accept4 returned a new descriptor that we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if self.clients.len() >= MAX_CONNECTIONS {
                if let Some(oldest) = self.clients.iter().enumerate().min_by_key(|(_, c)| c.since).map(|(i, _)| i) {
                    self.clients.swap_remove(oldest);
                }
            }
            let now = Instant::now();
            self.clients.push(Client {
                fd,
                input: Vec::new(),
                output: Vec::new(),
                closing: false,
                deadline: now + CLIENT_TIMEOUT,
                since: now,
            });
        }
    }

    /// Reads or writes for client `i`; false when it is done with.
    fn service(&mut self, i: usize, revents: i16) -> bool {
        let client = &mut self.clients[i];
        if !client.output.is_empty() {
            if revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) == 0 {
                return true;
            }
            return flush(client);
        }
        let mut buffer = [0u8; 2048];
        // SAFETY: reading into a valid buffer of its length.
        let n = unsafe { libc::recv(client.fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), libc::MSG_DONTWAIT) };
        if n == 0 {
            return false;
        }
        if n < 0 {
            return io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock;
        }
        client.input.extend_from_slice(&buffer[..n as usize]);
        loop {
            let client = &mut self.clients[i];
            match http::parse(&client.input) {
                Parsed::Incomplete => break,
                Parsed::Request(request, len) => {
                    client.input.drain(..len);
                    let report = (self.answer)(&request.path);
                    let client = &mut self.clients[i];
                    client.output.extend(http::response(&report, request.head_only, request.keep_alive, ""));
                    if !request.keep_alive {
                        client.closing = true;
                        client.input.clear();
                        break;
                    }
                }
                Parsed::Refused(refusal, len) => {
                    client.input.drain(..len.min(client.input.len()));
                    let (bytes, keep) = http::refusal_response(&refusal);
                    client.output.extend(bytes);
                    if !keep {
                        client.closing = true;
                        client.input.clear();
                        break;
                    }
                }
            }
        }
        let client = &mut self.clients[i];
        if client.input.len() > MAX_HEAD {
            return false;
        }
        if client.output.is_empty() {
            return true;
        }
        client.deadline = Instant::now() + CLIENT_TIMEOUT;
        flush(client)
    }
}

/// Writes what it can; false when the client is done with (an error, or all written and closing).
fn flush(client: &mut Client) -> bool {
    while !client.output.is_empty() {
        // SAFETY: sending from a valid buffer of its length; MSG_NOSIGNAL: no SIGPIPE.
        let n = unsafe {
            libc::send(
                client.fd.as_raw_fd(),
                client.output.as_ptr().cast(),
                client.output.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock;
        }
        client.output.drain(..n as usize);
    }
    !client.closing
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors that we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn drain_pipe(fd: RawFd) {
    let mut buffer = [0u8; 64];
    // SAFETY: reading into a valid buffer from our non-blocking pipe.
    while unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) } > 0 {}
}
