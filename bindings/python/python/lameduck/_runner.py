"""The core's lifecycle with Python's signals, threads and asyncio.

The lifecycle itself lives in the Rust core (``lameduck._lameduck.NativeRunner``). This module
only does what must happen in Python:

- It owns the trigger signals the Python way. ``signal.signal`` (or ``loop.add_signal_handler``)
  installs handlers on the main thread, and they forward each signal to the core. The core
  installs nothing, so this never fights the ``signal`` module or asyncio over ``sigaction``.
- It keeps the main thread in Python code while the core runs on a helper thread, so those
  handlers run promptly.
- It runs each hook on a thread Python starts (see :class:`_Bridge`), and coroutine hooks on
  the event loop when used with :func:`run_async`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import inspect
import logging
import os
import select
import signal
import threading
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, Union

from . import _lameduck
from ._gate import ConnectionStats, Gate, _limit
from .health import HealthReport
from .errors import SignalSetupError, _from_native

__all__ = ["Context", "Runner", "State", "SupportsLog", "LoggerOption", "run", "run_async", "current_runner", "DEFAULT_SIGNALS"]

DEFAULT_SIGNALS: Tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
DEFAULT_UPGRADE_SIGNALS: Tuple[int, ...] = (signal.SIGHUP,)

class SupportsLog(Protocol):
    """Anything with ``log(level, message)``: a :class:`logging.Logger`, a ``LoggerAdapter``."""

    def log(self, level: int, msg: str) -> Any: ...


#: ``logger=None`` uses ``logging.getLogger("lameduck")``; ``False`` disables logging; anything
#: else must have a ``log(level, message)`` method.
LoggerOption = Union[None, bool, SupportsLog]


class State(str, enum.Enum):
    """A runner's lifecycle state; the names are the same in C, Python and Node."""

    NOT_STARTED = "NOT_STARTED"
    STARTING = "STARTING"
    SERVING = "SERVING"
    READY = "READY"
    #: Still fully serving, as in READY, while an upgrade's new process starts.
    UPGRADING = "UPGRADING"
    #: Lame-duck after a hand-over: no longer accepting, finishing what is in flight, while the
    #: new process serves the same sockets. Health checks should report it healthy, like READY
    #: and UPGRADING.
    HANDING_OVER = "HANDING_OVER"
    DRAINING = "DRAINING"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    CLOSING = "CLOSING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return self.value


class Context:
    """What ``serve`` and ``shutdown`` receive: the lame-duck deadline, and readiness.

    One context per run, shared by both hooks and safe to use from any thread.
    """

    __slots__ = ("_native", "_gate")

    def __init__(self, native: _lameduck.NativeContext, gate: Optional[Gate] = None) -> None:
        self._native = native
        self._gate = gate

    @property
    def gate(self) -> Gate:
        """The run's connection gate (the same as :attr:`Runner.gate`): accept through it."""
        if self._gate is None:
            self._gate = Gate(self._native.gate)
        return self._gate

    def remaining(self) -> Optional[float]:
        """Seconds left until the deadline; ``None`` before lame-duck; ``0.0`` once done."""
        return self._native.remaining()

    @property
    def deadline(self) -> Optional[float]:
        """The deadline as a :func:`time.monotonic` value, or ``None`` before lame-duck."""
        return self._native.deadline

    @property
    def done(self) -> bool:
        """True once the deadline passed or a repeated signal forced the close."""
        return self._native.done

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Blocks (releasing the GIL) until done or ``timeout`` seconds pass; returns ``done``."""
        return self._native.wait(timeout)

    async def wait_async(self, timeout: Optional[float] = None) -> bool:
        """The same as :meth:`wait` for coroutines, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        until = None if timeout is None else loop.time() + timeout
        while not self.done:
            left = self.remaining()
            step = 0.01 if left is None else min(0.01, left)
            if until is not None:
                if loop.time() >= until:
                    return False
                step = min(step, until - loop.time())
            await asyncio.sleep(max(step, 0.0))
        return True

    def ready(self) -> None:
        """Reports that serve is bound and accepting (see ``explicit_ready``)."""
        self._native.ready()

    def __repr__(self) -> str:
        return f"<lameduck.Context remaining={self.remaining()!r} done={self.done!r}>"


class _Bridge:
    """The object the native runner calls. Each hook runs on a thread of its own that Python
    started (the core's hook thread only waits for the outcome, outside Python), and a
    coroutine hook on the event loop of :func:`run_async`, never blocking it.

    Why a Python thread: CPython (before 3.14) ends any thread that wants the GIL back while
    the interpreter finalizes with ``pthread_exit``. A hook abandoned past the close timeout
    may still be running then; on a thread Python started, that ending is the ordinary one of
    a daemon thread, while through the core's frames it would abort the process."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.gate: Optional[Gate] = None

    def run_hook(self, name: str, native_ctx: Optional[_lameduck.NativeContext], done: _lameduck.HookDone) -> None:
        """Calls hook ``name`` and reports its outcome with ``done(None)`` or ``done(exc)``."""
        try:
            hook = getattr(self.server, name)
            result = hook() if native_ctx is None else hook(Context(native_ctx, self.gate))
            if inspect.isawaitable(result):
                self._start_on_loop(hook, result, done)
                return
        except BaseException as e:  # reported to the core, which decides what it means
            done(e)
            return
        done(None)

    def _start_on_loop(self, hook: Callable[..., Any], awaitable: Awaitable[Any], done: _lameduck.HookDone) -> None:
        if self.loop is None:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # no "never awaited" warning on top of the error
            raise TypeError(
                f"{getattr(hook, '__qualname__', hook)!s} returned an awaitable: "
                "use lameduck.run_async() (or Runner.run_async()) for coroutine hooks"
            )
        coroutine = _awaited(awaitable)
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        except BaseException:
            coroutine.close()  # the loop is closed
            raise

        def settled(f: "concurrent.futures.Future[Any]") -> None:
            # On the loop's thread, also when asyncio.run() cancels the task on its way out.
            done(asyncio.CancelledError(f"{getattr(hook, '__qualname__', hook)!s} was cancelled") if f.cancelled() else f.exception())

        future.add_done_callback(settled)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _signal_numbers(signals: Iterable[Any]) -> Tuple[int, ...]:
    try:
        items = tuple(signals)
    except TypeError:
        raise TypeError(f"signals={signals!r} must be a sequence of signal numbers") from None
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise TypeError(f"signals={signals!r}: {item!r} is not a signal number")
    return tuple(int(s) for s in items)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}={value!r} must be a number of seconds")
    return float(value)


def _explicit_ready(server: Any, explicit_ready: Optional[bool]) -> bool:
    """``explicit_ready=None`` lets the server decide: an ``explicit_ready = True`` attribute
    (every adapter has one) means it calls ``ctx.ready()`` itself once it is listening."""
    if explicit_ready is None:
        return getattr(server, "explicit_ready", False) is True
    return bool(explicit_ready)


def _native_logger(logger: LoggerOption) -> Any:
    if logger is None or logger is True:
        return logging.getLogger("lameduck")
    if logger is False:
        return None
    if callable(getattr(logger, "log", None)):
        return logger
    raise TypeError(
        f"logger={logger!r} must be None, False, or an object with a log(level, message) method "
        "such as a logging.Logger"
    )


class _LoopSignal:
    """The one handler of one signal on one event loop, shared by every :meth:`Runner.run_async`
    on that loop (``loop.add_signal_handler`` keeps one handler per signal, so a second runner
    would replace the first's). Each signal goes to every runner still running, in the order
    they joined. What was there before the first joined (a handler added with
    ``loop.add_signal_handler``, else the ``signal`` module's handler or the default
    disposition) comes back when the last one leaves. Used on the loop's thread only."""

    _active: Dict[Tuple[asyncio.AbstractEventLoop, int], "_LoopSignal"] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, sig: int) -> None:
        self.loop = loop
        self.sig = sig
        self.targets: List[Tuple[object, Callable[[int], None]]] = []
        # asyncio's unix loops keep their handlers there (each an asyncio.Handle)
        self.previous_handle: Optional[asyncio.Handle] = self._handlers().get(sig)
        self.previous_handler = signal.getsignal(sig)
        loop.add_signal_handler(sig, self._deliver)
        self.handle: Optional[asyncio.Handle] = self._handlers().get(sig)

    @classmethod
    def join(cls, loop: asyncio.AbstractEventLoop, sig: int, owner: object, target: Callable[[int], None]) -> "_LoopSignal":
        dispatch = cls._active.get((loop, sig))
        if dispatch is None:
            dispatch = cls._active[(loop, sig)] = cls(loop, sig)
        dispatch.targets.append((owner, target))
        return dispatch

    def leave(self, owner: object) -> None:
        self.targets = [(o, t) for (o, t) in self.targets if o is not owner]
        if self.targets:
            return
        del self._active[(self.loop, self.sig)]
        if self.loop.is_closed():
            return
        handlers = self._handlers()
        if self.handle is not None and handlers.get(self.sig) is not self.handle:
            return  # someone added a handler of their own since: theirs stays
        self.loop.remove_signal_handler(self.sig)  # SIG_DFL (default_int_handler for SIGINT)
        previous = self.previous_handle
        callback = getattr(previous, "_callback", None)
        if previous is not None and callback is not None and not previous.cancelled():
            self.loop.add_signal_handler(self.sig, callback, *getattr(previous, "_args", ()))
            if self.sig in handlers:
                handlers[self.sig] = previous  # the same handle again, its context included
        else:
            signal.signal(self.sig, signal.SIG_DFL if self.previous_handler is None else self.previous_handler)

    def _handlers(self) -> Dict[int, asyncio.Handle]:
        handlers = getattr(self.loop, "_signal_handlers", None)
        return handlers if isinstance(handlers, dict) else {}

    def _deliver(self) -> None:
        for _, target in list(self.targets):
            try:
                target(self.sig)
            except Exception as e:  # the other runners still get the signal
                self.loop.call_exception_handler(
                    {"message": f"lameduck could not deliver signal {self.sig}", "exception": e}
                )


#: The runners whose run() or run_async() is in progress, in the order they started.
_RUNNING: List["Runner"] = []
_RUNNING_LOCK = threading.Lock()


def current_runner() -> Optional["Runner"]:
    """The :class:`Runner` whose :meth:`~Runner.run` or :meth:`~Runner.run_async` is in
    progress in this process (the one started last, if several are), else ``None``.

    So a request handler, a health endpoint or a framework helper that built the runner for
    you (:mod:`lameduck.asgi`, :func:`lameduck.run`) reaches its state, :meth:`~Runner.stop`,
    its gate and its counts without being handed the runner. Safe from any thread."""
    with _RUNNING_LOCK:
        return _RUNNING[-1] if _RUNNING else None


class _Running:
    """Registers a runner with :func:`current_runner` for the duration of its run."""

    __slots__ = ("runner",)

    def __init__(self, runner: "Runner") -> None:
        self.runner = runner

    def __enter__(self) -> None:
        with _RUNNING_LOCK:
            _RUNNING.append(self.runner)

    def __exit__(self, *exc: object) -> None:
        with _RUNNING_LOCK:
            _RUNNING.remove(self.runner)


class Runner:
    """Runs one server once under lame-duck coordination (Go's ``lameduck.Runner``).

    ``server`` is any object with ``serve(ctx)``, ``shutdown(ctx)`` and ``close()`` methods.
    With :meth:`run_async`, any of them may be a coroutine function. Options:

    - ``period``: seconds from the start of ``shutdown`` to the deadline. Default 3.0.
    - ``signals``: trigger signals; ``()`` means only :meth:`stop` triggers lame-duck.
      Default SIGINT and SIGTERM.
    - ``drain_delay``: seconds between the trigger and ``shutdown``. During them ``serve`` keeps
      serving and :attr:`state` is ``DRAINING``. Default 0.0.
    - ``close_timeout``: how long to wait for ``close`` (and for the other hooks after it).
      Default 5.0.
    - ``logger``: see :data:`LoggerOption`.
    - ``repeat_signal``: ``"force"`` (a second signal closes now, a third kills the process),
      ``"ignore"`` or ``"exit"`` (a second signal kills the process).
    - ``explicit_ready``: ready only once ``serve`` calls ``ctx.ready()``. Default ``None``:
      the server's own ``explicit_ready`` attribute if it is ``True`` (the adapters' is, and
      they call ``ctx.ready()`` once they are listening), else ready as soon as ``serve`` runs.
    - ``on_state_change``: called with ``(old, new)`` state names on every transition.
    - ``upgrade_signals``: signals that start a zero-downtime upgrade (see :meth:`upgrade`).
      Default SIGHUP; ``()`` turns upgrades by signal off. Taken on the main thread only.
    - ``upgrade_timeout``: seconds the new process has to report ready. Default 60.0.
    - ``upgrade_command``: the argv to start (``argv[0]`` a path or a name looked up in
      ``PATH``). Default: the command line this process was started with.
    - ``pid_file``: a file that holds the pid of the current generation, written atomically
      once ready, removed when the last generation stops.
    - ``listen_timeout``: in a process started by an upgrade, seconds (from READY) that
      :func:`lameduck.listen` calls have to take every listener the old process handed over.
      Only then is readiness reported to it; after that the upgrade fails with a message
      naming the listeners nobody took. Default 10.0.
    - ``upgrade_confirm``: seconds the old process keeps serving beside a new one that reported
      ready, before it hands over and enters lame-duck; a new process that exits within them
      is a failed upgrade. 0 to 60; default 1.0.
    - ``upgrade_without_listeners``: upgrade although this process has no listener known to
      lameduck (a worker without sockets). Default False: such an upgrade is refused with
      :class:`UpgradeFailedError`, because the new process could not bind the port; bind with
      :func:`lameduck.listen` or register the socket with :func:`lameduck.adopt`.
    - ``max_connections``: the connection gate's initial limit (see :attr:`gate`): at most
      this many connections are open at once, and the ones above it wait in the kernel's
      accept queue (not refused) until a slot frees. ``None`` or 0: unlimited (the default).
      Change it while running with :attr:`max_connections` / :meth:`set_max_connections`.
    - ``health``: where the built-in health listener answers ``/ready``, ``/live`` and
      ``/health`` (``"127.0.0.1:8081"``, ``":8081"``, a unix socket path; port 0 picks one, see
      :attr:`health_address`). Served by the core on its own thread, whatever Python is doing;
      taken like :func:`lameduck.listen`, so an upgrade hands it on. Default None: none.
    - ``drain_quiet``: the adaptive drain. With a ``drain_delay``, the drain ends early once no
      new connection was admitted for this many seconds (and, when readiness probes are answered
      here, after one answered "not ready"): the balancer has stopped sending. Must be shorter
      than ``drain_delay``; 0 (the default) turns it off.

    Invalid options raise ``ValueError`` or ``TypeError`` here, before anything starts.
    """

    def __init__(
        self,
        server: Any,
        *,
        period: float = 3.0,
        signals: Iterable[int] = DEFAULT_SIGNALS,
        drain_delay: float = 0.0,
        close_timeout: float = 5.0,
        logger: LoggerOption = None,
        repeat_signal: str = "force",
        explicit_ready: Optional[bool] = None,
        on_state_change: Optional[Callable[[str, str], Any]] = None,
        upgrade_signals: Iterable[int] = DEFAULT_UPGRADE_SIGNALS,
        upgrade_timeout: float = 60.0,
        upgrade_command: Optional[Sequence[Union[str, "os.PathLike[str]"]]] = None,
        pid_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        listen_timeout: float = 10.0,
        upgrade_confirm: float = 1.0,
        upgrade_without_listeners: bool = False,
        max_connections: Optional[int] = None,
        health: Optional[str] = None,
        drain_quiet: float = 0.0,
    ) -> None:
        for hook in ("serve", "shutdown", "close"):
            if not callable(getattr(server, hook, None)):
                raise TypeError(f"server {server!r} has no callable {hook}() method")
        if not isinstance(repeat_signal, str):
            raise TypeError(f"repeat_signal={repeat_signal!r} must be 'force', 'ignore' or 'exit'")
        if on_state_change is not None and not callable(on_state_change):
            raise TypeError(f"on_state_change={on_state_change!r} is not callable")
        self._signals = _signal_numbers(signals)
        self._upgrade_signals = _signal_numbers(upgrade_signals)
        upgrade_argv: Optional[List[str]] = None
        if upgrade_command is not None:
            if isinstance(upgrade_command, (str, bytes)) or not all(
                isinstance(a, (str, os.PathLike)) for a in upgrade_command
            ):
                raise TypeError(f"upgrade_command={upgrade_command!r} must be a sequence of strings (an argv)")
            upgrade_argv = [os.fspath(a) for a in upgrade_command]
        if pid_file is not None and not isinstance(pid_file, (str, os.PathLike)):
            raise TypeError(f"pid_file={pid_file!r} must be a path")
        if health is not None and not isinstance(health, str):
            raise TypeError(f"health={health!r} must be an address string such as '127.0.0.1:8081', or None")
        if not isinstance(upgrade_without_listeners, bool):
            raise TypeError(f"upgrade_without_listeners={upgrade_without_listeners!r} must be True or False")
        self._bridge = _Bridge(server)
        self._native = _lameduck.NativeRunner(
            self._bridge,
            period=_seconds("period", period),
            signals=list(self._signals),
            drain_delay=_seconds("drain_delay", drain_delay),
            close_timeout=_seconds("close_timeout", close_timeout),
            logger=_native_logger(logger),
            repeat_signal=repeat_signal,
            on_state_change=on_state_change,
            explicit_ready=_explicit_ready(server, explicit_ready),
            upgrade_signals=list(self._upgrade_signals),
            upgrade_timeout=_seconds("upgrade_timeout", upgrade_timeout),
            upgrade_command=upgrade_argv,
            pid_file=None if pid_file is None else os.fspath(pid_file),
            listen_timeout=_seconds("listen_timeout", listen_timeout),
            upgrade_confirm=_seconds("upgrade_confirm", upgrade_confirm),
            upgrade_without_listeners=upgrade_without_listeners,
            max_connections=_limit(max_connections),
            health=health,
            drain_quiet=_seconds("drain_quiet", drain_quiet),
        )
        self._gate = Gate(self._native.gate)
        self._bridge.gate = self._gate

    @property
    def state(self) -> State:
        """The current state (an atomic read in the core; any thread)."""
        return State(self._native.state)

    def health(self, path: str = "/health") -> HealthReport:
        """The health answer for a request path (``/ready``, ``/live``, ``/health``; 404 for any
        other), for a route on your own port: the same answers as the ``health`` listener. See
        :mod:`lameduck.health` for WSGI, ASGI and aiohttp handlers. Never blocks; any thread."""
        status, content_type, body = self._native.health(path)
        return HealthReport(status, content_type, body)

    @property
    def health_address(self) -> Optional[str]:
        """Where the built-in health listener listens (``"127.0.0.1:8081"``, with the port the
        kernel picked for port 0), from when the run has started it until it ends; else None."""
        return self._native.health_address

    @property
    def gate(self) -> Gate:
        """The run's connection gate (``ctx.gate`` in the hooks): its limit, its counts, and
        permits for servers that accept through it (every adapter does)."""
        return self._gate

    @property
    def max_connections(self) -> Optional[int]:
        """The connection limit now, or None when unlimited. Settable at any time, from any
        thread or a signal handler: ``runner.max_connections = 50`` (None or 0: unlimited).
        Raising admits waiting connections at once; lowering closes none and takes effect as
        they close."""
        return self._gate.limit

    @max_connections.setter
    def max_connections(self, limit: Optional[int]) -> None:
        self.set_max_connections(limit)

    def set_max_connections(self, limit: Optional[int]) -> Optional[int]:
        """Sets the connection limit (see :attr:`max_connections`) and returns the free slots
        before the change, or None if it was unlimited (nserv's ``MaxConns(n)``). TypeError or
        ValueError (naming ``max_connections``) for a negative, non-int or too large value."""
        return self._gate.set_limit(limit)

    def connection_stats(self) -> ConnectionStats:
        """The gate's counts (limit, admitted, waiting, total, peak, phase) and, when the
        server is an adapter that counts them, the requests in flight. Lock-free; any thread."""
        stats = self._gate.stats()
        count = getattr(self._bridge.server, "in_flight_requests", None)
        if callable(count):
            try:
                requests = count()
            except Exception:  # a stats call must not fail because the server is tearing down
                requests = None
            if isinstance(requests, int):
                stats = stats._replace(requests=requests)
        return stats

    def stop(self) -> None:
        """Starts lame-duck exactly like a trigger signal. Thread-safe; may be called from a
        hook or a signal handler. Before :meth:`run` it makes the run raise CanceledError."""
        self._native.stop()

    def upgrade(self) -> int:
        """Upgrades with zero downtime and returns the new process's pid.

        Starts the program again (``upgrade_command``, by default this process's own command
        line) with every listener from :func:`lameduck.listen` (or :func:`lameduck.adopt`) at
        fd 3.. (``LISTEN_FDS``, ``LISTEN_PID``, ``LISTEN_FDNAMES``), waits until it reports ready
        (a lameduck program does so by itself once its ``listen`` calls took those listeners;
        any other writes ``READY=1\\n`` to the fd in ``LAMEDUCK_READY_FD``) and, for
        ``upgrade_confirm`` seconds, that it keeps running; then this run hands over and enters
        lame-duck (without the drain delay). Blocks (without the GIL) for at most
        ``upgrade_timeout`` plus ``upgrade_confirm`` plus 5 s; thread-safe.

        Raises :class:`UpgradeFailedError` (the new process failed and was terminated, or this
        process has no listener known to lameduck and ``upgrade_without_listeners`` is off;
        this one goes on serving), :class:`BusyError` (an upgrade is in flight),
        :class:`NotRunningError` (not serving) or :class:`CanceledError` (lame-duck began first).
        """
        pid, failure = self._native.upgrade()
        if failure is not None:
            raise _from_native(failure)
        return pid

    async def upgrade_async(self) -> int:
        """:meth:`upgrade` for asyncio: waits on a worker thread, never blocking the loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.upgrade)

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Waits until ready (handlers installed and serve called, or serve called
        ``ctx.ready()`` with ``explicit_ready``). False on timeout, or when the run ended
        without becoming ready."""
        return self._native.wait_ready(timeout)

    def _check_thread(self) -> None:
        if self._signals and threading.current_thread() is not threading.main_thread():
            raise SignalSetupError(
                "lameduck can install signal handlers only on the main thread; "
                "pass signals=() and trigger lame-duck with Runner.stop() instead",
                kind="SIGNAL_SETUP",
            )

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._native.deliver_signal(signum)

    def _handled_signals(self) -> Tuple[int, ...]:
        """Trigger signals, plus upgrade signals when on the main thread (Python allows signal
        handlers nowhere else; off it, upgrade with :meth:`upgrade`)."""
        if threading.current_thread() is threading.main_thread():
            return self._signals + tuple(s for s in self._upgrade_signals if s not in self._signals)
        return self._signals

    def run(self) -> None:
        """Runs until the server stopped; raises a :class:`LameDuckError` subclass if the run
        did not end in a clean shutdown. Ctrl-C starts lame-duck instead of raising
        ``KeyboardInterrupt``; the previous handlers are restored when it returns."""
        self._check_thread()
        previous: Dict[int, Any] = {}
        handled = self._handled_signals()
        try:
            for sig in handled:
                previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)
            with _Running(self):
                failure = self._run_native() if handled else self._native.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if failure is not None:
            raise _from_native(failure)

    def _run_native(self) -> Any:
        """Runs the core on a helper thread while this (main) thread waits in Python, so the
        signal handlers run as soon as a signal arrives.

        The kernel may deliver a signal to any thread. CPython's C-level handler then only sets
        a flag, which the main thread would not notice while it blocks. So the main thread
        waits in select() on a ``signal.set_wakeup_fd`` pipe (written by that C handler from
        whichever thread it runs on) and on a pipe the helper writes when the run is over.
        """
        outcome: List[Any] = []
        done_r, done_w = os.pipe()
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)

        def target() -> None:
            try:
                outcome.append(self._native.run())
            finally:
                os.write(done_w, b"x")

        previous_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        thread = threading.Thread(target=target, name="lameduck-run", daemon=True)
        try:
            thread.start()
            try:
                while not select.select([done_r, wake_r], [], [])[0].count(done_r):
                    _drain(wake_r)  # the handlers ran on the way out of select()
            except BaseException:
                # e.g. KeyboardInterrupt for a signal that is not a trigger: stop gracefully first.
                self._native.stop()
                thread.join()
                raise
            thread.join()
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for fd in (done_r, done_w, wake_r, wake_w):
                os.close(fd)
        return outcome[0]

    async def run_async(self) -> None:
        """Like :meth:`run`, for asyncio. Hooks may be coroutine functions; they run on this
        event loop. Signals are taken with ``loop.add_signal_handler``, and the loop never
        blocks. Several runners on one loop share that handler: each signal reaches every one
        of them, and the loop's previous handler comes back when the last one ends.
        Cancelling the task stops the runner gracefully, then re-raises."""
        loop = asyncio.get_running_loop()
        self._check_thread()
        self._bridge.loop = loop
        settled: "asyncio.Future[Any]" = loop.create_future()

        def target() -> None:
            result = self._native.run()

            def settle() -> None:
                if not settled.done():
                    settled.set_result(result)

            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more

        joined: List[_LoopSignal] = []
        try:
            for sig in self._handled_signals():
                joined.append(_LoopSignal.join(loop, sig, self, self._native.deliver_signal))
            with _Running(self):
                threading.Thread(target=target, name="lameduck-run", daemon=True).start()
                try:
                    failure = await asyncio.shield(settled)
                except asyncio.CancelledError:
                    self._native.stop()
                    await settled
                    raise
        finally:
            for dispatch in joined:
                dispatch.leave(self)
        if failure is not None:
            raise _from_native(failure)


def run(
    server: Any,
    *,
    period: float = 3.0,
    signals: Iterable[int] = DEFAULT_SIGNALS,
    drain_delay: float = 0.0,
    close_timeout: float = 5.0,
    logger: LoggerOption = None,
    repeat_signal: str = "force",
    explicit_ready: Optional[bool] = None,
    on_state_change: Optional[Callable[[str, str], Any]] = None,
    upgrade_signals: Iterable[int] = DEFAULT_UPGRADE_SIGNALS,
    upgrade_timeout: float = 60.0,
    upgrade_command: Optional[Sequence[Union[str, "os.PathLike[str]"]]] = None,
    pid_file: Optional[Union[str, "os.PathLike[str]"]] = None,
    listen_timeout: float = 10.0,
    upgrade_confirm: float = 1.0,
    upgrade_without_listeners: bool = False,
    max_connections: Optional[int] = None,
    health: Optional[str] = None,
    drain_quiet: float = 0.0,
) -> None:
    """Runs ``server`` under lame-duck coordination until it stops (Go's ``lameduck.Run``).
    See :class:`Runner` for the options and errors."""
    Runner(**locals()).run()  # the arguments, exactly as given: server and each option once


async def run_async(
    server: Any,
    *,
    period: float = 3.0,
    signals: Iterable[int] = DEFAULT_SIGNALS,
    drain_delay: float = 0.0,
    close_timeout: float = 5.0,
    logger: LoggerOption = None,
    repeat_signal: str = "force",
    explicit_ready: Optional[bool] = None,
    on_state_change: Optional[Callable[[str, str], Any]] = None,
    upgrade_signals: Iterable[int] = DEFAULT_UPGRADE_SIGNALS,
    upgrade_timeout: float = 60.0,
    upgrade_command: Optional[Sequence[Union[str, "os.PathLike[str]"]]] = None,
    pid_file: Optional[Union[str, "os.PathLike[str]"]] = None,
    listen_timeout: float = 10.0,
    upgrade_confirm: float = 1.0,
    upgrade_without_listeners: bool = False,
    max_connections: Optional[int] = None,
    health: Optional[str] = None,
    drain_quiet: float = 0.0,
) -> None:
    """The asyncio form of :func:`run`: ``await lameduck.run_async(server)``."""
    await Runner(**locals()).run_async()  # the arguments, exactly as given
