"""A HUP storm under the Rust start_server (src/bin/start_server) with Python lameduck workers.

50 SIGHUPs 20 ms apart to start_server, keep-alive load, and slow requests started during the
storm so old workers are still in lame-duck when later generations arrive. start_server sends
each old worker TERM once, so nothing is lost and no worker sees a repeated signal. The C
worker version (and Perl's start_server for comparison) is tests/start_server_storm.rs.

Needs the start_server binary that `cargo test` / `cargo build` leaves in target/debug (or
$START_SERVER); skipped without it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

import pytest

from conftest import Load, response, send

APP = Path(__file__).with_name("app.py")
REPO = Path(__file__).resolve().parents[3]
LIMIT = 60.0
# The storm's generations start one after another: on a busy machine that takes minutes.
STORM_LIMIT = 240.0
HUPS = 50


def start_server_binary() -> Optional[Path]:
    if os.environ.get("START_SERVER"):
        return Path(os.environ["START_SERVER"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    for profile in ("debug", "release"):
        if (target / profile / "start_server").exists():
            return target / profile / "start_server"
    return None


BINARY = start_server_binary()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Starter:
    """start_server in its own process group; its (and its workers') output lines collected."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(BINARY), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            process_group=0,
        )
        self.lines: List[str] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()

    def wait_count(self, needle: str, n: int, limit: float = LIMIT) -> None:
        deadline = time.monotonic() + limit
        with self._cv:
            while sum(needle in line for line in self.lines) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"fewer than {n} lines with {needle!r}:\n{self.text()}"
                self._cv.wait(left)

    def text(self) -> str:
        with self._cv:
            return "\n".join(self.lines)

    def stop(self) -> None:
        """TERM (start_server stops its workers), then SIGKILL whatever is left in the group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def status_entries(path: Path) -> List[str]:
    try:
        return [line for line in path.read_text().splitlines() if line]
    except FileNotFoundError:
        return []


def wait_until(what: str, ok: Callable[[], bool], limit: float = LIMIT) -> None:
    deadline = time.monotonic() + limit
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.skipif(BINARY is None, reason="no start_server binary in target/ (run cargo build first)")
def test_a_hup_storm_under_start_server_loses_nothing(tmp_path: Path) -> None:
    port, status = free_port(), tmp_path / "status"
    address = f"127.0.0.1:{port}"
    run = Starter(
        f"--port={address}",
        f"--status-file={status}",
        "--interval=10",  # only READY=1 makes a worker count as started
        "--",
        sys.executable,
        str(APP),
        "--app",
        "http",
        "--listen",
        address,
        "--period",
        "3",
    )
    try:
        run.wait_count("state READY", 1)
        wait_until("generation 1", lambda: len(status_entries(status)) == 1)
        load = Load(port, 8)
        load.wait_more(50, LIMIT)
        slow: List[str] = []

        def slow_request() -> None:
            with send(port, "/sleep?ms=2000") as s:
                slow.append(response(s))

        threads = []
        for n in range(1, HUPS + 1):
            run.proc.send_signal(signal.SIGHUP)
            if n % 10 == 5:
                threads.append(threading.Thread(target=slow_request))
                threads[-1].start()
            time.sleep(0.02)
        for t in threads:
            t.join(LIMIT)

        # Settled: every HUP taken has its "killing old workers", and the old workers are gone.
        # Fewer HUPs than were sent may be taken: the kernel merges a HUP that arrives while the
        # previous one is still pending (start_server not scheduled for 20 ms on a busy machine).
        def settled() -> bool:
            text = run.text()
            hups = text.count("received HUP, spawning a new worker")
            return hups > 0 and hups == text.count("killing old workers") and len(status_entries(status)) == 1

        wait_until("the storm to settle", settled, STORM_LIMIT)
        hups = run.text().count("received HUP, spawning a new worker")
        load.wait_more(50, LIMIT)
        ok, errors = load.stop()
        run.proc.send_signal(signal.SIGTERM)
        run.wait_count("exiting", 1)
        text = run.text()
        print(f"ours, Python worker, {HUPS} HUPs sent, {hups} taken: {ok} requests ok, {len(errors)} lost", file=sys.stderr)
        assert errors == [], f"{len(errors)} of {ok + len(errors)} requests failed: {errors}\n{text}"
        answered = [a for a in slow if a.startswith("HTTP/1.1 200") and a.endswith("slept 2000 ms\n")]
        assert len(answered) == 5, f"slow requests: {slow}\n{text}"
        repeats = [line for line in text.splitlines() if "again;" in line or "forcing close" in line]
        assert repeats == [], text
        exits = re.findall(r"worker \d+ died, status:(\d+)", text)
        assert exits and set(exits) == {"0"}, text
        assert len(exits) == text.count("starting new worker") == hups + 1, text
    finally:
        run.stop()
