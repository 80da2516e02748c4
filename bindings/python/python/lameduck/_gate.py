"""The connection gate: nserv's run-time connection limit, and the count lame-duck waits on.

A server takes a :class:`Permit` from the run's :class:`Gate` *before* it accepts a connection
and gives it back when the connection closes. While the gate is full the server does not call
``accept``: new clients complete the TCP handshake and wait in the kernel's accept queue
instead of being refused. The limit can be raised or lowered at any time (lowering closes
nothing; it takes effect as connections close). Once lame-duck begins the gate admits no new
connection (only, with ``queued=True``, one already in the accept queue), and the run's
shutdown ends only when every permit is back.

Every adapter in :mod:`lameduck.adapters` accepts through the run's gate. A server of your
own reaches it as ``ctx.gate`` in its hooks or as :attr:`lameduck.Runner.gate`.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import threading
import weakref
from typing import Any, Deque, List, NamedTuple, Optional

from . import _lameduck
from ._lameduck import Permit
from .errors import GateClosedError

__all__ = ["Gate", "Permit", "ConnectionStats", "MAX_CONNECTIONS"]

#: The largest connection limit (``i32::MAX``, nserv's ``MaxInt32``); larger ones are refused.
MAX_CONNECTIONS = 2**31 - 1


def _limit(value: Any, name: str = "max_connections") -> Optional[int]:
    """A connection limit as the core takes it: None or 0 (unlimited) or 1..MAX_CONNECTIONS."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be an int (0 or None: unlimited)")
    if value < 0:
        raise ValueError(f"{name}={value!r} must not be negative (0 or None: unlimited)")
    if value > MAX_CONNECTIONS:
        raise ValueError(f"{name}={value!r} is too large: at most {MAX_CONNECTIONS} (0 or None: unlimited)")
    return int(value)


def _timeout(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"timeout={value!r} must be a number of seconds or None")
    if not 0 <= value < float("inf"):
        raise ValueError(f"timeout={value!r} must be a finite, non-negative number of seconds")
    return float(value)


class ConnectionStats(NamedTuple):
    """A snapshot of a gate's counts (each read without a lock).

    ``limit`` is None when unlimited; ``admitted`` the connections holding a permit now;
    ``waiting`` the callers blocked in :meth:`Gate.acquire` (an asyncio adapter that paused
    its listener counts as one); ``total`` every admission since the run began; ``peak`` the
    most admitted at once; ``phase`` ``"open"``, ``"draining"`` (lame-duck) or ``"closed"``;
    ``requests`` the requests in flight, for adapters that know it (``aiohttp_app``), else
    None. ``stats._asdict()`` gives a dict, for a health endpoint or metrics.
    """

    limit: Optional[int]
    admitted: int
    waiting: int
    total: int
    peak: int
    phase: str
    requests: Optional[int] = None


class _Waiter:
    __slots__ = ("loop", "future", "queued")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: "asyncio.Future[Permit]", queued: bool) -> None:
        self.loop = loop
        self.future = future
        self.queued = queued


def _deliver(future: "asyncio.Future[Permit]", permit: Permit) -> None:
    """On the waiter's loop: hands the permit over, or gives it back if nobody wants it now."""
    if future.done():
        permit.release()
    else:
        future.set_result(permit)


def _fail(future: "asyncio.Future[Permit]", error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


#: The helper threads of every gate, so that the interpreter's exit can end them first: a thread
#: coming back from the native wait (which released the GIL) while the interpreter finalizes
#: would be ended by CPython in a way that aborts the process.
_HELPERS: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()
_EXITING = threading.Event()


@atexit.register
def _end_helpers() -> None:
    _EXITING.set()
    for thread in list(_HELPERS):
        thread.join(1.0)


class _AsyncWaiters:
    """The coroutines waiting in :meth:`Gate.acquire_async`, first come first served, and the
    one thread that waits on the gate for them (started when the first one has to wait, gone
    when none is left). The thread blocks in the gate without the GIL, so no event loop ever
    polls; it wakes the loop with the permit (``call_soon_threadsafe``). It re-checks every
    quarter second whether its waiters are still there, so a cancelled one does not keep it."""

    SLICE = 0.25

    def __init__(self, native: _lameduck.NativeGate) -> None:
        self._native = native
        self._lock = threading.Lock()
        self._queue: Deque[_Waiter] = collections.deque()
        self._thread: Optional[threading.Thread] = None

    def add(self, waiter: _Waiter) -> None:
        with self._lock:
            self._queue.append(waiter)
            if self._thread is None and not _EXITING.is_set():
                self._thread = threading.Thread(target=self._wait, name="lameduck-gate", daemon=True)
                _HELPERS.add(self._thread)
                self._thread.start()

    def _head(self) -> Optional[_Waiter]:
        with self._lock:
            while self._queue and self._queue[0].future.done():
                self._queue.popleft()
            if not self._queue or _EXITING.is_set():
                self._thread = None
                return None
            return self._queue[0]

    def _wait(self) -> None:
        while True:
            head = self._head()
            if head is None:
                return
            try:
                permit = self._native.acquire(self.SLICE, head.queued)
            except TimeoutError:
                continue
            except GateClosedError as e:
                # Fail every waiter the gate refuses now: new connections in lame-duck, and
                # everyone once closed.
                closed = self._native.phase == "closed"
                with self._lock:
                    refused = [w for w in self._queue if closed or not w.queued]
                    for w in refused:
                        self._queue.remove(w)
                for w in refused:
                    self._call(w, _fail, w.future, e)
                continue
            with self._lock:
                if self._queue and self._queue[0] is head:
                    self._queue.popleft()
            if not self._call(head, _deliver, head.future, permit):
                permit.release()

    @staticmethod
    def _call(waiter: _Waiter, fn: Any, *args: Any) -> bool:
        try:
            waiter.loop.call_soon_threadsafe(fn, *args)
            return True
        except RuntimeError:  # the loop is closed: nobody waits any more
            return False


class Gate:
    """The run's connection gate (``ctx.gate``, :attr:`lameduck.Runner.gate`).

    Accept through it: ``permit = gate.acquire()`` *before* ``accept()``, and
    ``permit.release()`` (or ``with permit:``) when the connection closes. Every method may be
    called from any thread, a signal handler's Python code included; the blocking ones release
    the GIL while they wait.
    """

    __slots__ = ("_native", "_waiters")

    def __init__(self, native: _lameduck.NativeGate) -> None:
        self._native = native
        self._waiters = _AsyncWaiters(native)

    @property
    def limit(self) -> Optional[int]:
        """The connection limit, or None when unlimited. Settable: ``gate.limit = 50``."""
        return self._native.limit

    @limit.setter
    def limit(self, value: Optional[int]) -> None:
        self.set_limit(value)

    def set_limit(self, limit: Optional[int]) -> Optional[int]:
        """Sets the limit (None or 0: unlimited) and returns the free slots *before* the
        change (None if it was unlimited), like nserv's ``MaxConns(n)``. Raising admits waiting
        connections at once; lowering closes none and takes effect as they close: nothing new is
        admitted until fewer than the new limit are open. TypeError/ValueError for a bad value
        (negative, not an int, above :data:`MAX_CONNECTIONS`); nothing changes then."""
        return self._native.set_limit(_limit(limit))

    @property
    def free(self) -> Optional[int]:
        """Free slots now, or None when unlimited."""
        return self._native.free

    @property
    def admitted(self) -> int:
        """Connections holding a permit now."""
        return self._native.admitted

    @property
    def phase(self) -> str:
        """``"open"``, ``"draining"`` (lame-duck: only queued connections are admitted) or
        ``"closed"``."""
        return self._native.phase

    def stats(self) -> ConnectionStats:
        """The counts, read without a lock."""
        return ConnectionStats(*self._native.stats())

    def acquire(self, timeout: Optional[float] = None, *, queued: bool = False) -> Permit:
        """Waits for a free slot (at most ``timeout`` seconds; None: as long as it takes) and
        returns its permit. Raises ``TimeoutError``, or :class:`lameduck.GateClosedError` at
        once when lame-duck has begun. ``queued=True`` is for a connection already waiting in
        the accept queue: lame-duck still admits those, within the limit. Releases the GIL
        while it waits; on the main thread, signal handlers still run."""
        return self._native.acquire(_timeout(timeout), queued)

    def try_acquire(self, *, queued: bool = False) -> Optional[Permit]:
        """A permit if a slot is free now, else None. :class:`lameduck.GateClosedError` when
        lame-duck has begun (see ``queued`` in :meth:`acquire`)."""
        return self._native.try_acquire(queued)

    async def acquire_async(self, timeout: Optional[float] = None, *, queued: bool = False) -> Permit:
        """:meth:`acquire` for asyncio, without blocking or polling the loop: a free slot is
        taken at once; otherwise one helper thread per gate waits on it (without the GIL) for
        every waiting coroutine, first come first served, and wakes the loop with the permit.
        Cancelling (or the timeout) gives up the place in line."""
        wait = _timeout(timeout)
        permit = self._native.try_acquire(queued)
        if permit is not None:
            return permit
        loop = asyncio.get_running_loop()
        future: "asyncio.Future[Permit]" = loop.create_future()
        self._waiters.add(_Waiter(loop, future, queued))
        got = False
        try:
            permit = await (future if wait is None else asyncio.wait_for(asyncio.shield(future), wait))
            got = True
            return permit
        except asyncio.TimeoutError:
            raise TimeoutError(f"no connection slot became free within {wait!r}s") from None
        finally:
            if not got:
                if not future.done():
                    future.cancel()  # out of the line; a permit that comes later is given back
                elif not future.cancelled() and future.exception() is None:
                    future.result().release()  # it came as we were cancelled

    def wait_empty(self, timeout: Optional[float] = None) -> bool:
        """Waits (releasing the GIL) until no permit is out, at most ``timeout`` seconds; True
        when the gate is empty."""
        return self._native.wait_empty(_timeout(timeout))

    async def wait_empty_async(self, timeout: Optional[float] = None) -> bool:
        """:meth:`wait_empty` for asyncio (on a worker thread)."""
        wait = _timeout(timeout)
        if self._native.admitted == 0:
            return True
        return await asyncio.get_running_loop().run_in_executor(None, self._native.wait_empty, wait)

    def open_fds(self) -> List[int]:
        """The descriptors of the open connections whose permits were tagged with
        :meth:`Permit.attach_fd`, in admission order (for a ``close`` hook that cuts them)."""
        return self._native.open_fds()

    def __repr__(self) -> str:
        return repr(self._native)
