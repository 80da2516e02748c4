//! A run's place in the line of generations, as the run loop sees it: the handshake with the
//! previous generation (when an upgrade started this process), the pid file that names the
//! current generation, and the systemd notifications that follow who that is.
//!
//! The mechanisms stay where they are, each with its own tests: [`crate::generation`] (the
//! environment read at start and the readiness channel), [`crate::pidfile`] (the atomic, safe
//! write) and [`crate::notify`] (the datagrams, which `start_server` also uses). This module
//! holds only the decisions that used to be spread over the run loop: when to point the pid
//! file where, when to say `READY=1` or `MAINPID=`, when to report to the previous generation,
//! and what this process does once it is the last one standing.

use std::time::Instant;

use crate::format::go_duration;
use crate::generation::{self, Outcome, Report};
use crate::lifecycle::log;
use crate::options::{Level, Options};
use crate::trigger::Trigger;
use crate::{listener, notify, pidfile};

/// What a run knows about its generation beyond [`generation::get`].
#[derive(Default)]
pub(crate) struct Lineage {
    /// The pid of the new generation this run handed its listeners to.
    successor: Option<u32>,
    /// Started by an upgrade: until when `listen` calls may take the listeners handed over
    /// before the upgrade fails (set once the run is ready and some are still untaken).
    listen_deadline: Option<Instant>,
    /// Started by an upgrade: the listeners were not all taken in time (reported as a failure).
    listen_failed: bool,
    /// Started by an upgrade whose old process died before it handed over: we tell systemd
    /// our own `MAINPID`.
    orphaned: bool,
}

impl Lineage {
    /// The new process this run handed over to, if it did.
    pub(crate) fn successor(&self) -> Option<u32> {
        self.successor
    }

    /// A new process took over: it is the main process now.
    pub(crate) fn handed_over(&mut self, pid: u32) {
        notify::systemd(&format!("MAINPID={pid}\nREADY=1"));
        self.successor = Some(pid);
    }

    /// When the loop must look again without being woken: the listen deadline, while the
    /// listeners handed over are not all taken.
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        self.listen_deadline.filter(|_| !self.listen_failed)
    }

    /// The run became ready for the first time: the pid file names us (a new generation's is
    /// written when the old one hands over), then systemd hears it, so whoever sees READY (the
    /// observer, the previous generation, systemd) finds the pid file naming us.
    pub(crate) fn became_ready(&self, options: &Options) {
        if generation::get().is_current() {
            self.write_pid_file(options);
        }
    }

    /// Tells systemd the run is ready, unless an upgrade started us (then the previous
    /// generation tells it `MAINPID` + `READY=1` when it hands over, or, if it died first, we do).
    pub(crate) fn announce_ready(&self) {
        if self.orphaned {
            notify::systemd(&format!("MAINPID={}\nREADY=1", std::process::id()));
        } else if generation::get().is_current() {
            notify::systemd("READY=1");
        }
    }

    /// An upgrade signal was refused before anything started (see the coordinator's refusals).
    /// Under `Type=notify-reload` systemd may have sent it, and then waits for `RELOADING=1`
    /// and `READY=1` until its start timeout (90 s by default) fails the reload: so it hears
    /// that the reload began and is over, with why in `STATUS=`, as after an upgrade that
    /// failed. Not from a start_server worker: start_server is the one that speaks to systemd.
    pub(crate) fn reload_refused(&self, why: &str) {
        let generation = generation::get();
        if generation.supervised || !generation.is_current() {
            return;
        }
        notify::systemd(&format!("RELOADING=1\nMONOTONIC_USEC={}", notify::monotonic_usec()));
        notify::systemd(&format!("READY=1\nSTATUS=upgrade refused: {why}"));
    }

    /// Lame-duck begins: systemd hears `STOPPING=1`, unless a successor serves on.
    pub(crate) fn stopping(&self) {
        if self.successor.is_none() {
            notify::systemd("STOPPING=1");
        }
    }

    /// Points the pid file at this process; a failure is a warning (the run goes on).
    pub(crate) fn write_pid_file(&self, options: &Options) {
        if let Err(err) = Self::point_pid_file_at(options, std::process::id()) {
            log(options, Level::Warn, &err);
        }
    }

    /// Points the pid file (if any) at `pid`: this process, or the new one it hands over to.
    pub(crate) fn point_pid_file_at(options: &Options, pid: u32) -> Result<(), String> {
        match &options.pid_file {
            Some(path) => {
                pidfile::write(path, pid).map_err(|err| format!("could not write the pid file {}: {err}", path.display()))
            }
            None => Ok(()),
        }
    }

    /// In a process started by an upgrade: reports ready to the previous generation once the
    /// run is ready (`serving`: ready and not in lame-duck) *and* every listener it handed over
    /// has been taken by a `listen` call (a server that bound its own socket instead would fight
    /// the old process for the port), or reports a failure naming the listeners nobody took
    /// after the listen timeout. Then learns when the previous generation hands over, or that it
    /// is gone.
    pub(crate) fn advance(&mut self, options: &Options, trigger: &std::sync::Arc<Trigger>, serving: bool, now: Instant) {
        let generation = generation::get();
        match generation.poll_handover() {
            Some(Outcome::HandedOver) => {
                log(options, Level::Info, "The previous generation handed over; this process is the current generation");
                self.write_pid_file(options); // the previous one wrote our pid already; this confirms it
                return;
            }
            Some(Outcome::PredecessorGone) => return self.carry_on_alone(options, serving),
            None => {}
        }
        if !generation.must_report() || self.listen_failed || !serving {
            return;
        }
        let mut untaken = listener::untaken();
        if untaken.len() > 8 {
            // The report is one line the old process reads: name a few, count the rest.
            let more = untaken.len() - 8;
            untaken.truncate(8);
            untaken.push(format!("and {more} more"));
        }
        if untaken.is_empty() {
            match generation.report_ready() {
                Report::Reported => {
                    log(options, Level::Info, "Reported ready to the previous generation");
                    if generation.is_current() {
                        self.write_pid_file(options); // an older generation's pipe: reporting was all
                    }
                }
                Report::PredecessorGone => self.carry_on_alone(options, serving),
                Report::NotSent(err) => log(
                    options,
                    Level::Warn,
                    &format!("Could not report ready to the previous generation ({err}); it will stop this process"),
                ),
                Report::NobodyToTell => {}
            }
            return;
        }
        let timeout = options.listen_timeout;
        let deadline = match self.listen_deadline {
            Some(deadline) => deadline,
            None => {
                listener::watch_takes(trigger);
                log(
                    options,
                    Level::Info,
                    &format!(
                        "Ready, but waiting up to {} for listen() to take the listener(s) the previous generation handed over: {}",
                        go_duration(timeout),
                        untaken.join(", ")
                    ),
                );
                *self.listen_deadline.insert(now + timeout)
            }
        };
        if now >= deadline {
            self.listen_failed = true;
            let why = format!(
                "no listen() call took {} within {}; bind through lameduck's listen() with the same address \
                 (ld_listen, lameduck.listen, listen) or register the socket with adopt",
                untaken.join(", "),
                go_duration(timeout)
            );
            log(options, Level::Error, &format!("Not reporting ready to the previous generation: {why}"));
            if !generation.report_failure(&why) {
                self.carry_on_alone(options, serving);
            }
        }
    }

    /// The previous generation went away (killed, crashed) before it handed over: this process
    /// is all that serves now, so it takes over what the previous one would have handed on.
    fn carry_on_alone(&mut self, options: &Options, serving: bool) {
        log(options, Level::Warn, "The previous generation is gone before it handed over; carrying on as the current generation");
        self.orphaned = true;
        // Not ready yet: the first READY writes the pid file and tells systemd (see
        // announce_ready). In lame-duck already: nothing to announce.
        if serving {
            self.write_pid_file(options);
            self.announce_ready(); // MAINPID + READY=1, now that we are orphaned
        }
    }

    /// At the end of the run: the final stop of the last generation cleans up after the whole
    /// line (the pid file, if it still names us, and the unix socket paths we own).
    pub(crate) fn clean_up(&self, options: &Options) {
        if self.successor.is_none() && generation::get().is_current() {
            if let Some(path) = &options.pid_file {
                pidfile::remove_if_ours(path, std::process::id());
            }
            listener::remove_owned_paths();
        }
    }
}
