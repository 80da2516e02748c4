//! The part of a runner that signal handlers and other threads touch: counters and a wake pipe.
//!
//! Everything reachable from a signal handler here is async-signal-safe: atomics and `write(2)`
//! on a non-blocking pipe. The pipe only wakes the runner's thread; what happened is read from
//! the atomics, so a full pipe (a signal storm) never loses an event.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use crate::options::RepeatSignalPolicy;

/// `first_cause` value meaning "a stop request, not a signal".
pub(crate) const CAUSE_STOP: u32 = u32::MAX;

/// What the caller of [`Trigger::on_signal`] must do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Escalation {
    /// Nothing: the runner's thread handles it.
    None,
    /// The repeat-signal policy says the process must die by this signal now.
    Die,
}

pub(crate) struct Trigger {
    wake_read: OwnedFd,
    wake_write: OwnedFd,
    /// Bit `n` set: signal `n` is one of this runner's trigger signals.
    signal_mask: u128,
    policy: RepeatSignalPolicy,
    /// High 32 bits: trigger *signals* so far (a stop is not counted: it is never a repeat).
    /// Low 32 bits: the first event's cause: 0 none yet, a signal number, or [`CAUSE_STOP`].
    /// One word, so the count and the first cause always agree.
    ///
    /// Repeats are the signals after the first one, whatever the first event was: a stop (or
    /// an upgrade hand-off) followed by a signal is one event, the supervisor's ordinary stop
    /// after the application stopped itself.
    events: AtomicU64,
    /// The most recent trigger signal, for log lines about repeats.
    last_signal: AtomicI32,
    /// Bit `n` set: signal `n` starts an upgrade.
    upgrade_mask: u128,
    /// Upgrade signals received so far.
    upgrade_signals: AtomicU32,
    /// The most recent upgrade signal, for log lines.
    last_upgrade_signal: AtomicI32,
}

fn mask_of(signals: &[i32]) -> u128 {
    signals.iter().filter(|&&s| (1..128).contains(&s)).fold(0u128, |mask, &s| mask | (1u128 << s))
}

impl Trigger {
    pub(crate) fn new(signals: &[i32], upgrade_signals: &[i32], policy: RepeatSignalPolicy) -> io::Result<Trigger> {
        let (wake_read, wake_write) = crate::sys::pipe_cloexec_nonblocking()?;
        Ok(Trigger {
            wake_read,
            wake_write,
            signal_mask: mask_of(signals),
            policy,
            events: AtomicU64::new(0),
            last_signal: AtomicI32::new(0),
            upgrade_mask: mask_of(upgrade_signals),
            upgrade_signals: AtomicU32::new(0),
            last_upgrade_signal: AtomicI32::new(0),
        })
    }

    /// True when `signal` is one of this runner's upgrade signals. Async-signal-safe.
    pub(crate) fn wants_upgrade(&self, signal: i32) -> bool {
        (1..128).contains(&signal) && self.upgrade_mask & (1u128 << signal) != 0
    }

    /// Records an upgrade signal and wakes the runner. Async-signal-safe.
    pub(crate) fn on_upgrade_signal(&self, signal: i32) {
        self.last_upgrade_signal.store(signal, Ordering::SeqCst);
        self.upgrade_signals.fetch_add(1, Ordering::SeqCst);
        self.wake();
    }

    /// `(upgrade signals so far, the most recent one)`.
    pub(crate) fn upgrade_snapshot(&self) -> (u32, i32) {
        (self.upgrade_signals.load(Ordering::SeqCst), self.last_upgrade_signal.load(Ordering::SeqCst))
    }

    /// True when `signal` is one of this runner's trigger signals. Async-signal-safe.
    pub(crate) fn wants(&self, signal: i32) -> bool {
        (1..128).contains(&signal) && self.signal_mask & (1u128 << signal) != 0
    }

    /// Records a trigger signal and wakes the runner. Async-signal-safe (atomics and `write`).
    /// Returns [`Escalation::Die`] when the repeat-signal policy says the process must die now.
    pub(crate) fn on_signal(&self, signal: i32) -> Escalation {
        let previous = self
            .events
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                let (count, first) = split(v);
                let first = if first == 0 { signal as u32 } else { first };
                Some(join(count.saturating_add(1), first))
            })
            .unwrap_or_else(|v| v);
        self.last_signal.store(signal, Ordering::SeqCst);
        self.wake();
        let count = split(previous).0.saturating_add(1);
        match self.policy {
            RepeatSignalPolicy::Force if count >= 3 => Escalation::Die,
            RepeatSignalPolicy::ExitNow if count >= 2 => Escalation::Die,
            _ => Escalation::None,
        }
    }

    /// Starts lame-duck if nothing has triggered it yet; otherwise does nothing (a stop is never
    /// a "repeated signal", and does not make the next signal one). Async-signal-safe.
    pub(crate) fn request_stop(&self) {
        let _ = self
            .events
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| (split(v).1 == 0).then_some(join(split(v).0, CAUSE_STOP)));
        self.wake();
    }

    /// `(trigger signals so far, first cause)`.
    pub(crate) fn snapshot(&self) -> (u32, u32) {
        split(self.events.load(Ordering::SeqCst))
    }

    /// True once a trigger signal or a stop has arrived.
    pub(crate) fn triggered(&self) -> bool {
        self.snapshot().1 != 0
    }

    pub(crate) fn last_signal(&self) -> i32 {
        self.last_signal.load(Ordering::SeqCst)
    }

    /// Wakes the runner's thread. Async-signal-safe; a full pipe already means "awake".
    pub(crate) fn wake(&self) {
        let byte = 1u8;
        // SAFETY: writing one byte from a valid buffer to an fd this struct owns.
        unsafe { libc::write(self.wake_write.as_raw_fd(), (&byte as *const u8).cast(), 1) };
    }

    /// Blocks until woken, until one of `also` is readable (or closed), or until `until`
    /// (forever when `None`), then empties the pipe.
    pub(crate) fn wait(&self, until: Option<Instant>, also: &[RawFd]) {
        let fd: RawFd = self.wake_read.as_raw_fd();
        let mut pfds: Vec<libc::pollfd> = std::iter::once(fd)
            .chain(also.iter().copied())
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        let timeout = until.map(|t| {
            let left = t.saturating_duration_since(Instant::now());
            libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as _ }
        });
        let timeout_ptr = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: valid pollfds; the timeout is NULL or points to a live timespec; no sigmask.
        // EINTR simply returns early, and the caller re-checks everything.
        unsafe { libc::ppoll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ptr, std::ptr::null()) };
        let mut buf = [0u8; 64];
        // SAFETY: reading into a local buffer from an fd this struct owns (non-blocking).
        while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
}

fn split(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

fn join(count: u32, first: u32) -> u64 {
    (u64::from(count) << 32) | u64::from(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_first_cause_agree() {
        let t = Trigger::new(&[libc::SIGTERM], &[libc::SIGHUP], RepeatSignalPolicy::Force).unwrap();
        assert!(t.wants(libc::SIGTERM) && !t.wants(libc::SIGINT) && !t.wants(0) && !t.wants(200));
        assert!(t.wants_upgrade(libc::SIGHUP) && !t.wants_upgrade(libc::SIGTERM) && !t.wants(libc::SIGHUP));
        t.on_upgrade_signal(libc::SIGHUP);
        assert_eq!(t.upgrade_snapshot(), (1, libc::SIGHUP));
        assert_eq!(t.snapshot(), (0, 0), "an upgrade signal is not a trigger event");
        assert!(!t.triggered());
        t.request_stop();
        assert_eq!(t.snapshot(), (0, CAUSE_STOP));
        assert!(t.triggered());
        t.request_stop();
        assert_eq!(t.snapshot(), (0, CAUSE_STOP), "a second stop is not a repeat");
        assert_eq!(t.on_signal(libc::SIGTERM), Escalation::None, "stop + signal is one event");
        assert_eq!(t.snapshot(), (1, CAUSE_STOP));
        assert_eq!(t.on_signal(libc::SIGTERM), Escalation::None, "the first repeat forces, never kills");
        assert_eq!(t.on_signal(libc::SIGTERM), Escalation::Die, "third signal with force policy");
    }

    #[test]
    fn exit_now_dies_on_second_and_ignore_never() {
        let t = Trigger::new(&[libc::SIGINT], &[], RepeatSignalPolicy::ExitNow).unwrap();
        assert_eq!(t.on_signal(libc::SIGINT), Escalation::None);
        assert_eq!(t.snapshot(), (1, libc::SIGINT as u32));
        assert_eq!(t.on_signal(libc::SIGINT), Escalation::Die);
        let t = Trigger::new(&[libc::SIGINT], &[], RepeatSignalPolicy::Ignore).unwrap();
        for _ in 0..5 {
            assert_eq!(t.on_signal(libc::SIGINT), Escalation::None);
        }
    }

    #[test]
    fn wait_returns_on_wake_and_on_timeout() {
        let t = Trigger::new(&[], &[], RepeatSignalPolicy::Force).unwrap();
        for _ in 0..100_000 {
            t.wake(); // far more than the pipe holds: never blocks
        }
        t.wait(None, &[]);
        let start = Instant::now();
        t.wait(Some(start + std::time::Duration::from_millis(20)), &[]);
        assert!(start.elapsed() >= std::time::Duration::from_millis(20));
    }
}
