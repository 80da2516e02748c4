"""The built-in health listener under load: `wrk --latency` against /ready of a Python-hosted
runner (the listener is the core's own thread, so the host language does not matter), in READY
and in DRAINING, with 1 and 64 connections. Prints requests/s, p50/p99 latency and the share
of answers that were not 200.

    .venv/bin/python benches/health_load.py [--seconds 5]

Needs wrk (scripts/test-all.sh installs it) and lameduck in the venv.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import threading
import time

import lameduck


class Waiter:
    def __init__(self) -> None:
        self.stopped = threading.Event()

    def serve(self, ctx: lameduck.Context) -> None:
        self.stopped.wait()

    def shutdown(self, ctx: lameduck.Context) -> None:
        self.stopped.set()

    def close(self) -> None:
        self.stopped.set()


def wrk(url: str, connections: int, seconds: int) -> str:
    threads = min(2, connections)
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def summary(out: str) -> str:
    def find(pattern: str) -> str:
        m = re.search(pattern, out)
        return m.group(1) if m else "?"

    requests = int(find(r"(\d+) requests in"))
    non_2xx = int(find(r"Non-2xx or 3xx responses: (\d+)") if "Non-2xx" in out else 0)
    errors = "none" if "Socket errors" not in out else find(r"Socket errors: ([^\n]+)")
    rate = float(find(r"Requests/sec:\s+([\d.]+)"))
    p50, p99 = find(r"50%\s+(\S+)"), find(r"99%\s+(\S+)")
    return f"{rate:>9.0f} req/s  p50 {p50:>8}  p99 {p99:>8}  non-200 {non_2xx / max(requests, 1):6.1%}  socket errors: {errors}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    runner = lameduck.Runner(Waiter(), signals=(), upgrade_signals=(), health="127.0.0.1:0", drain_delay=600.0)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    runner.wait_ready(30)
    url = f"http://{runner.health_address}/ready"
    for phase in ("READY", "DRAINING"):
        if phase == "DRAINING":
            runner.stop()
            while runner.state is not lameduck.State.DRAINING:
                time.sleep(0.01)
        for connections in (1, 64):
            print(f"{phase:<9} -c{connections:<3} {summary(wrk(url, connections, args.seconds))}", flush=True)


if __name__ == "__main__":
    main()
