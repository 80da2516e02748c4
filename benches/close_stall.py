"""How long does a connection that arrives at the moment a server closes its listener wait?
(Prints numbers; not pass/fail.)

    .venv/bin/python benches/close_stall.py [--rounds 10] [--clients 4] [SERVER ...]

SERVER is one of c (examples/http_server.c), http, asyncio, aiohttp (the Python adapters, in
bindings/python/tests/app.py), node (Node's httpServer, in bindings/node/test/app.js); default:
all five. Each round starts the server (drain delay 0), has --clients processes hammer it with
fresh connections (connect, one `GET /` with `Connection: close`, read to the end), sends
SIGTERM 300 ms in, and stops starting new attempts 50 ms after the server has exited; attempts
already started run to their end. Every attempt ends as one of:

- served:  a 2xx answer;
- 503:     another HTTP answer (the C demo refuses what it cannot admit at the deadline so);
- refused: connect() failed with ECONNREFUSED (the listener was closed);
- lost:    connect() succeeded, then the connection was reset or closed without an answer
           (closing a listener resets the connections still in its accept queue);
- timeout: connect() did not complete within 5 s;
- error:   connect() failed otherwise.

"stalled" counts the attempts, of any outcome, whose connect() took longer than 500 ms: a SYN
the server dropped (the drop filter of src/listener/drain.rs) is retransmitted by the client
after the initial RTO of 1 s, and only then refused or served. Also printed: the slowest
connect() and the median and slowest time to "connection refused".

Needs the C demo (built here, release, as benches/upgrade_zero_loss.sh does), the project
venv with lameduck and aiohttp (`pip install -r bindings/python/tests/requirements.txt
./bindings/python`) and bindings/node built (`npm install` there).
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
STALL = 0.5  # seconds: far below the 1 s initial RTO, far above a loopback connect
CONNECT_LIMIT = 5.0
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
OUTCOMES = ("served", "503", "refused", "lost", "timeout", "error")


def build_c_demo() -> Path:
    subprocess.run(["cargo", "build", "--release", "--lib", "--quiet"], cwd=REPO, check=True)
    demo = REPO / "target" / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    lib = demo / "liblameduck.so.0"
    lib.write_bytes((REPO / "target" / "release" / "liblameduck.so").read_bytes())
    link = demo / "liblameduck.so"
    if not link.is_symlink():
        link.symlink_to("liblameduck.so.0")
    binary = demo / "http_server"
    subprocess.run(
        ["cc", "-std=c11", "-O2", "-pthread", f"-I{REPO / 'include'}", str(REPO / "examples" / "http_server.c"),
         f"-L{demo}", "-llameduck", f"-Wl,-rpath,{demo}", "-o", str(binary)],
        check=True,
    )
    return binary


def command(server: str, c_demo: Optional[Path]) -> List[str]:
    app = str(REPO / "bindings" / "python" / "tests" / "app.py")
    if server == "c":
        assert c_demo is not None
        return [str(c_demo), "--port", "0", "--period", "3000"]
    if server in ("http", "asyncio", "aiohttp"):
        return [sys.executable, app, "--app", server, "--period", "3"]
    if server == "node":
        return ["node", str(REPO / "bindings" / "node" / "test" / "app.js"), "--app", "http", "--period", "3000"]
    raise SystemExit(f"unknown server {server!r} (c, http, asyncio, aiohttp, node)")


class Server:
    """The server process; its output lines (stdout and stderr) collected."""

    def __init__(self, argv: List[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        self.lines: List[str] = []
        self.eof = False
        self.cv = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cv:
                self.lines.append(line.rstrip("\n"))
                self.cv.notify_all()
        with self.cv:
            self.eof = True
            self.cv.notify_all()

    def wait_for(self, pattern: str, limit: float = 60.0) -> "re.Match[str]":
        rx, deadline = re.compile(pattern), time.monotonic() + limit
        with self.cv:
            while True:
                for line in self.lines:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    raise SystemExit(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))
                self.cv.wait(left)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def attempt(port: int) -> "tuple[str, float]":
    """One connection: its outcome and how long its connect() took."""
    s = socket.socket()
    s.settimeout(CONNECT_LIMIT)
    started = time.monotonic()
    try:
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return "refused", time.monotonic() - started
        except socket.timeout:
            return "timeout", time.monotonic() - started
        except OSError:
            return "error", time.monotonic() - started  # anything else (EADDRNOTAVAIL…)
        took = time.monotonic() - started
        s.settimeout(10.0)
        answer = b""
        try:
            s.sendall(REQUEST)
            while True:
                data = s.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
        if answer.startswith(b"HTTP/1.1 2"):
            return "served", took
        return ("503" if answer.startswith(b"HTTP/") else "lost"), took
    finally:
        s.close()


def client(port: int, stop_at: Any, results: Any) -> None:
    """Hammers the port until the shared stop time (monotonic seconds; 0: not set yet) passes."""
    counts: Dict[str, int] = dict.fromkeys(OUTCOMES, 0)
    stalled, slowest, refused_times = 0, 0.0, []
    while stop_at.value == 0 or time.monotonic() < stop_at.value:
        outcome, took = attempt(port)
        counts[outcome] += 1
        stalled += took > STALL
        slowest = max(slowest, took)
        if outcome == "refused":
            refused_times.append(took)
    results.put((counts, stalled, slowest, refused_times))


def one_round(argv: List[str], clients: int) -> "tuple[Dict[str, int], int, float, List[float]]":
    server = Server(argv)
    try:
        port = int(server.wait_for(r"(?:^port |listening on http://127\.0\.0\.1:)(\d+)").group(1))
        server.wait_for(r"state READY")
        ctx = multiprocessing.get_context("fork")
        stop_at, results = ctx.Value("d", 0.0), ctx.Queue()
        procs = [ctx.Process(target=client, args=(port, stop_at, results)) for _ in range(clients)]
        for p in procs:
            p.start()
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
        stop_at.value = time.monotonic() + 0.05
        total: Dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        stalled, slowest, refused_times = 0, 0.0, []
        for _ in procs:
            counts, s, w, r = results.get(timeout=60)
            for k, v in counts.items():
                total[k] += v
            stalled, slowest, refused_times = stalled + s, max(slowest, w), refused_times + r
        for p in procs:
            p.join()
        return total, stalled, slowest, refused_times
    finally:
        server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("servers", nargs="*", default=["c", "http", "asyncio", "aiohttp", "node"])
    args = parser.parse_args()
    c_demo = build_c_demo() if "c" in args.servers else None
    print(f"{args.rounds} SIGTERMs per server (drain delay 0) under {args.clients} hammering clients; "
          f"stalled = connect() over {STALL * 1000:.0f} ms")
    for server in args.servers:
        argv = command(server, c_demo)
        total: Dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        stalled, slowest, refused_times = 0, 0.0, []
        for _ in range(args.rounds):
            counts, s, w, r = one_round(argv, args.clients)
            for k, v in counts.items():
                total[k] += v
            stalled, slowest, refused_times = stalled + s, max(slowest, w), refused_times + r
        refused = (
            f"median {statistics.median(refused_times) * 1e3:.2f} ms, max {max(refused_times) * 1e3:.1f} ms"
            if refused_times
            else "none"
        )
        print(f"== {server}: " + ", ".join(f"{k} {v}" for k, v in total.items()))
        print(f"   stalled {stalled} ({stalled / args.rounds:.1f} per SIGTERM), slowest connect "
              f"{slowest * 1e3:.0f} ms; time to refusal: {refused}", flush=True)


if __name__ == "__main__":
    main()
