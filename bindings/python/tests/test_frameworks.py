"""lameduck.asgi / lameduck.wsgi: the framework examples (FastAPI on uvicorn, a plain ASGI app on
hypercorn, Flask on hypercorn's WSGI mode), each run as a real subprocess with real signals
and real HTTP over 127.0.0.1; plus the helpers' option checks in-process."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

import lameduck
import lameduck.asgi
import lameduck.wsgi
from conftest import Load, Process, free_port, kill_ours, refused, response, send

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "python"

#: Each example and the line it prints once every request is done (its lifespan shutdown; for
#: WSGI, which has none, the line after the run).
SHUTDOWN_LINE = {
    "fastapi_uvicorn.py": r"^out: lifespan shutdown",
    "asgi_hypercorn.py": r"^out: lifespan shutdown",
    "flask_wsgi.py": r"^out: shutdown: every request is done",
}


def start(script: str, *args: str) -> "tuple[Process, int]":
    port = free_port()
    proc = Process([sys.executable, str(EXAMPLES / script), str(port), *args])
    proc.wait_for(r"^out: state READY")
    return proc, port


def request(conn: socket.socket, path: str = "/") -> str:
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return response(conn, whole=False)


def closes(answer: str) -> bool:
    return re.search(r"(?im)^connection: *close", answer) is not None


@pytest.mark.parametrize("script", sorted(SHUTDOWN_LINE))
def test_sigterm_drains_finishes_in_flight_answers_kept_alive_and_shuts_down_once(script: str) -> None:
    proc, port = start(script, "--drain", "2", "--idle-grace", "3", "--period", "20")
    try:
        kept = send(port, "/", keep_alive=True)  # opened before the signal, kept alive
        first = response(kept, whole=False)
        assert first.startswith("HTTP/1.1 200") and not closes(first), first
        slow = send(port, "/sleep?ms=3000")
        proc.wait_for(r"^out: request /sleep\?ms=3000$")
        proc.signal(signal.SIGTERM)

        proc.wait_for(r"^out: state DRAINING")  # still serving, as before, for 2 s
        during_drain = request(kept)
        assert during_drain.startswith("HTTP/1.1 200") and not closes(during_drain), during_drain
        if script == "fastapi_uvicorn.py":  # lameduck.current_runner() inside a request handler
            with send(port, "/health") as health:
                answer = response(health)
            assert answer.startswith("HTTP/1.1 503") and '"state":"DRAINING"' in answer, answer

        proc.wait_for(r"lameduck.asgi: \w+: answering with Connection: close")  # the idle grace is 3 s
        during_shutdown = request(kept)
        assert during_shutdown.startswith("HTTP/1.1 200"), during_shutdown
        assert closes(during_shutdown), f"a kept-alive request in lame-duck must close: {during_shutdown}"
        assert response(kept) == "", "the server closes the connection after that answer"
        kept.close()

        deadline = time.monotonic() + 20
        while not refused(port):  # the listener closes once the grace is over
            assert time.monotonic() < deadline, "new connections are still accepted"
            time.sleep(0.05)
        answer = response(slow)
        assert answer.startswith("HTTP/1.1 200") and "3000" in answer, answer
        slow.close()
        assert proc.finish() == 0, proc.text()
        lines = proc.text().splitlines()
        assert lines.count("out: clean exit") == 1, proc.text()
        shutdowns = [i for i, line in enumerate(lines) if re.search(SHUTDOWN_LINE[script], line)]
        assert len(shutdowns) == 1, f"the shutdown hook ran {len(shutdowns)} times: {proc.text()}"
        done = lines.index("out: request /sleep?ms=3000 done")
        assert done < shutdowns[0], f"the lifespan shutdown ran before the request finished: {proc.text()}"
        assert "lameduck: Completed lame-duck mode" in proc.text()
        assert "Traceback" not in proc.text(), proc.text()
    finally:
        proc.kill()


@pytest.mark.parametrize("script", ["fastapi_uvicorn.py", "asgi_hypercorn.py"])
def test_a_request_longer_than_the_period_expires_and_the_process_exits_1(script: str) -> None:
    proc, port = start(script, "--period", "0.5", "--idle-grace", "0.1")
    try:
        slow = send(port, "/sleep?ms=20000")
        proc.wait_for(r"^out: request /sleep\?ms=20000$")
        proc.signal(signal.SIGTERM)
        assert proc.finish() == 1, proc.text()
        answer = response(slow)
        assert answer.startswith("HTTP/1.1 500"), f"the request was not cut: {answer}"
        assert "out: error ExpiredError: Lame-duck period has expired" in proc.text(), proc.text()
        # close() cut the request, so the server's shutdown ended and the lifespan shutdown ran
        assert proc.text().count("out: lifespan shutdown") == 1, proc.text()
        assert "out: request /sleep?ms=20000 done" not in proc.text()
    finally:
        proc.kill()


def test_sighup_upgrades_fastapi_on_uvicorn_without_refusing_a_connection() -> None:
    proc, port = start("fastapi_uvicorn.py")
    old = proc.proc.pid
    pids: List[int] = [old]
    refusals: List[str] = []
    stop = threading.Event()

    def connect_all_the_time() -> None:  # a new connection per request, through the upgrade
        while not stop.is_set():
            try:
                with send(port, "/") as s:
                    answer = response(s)
                if not answer.startswith("HTTP/1.1 200"):
                    refusals.append(f"answer {answer[:40]!r}")
            except OSError as e:
                refusals.append(f"{type(e).__name__}: {e}")

    probers = [threading.Thread(target=connect_all_the_time, daemon=True) for _ in range(3)]
    try:
        load = Load(port)  # keep-alive clients: reconnect when answered with Connection: close
        load.wait_more(20)
        for prober in probers:
            prober.start()
        proc.signal(signal.SIGHUP)
        new = int(proc.wait_for(r"lameduck: New process (\d+) is ready").group(1))
        pids.append(new)
        proc.wait_for(r"lameduck: The previous generation handed over")
        assert proc.finish() == 0, proc.text()  # the old generation exited cleanly
        load.wait_more(20)  # served by the new one
        stop.set()
        for prober in probers:
            prober.join(30)
        ok, errors = load.stop()
        assert errors == [] and refusals == [], f"{errors} {refusals}"
        with send(port, "/health") as s:
            answer = response(s)
        assert answer.startswith("HTTP/1.1 200") and f'"pid":{new}' in answer, answer
        assert proc.text().count("out: lifespan shutdown") == 1, proc.text()  # the old one's, once
        os.kill(new, signal.SIGTERM)  # the new generation is not our child: by pid
        proc.wait_closed()  # every generation exited
        assert proc.text().count("out: clean exit") == 2, proc.text()
        assert proc.text().count("out: lifespan shutdown") == 2, proc.text()
    finally:
        stop.set()
        started = [int(pid) for pid in re.findall(r"Started new process (\d+)", proc.text())]
        kill_ours(pids + started, "fastapi_uvicorn.py")
        proc.kill()


def test_the_readme_fastapi_quick_start_serves_and_exits_0_on_sigterm() -> None:
    port = free_port()
    proc = Process([sys.executable, str(Path(__file__).with_name("readme_fastapi.py")), str(port)])
    try:
        proc.wait_for(r"lameduck:Starting server")
        deadline = time.monotonic() + 30
        while True:
            try:
                with send(port, "/") as s:
                    answer = response(s)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.proc.poll() is None, proc.text()
                time.sleep(0.05)
        assert answer.startswith("HTTP/1.1 200") and '"state":"READY"' in answer, answer
        proc.signal(signal.SIGTERM)
        assert proc.finish() == 0, proc.text()
        assert "draining for 2s, then entering lame-duck mode for 10s" in proc.text()
        assert "lameduck:Completed lame-duck mode" in proc.text(), proc.text()
    finally:
        proc.kill()


async def asgi_app(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    pass


def wsgi_app(environ: Any, start_response: Any) -> List[bytes]:
    return []


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: lameduck.asgi.uvicorn(asgi_app, period="10"), TypeError, "period='10' must be a number of seconds"),
        (lambda: lameduck.asgi.uvicorn(asgi_app, drain_delay=-1), ValueError, "drain_delay=-1"),
        (lambda: lameduck.asgi.uvicorn(asgi_app, no_such_option=1), TypeError, "no_such_option"),
        (lambda: lameduck.asgi.uvicorn(asgi_app, port="8000"), TypeError, "port='8000' must be an int"),
        (lambda: lameduck.asgi.uvicorn(asgi_app, idle_grace="1"), TypeError, "idle_grace='1' must be a number"),
        (lambda: lameduck.asgi.uvicorn(asgi_app, max_connections=10), ValueError, "limit_concurrency"),
        (lambda: lameduck.asgi.uvicorn(asgi_app, config={"port": 80}), TypeError, "config: port: not supported"),
        (lambda: lameduck.asgi.uvicorn(asgi_app, config={"timeout_graceful_shutdown": 5}), TypeError, "period="),
        (lambda: lameduck.asgi.uvicorn(asgi_app, config={"no_such": 1}), TypeError, "no_such"),
        (lambda: lameduck.asgi.uvicorn(asgi_app, config=[("a", 1)]), TypeError, "must be a mapping"),
        (lambda: lameduck.asgi.uvicorn("app:main"), TypeError, "is not an ASGI application"),
        (lambda: lameduck.asgi.hypercorn(asgi_app, signals="TERM"), TypeError, "signals='TERM'"),
        (lambda: lameduck.asgi.hypercorn(asgi_app, mode="rsgi"), ValueError, "mode='rsgi'"),
        (lambda: lameduck.asgi.hypercorn(asgi_app, config={"kep_alive_timeout": 5}), TypeError, "kep_alive_timeout"),
        (lambda: lameduck.asgi.hypercorn(asgi_app, config={"bind": ["0:80"]}), TypeError, "config: bind"),
        (lambda: lameduck.wsgi.hypercorn(wsgi_app, period=0), ValueError, "period=0"),
        (lambda: lameduck.wsgi.hypercorn(wsgi_app, max_connections=5), ValueError, "max_connections=5"),
    ],
)
def test_bad_options_raise_clear_errors_before_anything_starts(call: Any, error: type, message: str) -> None:
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)
    assert lameduck.current_runner() is None


def test_the_helpers_return_their_runner_and_pass_runner_options_on() -> None:
    runner = lameduck.asgi.uvicorn(asgi_app, period=7.5, drain_delay=0.25, signals=())
    assert isinstance(runner, lameduck.Runner) and runner.state is lameduck.State.NOT_STARTED
    runner = lameduck.wsgi.hypercorn(wsgi_app, upgrade_timeout=5.0, max_connections=0)
    assert isinstance(runner, lameduck.Runner)
