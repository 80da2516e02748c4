"""start_server side by side with Perl's: resident memory, idle CPU, and HUP -> new worker
started latency (the time until the status file lists the new generation).

    python3 benches/start_server_bench.py            (needs target/release/start_server, the
                                                      C demo in target/demo: run
                                                      `bash benches/upgrade_zero_loss.sh starter-c`
                                                      once, or `cargo build --release`)

Two workers: the lameduck C demo (reports READY=1, so ours counts it as started at once) and a
plain Python worker (no readiness report: both wait out --interval=1).
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ROOT / "target/release/start_server"
PERL = Path("/usr/bin/start_server")
ROUNDS = int(os.environ.get("ROUNDS", "10"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def generations(status: Path) -> list[int]:
    try:
        return [int(line.split(":")[0]) for line in status.read_text().splitlines() if ":" in line]
    except FileNotFoundError:
        return []


def wait_for(condition, limit: float = 30.0) -> None:
    until = time.monotonic() + limit
    while not condition():
        if time.monotonic() > until:
            raise TimeoutError
        time.sleep(0.001)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(binary: Path, worker: list[str], port: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        status = Path(tmp) / "status"
        proc = subprocess.Popen(
            [str(binary), f"--port=127.0.0.1:{port}", f"--status-file={status}", "--", *worker],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: generations(status) == [1])
            rss = rss_kib(proc.pid)
            before = cpu_seconds(proc.pid)
            time.sleep(5)
            idle = (cpu_seconds(proc.pid) - before) / 5 * 100
            latencies = []
            for n in range(2, ROUNDS + 2):
                start = time.monotonic()
                proc.send_signal(signal.SIGHUP)
                wait_for(lambda: n in generations(status))
                latencies.append((time.monotonic() - start) * 1000)
                wait_for(lambda: generations(status) == [n])
            latencies.sort()
            return (
                f"RSS {rss / 1024:5.1f} MiB, idle CPU {idle:4.2f}%, HUP -> new worker started: "
                f"median {statistics.median(latencies):7.1f} ms, max {latencies[-1]:7.1f} ms"
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def main() -> int:
    demo = ROOT / "target/demo/http_server"
    impls = [("lameduck start_server", OURS)] + ([("Perl start_server 0.35", PERL)] if PERL.exists() else [])
    port = free_port()
    workers = {
        "C demo (lameduck, READY=1)": [str(demo), "--listen", f"127.0.0.1:{port}"],
        "plain Python worker": [sys.executable, str(ROOT / "tests/start_server/worker.py")],
    }
    print(f"start_server benchmark, {ROUNDS} HUPs each, --interval=1 (the default)")
    for worker_name, worker in workers.items():
        for name, binary in impls:
            print(f"  {name:24} {worker_name:28} {measure(binary, worker, port)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
