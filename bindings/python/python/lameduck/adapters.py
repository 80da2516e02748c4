"""Adapters that make common Python servers lameduck servers, with no glue code.

They all handle keep-alive so that nothing is lost. Once lame-duck begins:

- the listening socket stops taking new connections at once; connections already in its
  accept queue are still accepted and answered (with ``Connection: close``), then it is closed
  and new connections are refused (``drain_listener``, on unless the socket looks shared with
  other processes: see ``lameduck.listener`` in the core);
- a request that arrives on a kept-alive connection is still answered, with
  ``Connection: close``;
- an idle keep-alive connection is closed only after ``idle_grace`` seconds (default 1.0,
  never past the deadline), so a client never has its connection closed under a request it
  already sent;
- the adapter then waits for in-flight requests until the deadline. If they are not done by
  then, ``shutdown`` raises ``TimeoutError``, the core calls ``close``, and ``close`` cuts the
  remaining connections.

Closing idle connections at once instead loses requests: Go's ``http.Server.Shutdown`` loses
59–133 requests per 8 restarts under keep-alive load.

Every adapter binds through :func:`lameduck.listen` (or registers a socket that arrived bound
with :func:`lameduck.adopt`), so an upgrade (SIGHUP, :meth:`lameduck.Runner.upgrade`) hands
its socket to the new process, which gets it back from the same adapter call. Every adapter
also has ``explicit_ready = True``: the runner counts it ready only once it is listening (its
``serve`` calls ``ctx.ready()``).
"""

from __future__ import annotations

import asyncio
import http.server
import inspect
import socket
import socketserver
import threading
import time
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, TypeVar

from . import _lameduck
from ._listen import _address, adopt, listen
from ._runner import Context

__all__ = ["http_server", "asyncio_server", "aiohttp_app", "HTTPServerAdapter", "AsyncioServerAdapter", "AiohttpAdapter"]

T = TypeVar("T")


def _drain_default(drain_listener: Optional[bool]) -> Optional[bool]:
    """Drain (stop new SYNs, accept what is queued, then close) only listeners we own alone.
    Under systemd socket activation or start_server the socket is shared, and a drop filter on it
    would stop the others from accepting too. There, closing our copy loses nothing anyway.
    None means: ask the core per socket when shutdown comes (see _stop_accepting). The adapters'
    sockets all come from lameduck.listen() or lameduck.adopt(), so the core knows where each
    came from, and its answer changes when it should: a socket handed over by a previous
    generation is ours alone once that generation has exited. (The environment is no guide:
    os.environ is a snapshot from startup, and LISTEN_FDS is set in every upgraded generation.)"""
    return None if drain_listener is None else bool(drain_listener)


def _stop_accepting(sockets: Iterable[Any], drain: Optional[bool] = None) -> List[int]:
    """Attaches the drop filter to each listener to drain; returns their fds. With the default
    (None), the core decides per socket (should_drain): one that is shared with other processes
    (inherited, or handed on by an upgrade) is left alone."""
    fds = [s.fileno() for s in sockets]
    if drain is None:
        fds = [fd for fd in fds if _lameduck.should_drain(fd)]
    for fd in fds:
        _lameduck.stop_accepting(fd)
    return fds


def _pending(fds: List[int]) -> bool:
    return any(_lameduck.has_pending_connection(fd) for fd in fds)


def _check_grace(idle_grace: float) -> float:
    if isinstance(idle_grace, bool) or not isinstance(idle_grace, (int, float)):
        raise TypeError(f"idle_grace={idle_grace!r} must be a number of seconds")
    if not 0 <= idle_grace < float("inf"):
        raise ValueError(f"idle_grace={idle_grace!r} must be a finite, non-negative number of seconds")
    return float(idle_grace)


# --------------------------------------------------------------------------------------------
# socketserver / http.server


class HTTPServerAdapter:
    """Runs a ``socketserver`` server (``http.server.ThreadingHTTPServer`` and friends).

    - serve: ``serve_forever``.
    - shutdown: stops accepting and closes the listening socket at once. It handles keep-alive
      as the module describes, and waits for the request threads until the deadline.
    - close: shuts down every remaining connection, then ``server_close``.

    It wraps the server's ``RequestHandlerClass`` to track connections and, for
    ``BaseHTTPRequestHandler`` subclasses, to add ``Connection: close`` during lame-duck. It
    makes handler threads daemon threads, so an abandoned request cannot keep the process alive.

    The listening socket, so that upgrades work:

    - A server built with ``bind_and_activate=False`` gets its socket here, from
      :func:`lameduck.listen` with its ``server_address``: ``server.socket`` is replaced (already
      listening, with a backlog of ``SOMAXCONN``; ``server_activate`` is not called) and
      ``server_address`` (and an ``HTTPServer``'s ``server_name``/``server_port``) updated. In
      a process started by an upgrade this is the socket the old process handed over.
      **Build servers this way**::

          srv = http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Handler, bind_and_activate=False)

    - A server that arrived bound (``bind_and_activate=True``, the default) has its socket
      registered with :func:`lameduck.adopt`, so an upgrade hands it on, but it **cannot be
      upgraded in place**: the new process's constructor binds the port again while the old
      process still holds it, and fails with ``EADDRINUSE``.
    """

    #: Ready once serving (``serve`` calls ``ctx.ready()``); see :class:`lameduck.Runner`.
    explicit_ready = True

    def __init__(
        self, server: socketserver.TCPServer, *, idle_grace: float = 1.0, drain_listener: Optional[bool] = None
    ) -> None:
        self.server = server
        self.idle_grace = _check_grace(idle_grace)
        self.drain_listener = _drain_default(drain_listener)
        self._lock = threading.Condition()
        self._connections: Dict[socket.socket, bool] = {}  # socket -> idle (waiting for a request)
        self._serving = False
        self._lame_duck = False
        self._closing_idle = False
        _take_listener(server)
        if isinstance(server, socketserver.ThreadingMixIn):
            server.daemon_threads = True
        server.RequestHandlerClass = self._wrap(server.RequestHandlerClass)

    @property
    def lame_duck(self) -> bool:
        """True once shutdown began: responses carry ``Connection: close``."""
        return self._lame_duck

    def _wrap(self, base: Any) -> Any:
        adapter = self

        class Tracked(base):  # type: ignore[misc]
            def setup(self) -> None:
                super().setup()
                adapter._track(self.connection)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    adapter._untrack(self.connection)

        if not issubclass(base, http.server.BaseHTTPRequestHandler):
            return Tracked

        class KeepAliveAware(Tracked):
            def handle_one_request(self) -> None:
                # Waiting for the next request: idle. After the idle grace, shutdown() ends
                # the wait with SHUT_RD, and the read below returns EOF.
                if not adapter._set_idle(self.connection, True):
                    self.close_connection = True
                    return
                super().handle_one_request()

            def parse_request(self) -> bool:
                adapter._set_idle(self.connection, False)
                return bool(super().parse_request())

            def end_headers(self) -> None:
                if adapter._lame_duck:
                    buffered = getattr(self, "_headers_buffer", None)
                    if buffered is not None:  # drop a keep-alive header the handler set
                        self._headers_buffer = [h for h in buffered if not h.lower().startswith(b"connection:")]
                    self.send_header("Connection", "close")  # also sets close_connection
                super().end_headers()

        return KeepAliveAware

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections[conn] = False

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.pop(conn, None)
            self._lock.notify_all()

    def _set_idle(self, conn: socket.socket, idle: bool) -> bool:
        """Marks a connection idle or busy; False when an idle one must close now.

        No lock: under the GIL, "store idle, then read closing" here and "store closing, then
        read idle" in shutdown() cannot both miss each other, so an idle connection is always
        either closed by shutdown() or closes itself here (both is harmless)."""
        if conn in self._connections:
            self._connections[conn] = idle
        return not (idle and self._closing_idle)

    def serve(self, ctx: Context) -> None:
        with self._lock:
            if self._lame_duck:
                return  # lame-duck began before serve did: nothing to serve
            self._serving = True
        ctx.ready()
        self.server.serve_forever(poll_interval=0.05)

    def shutdown(self, ctx: Context) -> None:
        with self._lock:
            self._lame_duck = True
            serving = self._serving
        if serving:
            try:
                if self.drain_listener is not False:
                    # No new connections, but accept (and answer) every one already queued.
                    fds = _stop_accepting([self.server.socket], self.drain_listener)
                    while _pending(fds) and not ctx.done:
                        time.sleep(0.002)
            except OSError:
                pass  # a forced close() closed the listener meanwhile
            finally:
                self.server.shutdown()  # the accept loop has stopped when this returns
        self.server.socket.close()  # new connections are refused from here on
        ctx.wait(self.idle_grace)  # idle keep-alive connections get a grace (never past the deadline)
        self._closing_idle = True
        for conn, idle in list(self._connections.items()):
            if idle:
                _shutdown_socket(conn, socket.SHUT_RD)  # the handler's read returns EOF
        with self._lock:
            while self._connections:
                left = ctx.remaining()
                if not left:
                    raise TimeoutError(f"{len(self._connections)} connection(s) still open at the deadline")
                self._lock.wait(left)
        self.server.server_close()

    def close(self) -> None:
        with self._lock:
            self._lame_duck = self._closing_idle = True
            connections = list(self._connections)
            serving = self._serving
        for conn in connections:
            _shutdown_socket(conn, socket.SHUT_RDWR)
        if serving:
            # serve_forever returns even if a forced close overtook shutdown() before it got
            # there (it waits at most one poll interval).
            self.server.shutdown()
        self.server.server_close()


def _listening(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


def _bound(sock: socket.socket) -> bool:
    try:
        name = sock.getsockname()
    except OSError:
        return False
    if isinstance(name, tuple):
        return bool(name[1])  # port 0: never bound
    return bool(name)  # a unix socket's path ('' or b'' unbound)


def _take_listener(server: socketserver.TCPServer) -> None:
    """Makes the server's listening socket one that lameduck knows, so an upgrade hands it on:
    adopts one that arrived listening, else takes one from listen() for its address."""
    if server.socket_type != socket.SOCK_STREAM:
        return  # a datagram server has no listener to hand on
    sock = server.socket
    if sock.fileno() >= 0 and not _listening(sock) and _bound(sock):
        server.server_activate()  # bound by hand (server_bind() without server_activate())
    if sock.fileno() >= 0 and _listening(sock):
        adopt(sock)
        return
    fresh = listen(_address(server.server_address, server.address_family))
    server.socket = fresh
    sock.close()
    bound = fresh.getsockname()
    server.server_address = bound
    if isinstance(server, http.server.HTTPServer) and isinstance(bound, tuple):
        host, port = bound[0], bound[1]
        server.server_name = socket.getfqdn(host)  # as HTTPServer.server_bind does
        server.server_port = port


def _shutdown_socket(conn: socket.socket, how: int) -> None:
    try:
        conn.shutdown(how)
    except OSError:
        pass  # already closed by the peer


def http_server(
    server: socketserver.TCPServer, *, idle_grace: float = 1.0, drain_listener: Optional[bool] = None
) -> HTTPServerAdapter:
    """A lameduck server for a ``socketserver``/``http.server`` server::

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Handler, bind_and_activate=False)
        lameduck.run(lameduck.adapters.http_server(srv))

    With ``bind_and_activate=False`` the socket comes from :func:`lameduck.listen` (here), so a
    SIGHUP upgrades the server with zero downtime. A server built with
    ``bind_and_activate=True`` (the default) arrives bound; its socket is adopted
    (:func:`lameduck.adopt`), but it cannot be upgraded in place: the new process's
    constructor would fail with ``EADDRINUSE``. See :class:`HTTPServerAdapter`.
    """
    return HTTPServerAdapter(server, idle_grace=idle_grace, drain_listener=drain_listener)


# --------------------------------------------------------------------------------------------
# asyncio streams


class AsyncioServerAdapter:
    """Runs ``asyncio.start_server(client_connected_cb, host, port, **kwargs)``.

    - serve: starts the server and waits.
    - shutdown: ``Server.close()`` stops accepting at once. It then waits for the connection
      handlers until the deadline.
    - close: cancels the handlers that are left and aborts their transports.

    The protocol is yours, so keep-alive takes your help. Check :attr:`lame_duck` before you
    answer (send ``Connection: close`` when it is true). Wait for the next request with
    ``await adapter.next_request(reader.readline())``. It returns ``None`` when an idle
    connection must close, which happens ``idle_grace`` seconds into lame-duck.
    Use with :func:`lameduck.run_async`.

    The listening socket comes from :func:`lameduck.listen` with ``host:port`` (``[host]:port``
    for IPv6; every IPv4 interface for ``host=None``; port 0 or None for any free port) and
    is passed as ``sock=``, so an upgrade hands it on; a ``sock=`` of yours is adopted
    (:func:`lameduck.adopt`) instead. Ready (``ctx.ready()``) once it listens.
    """

    #: Ready once listening (``serve`` calls ``ctx.ready()``); see :class:`lameduck.Runner`.
    explicit_ready = True

    def __init__(
        self,
        client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        host: Optional[str] = None,
        port: Optional[int] = None,
        *,
        idle_grace: float = 1.0,
        drain_listener: Optional[bool] = None,
        **start_server_kwargs: Any,
    ) -> None:
        if host is not None and not isinstance(host, str):
            raise TypeError(f"host={host!r} must be a string or None (one listening socket per adapter)")
        if "sock" in start_server_kwargs and (host is not None or port is not None):
            raise ValueError("give host and port, or sock=, not both")
        self.client_connected_cb = client_connected_cb
        self.host = host
        self.port = port
        self.idle_grace = _check_grace(idle_grace)
        self.drain_listener = _drain_default(drain_listener)
        self.start_server_kwargs = start_server_kwargs
        self.server: Optional[asyncio.Server] = None
        self._handlers: Dict["asyncio.Task[Any]", asyncio.StreamWriter] = {}
        self._idle: "set[asyncio.Task[Any]]" = set()  # handlers waiting in next_request()
        self._lame_duck = False
        self._idle_closing = False
        self._stopped: Optional[asyncio.Event] = None

    @property
    def lame_duck(self) -> bool:
        """True once shutdown began: answer with ``Connection: close``."""
        return self._lame_duck

    @property
    def sockets(self) -> Any:
        """The listening sockets (to learn an ephemeral port)."""
        return self.server.sockets if self.server is not None else ()

    async def next_request(self, read: Awaitable[T]) -> Optional[T]:
        """Awaits ``read`` (e.g. ``reader.readline()``) for the next request. If the connection
        is still idle when the idle grace ends, the read is cancelled and this returns ``None``:
        close the connection. Costs nothing extra per request (no tasks are created)."""
        task = asyncio.current_task()
        if self._idle_closing or task is None:
            if inspect.iscoroutine(read):
                read.close()
            return None
        self._idle.add(task)
        try:
            return await read
        except asyncio.CancelledError:
            if not self._idle_closing:
                raise  # somebody else cancelled it
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None:
                uncancel()  # this cancellation was ours, and it is handled
            return None
        finally:
            self._idle.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            await self.client_connected_cb(reader, writer)
        finally:
            self._handlers.pop(task, None)
            writer.close()

    async def serve(self, ctx: Context) -> None:
        self._stopped = asyncio.Event()
        kwargs = dict(self.start_server_kwargs)
        sock = kwargs.pop("sock", None)
        if sock is not None:
            adopt(sock)
            ours = None
        else:
            sock = ours = listen(_address((self.host or "", self.port or 0)))
        try:
            self.server = await asyncio.start_server(self._handle, sock=sock, **kwargs)
        except BaseException:
            if ours is not None:
                ours.close()
            raise
        ctx.ready()
        await self._stopped.wait()

    async def shutdown(self, ctx: Context) -> None:
        self._lame_duck = True
        if self.server is not None:
            await _drain_async(self.server.sockets, self.drain_listener, ctx)
            self.server.close()  # new connections are refused from here on
        await ctx.wait_async(self.idle_grace)
        self._idle_closing = True
        for task in list(self._idle):
            task.cancel()  # next_request() turns this into None: the handler closes
        pending = [t for t in self._handlers if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=ctx.remaining())
            if still:
                raise TimeoutError(f"{len(still)} connection handler(s) still running at the deadline")
        if self._stopped is not None:
            self._stopped.set()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task, writer in list(self._handlers.items()):
            task.cancel()
            writer.transport.abort()
        if self._stopped is not None:
            self._stopped.set()


def asyncio_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    host: Optional[str] = None,
    port: Optional[int] = None,
    *,
    idle_grace: float = 1.0,
    drain_listener: Optional[bool] = None,
    **start_server_kwargs: Any,
) -> AsyncioServerAdapter:
    """A lameduck server for ``asyncio.start_server``; run it with :func:`lameduck.run_async`.
    Its socket comes from :func:`lameduck.listen` (``f"{host}:{port}"``), so upgrades hand it
    on; see :class:`AsyncioServerAdapter`."""
    return AsyncioServerAdapter(
        client_connected_cb, host, port, idle_grace=idle_grace, drain_listener=drain_listener, **start_server_kwargs
    )


async def _drain_async(sockets: Iterable[Any], drain: Optional[bool], ctx: Context) -> None:
    """The asyncio form of the drain in HTTPServerAdapter.shutdown: the loop's accept handler
    takes what is queued while we wait. Then the loop stops accepting, and the connections it
    accepted last get their transports, so the caller can close the server without losing any
    (see _settle_accepted)."""
    sockets = list(sockets)
    if drain is not False:
        fds = _stop_accepting(sockets, drain)
        while _pending(fds) and not ctx.done:
            await asyncio.sleep(0.002)
    await _settle_accepted(sockets)


async def _settle_accepted(sockets: List[Any]) -> None:
    """Stops this loop accepting on ``sockets``, then lets the connections it already accepted
    become transports. asyncio accepts a batch of connections in one callback and makes each
    one's transport in a task that runs a tick later; a ``Server.close()`` in between makes
    that task fail (``Server._attach`` asserts the server is open) and the connection is
    dropped with its request. On a socket shared with a new generation (after an upgrade's
    hand-over) the loop accepts right up to the close, so this matters most there."""
    loop = asyncio.get_running_loop()
    for sock in sockets:
        try:
            loop.remove_reader(sock.fileno())  # what Server.close() does first, minus the close
        except (NotImplementedError, RuntimeError, ValueError, OSError):
            pass  # a loop without reader callbacks (e.g. Windows' proactor)
    for _ in range(2):
        await asyncio.sleep(0)  # the transport tasks run on the next tick


# --------------------------------------------------------------------------------------------
# aiohttp


class AiohttpAdapter:
    """Runs an ``aiohttp.web.Application`` with ``AppRunner`` and ``TCPSite``.

    - serve: set up and start the site.
    - shutdown: stop the site (the listener closes at once); every response from then on
      carries ``Connection: close``; idle keep-alive connections close after the idle grace;
      wait for in-flight requests until the deadline; then ``AppRunner.cleanup()`` (your
      ``on_shutdown``/``on_cleanup`` run).
    - close: force-close what is left, then clean up.

    Use with :func:`lameduck.run_async`. The listening socket comes from
    :func:`lameduck.listen` with ``host:port`` (``[host]:port`` for IPv6, every IPv4 interface
    for ``host=None``) and is served with ``aiohttp.web.SockSite`` (``site_kwargs`` go there:
    ``ssl_context``, ``backlog``, ``shutdown_timeout``), so an upgrade hands it on. Ready
    (``ctx.ready()``) once the site listens.
    """

    #: Ready once listening (``serve`` calls ``ctx.ready()``); see :class:`lameduck.Runner`.
    explicit_ready = True

    def __init__(
        self,
        app: Any,
        host: Optional[str] = "127.0.0.1",
        port: int = 8080,
        *,
        idle_grace: float = 1.0,
        drain_listener: Optional[bool] = None,
        **site_kwargs: Any,
    ) -> None:
        from aiohttp import web  # imported here: aiohttp is optional

        if host is not None and not isinstance(host, str):
            raise TypeError(f"host={host!r} must be a string or None (one listening socket per adapter)")
        unsupported = sorted({"reuse_address", "reuse_port"} & set(site_kwargs))
        if unsupported:
            raise TypeError(f"{', '.join(unsupported)}: not supported; the socket comes from lameduck.listen()")
        self.app = app
        self.host = host
        self.port = port
        self.idle_grace = _check_grace(idle_grace)
        self.drain_listener = _drain_default(drain_listener)
        self.site_kwargs = site_kwargs
        self._web = web
        self.runner: Optional[Any] = None
        self.site: Optional[Any] = None
        self._lame_duck = False
        self._stopped: Optional[asyncio.Event] = None
        self._in_flight: Dict[Any, int] = {}  # connection (RequestHandler) -> requests in progress
        app.on_response_prepare.append(self._on_response_prepare)
        app.middlewares.append(self._track_in_flight)

    @property
    def lame_duck(self) -> bool:
        """True once shutdown began."""
        return self._lame_duck

    @property
    def sockets(self) -> Any:
        """The listening sockets (to learn an ephemeral port)."""
        server = getattr(self.site, "_server", None)
        return server.sockets if server is not None else ()

    async def _on_response_prepare(self, request: Any, response: Any) -> None:
        if self._lame_duck:
            response.force_close()  # close the connection after this response...
            response.headers["Connection"] = "close"  # ...and tell the client, so it reconnects

    @property
    def _track_in_flight(self) -> Any:
        adapter = self

        @self._web.middleware
        async def track_in_flight(request: Any, handler: Any) -> Any:
            conn = request.protocol
            adapter._in_flight[conn] = adapter._in_flight.get(conn, 0) + 1
            try:
                return await handler(request)
            finally:
                left = adapter._in_flight.pop(conn) - 1
                if left:
                    adapter._in_flight[conn] = left

        return track_in_flight

    def _connections(self) -> List[Any]:
        server = self.runner.server if self.runner is not None else None
        return list(server.connections) if server is not None else []

    async def serve(self, ctx: Context) -> None:
        self._stopped = asyncio.Event()
        self.runner = self._web.AppRunner(self.app, handle_signals=False)
        await self.runner.setup()
        sock = listen(_address((self.host or "", self.port or 0)))
        try:
            self.site = self._web.SockSite(self.runner, sock, **self.site_kwargs)
            await self.site.start()
        except BaseException:
            sock.close()
            raise
        ctx.ready()
        await self._stopped.wait()

    async def shutdown(self, ctx: Context) -> None:
        self._lame_duck = True
        if self.site is not None:
            await _drain_async(self.sockets, self.drain_listener, ctx)
            await self.site.stop()  # closes the listening socket
        await ctx.wait_async(self.idle_grace)
        for conn in self._connections():
            if self._in_flight.get(conn):
                conn.close()  # busy: closes after its response (which says Connection: close)
            else:
                conn.force_close()  # idle past the grace: close now
        while self._connections():
            if ctx.done:
                raise TimeoutError(f"{len(self._connections())} connection(s) still open at the deadline")
            await asyncio.sleep(0.01)
        if self.runner is not None:
            await self.runner.cleanup()
        if self._stopped is not None:
            self._stopped.set()

    async def close(self) -> None:
        if self.runner is not None:
            if self.runner.server is not None:
                await self.runner.server.shutdown(0.05)  # cancel in-flight handlers, close all
            await self.runner.cleanup()
        if self._stopped is not None:
            self._stopped.set()


def aiohttp_app(
    app: Any,
    host: Optional[str] = "127.0.0.1",
    port: int = 8080,
    *,
    idle_grace: float = 1.0,
    drain_listener: Optional[bool] = None,
    **site_kwargs: Any,
) -> AiohttpAdapter:
    """A lameduck server for an ``aiohttp.web.Application``; run it with
    :func:`lameduck.run_async`. Its socket comes from :func:`lameduck.listen`
    (``f"{host}:{port}"``), so upgrades hand it on; see :class:`AiohttpAdapter`."""
    return AiohttpAdapter(app, host, port, idle_grace=idle_grace, drain_listener=drain_listener, **site_kwargs)
