"""The README's Python quick starts (readme_http_server.py, readme_aiohttp.py, shown there as
they are) upgraded 8 times with SIGHUP under `wrk -c20` keep-alive load (and, for aiohttp, a
second wrk whose every request is a new connection): no request is lost.

Each SIGHUP goes to the current generation once the previous upgrade is over: the old process
logged `New process N is ready` and N logged that the previous generation handed over. Every
generation inherits the first one's output pipes, so their EOF means all of them have exited.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import Process, free_port, get, kill_ours, wrk_path

HERE = Path(__file__).parent
UPGRADES = 8


def wait_answers(port: int, proc: Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if get(port, "/").startswith("HTTP/1.1 200"):
                return
        except OSError:
            pass
        assert proc.proc.poll() is None, proc.text()
        assert time.monotonic() < deadline, f"port {port} never answered: {proc.text()}"
        time.sleep(0.02)


def established(port: int) -> int:
    """TCP connections to 127.0.0.1:`port` that the kernel has established (accepted or not)."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for row in rows if row[1] == f"0100007F:{port:04X}" and row[3] == "01")


def wait_connected(port: int, n: int, wrk: "subprocess.Popen[str]", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while established(port) < n:
        assert wrk.poll() is None, wrk.communicate()[0]
        assert time.monotonic() < deadline, f"wrk has {established(port)} connections, not {n}"
        time.sleep(0.01)


def start_wrk(port: int, connections: int, *headers: str) -> "subprocess.Popen[str]":
    extra = [arg for header in headers for arg in ("-H", header)]
    return subprocess.Popen(
        [str(wrk_path()), "-t1", f"-c{connections}", "-d600s", "--timeout", "10s", *extra, f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def totals(name: str, out: str) -> str:
    """wrk's totals; asserts that it lost nothing."""
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    assert requests > 1000, out
    # The listener is shared, so nothing is ever refused, reset or left unanswered: wrk prints
    # no "Socket errors" line at all, and no "Non-2xx" one.
    assert errors is None, f"{name}: {out}"
    assert "Non-2xx" not in out, f"{name}: {out}"
    return f"{name} {requests} requests, 0 socket errors, 0 non-2xx"


@pytest.mark.skipif(wrk_path() is None, reason="wrk is installed by scripts/test-all.sh")
@pytest.mark.parametrize("script", ["readme_http_server.py", "readme_aiohttp.py"])
def test_readme_quick_start_upgrades_under_load_lose_nothing(script: str) -> None:
    port = free_port()
    app = Process([sys.executable, str(HERE / script), str(port)])
    pids: List[int] = [app.proc.pid]
    loads: Dict[str, "subprocess.Popen[str]"] = {}
    try:
        wait_answers(port, app)
        loads["keep-alive -c20"] = start_wrk(port, 20)
        if script == "readme_aiohttp.py":
            # New connections all the time, so some arrive as an old asyncio process stops
            # accepting (http.server answers "Connection: close" requests without saying so,
            # which wrk counts as read errors, so this load is for aiohttp only).
            loads["Connection: close -c8"] = start_wrk(port, 8, "Connection: close")
        wait_connected(port, 20, loads["keep-alive -c20"])
        current, began = app.proc.pid, time.monotonic()
        for n in range(1, UPGRADES + 1):
            os.kill(current, signal.SIGHUP)
            current = int(app.wait_count(r"lameduck:New process (\d+) is ready", n).group(1))
            pids.append(current)
            app.wait_count(r"lameduck:The previous generation handed over", n)
            assert get(port, "/").startswith("HTTP/1.1 200"), f"no answer after upgrade {n}"
            assert all(wrk.poll() is None for wrk in loads.values()), "wrk stopped"
        upgraded = time.monotonic() - began
        outputs = {}
        for name, wrk in loads.items():
            wrk.send_signal(signal.SIGINT)  # wrk prints its totals and exits
            outputs[name] = wrk.communicate(timeout=60)[0]
        os.kill(current, signal.SIGTERM)
        app.wait_closed(60)  # every generation exited
        assert app.finish() == 0, app.text()
        summary = "; ".join(totals(name, out) for name, out in outputs.items())
        print(f"\n{script}: {UPGRADES} upgrades in {upgraded:.1f}s; wrk {summary}")
        text = app.text()
        assert text.count("Reported ready to the previous generation") == UPGRADES, text
        # every generation drained (no period expired, nothing forced), the last one included
        assert text.count("lameduck:Completed lame-duck mode") == UPGRADES + 1, text
        assert "Upgrade failed" not in text and "not upgrading" not in text, text
    finally:
        for wrk in loads.values():
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
        started = re.findall(r"Started new process (\d+)", app.text())  # ready or not
        kill_ours(pids + [int(pid) for pid in started], script)
        app.kill()


@pytest.mark.parametrize("script", ["readme_http_server.py", "readme_aiohttp.py", "readme_fastapi.py"])
def test_the_readme_prints_the_quick_start_exactly(script: str) -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    code = (Path(__file__).resolve().parent / script).read_text()
    assert "```python\n" + code + "```\n" in readme, f"README.md must show tests/{script} verbatim"
