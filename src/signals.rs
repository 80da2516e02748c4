//! Process-wide signal handlers for runners that own their trigger signals.
//!
//! Why not `signal-hook-registry`: it chains, but it never restores the previous disposition
//! (signal-hook#23), and a run must leave the process as it found it, so the program can run
//! again or exit on SIGTERM as usual. So this module does the small part we need with
//! `sigaction` directly, following signal-hook's safety rules:
//!
//! - The handler only does async-signal-safe work: atomics, `write(2)` to each subscribed
//!   runner's wake pipe, a call to the previous handler, and (for a repeated signal, by policy)
//!   `sigaction` + `raise` + `_exit`.
//! - Handlers chain: whatever was installed before (a function) still runs, first.
//! - The first subscriber of a signal saves the old disposition; the last one restores it, unless
//!   somebody else replaced our handler in the meantime, in which case theirs is left in place
//!   and the caller gets a warning to log.
//! - Several runners may subscribe at once (up to [`MAX_SUBSCRIBERS`]); each gets the signal.

use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, ErrorKind};
use crate::format::signal_name;
use crate::trigger::{Escalation, Trigger};

/// How many runners can own signals at the same time in one process.
pub(crate) const MAX_SUBSCRIBERS: usize = 64;
const NSIG: usize = 65;

static SUBSCRIBERS: [AtomicPtr<Trigger>; MAX_SUBSCRIBERS] = [const { AtomicPtr::new(ptr::null_mut()) }; MAX_SUBSCRIBERS];
/// Handlers currently running; a subscriber is released only when this is zero.
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
/// The previous handler of each signal, read by our handler to chain. 0 = nothing to call.
static PREV_HANDLER: [AtomicUsize; NSIG] = [const { AtomicUsize::new(0) }; NSIG];
static PREV_FLAGS: [AtomicI32; NSIG] = [const { AtomicI32::new(0) }; NSIG];

/// Installation bookkeeping, never touched by the handler.
struct Installed {
    users: usize,
    previous: Option<libc::sigaction>,
}

static INSTALLED: Mutex<[Installed; NSIG]> = Mutex::new([const { Installed { users: 0, previous: None } }; NSIG]);

/// A runner's hold on its signals; dropping it unsubscribes and restores what was there before.
pub(crate) struct Subscription {
    slot: usize,
    signals: Vec<i32>,
    _trigger: Arc<Trigger>,
    released: bool,
}

/// Subscribes `trigger` to `signals`, installing our handler where it is not installed yet.
pub(crate) fn subscribe(trigger: &Arc<Trigger>, signals: &[i32]) -> Result<Subscription, Error> {
    let raw = Arc::as_ptr(trigger) as *mut Trigger;
    let slot = SUBSCRIBERS
        .iter()
        .position(|s| s.compare_exchange(ptr::null_mut(), raw, Ordering::SeqCst, Ordering::SeqCst).is_ok())
        .ok_or_else(|| {
            Error::new(ErrorKind::SignalSetup, format!("too many runners own signals at once (at most {MAX_SUBSCRIBERS})"))
        })?;
    let mut signals: Vec<i32> = signals.to_vec();
    signals.sort_unstable();
    signals.dedup();
    let mut subscription = Subscription { slot, signals: Vec::new(), _trigger: Arc::clone(trigger), released: false };
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    for &signal in &signals {
        if let Err(err) = install(&mut installed[signal as usize], signal) {
            drop(installed);
            subscription.release(); // undoes the signals installed so far
            return Err(err);
        }
        subscription.signals.push(signal);
    }
    Ok(subscription)
}

fn install(record: &mut Installed, signal: i32) -> Result<(), Error> {
    if record.users > 0 {
        record.users += 1;
        return Ok(());
    }
    // SAFETY: sigaction with a NULL new action only reads the current one into `old`.
    let old = unsafe {
        let mut old = MaybeUninit::<libc::sigaction>::zeroed();
        if libc::sigaction(signal, ptr::null(), old.as_mut_ptr()) != 0 {
            return Err(setup_error(signal));
        }
        old.assume_init()
    };
    // Publish the old handler before ours goes in, so a signal in between still chains.
    set_previous(signal, Some(&old));
    // SAFETY: a zeroed sigaction is valid; we fill the handler, flags and an empty mask.
    let result = unsafe {
        let mut ours: libc::sigaction = std::mem::zeroed();
        ours.sa_sigaction = our_handler();
        ours.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
        libc::sigemptyset(&mut ours.sa_mask);
        let mut replaced = MaybeUninit::<libc::sigaction>::zeroed();
        (libc::sigaction(signal, &ours, replaced.as_mut_ptr()) == 0).then(|| replaced.assume_init())
    };
    match result {
        Some(replaced) => {
            set_previous(signal, Some(&replaced));
            record.previous = Some(replaced);
            record.users = 1;
            Ok(())
        }
        None => {
            set_previous(signal, None);
            Err(setup_error(signal))
        }
    }
}

fn setup_error(signal: i32) -> Error {
    Error::new(
        ErrorKind::SignalSetup,
        format!("could not install a handler for signal {signal} ({}): {}", signal_name(signal), std::io::Error::last_os_error()),
    )
}

fn set_previous(signal: i32, action: Option<&libc::sigaction>) {
    let (handler, flags) = match action {
        Some(a) if a.sa_sigaction != libc::SIG_DFL && a.sa_sigaction != libc::SIG_IGN && a.sa_sigaction != our_handler() => {
            (a.sa_sigaction, a.sa_flags)
        }
        _ => (0, 0),
    };
    PREV_FLAGS[signal as usize].store(flags, Ordering::SeqCst);
    PREV_HANDLER[signal as usize].store(handler, Ordering::SeqCst);
}

impl Subscription {
    /// Unsubscribes and restores the previous dispositions. Returns warnings to log (a handler
    /// replaced behind our back is left in place).
    pub(crate) fn release(&mut self) -> Vec<String> {
        if self.released {
            return Vec::new();
        }
        self.released = true;
        SUBSCRIBERS[self.slot].store(ptr::null_mut(), Ordering::SeqCst);
        // A handler that already loaded our pointer is still running: wait for it to finish
        // before the Arc (and the wake pipe) may go away.
        while IN_HANDLER.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        let mut warnings = Vec::new();
        let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
        for &signal in &self.signals {
            let record = &mut installed[signal as usize];
            record.users -= 1;
            if record.users > 0 {
                continue;
            }
            let previous = record.previous.take();
            // SAFETY: reading the current action, then restoring a sigaction we saved earlier.
            unsafe {
                let mut current = MaybeUninit::<libc::sigaction>::zeroed();
                libc::sigaction(signal, ptr::null(), current.as_mut_ptr());
                if current.assume_init().sa_sigaction == our_handler() {
                    if let Some(previous) = previous {
                        libc::sigaction(signal, &previous, ptr::null_mut());
                    }
                } else {
                    warnings.push(format!(
                        "the handler for signal {signal} ({}) was replaced by someone else during the run; leaving theirs in place",
                        signal_name(signal)
                    ));
                }
            }
            set_previous(signal, None);
        }
        warnings
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.release();
    }
}

/// Our handler's address, as `sigaction` stores it.
fn our_handler() -> usize {
    handler as *const () as usize
}

/// The signal handler. Async-signal-safe: see the module docs.
extern "C" fn handler(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let saved_errno = crate::sys::errno();
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    chain_previous(signal, info, context);
    let mut die = false;
    for slot in &SUBSCRIBERS {
        let trigger = slot.load(Ordering::SeqCst);
        if trigger.is_null() {
            continue;
        }
        // SAFETY: a subscriber's Trigger outlives its slot: `release` clears the slot and then
        // waits for IN_HANDLER to drop to zero before the Arc can be dropped.
        let trigger = unsafe { &*trigger };
        if trigger.wants(signal) {
            die |= trigger.on_signal(signal) == Escalation::Die;
        } else if trigger.wants_upgrade(signal) {
            trigger.on_upgrade_signal(signal);
        }
    }
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
    if die {
        die_by_signal(signal);
    }
    crate::sys::set_errno(saved_errno);
}

fn chain_previous(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let Some(index) = usize::try_from(signal).ok().filter(|&i| i < NSIG) else { return };
    let previous = PREV_HANDLER[index].load(Ordering::SeqCst);
    if previous == 0 {
        return;
    }
    // SAFETY: `previous` was a real handler installed with these flags (not SIG_DFL/SIG_IGN);
    // SA_SIGINFO tells which of the two C signatures it has.
    unsafe {
        if PREV_FLAGS[index].load(Ordering::SeqCst) & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = std::mem::transmute(previous);
            f(signal, info, context);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(previous);
            f(signal);
        }
    }
}

/// Restores the default disposition of `signal` and re-raises it, so the process dies the way
/// the signal intends (status 128+N in a shell). If the default action does not kill (SIGWINCH,
/// SIGTSTP…), exits with 128+N. Async-signal-safe.
pub(crate) fn die_by_signal(signal: i32) -> ! {
    // SAFETY: sigaction, pthread_sigmask, raise and _exit are async-signal-safe; all structs
    // are zero-initialised and then filled as the C API expects.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut default.sa_mask);
        libc::sigaction(signal, &default, ptr::null_mut());
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, ptr::null_mut());
        libc::raise(signal);
        libc::_exit(128 + signal)
    }
}
