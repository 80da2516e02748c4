"""The connection gate (issue 13): max_connections, run-time changes, lame-duck with a full gate,
counts without drift, for each adapter in a real subprocess with real sockets and signals, and
the Gate/Permit API in process."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import threading
import time
from typing import Callable, Dict, List, Optional

import pytest

import lameduck
from conftest import LIMIT, App

ADAPTERS = ["http", "asyncio", "aiohttp"]

#: How long a "nothing more happens" check looks: the thing it rules out would take
#: milliseconds, so this is generous without slowing the suite much.
QUIET = 0.4


def until(what: str, done: Callable[[], bool], timeout: float = LIMIT) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Client:
    """A client holding its connection: connects, sends one keep-alive GET, and a thread reads
    the answer (headers and Content-Length body). A reset is recorded, never hidden."""

    def __init__(self, port: int, path: str = "/", keep_alive: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=LIMIT)
        header = "keep-alive" if keep_alive else "close"
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {header}\r\n\r\n".encode())
        self.answer = ""
        self.error: Optional[str] = None
        self.answered = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        data = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                m = re.search(rb"content-length: *(\d+)", head, re.I)
                if sep and m and len(body) >= int(m.group(1)):
                    break
        except OSError as e:
            self.error = f"{type(e).__name__}: {e}"
        self.answer = data.decode(errors="replace")
        self.answered.set()

    @property
    def ok(self) -> bool:
        return self.answered.is_set() and self.answer.startswith("HTTP/1.1 200")

    def is_open(self) -> bool:
        """True while the server has not closed the connection (no EOF, no reset waiting)."""
        self.sock.setblocking(False)
        try:
            return self.sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            self.sock.setblocking(True)

    def rest(self) -> str:
        """Reads to EOF what follows the answer; raises on a reset."""
        data = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return data.decode(errors="replace")
            data += chunk

    def close(self) -> None:
        self.sock.close()


class GateApp(App):
    """tests/app.py with stdin commands (`limit N`, `stats`)."""

    def __init__(self, kind: str, *args: str) -> None:
        # The http app's own socket has socketserver's backlog of 5; clients above the limit
        # wait in the backlog, so it takes lameduck.listen's (SOMAXCONN).
        listen = ("--listen", "127.0.0.1:0") if kind == "http" else ()
        super().__init__("--app", kind, "--commands", *listen, *args, stdin=True)
        self.wait_for(r"^out: state READY")
        self._asked = 0
        self._limits = 0

    def stats(self) -> Dict[str, str]:
        self._asked += 1
        self.send("stats")
        line = self.wait_count(r"^out: stats (.*)$", self._asked).group(1)
        return dict(item.split("=", 1) for item in line.split())

    def limit(self, n: int) -> str:
        self._limits += 1
        self.send(f"limit {n}")
        return self.wait_count(r"^out: limit \S+ free-before (\S+)$", self._limits).group(1)


@pytest.fixture
def app_of() -> "Callable[..., GateApp]":
    apps: List[GateApp] = []

    def _start(kind: str, *args: str) -> GateApp:
        app = GateApp.__new__(GateApp)
        apps.append(app)  # killed at the end even if it fails to start
        app.__init__(kind, *args)  # type: ignore[misc]
        return app

    yield _start  # type: ignore[misc]
    for app in apps:
        if getattr(app, "proc", None) is not None:
            app.kill()


def answered(clients: List[Client]) -> List[Client]:
    return [c for c in clients if c.answered.is_set()]


@pytest.mark.parametrize("kind", ADAPTERS)
def test_limit_10_of_100_clients_holding_their_connections(app_of, kind):
    app = app_of(kind, "--max-connections", "10")
    lock = threading.Lock()
    now = [0, 0]  # admitted now, most at once (counted by the clients)
    results: List[Client] = []

    def client() -> None:
        c = Client(app.port)
        c.answered.wait(LIMIT)
        with lock:
            results.append(c)
            now[0] += 1
            now[1] = max(now[1], now[0])
        time.sleep(0.05)  # holds the connection for a while after its answer
        with lock:
            now[0] -= 1
        c.close()

    threads = [threading.Thread(target=client) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LIMIT * 2)
    assert len(results) == 100
    assert [c.error for c in results if c.error] == [], "no client was refused or reset"
    assert all(c.ok for c in results), [c.answer[:40] for c in results if not c.ok]
    assert now[1] <= 10, f"{now[1]} clients had their answer at once"
    until("every connection to close", lambda: app.stats()["admitted"] == "0")
    stats = app.stats()
    assert stats["limit"] == "10"
    assert stats["total"] == "100", stats
    assert int(stats["peak"]) == 10, stats


@pytest.mark.parametrize("kind", ADAPTERS)
def test_raising_admits_waiting_clients_and_lowering_closes_none(app_of, kind):
    app = app_of(kind, "--max-connections", "10")
    clients = [Client(app.port) for _ in range(60)]
    try:
        until("10 answers", lambda: len(answered(clients)) == 10)
        time.sleep(QUIET)
        assert len(answered(clients)) == 10, "the gate admitted more than its limit"
        assert app.stats()["admitted"] == "10"

        began = time.monotonic()
        assert app.limit(50) == "0"  # free slots before the change
        until("50 answers", lambda: len(answered(clients)) == 50, timeout=10)
        assert time.monotonic() - began < 5, "raising the limit did not admit the waiting clients promptly"
        stats = app.stats()
        assert (stats["admitted"], stats["peak"], stats["limit"]) == ("50", "50", "50"), stats

        assert app.limit(5) == "0"
        time.sleep(QUIET)
        active = answered(clients)
        assert len(active) == 50, "lowering admitted a new connection"
        assert all(c.is_open() for c in active), "lowering closed a live connection"
        for c in active[:45]:
            c.close()
        until("45 connections to close", lambda: app.stats()["admitted"] == "5")
        time.sleep(QUIET)
        assert len(answered(clients)) == 50, "admitted a connection with 5 open at limit 5"
        active[45].close()
        until("a waiting client to be admitted", lambda: len(answered(clients)) == 51, timeout=10)
        time.sleep(QUIET)
        assert len(answered(clients)) == 51
        assert app.stats()["admitted"] == "5"
        assert [c.error for c in clients if c.error] == []
        assert all(c.ok for c in answered(clients))
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("kind", ADAPTERS)
def test_lame_duck_with_a_full_gate_serves_the_queued_clients(app_of, kind):
    app = app_of(kind, "--max-connections", "2", "--period", "20", "--idle-grace", "0.5")
    holders = [Client(app.port) for _ in range(2)]
    until("the holders' answers", lambda: all(c.answered.is_set() for c in holders))
    queued = [Client(app.port) for _ in range(3)]
    time.sleep(QUIET)
    assert answered(queued) == []
    assert app.stats()["waiting"] == "1", "the accept side waits on the gate"
    began = time.monotonic()
    app.signal(signal.SIGTERM)
    app.wait_for(r"^out: state SHUTTING_DOWN")
    assert time.monotonic() - began < 5, "lame-duck did not begin promptly with the accept side blocked"
    for c in queued:
        assert c.answered.wait(LIMIT), "a queued client was not answered"
        assert c.error is None, c.error
        assert c.ok and re.search(r"(?i)connection: close", c.answer), c.answer
        assert c.rest() == ""  # then closed cleanly by the server
    for c in holders:
        assert c.ok and c.rest() == ""  # idle past the grace: closed cleanly
    assert app.finish() == 0, app.text()
    assert "out: clean exit" in app.text()
    for c in holders + queued:
        c.close()


@pytest.mark.parametrize("kind", ADAPTERS)
def test_close_cuts_what_is_left_at_the_deadline(app_of, kind):
    app = app_of(kind, "--max-connections", "1", "--period", "1")
    busy = Client(app.port, "/sleep?ms=60000")
    app.wait_for(r"app: request GET /sleep")
    queued = Client(app.port)
    time.sleep(QUIET)
    assert not queued.answered.is_set()
    began = time.monotonic()
    app.signal(signal.SIGTERM)
    assert app.finish() == 1, app.text()
    assert time.monotonic() - began < 15, "the run did not end at the deadline"
    assert re.search(r"out: error ExpiredError", app.text()), app.text()
    assert busy.answered.wait(LIMIT) and not busy.ok  # cut by close
    busy.close()
    queued.close()


@pytest.mark.parametrize("kind", ADAPTERS)
def test_counts_do_not_drift_over_10000_connections(app_of, kind):
    app = app_of(kind, "--max-connections", "3")
    errors: List[str] = []

    def client(n: int) -> None:
        for _ in range(n):
            c = Client(app.port, keep_alive=False)
            if not c.answered.wait(LIMIT) or not c.ok:
                errors.append(c.error or c.answer[:40])
            c.close()

    threads = [threading.Thread(target=client, args=(2500,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    until("every connection to close", lambda: app.stats()["admitted"] == "0")
    stats = app.stats()
    assert (stats["admitted"], stats["total"], stats["waiting"]) == ("0", "10000", "0"), stats
    assert 1 <= int(stats["peak"]) <= 3, stats


def test_aiohttp_counts_requests_in_flight(app_of):
    app = app_of("aiohttp")
    slow = Client(app.port, "/sleep?ms=3000")
    app.wait_for(r"app: request GET /sleep")
    stats = app.stats()
    assert (stats["admitted"], stats["requests"]) == ("1", "1"), stats
    slow.close()


# ---------------------------------------------------------------------------------------------
# The API, in process (no signals: runner.stop()).


class Idle:
    """A server whose hooks return at once; a test holds permits of its own."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.ctx: Optional[lameduck.Context] = None

    def serve(self, ctx: lameduck.Context) -> None:
        self.ctx = ctx
        self.stopped.wait()

    def shutdown(self, ctx: lameduck.Context) -> None:
        self.stopped.set()

    def close(self) -> None:
        self.stopped.set()


def run_in_thread(runner: lameduck.Runner) -> "tuple[threading.Thread, List[BaseException]]":
    errors: List[BaseException] = []

    def target() -> None:
        try:
            runner.run()
        except BaseException as e:  # noqa: BLE001 - reported to the test
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert runner.wait_ready(LIMIT)
    return thread, errors


def test_the_run_ends_only_when_the_gate_is_empty_and_close_cuts_at_the_deadline():
    server = Idle()
    runner = lameduck.Runner(server, signals=(), period=20, logger=False)
    thread, errors = run_in_thread(runner)
    until("serve to run", lambda: server.ctx is not None)
    assert server.ctx is not None and server.ctx.gate is runner.gate and runner.gate.limit is None
    held = server.ctx.gate.acquire()
    runner.stop()
    until("shutdown", lambda: server.stopped.is_set())
    thread.join(QUIET)
    assert thread.is_alive(), "the run ended with a connection still open"
    assert runner.connection_stats().phase == "draining"
    with pytest.raises(lameduck.GateClosedError):
        runner.gate.acquire()  # lame-duck admits no new connection, at once
    assert runner.gate.try_acquire(queued=True) is not None  # a queued one is (unlimited)
    assert held.release() is True
    thread.join(LIMIT)
    assert not thread.is_alive() and errors == []
    assert runner.state == lameduck.State.STOPPED
    assert runner.connection_stats().phase == "closed"

    server = Idle()
    runner = lameduck.Runner(server, signals=(), period=0.3, logger=False)
    thread, errors = run_in_thread(runner)
    kept = runner.gate.acquire()
    runner.stop()
    thread.join(LIMIT)
    assert len(errors) == 1 and isinstance(errors[0], lameduck.ExpiredError), errors
    kept.release()


def test_a_blocked_acquire_returns_at_once_when_lame_duck_begins():
    server = Idle()
    runner = lameduck.Runner(server, signals=(), period=5, logger=False, max_connections=1)
    thread, errors = run_in_thread(runner)
    held = runner.gate.acquire()
    outcome: List[BaseException] = []

    def accept_loop() -> None:
        try:
            runner.gate.acquire()
        except BaseException as e:  # noqa: BLE001
            outcome.append(e)

    blocked = threading.Thread(target=accept_loop)
    blocked.start()
    until("the accept loop to wait", lambda: runner.connection_stats().waiting == 1)
    runner.stop()
    blocked.join(LIMIT)
    assert len(outcome) == 1 and isinstance(outcome[0], lameduck.GateClosedError), outcome
    assert outcome[0].kind == "GATE_CLOSED"
    held.release()
    thread.join(LIMIT)
    assert errors == []


def test_permits_release_once_and_counts_stay_right():
    runner = lameduck.Runner(Idle(), signals=(), max_connections=3, logger=False)
    gate = runner.gate
    for _ in range(10_000):
        with gate.acquire() as permit:
            assert not permit.released
        assert permit.released and permit.release() is False
    p = gate.acquire(timeout=1)
    assert p.release() is True and p.release() is False and p.release() is False
    stats = runner.connection_stats()
    assert (stats.admitted, stats.total, stats.peak, stats.waiting) == (0, 10_001, 1, 0), stats
    assert stats._asdict()["limit"] == 3
    held = [gate.try_acquire() for _ in range(3)]
    assert all(held) and gate.try_acquire() is None and gate.free == 0
    with pytest.raises(TimeoutError):
        gate.acquire(timeout=0.05)
    assert runner.set_max_connections(5) == 0 and gate.free == 2
    runner.max_connections = 0
    assert runner.max_connections is None and gate.free is None
    assert runner.set_max_connections(None) is None
    for p in held:
        assert p is not None and p.release()
    assert gate.admitted == 0


def test_acquire_async_waits_without_blocking_the_loop():
    runner = lameduck.Runner(Idle(), signals=(), max_connections=1, logger=False)
    gate = runner.gate

    async def main() -> None:
        first = await gate.acquire_async()
        waiter = asyncio.ensure_future(gate.acquire_async())
        while runner.connection_stats().waiting == 0:  # the helper thread waits, not the loop
            await asyncio.sleep(0.001)
        assert not waiter.done()
        first.release()
        second = await asyncio.wait_for(waiter, LIMIT)
        with pytest.raises(TimeoutError):
            await gate.acquire_async(timeout=0.05)
        cancelled = asyncio.ensure_future(gate.acquire_async())
        await asyncio.sleep(0.05)
        cancelled.cancel()
        second.release()
        deadline = time.monotonic() + LIMIT
        while gate.admitted:  # the permit the helper got for the cancelled waiter comes back
            assert time.monotonic() < deadline, "the helper kept a slot nobody waits for"
            await asyncio.sleep(0.005)

    asyncio.run(main())
    assert gate.admitted == 0


@pytest.mark.parametrize(
    "value, error",
    [(-1, ValueError), (2**31, ValueError), (True, TypeError), (1.5, TypeError), ("10", TypeError)],
)
def test_invalid_limits_are_refused_naming_the_option(value, error):
    with pytest.raises(error, match="max_connections"):
        lameduck.Runner(Idle(), signals=(), max_connections=value)
    runner = lameduck.Runner(Idle(), signals=(), max_connections=7)
    with pytest.raises(error, match="max_connections"):
        runner.max_connections = value
    with pytest.raises(error, match="max_connections"):
        runner.set_max_connections(value)
    assert runner.max_connections == 7, "a refused limit changes nothing"
    assert lameduck.Runner(Idle(), signals=(), max_connections=2**31 - 1).max_connections == 2**31 - 1
