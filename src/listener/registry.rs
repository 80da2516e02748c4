//! Every listener this process knows: the ones it was given (inherited, waiting to be taken),
//! and the ones `listen` and `adopt` took. One list, built from the environment [`Snapshot`] on
//! first use, so every question about a listener (is it shared? what does an upgrade pass on?
//! which paths do we remove at the end?) is answered from the same records, whatever was
//! called first.

use std::collections::{HashSet, VecDeque};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use super::env::{self, FileId, Snapshot, Source};
use super::socket::{bound_address, set_cloexec, socket_file_id, socket_identity, validate_listening, Bound, SocketId};

/// Who made a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    /// This process bound it (`listen` found nothing inherited, or the host bound it and called
    /// `adopt`).
    Own,
    /// It was given to this process: by systemd, start_server or a previous generation.
    Inherited(Source),
}

/// Where a listener is in its life here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Use {
    /// Inherited and not taken by `listen` or `adopt` yet: an upgrade passes it on as it is.
    Waiting {
        /// The identity of the unix socket file a previous generation created for it.
        owned: Option<FileId>,
    },
    /// Taken by `listen` or `adopt`.
    Taken {
        /// What `getsockname` said then (`None` if it could not say). A descriptor that no
        /// longer says so was closed (and perhaps reused) and is not passed on.
        bound: Option<String>,
        /// A unix socket path this lineage of processes created, with the file's identity,
        /// removed by the final stop if it is still that file.
        owned_path: Option<(PathBuf, FileId)>,
    },
}

/// One listening socket.
#[derive(Debug)]
pub(super) struct Listener {
    pub(super) fd: RawFd,
    pub(super) origin: Origin,
    /// Its `LISTEN_FDNAMES` name (`None`: "unknown", as systemd writes it).
    pub(super) name: Option<String>,
    /// The socket's identity when it was recorded: finds copies of it under other numbers, and
    /// tells a closed and reused number from the socket it used to name.
    pub(super) socket: Option<SocketId>,
    pub(super) state: Use,
    /// Bound by this process or an earlier lameduck generation (not by systemd or
    /// start_server): see [`env::LINEAGE_FDS_ENV`].
    pub(super) lineage: bool,
    /// An inherited listener the previous generation had taken: readiness waits until it is
    /// taken here too.
    pub(super) required: bool,
    /// Given to a new generation by an upgrade that is under way or done: shared from then on.
    pub(super) passed_on: bool,
}

impl Listener {
    fn is_taken(&self) -> bool {
        matches!(self.state, Use::Taken { .. })
    }

    /// Still a listening socket bound where it was when it was taken (not closed, and its
    /// number not reused for something else).
    fn still_bound(&self) -> bool {
        let Use::Taken { bound: Some(bound), .. } = &self.state else { return false };
        validate_listening(self.fd, "").is_ok() && bound_address(self.fd).is_ok_and(|b| b.to_string() == *bound)
    }

    /// True when other processes hold this socket too, so it must not be drained: it was
    /// inherited (systemd and start_server keep their copy; a previous generation that handed it
    /// over keeps serving on it until it exits), or it was passed on to a new generation.
    pub(super) fn is_shared(&self) -> bool {
        if self.passed_on {
            return true;
        }
        // A socket a previous generation bound and handed over is ours alone once it has exited.
        matches!(self.origin, Origin::Inherited(_)) && !(self.lineage && crate::generation::get().previous_generation_exited())
    }
}

/// The listeners, and what the environment got wrong.
pub(super) struct Registry {
    /// Inherited ones waiting come first, in the order they were given; taken ones follow, in the
    /// order they were taken (taking one moves it to the end). An upgrade passes them on taken
    /// first, so the new process finds the sockets it will ask for at the lowest numbers.
    /// A deque, not a `Vec`: `listen` takes waiting ones from the front and moves them to the
    /// back, which must stay O(1) with thousands of listeners (`benches/upgrade.rs`).
    pub(super) listeners: VecDeque<Listener>,
    /// The numbers of the taken ones (an index into `listeners`, kept by `take` and
    /// `for_successor`), so that taking one need not scan them all for a stale record.
    taken_fds: HashSet<RawFd>,
    /// What the environment got wrong, reported by every `listen` that would have used it.
    pub(super) problem: Option<String>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

/// The registry, built from the environment on first use.
pub(super) fn lock() -> RegistryGuard {
    let mut guard = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    guard.get_or_insert_with(Registry::read);
    RegistryGuard(guard)
}

/// The locked registry (always initialised).
pub(super) struct RegistryGuard(MutexGuard<'static, Option<Registry>>);

impl std::ops::Deref for RegistryGuard {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        self.0.as_ref().expect("lock() initialises the registry")
    }
}

impl std::ops::DerefMut for RegistryGuard {
    fn deref_mut(&mut self) -> &mut Registry {
        self.0.as_mut().expect("lock() initialises the registry")
    }
}

impl Registry {
    fn read() -> Registry {
        // Read together with our own snapshot, so that a host that changes its environment
        // later cannot make the two disagree about whether start_server started us.
        crate::generation::supervised_by_server_starter();
        let (inherited, problem) = env::inherited(&Snapshot::read(), std::process::id());
        let listeners = inherited
            .into_iter()
            .map(|i| {
                set_cloexec(i.fd); // handed on only on purpose (upgrade), never by accident
                let name = match &i.source {
                    Source::Systemd { name } => name.clone(),
                    Source::ServerStarter { .. } => None,
                };
                Listener {
                    fd: i.fd,
                    socket: socket_identity(i.fd),
                    origin: Origin::Inherited(i.source),
                    name,
                    state: Use::Waiting { owned: i.owned },
                    lineage: i.lineage,
                    required: i.required,
                    passed_on: false,
                }
            })
            .collect();
        Registry { listeners, problem, taken_fds: HashSet::new() }
    }

    /// The listener `fd` refers to: the record of that number if the number still names the
    /// same socket, else the record of the same socket under another number (`fd` is a copy).
    pub(super) fn find(&self, fd: RawFd) -> Option<&Listener> {
        let identity = socket_identity(fd);
        let same_number = self.listeners.iter().find(|l| l.fd == fd && (l.socket.is_none() || l.socket == identity));
        same_number.or_else(|| identity.and_then(|id| self.listeners.iter().find(|l| l.socket == Some(id))))
    }

    /// Index of the waiting (inherited, untaken) listener that `matches`.
    pub(super) fn waiting(&self, mut matches: impl FnMut(&Listener) -> bool) -> Option<usize> {
        self.listeners.iter().position(|l| !l.is_taken() && matches(l))
    }

    /// A taken listener of number `fd` that still names the socket it was taken as.
    pub(super) fn taken_still_bound(&mut self, fd: RawFd) -> Option<&mut Listener> {
        self.listeners.iter_mut().find(|l| l.fd == fd && l.still_bound())
    }

    /// A taken inherited listener, under another number than `fd`, that is the same socket.
    pub(super) fn taken_inherited_copy_of(&self, fd: RawFd) -> Option<&Listener> {
        let identity = socket_identity(fd)?;
        self.listeners.iter().find(|l| {
            l.fd != fd && l.is_taken() && matches!(l.origin, Origin::Inherited(_)) && socket_identity(l.fd) == Some(identity)
        })
    }

    /// Records `listener` (`fd`, `origin`, `lineage`) as taken, with its name and whether this
    /// lineage created its unix socket file: `Created` (bound just now) or the identity a
    /// previous generation recorded. A stale record of the same number is replaced.
    pub(super) fn take(&mut self, mut listener: Listener, name: Option<String>, ownership: Ownership) {
        let bound = bound_address(listener.fd).ok();
        let owned_path = match (&bound, ownership) {
            (Some(Bound::Unix(Some(path))), Ownership::Created) => socket_file_id(path).map(|id| (path.clone(), id)),
            (Some(Bound::Unix(Some(path))), Ownership::Inherited(id)) => Some((path.clone(), id)),
            _ => None,
        };
        listener.name = name;
        listener.socket = socket_identity(listener.fd);
        listener.state = Use::Taken { bound: bound.map(|b| b.to_string()), owned_path };
        if !self.taken_fds.insert(listener.fd) {
            self.listeners.retain(|l| !(l.fd == listener.fd && l.is_taken()));
        }
        self.listeners.push_back(listener);
    }
}

/// Whether this lineage created a listener's unix socket file.
#[derive(Clone, Copy)]
pub(super) enum Ownership {
    None,
    /// Bound just now by this process: the file at the path is the one `bind` created.
    Created,
    /// Created by a previous generation, which recorded the file's identity.
    Inherited(FileId),
}

impl Ownership {
    pub(super) fn of_waiting(state: &Use) -> Ownership {
        match state {
            Use::Waiting { owned: Some(id) } => Ownership::Inherited(*id),
            _ => Ownership::None,
        }
    }
}

/// A record for a listener this process bound itself.
pub(super) fn own(fd: RawFd) -> Listener {
    Listener {
        fd,
        origin: Origin::Own,
        name: None,
        socket: None,
        state: Use::Waiting { owned: None },
        lineage: true,
        required: false,
        passed_on: false,
    }
}

/// One listener to pass to a new generation.
pub(crate) struct SuccessorListener {
    pub(crate) fd: RawFd,
    pub(crate) name: String,
    /// Its unix socket path was created by us (the file's identity): the new generation owns
    /// it now.
    pub(crate) owned: Option<FileId>,
    /// This process took it with `listen` (or adopted it): the new one must take it too.
    pub(crate) taken: bool,
    /// Bound by a lameduck generation (see [`env::LINEAGE_FDS_ENV`]).
    pub(crate) lineage: bool,
}

/// The listeners an upgrade passes on: every listener taken that is still open and bound where
/// it was, then every inherited one nobody asked for, in that order. Taken ones that were closed
/// are forgotten.
pub(crate) fn for_successor() -> Vec<SuccessorListener> {
    let mut registry = lock();
    registry.listeners.retain(|l| !l.is_taken() || l.still_bound());
    registry.taken_fds = registry.listeners.iter().filter(|l| l.is_taken()).map(|l| l.fd).collect();
    let name = |l: &Listener| l.name.clone().unwrap_or_else(|| "unknown".to_string());
    let taken = registry.listeners.iter().filter(|l| l.is_taken()).map(|l| SuccessorListener {
        fd: l.fd,
        name: name(l),
        owned: match &l.state {
            Use::Taken { owned_path, .. } => owned_path.as_ref().map(|(_, id)| *id),
            Use::Waiting { .. } => None,
        },
        taken: true,
        lineage: l.lineage,
    });
    let waiting =
        registry.listeners.iter().filter(|l| !l.is_taken() && validate_listening(l.fd, "").is_ok()).map(|l| SuccessorListener {
            fd: l.fd,
            name: name(l),
            owned: match &l.state {
                Use::Waiting { owned } => *owned,
                Use::Taken { .. } => None,
            },
            taken: false,
            lineage: l.lineage,
        });
    taken.chain(waiting).collect()
}

/// True when this process has any listener an upgrade would pass on (taken and still open, or
/// inherited and not taken yet). Stops at the first one found, so it costs a few system calls,
/// not one per listener.
pub(crate) fn any_known() -> bool {
    lock().listeners.iter().any(|l| if l.is_taken() { l.still_bound() } else { validate_listening(l.fd, "").is_ok() })
}

/// Marks the listeners numbered `fds` as passed on to a new generation (shared from then on),
/// from the moment it is started; unmarked again if it fails and is gone.
pub(crate) fn mark_passed_on(fds: &[RawFd], passed_on: bool) {
    let fds: HashSet<RawFd> = fds.iter().copied().collect();
    let mut registry = lock();
    for listener in registry.listeners.iter_mut().filter(|l| fds.contains(&l.fd)) {
        listener.passed_on = passed_on;
    }
}

/// The final stop of the last generation: removes the unix socket paths this lineage created,
/// if each is still the socket file we created (a newer server, or anyone who can write the
/// directory, may have replaced it).
pub(crate) fn remove_owned_paths() {
    let registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(registry) = registry.as_ref() else { return };
    for listener in &registry.listeners {
        if let Use::Taken { owned_path: Some((path, id)), .. } = &listener.state {
            if socket_file_id(path) == Some(*id) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// The inherited listeners that the previous generation had taken and no `listen` (or `adopt`)
/// call has taken yet here, described for a message: `fd 3 (127.0.0.1:8080, "http")`.
pub(crate) fn untaken() -> Vec<String> {
    lock()
        .listeners
        .iter()
        .filter(|l| !l.is_taken() && l.required)
        .map(|l| {
            let address = bound_address(l.fd).map_or_else(|e| e.to_string(), |b| b.to_string());
            match (&l.origin, &l.name) {
                (Origin::Inherited(Source::Systemd { .. }), Some(n)) => format!("fd {} ({address}, {n:?})", l.fd),
                _ => format!("fd {} ({address})", l.fd),
            }
        })
        .collect()
}

/// Runs that wait for every inherited listener to be taken before they report ready.
static WATCHERS: Mutex<Vec<Weak<crate::trigger::Trigger>>> = Mutex::new(Vec::new());

/// Wakes `trigger` whenever an inherited listener is taken, until it is dropped.
pub(crate) fn watch_takes(trigger: &Arc<crate::trigger::Trigger>) {
    let mut watchers = WATCHERS.lock().unwrap_or_else(PoisonError::into_inner);
    watchers.retain(|w| w.strong_count() > 0);
    watchers.push(Arc::downgrade(trigger));
}

pub(super) fn wake_watchers() {
    let watchers = WATCHERS.lock().unwrap_or_else(PoisonError::into_inner);
    for trigger in watchers.iter().filter_map(Weak::upgrade) {
        trigger.wake();
    }
}
