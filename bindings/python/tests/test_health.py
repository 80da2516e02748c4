"""Health answers (issue 14) from Python: the built-in listener (``health=``) over real HTTP,
the adaptive drain (``drain_quiet=``), the WSGI/ASGI/aiohttp handlers on real servers, and the
options' errors. The rules themselves are the core's (tests/health.rs)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, List, Optional, Tuple
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

import lameduck
from conftest import LIMIT


class Waiter:
    """serve blocks until shutdown is called."""

    def __init__(self) -> None:
        self.stopped = threading.Event()

    def serve(self, ctx: lameduck.Context) -> None:
        self.stopped.wait(LIMIT)

    def shutdown(self, ctx: lameduck.Context) -> None:
        self.stopped.set()

    def close(self) -> None:
        self.stopped.set()


def get(url: str) -> Tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=LIMIT) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def start(**options: Any) -> Tuple[lameduck.Runner, threading.Thread, List[BaseException]]:
    runner = lameduck.Runner(Waiter(), signals=(), upgrade_signals=(), **options)
    errors: List[BaseException] = []

    def target() -> None:
        try:
            runner.run()
        except BaseException as e:  # noqa: B036 - reported to the test
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert runner.wait_ready(LIMIT)
    return runner, thread, errors


def test_the_listener_answers_and_the_adaptive_drain_ends_on_a_failed_probe() -> None:
    runner, thread, errors = start(health="127.0.0.1:0", drain_delay=30.0, drain_quiet=0.2)
    address = runner.health_address
    assert address is not None and address.startswith("127.0.0.1:") and not address.endswith(":0")
    assert get(f"http://{address}/ready") == (200, "ready\n")
    status, body = get(f"http://{address}/health")
    document = json.loads(body)
    assert status == 200 and document["state"] == "READY" and document["ready"] is True
    assert document["connections"]["limit"] is None and document["generation"] == 1
    assert runner.health("/live") == lameduck.health.HealthReport(200, "text/plain; charset=utf-8", "live\n")
    runner.stop()
    deadline = time.monotonic() + LIMIT
    while runner.state is not lameduck.State.DRAINING:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.4)  # quiet, but no probe has seen "not ready": the drain goes on
    assert runner.state is lameduck.State.DRAINING
    probed = time.monotonic()
    assert get(f"http://{address}/ready") == (503, "not ready: DRAINING\n")
    thread.join(LIMIT)
    assert not thread.is_alive() and errors == []
    assert time.monotonic() - probed < 30.0, "the drain ended before its fixed delay"
    assert runner.health_address is None


def test_wsgi_handler_on_a_real_server() -> None:
    runner, thread, errors = start()

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    # Without a runner, the handler asks lameduck.current_runner() at each request.
    server = make_server("127.0.0.1", 0, lameduck.health.wsgi_app(), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert get(f"http://127.0.0.1:{port}/ready") == (200, "ready\n")
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200
        assert get(f"http://127.0.0.1:{port}/other")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
    runner.stop()
    thread.join(LIMIT)
    assert errors == []
    assert lameduck.current_runner() is None
    sent: List[Any] = []

    async def call() -> None:
        async def receive() -> Any:
            return {"type": "http.request"}

        async def send(message: Any) -> None:
            sent.append(message)

        await lameduck.health.asgi_app()({"type": "http", "method": "GET", "path": "/ready"}, receive, send)

    asyncio.run(call())
    assert sent[0]["status"] == 503 and sent[1]["body"] == b"not ready: no run in progress\n"


def test_aiohttp_and_asgi_handlers_on_a_real_loop() -> None:
    from aiohttp import web

    # The adaptive drain ends the drain once the handler answered a probe "not ready".
    runner, thread, errors = start(drain_delay=30.0, drain_quiet=0.2)

    async def main() -> None:
        app = web.Application()
        handler = lameduck.health.aiohttp_handler(runner)
        for path in ("/ready", "/live", "/health"):
            app.router.add_get(path, handler)
        web_runner = web.AppRunner(app)
        await web_runner.setup()
        site = web.TCPSite(web_runner, "127.0.0.1", 0)
        await site.start()
        port = web_runner.addresses[0][1]
        loop = asyncio.get_running_loop()
        try:
            assert await loop.run_in_executor(None, get, f"http://127.0.0.1:{port}/ready") == (200, "ready\n")
            runner.stop()
            while runner.state is not lameduck.State.DRAINING:
                await asyncio.sleep(0.005)
            assert await loop.run_in_executor(None, get, f"http://127.0.0.1:{port}/ready") == (503, "not ready: DRAINING\n")
            assert (await loop.run_in_executor(None, get, f"http://127.0.0.1:{port}/live"))[0] == 200
        finally:
            await web_runner.cleanup()
        # The ASGI app, driven through the ASGI protocol itself.
        sent: List[Any] = []

        async def receive() -> Any:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            sent.append(message)

        app_asgi = lameduck.health.asgi_app(runner)
        await app_asgi({"type": "http", "method": "GET", "path": "/health", "root_path": ""}, receive, send)
        assert sent[0]["status"] == 503 and (b"content-type", b"application/json") in sent[0]["headers"]
        assert json.loads(sent[1]["body"])["ready"] is False

    asyncio.run(main())
    thread.join(LIMIT)
    assert not thread.is_alive() and errors == []


@pytest.mark.parametrize(
    "options, error, needle",
    [
        ({"health": 8081}, TypeError, "health="),
        ({"health": "[::1:80"}, ValueError, "health"),
        ({"drain_quiet": 1.0}, ValueError, "drain_quiet"),
        ({"drain_quiet": -1.0}, ValueError, "drain_quiet"),
        ({"drain_delay": 1.0, "drain_quiet": 1.0}, ValueError, "shorter than the drain delay"),
    ],
)
def test_bad_options_raise_naming_them(options: Any, error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        lameduck.Runner(Waiter(), **options)
