"""Python benchmarks (prints numbers; not pass/fail).

    .venv/bin/python benches/python_bench.py [--seconds 5] [--runs 200]

1. Requests per second under `wrk -t1 -c20` keep-alive load, with and without lameduck, for
   http.server.ThreadingHTTPServer and for an asyncio.start_server HTTP server. Each pair
   runs alternately (ABBA order), six rounds; the median round is printed with the with/without ratio.
2. Signal -> shutdown hook latency in Python: SIGTERM sent with os.kill from a helper thread,
   measured to the first line of the Python shutdown hook (median, p99).
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, List

import lameduck
import lameduck.adapters

BODY = b"hello\n"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


#: The asyncio adapter in the lameduck server, None in the bare one.
ADAPTER: Any = None


async def asyncio_handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The one handler both asyncio servers run, given straight to start_server or to the
    adapter: no wrapper coroutine of ours on either side, so only lameduck differs (the
    adapter's own per-connection task, and what it asks of a handler: next_request, lame_duck)."""
    adapter = ADAPTER
    try:
        while True:
            read = reader.readline()
            line = await (adapter.next_request(read) if adapter is not None else read)
            if not line:
                break
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            closing = adapter is not None and adapter.lame_duck
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: "
                + (b"close" if closing else b"keep-alive")
                + b"\r\n\r\n"
                + BODY
            )
            await writer.drain()
            if closing:
                break
    except ConnectionError:
        pass  # wrk resets its connections when it stops
    writer.close()


def serve(kind: str, with_lameduck: bool) -> None:
    """Runs in a child process on CPU 0 (wrk gets CPU 1); prints the port, serves until SIGTERM."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    if kind == "threading":
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        print(srv.server_address[1], flush=True)
        if with_lameduck:
            lameduck.run(lameduck.adapters.http_server(srv), logger=False)
        else:
            signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=srv.shutdown).start())
            srv.serve_forever()
        return

    async def main() -> None:
        global ADAPTER
        if with_lameduck:
            adapter = ADAPTER = lameduck.adapters.asyncio_server(asyncio_handle, "127.0.0.1", 0)
            runner = lameduck.Runner(
                adapter,
                logger=False,
                explicit_ready=True,
                on_state_change=lambda old, new: new == "READY"
                and print(adapter.sockets[0].getsockname()[1], flush=True),
            )
            await runner.run_async()
        else:
            server = await asyncio.start_server(asyncio_handle, "127.0.0.1", 0)
            print(server.sockets[0].getsockname()[1], flush=True)
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()
            server.close()

    asyncio.run(main())


def requests_per_second(kind: str, with_lameduck: bool, seconds: int) -> float:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind] + (["--lameduck"] if with_lameduck else []),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        pin = ["taskset", "-c", "1"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
        out = subprocess.run(
            pin + ["wrk", "-t1", "-c20", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()


class Probe:
    def __init__(self) -> None:
        self.released = threading.Event()
        self.entered = 0.0

    def serve(self, ctx: lameduck.Context) -> None:
        self.released.wait()

    def shutdown(self, ctx: lameduck.Context) -> None:
        self.entered = time.perf_counter()
        self.released.set()

    def close(self) -> None:
        self.released.set()


def signal_latency(runs: int) -> List[float]:
    samples = []
    for _ in range(runs):
        probe = Probe()
        runner = lameduck.Runner(probe, logger=False)
        sent = [0.0]

        def fire() -> None:
            runner.wait_ready()
            sent[0] = time.perf_counter()
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=fire).start()
        runner.run()
        samples.append(probe.entered - sent[0])
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve")
    parser.add_argument("--lameduck", action="store_true")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.lameduck)
        return
    print(f"lameduck {lameduck.__version__} Python benchmarks (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk); skipping requests/s")
    else:
        for kind in ("threading", "asyncio"):
            rounds = []
            for i in range(args.rounds):
                # Alternate which one goes first (ABBA), so drift on a shared machine cancels out.
                order = (False, True) if i % 2 == 0 else (True, False)
                measured = {ld: requests_per_second(kind, ld, args.seconds) for ld in order}
                rounds.append((measured[True] / measured[False], measured[False], measured[True]))
            ratio, plain, with_ld = sorted(rounds)[len(rounds) // 2]
            print(
                f"{kind:<10} requests/s without lameduck {plain:>9.0f}   with {with_ld:>9.0f}   "
                f"ratio {ratio:.3f}   (rounds: {', '.join(f'{r[0]:.3f}' for r in rounds)})"
            )
    samples = sorted(signal_latency(args.runs))
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(
        f"signal -> Python shutdown hook: n={len(samples)} median {statistics.median(samples) * 1e3:.3f} ms   "
        f"p99 {p99 * 1e3:.3f} ms   max {samples[-1] * 1e3:.3f} ms"
    )


if __name__ == "__main__":
    main()
