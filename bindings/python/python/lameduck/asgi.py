"""ASGI apps (FastAPI, Starlette, Django's ``ASGIHandler``, any ASGI callable) on uvicorn or
hypercorn, under lameduck, through each server's public API only::

    runner = lameduck.asgi.uvicorn(app, "127.0.0.1", 8000, period=10.0)
    asyncio.run(runner.run_async())

:func:`uvicorn` and :func:`hypercorn` return the :class:`lameduck.Runner` (not started); every
keyword argument they do not know is a Runner option (``period``, ``drain_delay``, …), passed on
as it is, so options added to the Runner later work here unchanged. While it runs,
:func:`lameduck.current_runner` returns it too (for a health endpoint, say).

What they do, the same for both servers:

- **Signals.** lameduck owns SIGINT, SIGTERM and SIGHUP. uvicorn's own handlers are never
  installed (``capture_signals`` is a no-op), so it does not re-raise the signal on its way out
  (which made the naive glue end in ``ForcedError``); hypercorn is given a ``shutdown_trigger``,
  so it installs none either.
- **The socket** comes from :func:`lameduck.listen` (``host:port``), and is handed to the server
  as an open socket (uvicorn's ``serve(sockets=…)``, hypercorn's ``Config.create_sockets``). So
  SIGHUP upgrades with zero downtime: the new process gets the same socket back from the same
  call. The runner is ready once the server serves, after the app's lifespan startup.
- **Lame-duck** (after ``drain_delay``, during which both go on serving as before): new
  connections stop at once, but those already in the accept queue are still taken (the
  adapters' listener drain, for a listener not shared with other processes), then the server
  accepts nothing more. From then on every response says ``Connection: close``, so a request
  sent on a kept-alive connection is still answered. After ``idle_grace`` seconds (default
  1.0, never past the deadline) the server's own graceful shutdown runs: the listener closes
  (new connections are refused), idle connections close, the requests in flight finish, then
  the app's **lifespan shutdown runs, once**, and the run ends cleanly.
- **The deadline.** If requests are still running when the period ends, the run ends with
  :class:`lameduck.ExpiredError`: ``close`` cancels them (the server answers 500 if a
  response had not started, else closes the connection), the server's shutdown goes on, and
  the lifespan shutdown still runs once. (A WSGI request runs on a thread and cannot be
  cancelled: the process exits once it returns.)

Not through the gate: both servers accept inside asyncio's ``Server``, whose accept loop and
protocol factory are not public, so connections are not admitted through ``ctx.gate``.
``max_connections`` is refused (uvicorn has ``limit_concurrency``, which answers 503 instead
of queueing), and :meth:`lameduck.Runner.connection_stats` counts no connections for these
servers; its ``requests`` are the ASGI requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Literal, Mapping, MutableMapping, Optional, Set, Tuple

from ._listen import _address, listen
from ._runner import Context, Runner
from . import _lameduck
from .adapters import _check_grace, _drain_default, _drainable, _shut

__all__ = ["uvicorn", "hypercorn", "UvicornServer", "HypercornServer", "ClosingMiddleware"]

#: One line as lame-duck begins (a child of the "lameduck" logger the runner logs to).
_log = logging.getLogger("lameduck.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ClosingMiddleware:
    """ASGI middleware for lame-duck. Once :attr:`closing` is set, the response to every HTTP
    request that arrives starts with ``Connection: close`` (replacing the app's own), so the
    server closes each kept-alive connection after answering the request it carried. (Those
    in flight at that moment are not wrapped; the server's own shutdown closes their
    connections after the response, at the end of the idle grace.) It also keeps the task of
    each request (and WebSocket) in flight: :meth:`in_flight` counts them and :meth:`cut`
    cancels them at the deadline, so the server's own shutdown (and the lifespan shutdown
    after it) can go on. Before lame-duck that is all it does per request: a set insertion
    and removal."""

    __slots__ = ("app", "closing", "_tasks", "_cut")

    def __init__(self, app: ASGIApp) -> None:
        if not callable(app):
            raise TypeError(f"app={app!r} is not an ASGI application (a callable)")
        self.app = app
        self.closing = False
        self._tasks: "Set[asyncio.Task[Any]]" = set()
        self._cut = False

    def in_flight(self) -> int:
        """HTTP requests and WebSocket connections being handled now."""
        return len(self._tasks)

    def cut(self) -> None:
        """Cancels every request in flight (the server ends each as for an app that returned
        without finishing its response: a 500 if none was started, else a closed connection)."""
        self._cut = True
        for task in list(self._tasks):
            task.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self._cut:
                return
            await self.app(scope, receive, self._closing_send(send) if self.closing and kind == "http" else send)
        except asyncio.CancelledError:
            if not self._cut:
                raise  # not ours
        finally:
            self._tasks.discard(task)

    @staticmethod
    def _closing_send(send: Send) -> Send:
        async def closing_send(message: Message) -> None:
            if message.get("type") == "http.response.start":
                headers = [(k, v) for (k, v) in message.get("headers", ()) if bytes(k).lower() != b"connection"]
                headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        return closing_send


def _no_connection_limit(server: str, options: Mapping[str, Any], instead: str) -> None:
    if options.get("max_connections") not in (None, 0):
        raise ValueError(
            f"max_connections={options['max_connections']!r}: {server} accepts connections itself, not "
            f"through lameduck's gate, so lameduck cannot limit them{instead}"
        )


def _server_options(what: str, given: Optional[Mapping[str, Any]], taken: Mapping[str, str]) -> Dict[str, Any]:
    """The server's own settings as a dict; those lameduck sets itself are refused by name."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise TypeError(f"config={given!r} must be a mapping of {what} settings (a dict) or None")
    refused = sorted(set(given) & set(taken))
    if refused:
        raise TypeError(f"config: {', '.join(refused)}: not supported here; {taken[refused[0]]}")
    return dict(given)


class _Served:
    """What both servers share: the listener, the lame-duck sequence, the end of the run.

    A subclass runs the server in :meth:`_run` (calling ``ctx.ready()`` once it serves and
    setting nothing else) and stops it gracefully in :meth:`_stop_gracefully`."""

    #: Ready once the server serves (``serve`` calls ``ctx.ready()``); see :class:`lameduck.Runner`.
    explicit_ready = True

    _name = "server"

    #: The app as the server runs it: inside the closing middleware (ASGI or WSGI).
    app: Any

    #: How long close() lets the server finish after cutting its requests.
    _CLOSE_WAIT = 2.0

    def __init__(self, app: Any, host: Optional[str], port: int, idle_grace: float, drain_listener: Optional[bool]) -> None:
        if host is not None and not isinstance(host, str):
            raise TypeError(f"host={host!r} must be a string or None (every IPv4 interface)")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port={port!r} must be an int (0: any free port)")
        self.host = host
        self.port = port
        self.idle_grace = _check_grace(idle_grace)
        self.drain_listener = _drain_default(drain_listener)
        self._sock: Optional[socket.socket] = None
        self._lame_duck = False
        self._task: Optional["asyncio.Task[Any]"] = None
        self._finished: Optional[asyncio.Event] = None

    @property
    def lame_duck(self) -> bool:
        """True once shutdown began: responses say ``Connection: close``."""
        return self._lame_duck

    @property
    def sockets(self) -> List[socket.socket]:
        """The listening socket, while serving (to learn an ephemeral port)."""
        sock = self._sock
        return [sock] if sock is not None and sock.fileno() >= 0 else []

    def _closing(self) -> None:
        raise NotImplementedError

    async def _run(self, ctx: Context, sock: socket.socket) -> None:
        raise NotImplementedError

    def _stop_gracefully(self, ctx: Context) -> None:
        raise NotImplementedError

    def _accept_no_more(self) -> None:
        """Lame-duck, once the accept queue was drained: accept nothing more. The servers keep
        their ``asyncio.Server`` to themselves (or closing it now could break a connection
        accepted a moment ago, whose transport asyncio is still making), so the listener is
        taken out of the event loop with the public ``loop.remove_reader``: with asyncio's own
        loops that is the server's accept callback. The server closes the socket as it stops;
        until then new connections wait in the accept queue (with a drained listener, their
        SYNs are dropped and retried; after an upgrade, the new process takes them)."""
        sock = self._sock
        if sock is not None and sock.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(sock.fileno())

    def _stop_now(self) -> None:
        """Called by close() once the requests were cut: the server should stop at once."""

    def _force(self) -> None:
        """Called by close() before the server task is cancelled."""

    async def serve(self, ctx: Context) -> None:
        self._finished = asyncio.Event()
        self._task = asyncio.current_task()
        try:
            if self._lame_duck:
                return  # lame-duck began before serve did: nothing to serve
            self._sock = listen(_address((self.host or "", self.port)))
            try:
                await self._run(ctx, self._sock)
            finally:
                self._sock.close()  # the server closed it already, unless it failed first
        finally:
            self._finished.set()

    async def shutdown(self, ctx: Context) -> None:
        loop = asyncio.get_running_loop()
        grace_end = loop.time() + self.idle_grace
        self._lame_duck = True
        self._closing()
        _log.info(
            "%s: answering with Connection: close; stopping in %gs (idle grace)", self._name, self.idle_grace
        )
        sock = self._sock
        fds: List[int] = []
        if sock is not None and sock.fileno() >= 0 and self.drain_listener is not False:
            try:
                # No new connections (their SYNs are dropped for these few milliseconds); the
                # server still accepts (and answers) the queued ones.
                fds = _drainable([sock], self.drain_listener)
                for fd in fds:
                    _lameduck.stop_accepting(fd)
                while any(_lameduck.has_pending_connection(fd) for fd in fds) and not ctx.done:
                    await asyncio.sleep(0.002)
            except OSError:
                fds = []  # the server failed and closed the listener meanwhile
        # Accept nothing more (a shared socket's new connections go to the other processes), so
        # the connections accepted last have their first request read during the grace: the
        # server's shutdown would close them as idle. Kept-alive connections get the grace to
        # send one more request (answered, then closed).
        self._accept_no_more()
        # Then stop listening at once (the core's shut): a client arriving during the grace is
        # refused at once instead of waiting a second for its dropped SYN's retransmission. The
        # server keeps its accept machinery to itself, so a handshake that completed in the
        # instant between the queue emptying and here cannot be handed to it: it gets a 503.
        try:
            for straggler in _shut(fds):
                _refuse(straggler)
        except OSError:
            pass
        await ctx.wait_async(max(0.0, grace_end - loop.time()))
        self._stop_gracefully(ctx)
        finished = self._finished
        if finished is None or finished.is_set():
            return
        try:
            await asyncio.wait_for(finished.wait(), timeout=ctx.remaining())
        except asyncio.TimeoutError:
            raise TimeoutError("requests still running at the deadline") from None

    def in_flight_requests(self) -> Optional[int]:
        """Requests (and WebSockets) in flight, for :meth:`lameduck.Runner.connection_stats`;
        None for a WSGI app (its requests run on threads)."""
        count = getattr(self.app, "in_flight", None)
        return count() if callable(count) else None

    async def close(self) -> None:
        """The deadline passed: cancel the requests still running, so that the server's
        shutdown ends and the lifespan shutdown runs; if the server is still not done a moment
        later, force it and cancel its task."""
        self._lame_duck = True
        cut = getattr(self.app, "cut", None)
        if callable(cut):
            cut()
        self._stop_now()
        task, finished = self._task, self._finished
        if task is None or finished is None or finished.is_set():
            return
        try:
            await asyncio.wait_for(finished.wait(), timeout=self._CLOSE_WAIT)
        except asyncio.TimeoutError:
            self._force()
            task.cancel()
            await finished.wait()


def _refuse(conn: socket.socket) -> None:
    """Answers a connection the server cannot be given with 503 and closes it."""
    try:
        conn.setblocking(False)
        conn.send(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# uvicorn


#: uvicorn.Config settings that lameduck provides itself.
_UVICORN_TAKEN = {
    "app": "the app is the first argument",
    "host": "give host and port as arguments (the socket comes from lameduck.listen())",
    "port": "give host and port as arguments (the socket comes from lameduck.listen())",
    "uds": "the socket comes from lameduck.listen(host:port)",
    "fd": "the socket comes from lameduck.listen()",
    "workers": "one process per lameduck run (run several behind a shared socket instead)",
    "reload": "upgrade with SIGHUP instead",
    "timeout_graceful_shutdown": "the lame-duck period (period=) is the graceful timeout",
}


class UvicornServer(_Served):
    """A lameduck server that runs ``app`` on ``uvicorn.Server`` (see the module).

    ``config`` holds ``uvicorn.Config`` keyword arguments (``log_level``, ``http``,
    ``timeout_keep_alive``, ``limit_concurrency``, ``proxy_headers``, ``ssl_certfile``…);
    ``host``, ``port``, ``fd``, ``uds``, ``workers``, ``reload`` and
    ``timeout_graceful_shutdown`` are lameduck's own and refused there. Only public uvicorn API is used: ``Config``, ``Server.serve(sockets=…)``,
    its ``should_exit``/``force_exit`` flags, and two public methods overridden in a subclass
    (``capture_signals``, so uvicorn installs no handler; ``startup``, to report ready).
    :attr:`server` is the ``uvicorn.Server`` while it runs."""

    _name = "uvicorn"

    def __init__(
        self,
        app: ASGIApp,
        host: Optional[str] = "127.0.0.1",
        port: int = 8000,
        *,
        config: Optional[Mapping[str, Any]] = None,
        idle_grace: float = 1.0,
        drain_listener: Optional[bool] = None,
    ) -> None:
        import uvicorn  # imported here: uvicorn is optional

        super().__init__(app, host, port, idle_grace, drain_listener)
        self.app = ClosingMiddleware(app)
        self.config = uvicorn.Config(self.app, **_server_options("uvicorn.Config", config, _UVICORN_TAKEN))
        self.server: Optional[Any] = None

    def _closing(self) -> None:
        self.app.closing = True

    async def _run(self, ctx: Context, sock: socket.socket) -> None:
        self.server = _uvicorn_server(self.config, ctx)
        await self.server.serve(sockets=[sock])

    def _stop_gracefully(self, ctx: Context) -> None:
        self._stop_now()

    def _stop_now(self) -> None:
        if self.server is not None:
            self.server.should_exit = True  # uvicorn's own graceful shutdown, then lifespan

    def _force(self) -> None:
        if self.server is not None:
            self.server.should_exit = self.server.force_exit = True


def _uvicorn_server(config: Any, ctx: Context) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn.Server without signal handlers (lameduck has them), ready once started."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # nothing installed, nothing re-raised on the way out

        async def startup(self, sockets: Optional[List[socket.socket]] = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                ctx.ready()

    return Server(config)


def uvicorn(
    app: ASGIApp,
    host: Optional[str] = "127.0.0.1",
    port: int = 8000,
    *,
    config: Optional[Mapping[str, Any]] = None,
    idle_grace: float = 1.0,
    drain_listener: Optional[bool] = None,
    **options: Any,
) -> Runner:
    """A :class:`lameduck.Runner` (not started) for ``app`` on uvicorn; run it with
    ``asyncio.run(runner.run_async())``. ``options`` are the Runner's (``period``,
    ``drain_delay``, …); ``config`` is ``uvicorn.Config``'s. See :class:`UvicornServer`."""
    _no_connection_limit("uvicorn", options, "; uvicorn's own limit is config={'limit_concurrency': N} (503 above it)")
    server = UvicornServer(app, host, port, config=config, idle_grace=idle_grace, drain_listener=drain_listener)
    return Runner(server, **options)


# --------------------------------------------------------------------------------------------
# hypercorn


_HYPERCORN_TAKEN = {
    "bind": "give host and port as arguments (the socket comes from lameduck.listen())",
    "insecure_bind": "give host and port as arguments (the socket comes from lameduck.listen())",
    "quic_bind": "HTTP/3 (QUIC) is not supported here",
    "workers": "one process per lameduck run (run several behind a shared socket instead)",
    "graceful_timeout": "the lame-duck period (period=) is the graceful timeout",
}


class HypercornServer(_Served):
    """A lameduck server that runs ``app`` on hypercorn (``hypercorn.asyncio.serve``, see the
    module). ``mode`` is ``"asgi"`` or ``"wsgi"`` (``None``: hypercorn tells them apart; see
    :mod:`lameduck.wsgi`). ``config`` holds ``hypercorn.Config`` attributes
    (``keep_alive_timeout``, ``certfile``, ``accesslog``…); ``bind``, ``insecure_bind``,
    ``quic_bind``, ``workers`` and ``graceful_timeout`` are lameduck's own and refused there.

    Only public hypercorn API is used: ``serve(app, config, shutdown_trigger=…, mode=…)``, and
    a ``Config`` subclass whose ``create_sockets`` returns the socket from
    :func:`lameduck.listen` (hypercorn calls it once the lifespan startup is done, so that is
    when the runner is ready). Hypercorn waits for requests in flight for its
    ``graceful_timeout``, which is set to what is left of the period, plus a margin so that
    lameduck's deadline comes first."""

    _name = "hypercorn"

    #: How much longer than the period hypercorn may wait for requests (lameduck's close()
    #: cancels it at the deadline, so this is never reached in a run that ends normally).
    _MARGIN = 5.0

    def __init__(
        self,
        app: Any,
        host: Optional[str] = "127.0.0.1",
        port: int = 8000,
        *,
        mode: Optional[str] = None,
        config: Optional[Mapping[str, Any]] = None,
        idle_grace: float = 1.0,
        drain_listener: Optional[bool] = None,
    ) -> None:
        if mode not in (None, "asgi", "wsgi"):
            raise ValueError(f"mode={mode!r} must be 'asgi', 'wsgi' or None")
        super().__init__(app, host, port, idle_grace, drain_listener)
        self.config = _listening_config(_server_options("hypercorn.Config", config, _HYPERCORN_TAKEN))
        self.mode, self.app = _wrap(app, mode)
        self._stop: Optional[asyncio.Event] = None

    def _closing(self) -> None:
        self.app.closing = True

    async def _run(self, ctx: Context, sock: socket.socket) -> None:
        from hypercorn.asyncio import serve

        self._stop = asyncio.Event()
        self.config.lameduck_socket, self.config.lameduck_ready = sock, ctx.ready
        await serve(self.app, self.config, shutdown_trigger=self._stop.wait, mode=self.mode)

    def _stop_gracefully(self, ctx: Context) -> None:
        self._trigger((ctx.remaining() or 0.0) + self._MARGIN)

    def _stop_now(self) -> None:
        self._trigger(self._CLOSE_WAIT)

    def _trigger(self, graceful_timeout: float) -> None:
        """Sets off hypercorn's shutdown; it waits ``graceful_timeout`` for the requests."""
        if self._stop is not None and not self._stop.is_set():
            self.config.graceful_timeout = graceful_timeout
            self._stop.set()


def _wrap(app: Any, mode: Optional[str]) -> "Tuple[Literal['asgi', 'wsgi'], Any]":
    """The app's mode (hypercorn's guess for None) and the app in the closing middleware."""
    if mode is None:
        from hypercorn.utils import is_asgi

        mode = "asgi" if is_asgi(app) else "wsgi"
    if mode == "wsgi":
        from .wsgi import ClosingMiddleware as WSGIClosing

        return "wsgi", WSGIClosing(app)
    return "asgi", ClosingMiddleware(app)


def _listening_config(settings: Mapping[str, Any]) -> Any:
    """A ``hypercorn.Config`` with ``settings`` whose ``create_sockets`` returns the socket the
    adapter got from :func:`lameduck.listen` (``lameduck_socket``) and reports ready."""
    from hypercorn.config import Config, Sockets

    unknown = sorted(k for k in settings if not hasattr(Config, k))
    if unknown:
        raise TypeError(f"config: {', '.join(unknown)}: not a hypercorn.Config setting")

    class Listening(Config):
        lameduck_socket: Optional[socket.socket] = None
        lameduck_ready: Optional[Callable[[], None]] = None

        def create_sockets(self) -> Sockets:
            # Called once the lifespan startup is over; the socket is listening already.
            sock, ready = self.lameduck_socket, self.lameduck_ready
            assert sock is not None and ready is not None
            ready()
            return Sockets([sock], [], []) if self.ssl_enabled else Sockets([], [sock], [])

    return Listening.from_mapping(settings)


def hypercorn(
    app: Any,
    host: Optional[str] = "127.0.0.1",
    port: int = 8000,
    *,
    mode: Optional[str] = None,
    config: Optional[Mapping[str, Any]] = None,
    idle_grace: float = 1.0,
    drain_listener: Optional[bool] = None,
    **options: Any,
) -> Runner:
    """A :class:`lameduck.Runner` (not started) for ``app`` on hypercorn; run it with
    ``asyncio.run(runner.run_async())``. ``options`` are the Runner's; ``config`` is
    ``hypercorn.Config``'s. See :class:`HypercornServer`."""
    _no_connection_limit("hypercorn", options, "")
    server = HypercornServer(
        app, host, port, mode=mode, config=config, idle_grace=idle_grace, drain_listener=drain_listener
    )
    return Runner(server, **options)
