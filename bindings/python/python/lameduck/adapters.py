"""Adapters that make common Python servers lameduck servers, with no glue code.

They all handle keep-alive so that nothing is lost. Once lame-duck begins:

- the listening socket stops at once: the connections already in its accept queue are
  accepted and answered (with ``Connection: close``), and new connections are refused at once,
  none left waiting a second for a dropped SYN's retransmission (``drain_listener``, on unless
  the socket is shared with other processes: see ``src/listener/drain.rs`` in the core);
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

Every adapter accepts through the run's connection gate (``ctx.gate``; ``max_connections=``
on the runner): it takes a permit *before* ``accept`` and gives it back when the connection
closes, so while the gate is full it does not accept and new clients wait in the kernel's
accept queue, none refused. Lame-duck drains through it too: the connections taken from the
queue when the listener stops are admitted within the limit as slots free, and the run ends
once every permit is back. Nothing of the adapters runs per request before lame-duck (the
asyncio adapter's ``next_request`` is one method call that returns your read).

Every adapter binds through :func:`lameduck.listen` (or registers a socket that arrived bound
with :func:`lameduck.adopt`), so an upgrade (SIGHUP, :meth:`lameduck.Runner.upgrade`) hands
its socket to the new process, which gets it back from the same adapter call. Every adapter
also has ``explicit_ready = True``: the runner counts it ready only once it is listening (its
``serve`` calls ``ctx.ready()``).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import http.server
import inspect
import select
import selectors
import socket
import socketserver
import sys
import threading
import time
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Set, Tuple, TypeVar

from . import _lameduck
from ._gate import Gate, Permit
from ._listen import _address, adopt, listen
from ._runner import Context
from .errors import GateClosedError

__all__ = ["http_server", "asyncio_server", "aiohttp_app", "HTTPServerAdapter", "AsyncioServerAdapter", "AiohttpAdapter"]

T = TypeVar("T")


def _drain_default(drain_listener: Optional[bool]) -> Optional[bool]:
    """Drain (take what is queued, then stop the socket listening, then close) only listeners
    we own alone. Under systemd socket activation or start_server the socket is shared, and
    shutting it would stop the others from accepting too. There, closing our copy loses nothing
    anyway. None means: ask the core per socket when shutdown comes (see _drainable). The
    adapters' sockets all come from lameduck.listen() or lameduck.adopt(), so the core knows
    where each came from, and its answer changes when it should: a socket handed over by a
    previous generation is ours alone once that generation has exited. (The environment is no
    guide: os.environ is a snapshot from startup, and LISTEN_FDS is set in every upgraded
    generation.)"""
    return None if drain_listener is None else bool(drain_listener)


def _drainable(sockets: Iterable[Any], drain: Optional[bool] = None) -> List[int]:
    """The fds of the listeners to drain. With the default (None), the core decides per socket
    (should_drain): one that is shared with other processes (inherited, or handed on by an
    upgrade) is left alone."""
    if drain is False:
        return []
    fds = [s.fileno() for s in sockets]
    return [fd for fd in fds if drain or _lameduck.should_drain(fd)]


def _shut(fds: List[int]) -> List[socket.socket]:
    """Stops each listener at once (the core's shut: new connections are refused at once, and
    nobody waits for a dropped SYN's retransmission) and returns the connections still in their
    queues, accepted, to be served: closing the listener would have reset them. Call it once
    the accept loop has stopped, right before the listener is closed."""
    return [socket.socket(fileno=conn) for fd in fds for conn in _lameduck.shut(fd)]


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

    - serve: ``serve_forever``, accepting through the run's connection gate (``ctx.gate``).
    - shutdown: stops accepting and closes the listening socket at once. It handles keep-alive
      as the module describes, and waits for the gate to empty until the deadline.
    - close: shuts down every remaining connection, then ``server_close``.

    Admission: the server's ``get_request`` (its ``accept``) first takes a permit from the
    gate, blocking (without the GIL) while the gate is full, so connections above
    ``max_connections`` wait in the kernel's accept queue; ``close_request`` gives the permit
    back. Both are per connection: nothing runs per request in normal service. The listening
    socket is made non-blocking, so an ``accept`` after a long wait for a slot cannot block if
    another process sharing the socket took the connection meanwhile. Lame-duck wakes a
    blocked ``get_request`` at once; the connections still in the accept queue when the
    listener stops are admitted within the limit, as slots free.

    For ``BaseHTTPRequestHandler`` subclasses, the server's ``RequestHandlerClass`` is wrapped:
    once lame-duck begins (not before, so normal service pays nothing) responses carry
    ``Connection: close``, and at the end of the idle grace the connections waiting for their
    next request are found from their threads' frames (blocked in the request line's read
    inside ``handle_one_request``) and closed. Handler threads become daemon threads, so an
    abandoned request cannot keep the process alive.

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

    #: How often a lame-duck accept loop waiting for a slot for a queued connection wakes.
    _POLL = 0.05

    def __init__(
        self, server: socketserver.TCPServer, *, idle_grace: float = 1.0, drain_listener: Optional[bool] = None
    ) -> None:
        self.server = server
        self.idle_grace = _check_grace(idle_grace)
        self.drain_listener = _drain_default(drain_listener)
        self._lock = threading.Lock()
        # connection -> [its permit, the ident of the thread serving it (once it started)]
        self._connections: Dict[socket.socket, List[Any]] = {}
        self._serving = False
        self._lame_duck = False
        self._closing_idle = False
        self._gate: Optional[Gate] = None
        self._reserved: Optional[Permit] = None  # a slot taken for a connection accept() missed
        _take_listener(server)
        server.socket.setblocking(False)
        if isinstance(server, socketserver.ThreadingMixIn):
            server.daemon_threads = True
        handler_class: Any = server.RequestHandlerClass
        self._http = isinstance(handler_class, type) and issubclass(handler_class, http.server.BaseHTTPRequestHandler)
        self._handler = self._wrap(server.RequestHandlerClass)
        server.RequestHandlerClass = self._handler
        # Per-instance overrides: admission before accept, release when the connection closes.
        self._accept = server.get_request
        self._close_request = server.close_request
        server.get_request = self._get_request  # type: ignore[method-assign]
        server.close_request = self._release  # type: ignore[method-assign]

    @property
    def lame_duck(self) -> bool:
        """True once shutdown began: responses carry ``Connection: close``."""
        return self._lame_duck

    def _wrap(self, base: Any) -> Any:
        adapter = self

        class Tracked(base):  # type: ignore[misc]
            def setup(self) -> None:
                held = adapter._connections.get(self.request)
                if held is not None:
                    held[1] = threading.get_ident()
                super().setup()

        return Tracked

    def _enter_lame_duck(self) -> None:
        """From now on every response says ``Connection: close`` (the wrapper class gets the
        method now, so requests before lame-duck do not pay for it)."""
        if not self._http:
            return
        cls = self._handler

        def end_headers(handler: Any) -> None:
            buffered = getattr(handler, "_headers_buffer", None)
            if buffered is not None:  # drop a keep-alive header the handler set
                handler._headers_buffer = [h for h in buffered if not h.lower().startswith(b"connection:")]
            handler.send_header("Connection", "close")  # also sets close_connection
            parent: Any = super(cls, handler)
            parent.end_headers()

        cls.end_headers = end_headers

    def _close_idle(self) -> None:
        """Ends the idle grace: a connection waiting for its next request is shut for reading
        (its read returns EOF), and one that comes back to wait closes unless a request is
        already there."""
        self._closing_idle = True
        if not self._http:
            return
        cls = self._handler

        def handle_one_request(handler: Any) -> None:
            try:
                waiting = select.select([handler.connection], [], [], 0)[0]
            except (OSError, ValueError):
                waiting = []
            if not waiting:
                handler.close_connection = True
                return
            parent: Any = super(cls, handler)
            parent.handle_one_request()

        cls.handle_one_request = handle_one_request
        frames = sys._current_frames()
        for conn, held in list(self._connections.items()):
            if held[1] is not None and _waiting_for_request(frames.get(held[1])):
                _shutdown_socket(conn, socket.SHUT_RD)  # the handler's read returns EOF

    def _admit(self) -> Optional[Permit]:
        gate = self._gate
        if gate is None:
            return None
        try:
            return gate.acquire()  # blocks while full; GateClosedError at once in lame-duck
        except GateClosedError:
            pass
        # Lame-duck: only connections already in the accept queue, within the limit. Wake now
        # and then, so that server.shutdown() never waits long for this loop.
        try:
            return gate.acquire(self._POLL, queued=True)
        except TimeoutError:
            return None
        except GateClosedError:
            time.sleep(self._POLL)  # closed: nothing is admitted; shutdown() is on its way
            return None

    def _get_request(self) -> Any:
        permit, self._reserved = self._reserved, None
        if permit is None:
            permit = self._admit()
            if permit is None:
                raise OSError("the connection gate admits nothing now")  # the loop goes on
        try:
            conn, address = self._accept()
        except BaseException:
            self._reserved = permit  # nothing was accepted: keep the slot for the next one
            raise
        self._connections[conn] = [permit, None]
        return conn, address

    def _release(self, request: Any) -> None:
        held = self._connections.pop(request, None)
        if held is not None:
            held[0].release()
        self._close_request(request)

    def in_flight_requests(self) -> Optional[int]:
        """Not counted by this adapter (it would cost every request): None."""
        return None

    def serve(self, ctx: Context) -> None:
        with self._lock:
            if self._lame_duck:
                return  # lame-duck began before serve did: nothing to serve
            self._serving = True
            self._gate = ctx.gate
        ctx.ready()
        try:
            self.server.serve_forever(poll_interval=0.05)
        finally:
            reserved, self._reserved = self._reserved, None
            if reserved is not None:
                reserved.release()

    def shutdown(self, ctx: Context) -> None:
        grace_end = time.monotonic() + self.idle_grace
        with self._lock:
            self._lame_duck = True
            serving = self._serving
        self._enter_lame_duck()
        queued: List[socket.socket] = []
        if serving:
            self.server.shutdown()  # the accept loop has stopped when this returns
            try:
                # New connections are refused at once from here on; the ones still queued
                # are accepted, to be answered below instead of reset by the close.
                queued = _shut(_drainable([self.server.socket], self.drain_listener))
            except OSError:
                pass  # a forced close() closed the listener meanwhile
        self.server.socket.close()
        self._serve_queued(queued, ctx, grace_end)
        # idle keep-alive connections get a grace (never past the deadline)
        ctx.wait(max(0.0, grace_end - time.monotonic()))
        self._close_idle()
        gate = self._gate
        if gate is not None and not gate.wait_empty(ctx.remaining() or 0.0):
            raise TimeoutError(f"{gate.admitted} connection(s) still open at the deadline")
        self.server.server_close()

    def _serve_queued(self, queued: List[socket.socket], ctx: Context, grace_end: float) -> None:
        """Serves the connections taken from the queue, in order, each once the gate admits it
        (within the limit). They may wait for a slot: once the idle grace (until ``grace_end``)
        is over, idle keep-alive connections close so that they get one. What is still waiting
        at the deadline, or once close was called, is closed."""
        gate = self._gate
        while queued and gate is not None and not ctx.done:
            try:
                permit = gate.try_acquire(queued=True)
            except GateClosedError:
                break
            if permit is None:
                if not self._closing_idle and time.monotonic() >= grace_end:
                    self._close_idle()
                time.sleep(0.002)
                continue
            conn = queued.pop(0)
            self._connections[conn] = [permit, None]
            try:
                address = conn.getpeername()
            except OSError:
                address = ""  # the client is gone already
            # What socketserver does with each connection it accepts.
            if not self.server.verify_request(conn, address):
                self.server.shutdown_request(conn)
                continue
            try:
                self.server.process_request(conn, address)
            except Exception:
                self.server.handle_error(conn, address)
                self.server.shutdown_request(conn)
        for conn in queued:
            conn.close()

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


def _waiting_for_request(frame: Any) -> bool:
    """True when a handler thread is inside ``handle_one_request`` itself (reading the next
    request line), not in a request's own reads (headers, body) or in the application. The
    innermost frames of a thread blocked reading its socket (``SocketIO.readinto``,
    ``SSLSocket.recv_into``) are skipped to find the handler method that is reading."""
    io_files = {socket.__file__, selectors.__file__, getattr(sys.modules.get("ssl"), "__file__", None)}
    while frame is not None and frame.f_code.co_filename in io_files:
        frame = frame.f_back
    return frame is not None and frame.f_code.co_name == "handle_one_request"


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


class _Acceptor:
    """Accepts from a listening socket on the event loop, through the connection gate.

    Why not asyncio's own accepting: ``Server`` accepts in a reader callback on the listening
    socket that takes up to ``backlog`` connections per wake-up (and ``start_server`` with
    ``start_serving=True`` yields to the loop once, so it may accept before anyone could stop
    it); a gate consulted afterwards, in the protocol factory, would have to close connections
    that were already accepted. So the adapters create their ``asyncio.Server`` with
    ``start_serving=False`` (it never adds its reader; ``Server.close()`` still removes ours
    and closes the socket, and ``sockets`` works) and put this reader on the socket instead.
    Each wake-up takes a permit first (``try_acquire``, a few hundred nanoseconds, once per
    connection) and only then ``accept()``s one connection, which it hands to asyncio with the
    public ``loop.connect_accepted_socket``. When the gate is full it removes the reader
    (``loop.remove_reader``), so the loop stops reading the listener and new clients wait in
    the kernel's accept queue, and waits for a slot with :meth:`Gate.acquire_async` (one
    helper thread blocked in the gate, no polling on the loop). The slot it gets is kept for
    the next accepted connection and the reader goes back on. In lame-duck (the gate refuses
    new connections) it goes on with ``queued=True``: what is already in the accept queue is
    still admitted within the limit while the adapter drains the listener.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        gate: Gate,
        on_connection: Callable[[socket.socket, Permit], None],
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._gate = gate
        self._on_connection = on_connection
        self._reserved: Optional[Permit] = None
        self._waiting: Optional["asyncio.Task[None]"] = None
        self._reading = False
        self._queued = False
        self._stopped = False

    def start(self) -> None:
        self._resume()

    def _resume(self) -> None:
        if not self._stopped and not self._reading and self._waiting is None:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            try:
                self._loop.remove_reader(self._fd)
            except (ValueError, OSError):
                pass  # the socket was closed meanwhile

    def _readable(self) -> None:
        permit, self._reserved = self._reserved, None
        if permit is None:
            permit = self._try()
            if permit is None:
                return
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            self._reserved = permit  # someone else took it: keep the slot for the next one
            return
        except OSError as exc:
            self._reserved = permit
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # As asyncio does: out of descriptors or memory, so stop reading for a second.
                self._loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": exc, "socket": self._sock}
                )
                self._pause()
                self._loop.call_later(1.0, self._resume)
            return
        self._on_connection(conn, permit)

    def _try(self) -> Optional[Permit]:
        try:
            permit = self._gate.try_acquire(queued=self._queued)
        except GateClosedError:
            if self._queued:
                self._pause()  # closed: nothing more is admitted
                return None
            self._queued = True  # lame-duck: only what is already in the accept queue
            return self._try()
        if permit is None:
            self._pause()
            self._waiting = self._loop.create_task(self._wait_for_slot())
        return permit

    async def _wait_for_slot(self) -> None:
        try:
            while True:
                try:
                    permit = await self._gate.acquire_async(queued=self._queued)
                    break
                except GateClosedError:
                    if self._queued:
                        return
                    self._queued = True
        finally:
            self._waiting = None
        if self._stopped:
            permit.release()
            return
        self._reserved = permit
        self._resume()

    def admit(self, conn: socket.socket) -> bool:
        """Hands on ``conn``, a connection taken from the queue when the listener was shut, if
        the gate admits it now (within the limit): False while the gate is full. Raises
        GateClosedError once close was called."""
        permit = self._gate.try_acquire(queued=True)
        if permit is None:
            return False
        self._on_connection(conn, permit)
        return True

    def stop(self) -> None:
        """Stops accepting; gives back the slot kept for the next connection."""
        self._stopped = True
        self._pause()
        if self._waiting is not None:
            self._waiting.cancel()
        reserved, self._reserved = self._reserved, None
        if reserved is not None:
            reserved.release()


class AsyncioServerAdapter:
    """Runs ``asyncio.start_server(client_connected_cb, host, port, **kwargs)``.

    - serve: starts the server, accepting through the run's connection gate (see
      :class:`_Acceptor`: while the gate is full the listener is not read, and clients wait
      in the kernel's accept queue), and waits.
    - shutdown: stops accepting at once (after taking what is already queued, within the
      limit). It then waits for the connection handlers until the deadline.
    - close: cancels the handlers that are left and aborts their transports.

    Each connection holds a gate permit from before its ``accept`` until its handler returns.

    The protocol is yours, so keep-alive takes your help. Check :attr:`lame_duck` before you
    answer (send ``Connection: close`` when it is true). Wait for the next request with
    ``await adapter.next_request(reader.readline())``. Before lame-duck this returns your
    read as it is, so it costs one method call per request. In lame-duck it returns ``None``
    when an idle connection must close, which happens ``idle_grace`` seconds into lame-duck;
    a connection that has been waiting for its next request since before lame-duck began,
    with nothing received during the whole grace, sees end-of-file on that read instead
    (``readline()`` returns ``b""``, as when a client closes).
    Use with :func:`lameduck.run_async`.

    The listening socket comes from :func:`lameduck.listen` with ``host:port`` (``[host]:port``
    for IPv6; every IPv4 interface for ``host=None``; port 0 or None for any free port) and
    is passed as ``sock=``, so an upgrade hands it on; a ``sock=`` of yours is adopted
    (:func:`lameduck.adopt`) instead. ``limit=`` sizes the ``StreamReader`` and ``ssl=`` (with
    ``ssl_handshake_timeout``/``ssl_shutdown_timeout``) applies to each connection, as with
    ``asyncio.start_server``. Ready (``ctx.ready()``) once it listens.
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
        self._handlers: Dict["asyncio.Task[Any]", Tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self._connecting: Set["asyncio.Task[None]"] = set()
        self._idle: "set[asyncio.Task[Any]]" = set()  # handlers waiting in a lame-duck next_request()
        self._fresh: "set[asyncio.Task[Any]]" = set()  # accepted in lame-duck, first request not read
        self._waiting_at_lame_duck: Dict["asyncio.Task[Any]", Any] = {}
        self._acceptor: Optional[_Acceptor] = None
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

    def next_request(self, read: Awaitable[T]) -> Awaitable[Optional[T]]:
        """Use as ``await adapter.next_request(reader.readline())`` to wait for the next
        request. Before lame-duck it returns ``read`` itself (nothing else runs per request).
        In lame-duck, if the connection is still idle when the idle grace ends, the read is
        cancelled and this returns ``None``: close the connection."""
        if self._lame_duck:
            return self._next_request_in_lame_duck(read)
        return read

    async def _next_request_in_lame_duck(self, read: Awaitable[T]) -> Optional[T]:
        task = asyncio.current_task()
        if task in self._fresh:
            # Accepted from the queue during lame-duck: its first request was sent before the
            # listener stopped, so it is read and answered even past the idle grace.
            self._fresh.discard(task)
            return await read
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

    def in_flight_requests(self) -> Optional[int]:
        """The protocol is yours, so requests are not counted: None."""
        return None

    def _protocol(self, permit: Permit) -> asyncio.Protocol:
        """What ``asyncio.start_server`` makes for each connection, with the permit bound."""
        loop = asyncio.get_running_loop()
        limit = self.start_server_kwargs.get("limit", 2**16)
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, functools.partial(self._handle, permit), loop=loop)

    def _connection(self, conn: socket.socket, permit: Permit) -> None:
        task = asyncio.get_running_loop().create_task(self._connect(conn, permit))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket, permit: Permit) -> None:
        tls = {k: v for k, v in self.start_server_kwargs.items() if k in _TLS_OPTIONS}
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: self._protocol(permit), conn, **tls)
        except BaseException:
            permit.release()
            conn.close()
            # A failed TLS handshake or a connection reset before its transport: dropped, as
            # asyncio's own accept does.

    async def _handle(self, permit: Permit, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = (reader, writer)
        if self._lame_duck:
            self._fresh.add(task)
        try:
            await self.client_connected_cb(reader, writer)
        finally:
            self._fresh.discard(task)
            self._handlers.pop(task, None)
            writer.close()
            permit.release()

    async def serve(self, ctx: Context) -> None:
        self._stopped = asyncio.Event()
        kwargs = {k: v for k, v in self.start_server_kwargs.items() if k not in ("limit", "start_serving")}
        sock = kwargs.pop("sock", None)
        if sock is not None:
            adopt(sock)
            ours = None
        else:
            sock = ours = listen(_address((self.host or "", self.port or 0)))
        loop = asyncio.get_running_loop()
        try:
            # start_serving=False: asyncio never accepts on this socket; the acceptor does.
            self.server = await loop.create_server(
                lambda: self._protocol(_NO_PERMIT), sock=sock, start_serving=False, **kwargs
            )
        except BaseException:
            if ours is not None:
                ours.close()
            raise
        self._acceptor = _Acceptor(loop, sock, ctx.gate, self._connection)
        if not self._lame_duck:
            self._acceptor.start()
        ctx.ready()
        await self._stopped.wait()

    async def shutdown(self, ctx: Context) -> None:
        loop = asyncio.get_running_loop()
        grace_end = loop.time() + self.idle_grace
        self._lame_duck = True
        # Which connections wait for data right now: those still waiting, with nothing
        # received, when the grace ends are idle (they never called next_request in lame-duck).
        self._waiting_at_lame_duck = {task: getattr(rw[0], "_waiter", None) for task, rw in self._handlers.items()}
        if self.server is not None:
            await _drain_async(
                self.sockets, self.drain_listener, ctx, self._acceptor, self._connecting, grace_end, self._close_idle
            )
            self.server.close()  # new connections are refused from here on
        await ctx.wait_async(max(0.0, grace_end - loop.time()))
        self._close_idle()
        pending = [t for t in self._handlers if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=ctx.remaining())
            if still:
                raise TimeoutError(f"{len(still)} connection handler(s) still running at the deadline")
        if self._stopped is not None:
            self._stopped.set()

    def _close_idle(self) -> None:
        """Ends the idle grace: idle connections close."""
        self._idle_closing = True
        for task in list(self._idle):
            task.cancel()  # next_request() turns this into None: the handler closes
        self._close_idle_since_lame_duck()

    def _close_idle_since_lame_duck(self) -> None:
        for task, (reader, writer) in list(self._handlers.items()):
            if task in self._idle or task.done():
                continue
            waiter: Any = getattr(reader, "_waiter", None)
            if waiter is None or waiter.done() or waiter is not self._waiting_at_lame_duck.get(task):
                continue  # busy, or something arrived during the grace
            if getattr(reader, "_buffer", b"") or reader.at_eof():
                continue
            try:
                transport: Any = writer.transport
                transport.pause_reading()  # nothing more is fed to the reader...
            except (AttributeError, RuntimeError):
                continue
            reader.feed_eof()  # ...and its read returns end-of-file: the handler closes

    async def close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.stop()
        if self.server is not None:
            self.server.close()
        for task in list(self._connecting):
            task.cancel()
        for task, (_, writer) in list(self._handlers.items()):
            task.cancel()
            writer.transport.abort()
        if self._stopped is not None:
            self._stopped.set()


#: ``asyncio.start_server`` options that apply to each accepted connection.
_TLS_OPTIONS = ("ssl", "ssl_handshake_timeout", "ssl_shutdown_timeout")


class _NoPermit:
    """For a protocol made by the asyncio Server itself (it never accepts: start_serving is
    off), should anything call its factory."""

    def release(self) -> bool:
        return False


_NO_PERMIT: Any = _NoPermit()


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


async def _drain_async(
    sockets: Iterable[Any],
    drain: Optional[bool],
    ctx: Context,
    acceptor: Optional[_Acceptor],
    connecting: Set["asyncio.Task[None]"],
    grace_end: float,
    end_grace: Callable[[], None],
) -> None:
    """The asyncio form of the drain in HTTPServerAdapter.shutdown: the acceptor stops, and the
    listeners are shut (new connections are refused at once; what is still queued is accepted).
    The acceptor hands on the connections taken as the gate admits them (within the limit), and
    each gets its transport (``connect_accepted_socket`` runs in a task), so the caller can close
    the server without losing any. They may wait for a slot: once the idle grace (until
    ``grace_end``, loop time) is over, ``end_grace`` closes the idle keep-alive connections so
    that they get one. What is still waiting at the deadline is closed."""
    loop = asyncio.get_running_loop()
    queued: List[socket.socket] = []
    if acceptor is not None:
        acceptor.stop()
        try:
            queued = _shut(_drainable(sockets, drain))
        except OSError:
            pass  # a forced close() closed the listener meanwhile
    graced = False
    while queued and acceptor is not None and not ctx.done:
        try:
            if acceptor.admit(queued[0]):
                queued.pop(0)
                continue
        except GateClosedError:
            break
        if not graced and loop.time() >= grace_end:
            graced = True
            end_grace()
        await asyncio.sleep(0.002)
    for conn in queued:
        conn.close()
    if connecting:
        await asyncio.wait(list(connecting), timeout=max(ctx.remaining() or 0.0, 0.1))


# --------------------------------------------------------------------------------------------
# aiohttp


class AiohttpAdapter:
    """Runs an ``aiohttp.web.Application`` with ``AppRunner`` and a ``SockSite``.

    - serve: set up and start the site, accepting through the run's connection gate (as
      :class:`AsyncioServerAdapter` does: the site's asyncio server is created with
      ``start_serving=False`` and the adapter's reader accepts, one permit per connection,
      and stops reading the listener while the gate is full).
    - shutdown: stop the site (the listener closes at once, after what is already queued was
      taken within the limit); every response from then on carries ``Connection: close``;
      idle keep-alive connections close after the idle grace; wait for the connections to
      close until the deadline; then ``AppRunner.cleanup()`` (your
      ``on_shutdown``/``on_cleanup`` run).
    - close: force-close what is left, then clean up.

    Nothing of the adapter runs per request: no middleware and no ``on_response_prepare``
    signal. ``Connection: close`` comes from the requests themselves: once lame-duck begins,
    the server's request factory (and each open connection's) marks each new request as
    closing, so aiohttp answers it with ``Connection: close`` and closes after it. Requests in
    flight are read from aiohttp's own connection state (``in_flight_requests``).

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
        self._acceptor: Optional[_Acceptor] = None
        self._permits: Dict[Any, Permit] = {}  # connection (RequestHandler) -> its permit
        self._fresh: Set[Any] = set()  # connections taken from the queue in lame-duck
        self._connecting: Set["asyncio.Task[None]"] = set()
        self._all_closed: Optional[asyncio.Event] = None

    @property
    def lame_duck(self) -> bool:
        """True once shutdown began."""
        return self._lame_duck

    @property
    def sockets(self) -> Any:
        """The listening sockets (to learn an ephemeral port)."""
        server = getattr(self.site, "_server", None)
        return server.sockets if server is not None else ()

    def _connections(self) -> List[Any]:
        server = self.runner.server if self.runner is not None else None
        return list(server.connections) if server is not None else []

    def in_flight_requests(self) -> Optional[int]:
        """Requests being handled now (aiohttp's per-connection ``_request_in_progress``)."""
        return sum(1 for conn in self._connections() if getattr(conn, "_request_in_progress", False))

    def _protocol(self, permit: Permit) -> Any:
        assert self.runner is not None and self.runner.server is not None
        handler = self.runner.server()
        self._permits[handler] = permit
        if self._lame_duck:
            self._fresh.add(handler)
        return handler

    def _connection(self, conn: socket.socket, permit: Permit) -> None:
        task = asyncio.get_running_loop().create_task(self._connect(conn, permit))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket, permit: Permit) -> None:
        ssl = self.site_kwargs.get("ssl_context")
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: self._protocol(permit), conn, ssl=ssl)
        except BaseException:
            permit.release()
            conn.close()

    def _watch_connections(self, server: Any) -> None:
        """Gives each connection's permit back when aiohttp reports it lost (per connection)."""
        lost = server.connection_lost
        adapter = self

        def connection_lost(handler: Any, exc: Optional[BaseException] = None) -> None:
            try:
                lost(handler, exc)
            finally:
                adapter._fresh.discard(handler)
                permit = adapter._permits.pop(handler, None)
                if permit is not None:
                    permit.release()
                if not adapter._permits and adapter._all_closed is not None:
                    adapter._all_closed.set()

        server.connection_lost = connection_lost

    def _close_after_each_request(self) -> None:
        """Lame-duck: every request from now on is answered with ``Connection: close`` and its
        connection closed after it (the request says the client wants it closed)."""
        server = self.runner.server if self.runner is not None else None
        if server is None:
            return
        make = server.request_factory

        def closing(message: Any, *args: Any) -> Any:
            return make(message._replace(should_close=True), *args)

        server.request_factory = closing
        for conn in server.connections:
            if getattr(conn, "_request_factory", None) is not None:
                conn._request_factory = closing
            request = getattr(conn, "_current_request", None)
            if request is not None:  # in flight: its response is not written yet, most likely
                try:
                    request._message = request._message._replace(should_close=True)
                except AttributeError:
                    pass

    async def serve(self, ctx: Context) -> None:
        self._stopped = asyncio.Event()
        self.runner = self._web.AppRunner(self.app, handle_signals=False)
        await self.runner.setup()
        self._watch_connections(self.runner.server)
        sock = listen(_address((self.host or "", self.port or 0)))
        try:
            self.site = _gated_site(self._web)(self.runner, sock, **self.site_kwargs)
            await self.site.start()
        except BaseException:
            sock.close()
            raise
        self._acceptor = _Acceptor(asyncio.get_running_loop(), sock, ctx.gate, self._connection)
        if not self._lame_duck:
            self._acceptor.start()
        ctx.ready()
        await self._stopped.wait()

    def _close_idle(self) -> None:
        """Ends the idle grace: idle connections (aiohttp's own test: waiting for a next request,
        none received) close now, busy ones after their response. A connection taken from the
        queue in lame-duck is not idle before its first request: that was sent before the
        listener stopped, and is answered even past the grace."""
        for conn in self._connections():
            if conn in self._fresh and not getattr(conn, "_request_count", 1):
                continue
            waiter = getattr(conn, "_waiter", None)
            if waiter is not None and not waiter.done() and not getattr(conn, "_messages", None):
                conn.force_close()  # idle past the grace: close now
            else:
                conn.close()  # busy: closes after its response (which says Connection: close)

    async def shutdown(self, ctx: Context) -> None:
        loop = asyncio.get_running_loop()
        grace_end = loop.time() + self.idle_grace
        self._lame_duck = True
        self._all_closed = asyncio.Event()
        self._close_after_each_request()
        if self.site is not None:
            await _drain_async(
                self.sockets, self.drain_listener, ctx, self._acceptor, self._connecting, grace_end, self._close_idle
            )
            await self.site.stop()  # closes the listening socket
        await ctx.wait_async(max(0.0, grace_end - loop.time()))
        self._close_idle()
        if self._permits:
            # The last permit may have gone back before the connections taken from the queue
            # had theirs: only from now on does an empty set mean every connection closed.
            self._all_closed.clear()
            try:
                await asyncio.wait_for(self._all_closed.wait(), timeout=ctx.remaining())
            except asyncio.TimeoutError:
                raise TimeoutError(f"{len(self._permits)} connection(s) still open at the deadline") from None
        if self.runner is not None:
            await self.runner.cleanup()
        if self._stopped is not None:
            self._stopped.set()

    async def close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.stop()
        for task in list(self._connecting):
            task.cancel()
        if self.runner is not None:
            if self.runner.server is not None:
                await self.runner.server.shutdown(0.05)  # cancel in-flight handlers, close all
            await self.runner.cleanup()
        for permit in list(self._permits.values()):
            permit.release()  # connections aiohttp did not report lost: cut, and not counted
        if self._stopped is not None:
            self._stopped.set()


def _gated_site(web: Any) -> Any:
    """``web.SockSite`` whose asyncio server does not accept by itself (``start_serving=False``;
    see :class:`_Acceptor`): the adapter accepts through the gate."""

    class GatedSockSite(web.SockSite):  # type: ignore[misc]
        async def start(self) -> None:
            await web.BaseSite.start(self)  # registers the site with its runner
            self._server = await asyncio.get_running_loop().create_server(
                self._runner.server, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog, start_serving=False
            )

    return GatedSockSite


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
