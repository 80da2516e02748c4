//! Two runners in one process own the same signal: one real signal reaches both, and the
//! original disposition comes back only when the last one finishes. (A test binary of its
//! own, because it raises real signals at its own process.)

use std::sync::Arc;
use std::time::Duration;

use lameduck::{Context, HookError, Options, Runner, Server};

struct Quick;
impl Server for Quick {
    fn serve(&self, ctx: &Context) -> Result<(), HookError> {
        while ctx.remaining().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
    fn shutdown(&self, _: &Context) -> Result<(), HookError> {
        Ok(())
    }
    fn close(&self) -> Result<(), HookError> {
        Ok(())
    }
}

fn handler_of(signal: i32) -> usize {
    // SAFETY: reading the current disposition into a zeroed struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old);
        old.sa_sigaction
    }
}

#[test]
fn one_signal_reaches_every_runner_and_the_last_one_restores() {
    let options = Options { signals: vec![libc::SIGUSR2], logger: None, ..Options::default() };
    let a = Arc::new(Runner::new(Arc::new(Quick), options.clone()).unwrap());
    let b = Arc::new(Runner::new(Arc::new(Quick), options).unwrap());
    let threads: Vec<_> = [&a, &b]
        .into_iter()
        .map(|r| {
            let r = Arc::clone(r);
            std::thread::spawn(move || r.run())
        })
        .collect();
    a.wait_ready(Some(Duration::from_secs(10))).unwrap();
    b.wait_ready(Some(Duration::from_secs(10))).unwrap();
    assert_ne!(handler_of(libc::SIGUSR2), libc::SIG_DFL);
    // SAFETY: raising a signal both runners handle.
    unsafe { libc::raise(libc::SIGUSR2) };
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert_eq!(handler_of(libc::SIGUSR2), libc::SIG_DFL);
}
