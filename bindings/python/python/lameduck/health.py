"""Health answers on your own port: the same ``/ready``, ``/live`` and ``/health`` the
built-in listener (``health="127.0.0.1:8081"``) serves, computed by the core from the run's
state (see :meth:`lameduck.Runner.health`).

- ``/ready``: 200 in READY and UPGRADING (and HANDING_OVER, whose port the new process serves),
  503 from the trigger on, so a balancer stops sending during the drain delay.
- ``/live``: 200 unless the process is stuck (``close`` past its timeout, hooks abandoned).
- ``/health``: JSON with the state, pid, generation and the gate's counts; 200 when ready.

Mount one of these on the route(s) you probe::

    app.router.add_get("/ready", lameduck.health.aiohttp_handler(runner))      # aiohttp
    app.router.routes.append(Route("/ready", lameduck.health.asgi_app(runner)))  # Starlette/FastAPI
    DispatcherMiddleware(flask_app, {"/ready": lameduck.health.wsgi_app(runner)})  # WSGI

Each answers by the request's full path (``/ready``, ``/live`` or ``/health``), so one handler
can serve all three. Without a runner, each asks :func:`lameduck.current_runner` at every
request (503 "not ready" while no run is in progress), so a handler can be mounted before the
runner exists, as with ``lameduck.asgi.uvicorn(app)``. ``/ready`` answers count as readiness probes for the adaptive drain
(``drain_quiet``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, Iterable, List, MutableMapping, NamedTuple, Optional, Tuple

if TYPE_CHECKING:
    from ._runner import Runner

__all__ = ["HealthReport", "wsgi_app", "asgi_app", "aiohttp_handler"]

_REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


class HealthReport(NamedTuple):
    """One health answer: the HTTP status, the body's content type, and the body."""

    status: int
    content_type: str
    body: str


_NO_RUN = HealthReport(503, "text/plain; charset=utf-8", "not ready: no run in progress\n")


def _answer(runner: "Optional[Runner]", path: str) -> HealthReport:
    if runner is None:
        from ._runner import current_runner

        runner = current_runner()
        if runner is None:
            return _NO_RUN
    return runner.health(path)


def _headers(report: HealthReport, body: bytes) -> List[Tuple[str, str]]:
    return [("Content-Type", report.content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]


def wsgi_app(runner: "Optional[Runner]" = None) -> Callable[[Dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """A WSGI application answering the health endpoints by ``SCRIPT_NAME + PATH_INFO``."""

    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = (environ.get("SCRIPT_NAME", "") or "") + (environ.get("PATH_INFO", "") or "")
        report = _answer(runner, path or "/")
        body = report.body.encode()
        start_response(f"{report.status} {_REASONS.get(report.status, 'Unknown')}", _headers(report, body))
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    return app


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _ASGIHealth:
    """The ASGI application :func:`asgi_app` returns. An object, not a function, so that
    Starlette/FastAPI's ``add_route`` takes it as an ASGI app (a function would be taken for a
    request handler)."""

    def __init__(self, runner: "Optional[Runner]") -> None:
        self._runner = runner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # mounted as the whole app: nothing to start or stop
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope.get("path", "/")
        root = scope.get("root_path", "") or ""
        if root and not path.startswith(root):
            path = root + path  # some servers keep a mount's prefix in root_path only
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/")  # a mount at /health sees "/health/"
        report = _answer(self._runner, path)
        body = report.body.encode()
        headers = [(k.lower().encode(), v.encode()) for k, v in _headers(report, body)]
        await send({"type": "http.response.start", "status": report.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})


def asgi_app(runner: "Optional[Runner]" = None) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI application answering the health endpoints by ``root_path + path``:
    ``app.router.routes.append(Route("/health", lameduck.health.asgi_app()))`` in
    FastAPI/Starlette (``starlette.routing.Route``; a ``Mount`` would redirect ``/health`` to
    ``/health/``)."""
    return _ASGIHealth(runner)


def aiohttp_handler(runner: "Optional[Runner]" = None) -> Callable[[Any], Awaitable[Any]]:
    """An aiohttp request handler answering the health endpoints by ``request.path``."""
    from aiohttp import web

    async def handler(request: Any) -> Any:
        report = _answer(runner, request.path)
        return web.Response(
            status=report.status,
            body=report.body.encode(),
            headers={"Content-Type": report.content_type, "Cache-Control": "no-store"},
        )

    return handler
