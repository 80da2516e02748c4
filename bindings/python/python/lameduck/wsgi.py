"""WSGI apps (Flask, Django's ``WSGIHandler``, any WSGI callable) under lameduck, on hypercorn::

    runner = lameduck.wsgi.hypercorn(flask_app, "127.0.0.1", 8000, period=10.0)
    asyncio.run(runner.run_async())

It is :func:`lameduck.asgi.hypercorn` with ``mode="wsgi"``: the same signals, socket, upgrades,
lame-duck sequence and options (see :mod:`lameduck.asgi`). Hypercorn runs each request of the
WSGI app on a worker thread of the event loop's default executor, with HTTP/1.1 keep-alive.

Why hypercorn, not waitress: lame-duck needs a server that stops accepting while it lets the
requests in flight finish, and that is told when to stop rather than catching signals itself.
Hypercorn's public API has both (``serve(…, shutdown_trigger=…)``, ``graceful_timeout``), and
its WSGI mode shares everything with the ASGI one. Waitress has neither: its ``close()`` drops
every connection at once, and a graceful stop would need its private channel map and task
dispatcher. Note that hypercorn reads a WSGI request's whole body before calling the app
(at most ``wsgi_max_body_size``, 16 MiB by default, else 400).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple

from ._runner import Runner

__all__ = ["hypercorn", "ClosingMiddleware"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[Any, StartResponse], Iterable[bytes]]


class ClosingMiddleware:
    """WSGI middleware: once :attr:`closing` is set (lame-duck began), every response says
    ``Connection: close`` (replacing the app's own), so the server closes each kept-alive
    connection after answering the request it carried. Read when the response starts, so a
    request in flight when lame-duck began closes too."""

    __slots__ = ("app", "closing")

    def __init__(self, app: WSGIApp) -> None:
        if not callable(app):
            raise TypeError(f"app={app!r} is not a WSGI application (a callable)")
        self.app = app
        self.closing = False

    def __call__(self, environ: Any, start_response: StartResponse) -> Iterable[bytes]:
        def closing_start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
            if self.closing:
                headers = [(k, v) for (k, v) in headers if k.lower() != "connection"]
                headers.append(("Connection", "close"))
            return start_response(status, headers, exc_info)

        return self.app(environ, closing_start_response)


def hypercorn(
    app: WSGIApp,
    host: Optional[str] = "127.0.0.1",
    port: int = 8000,
    *,
    config: Optional[Mapping[str, Any]] = None,
    idle_grace: float = 1.0,
    drain_listener: Optional[bool] = None,
    **options: Any,
) -> Runner:
    """A :class:`lameduck.Runner` (not started) for the WSGI ``app`` on hypercorn; run it with
    ``asyncio.run(runner.run_async())``. ``options`` are the Runner's; ``config`` is
    ``hypercorn.Config``'s. See :class:`lameduck.asgi.HypercornServer`."""
    from . import asgi

    return asgi.hypercorn(
        app, host, port, mode="wsgi", config=config, idle_grace=idle_grace, drain_listener=drain_listener, **options
    )
