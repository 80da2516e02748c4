"""Helpers: run tests/app.py in a subprocess, wait for its lines, talk HTTP over 127.0.0.1."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

APP = Path(__file__).with_name("app.py")
LIMIT = 30.0


class Process:
    """A test process; its stdout and stderr lines are collected as they arrive, tagged `out: `
    and `err: `. Both pipes reach EOF (see `wait_closed`) once every process holding them has
    exited, the new generations that upgrades started (they inherit them) included."""

    def __init__(self, argv: List[str], stdin: bool = False) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: List[str] = []
        self._cv = threading.Condition()
        self._open = 2
        for stream, tag in ((self.proc.stdout, "out"), (self.proc.stderr, "err")):
            threading.Thread(target=self._pump, args=(stream, tag), daemon=True).start()

    def _pump(self, stream: object, tag: str) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._cv:
                self.lines.append(f"{tag}: {line.rstrip()}")
                self._cv.notify_all()
        with self._cv:
            self._open -= 1
            self._cv.notify_all()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_closed(self, timeout: float = LIMIT) -> None:
        """Waits until the output pipes are closed: every process holding them is gone."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._open:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the output pipes are still open; got {self.lines}")
                self._cv.wait(left)

    def wait_for(self, pattern: str, timeout: float = LIMIT) -> "re.Match[str]":
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for line in self.lines:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matching {pattern!r}; got {self.lines}")
                self._cv.wait(left)

    def wait_count(self, pattern: str, n: int, timeout: float = LIMIT) -> "re.Match[str]":
        """Waits for the `n`th line matching `pattern`; returns its match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                found = [m for m in map(rx.search, self.lines) if m]
                if len(found) >= n:
                    return found[n - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fewer than {n} lines matching {pattern!r}; got {self.lines}")
                self._cv.wait(left)

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def finish(self, timeout: float = LIMIT) -> int:
        code = self.proc.wait(timeout)
        time.sleep(0.05)  # let the pumps read the last lines
        return code

    def text(self) -> str:
        with self._cv:
            return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class App(Process):
    """tests/app.py in a subprocess; `port` is the one it printed."""

    def __init__(self, *args: str, stdin: bool = False) -> None:
        super().__init__([sys.executable, str(APP), *args], stdin=stdin)
        self.port = int(self.wait_for(r"^out: port (\d+)").group(1))


@pytest.fixture
def start() -> Iterator[object]:
    apps: List[App] = []

    def _start(*args: str) -> App:
        app = App(*args)
        apps.append(app)
        app.wait_for(r"^out: state READY")
        return app

    yield _start
    for app in apps:
        app.kill()


def send(port: int, path: str, keep_alive: bool = False) -> socket.socket:
    """Sends one GET and returns the socket; read the answer with `response`."""
    s = socket.create_connection(("127.0.0.1", port), timeout=LIMIT)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n".encode())
    return s


def response(s: socket.socket, whole: bool = True) -> str:
    """Reads one response (headers + Content-Length body) or, with whole=True, until EOF."""
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        if not whole and b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            m = re.search(rb"content-length: *(\d+)", head, re.I)
            if m and len(body) >= int(m.group(1)):
                break
    return data.decode(errors="replace")


def get(port: int, path: str) -> str:
    with send(port, path) as s:
        return response(s)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return True  # queued as the listener closed (a server that does not drain): closed too
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_ours(pids: List[int], marker: str) -> None:
    """SIGKILLs each pid that is still one of ours: alive, and `marker` in its command line (so
    a pid reused since by another program is left alone)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


def wrk_path() -> Optional[str]:
    from shutil import which

    return which("wrk")


class Load:
    """Keep-alive HTTP/1.1 load: `connections` clients sending GET / back to back, reconnecting
    when the server answers `Connection: close`. Every failure is recorded with its reason."""

    def __init__(self, port: int, connections: int = 4) -> None:
        self.port = port
        self.ok = 0
        self.errors: List[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(connections)]
        for t in self._threads:
            t.start()

    def _client(self) -> None:
        import http.client

        conn: Optional[http.client.HTTPConnection] = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            try:
                conn.request("GET", "/")
                answer = conn.getresponse()
                answer.read()
                with self._lock:
                    if answer.status == 200:
                        self.ok += 1
                    else:
                        self.errors.append(f"status {answer.status}")
                if answer.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every failure counts
                with self._lock:
                    self.errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def wait_more(self, n: int, timeout: float = LIMIT) -> None:
        target = self.ok + n
        deadline = time.monotonic() + timeout
        while self.ok < target:
            assert time.monotonic() < deadline, f"load stalled at {self.ok}; errors {self.errors}"
            time.sleep(0.005)

    def stop(self) -> "tuple[int, List[str]]":
        self._stop.set()
        for t in self._threads:
            t.join(LIMIT)
        return self.ok, list(self.errors)
