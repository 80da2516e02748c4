"""Zero-downtime upgrades from Python: SIGHUP to a real server, and Runner.upgrade()."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, List, Optional

import pytest

import lameduck
from conftest import App, Load


def _kill_all(pids: List[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_sighup_upgrades_of_the_http_server_adapter_lose_no_request(tmp_path: Path) -> None:
    pid_file = tmp_path / "app.pid"
    app = App("--app", "http", "--listen", "127.0.0.1:0", "--pid-file", str(pid_file))
    generations: List[int] = []
    try:
        app.wait_for(r"^out: state READY")
        assert pid_file.read_text() == f"{app.proc.pid}\n"
        load = Load(app.port)
        load.wait_more(20)
        current = app.proc.pid
        for n in range(1, 5):
            os.kill(current, signal.SIGHUP)
            current = int(app.wait_count(r"lameduck: New process (\d+) is ready", n).group(1))
            generations.append(current)
            load.wait_more(20)
        ok, errors = load.stop()
        assert errors == [], f"{len(errors)} of {ok + len(errors)} requests failed: {errors}"
        assert pid_file.read_text() == f"{current}\n"
        assert app.text().count("out: inherited True") == 4  # each generation took the socket over
        os.kill(current, signal.SIGTERM)
        app.wait_count(r"^out: clean exit", 5)
        assert app.finish() == 0
        assert not pid_file.exists()
    finally:
        _kill_all(generations)
        app.kill()


class Idle:
    """A server that serves until shutdown; it binds nothing (the upgrades below hand on no
    listener), so the tests are about the upgrade protocol alone."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.shutdowns = 0

    def serve(self, ctx: lameduck.Context) -> None:
        self.stopped.wait()

    def shutdown(self, ctx: lameduck.Context) -> None:
        self.shutdowns += 1
        self.stopped.set()

    def close(self) -> None:
        self.stopped.set()


def start_runner(**options: Any) -> "tuple[lameduck.Runner, Idle, threading.Thread, List[Optional[BaseException]]]":
    server = Idle()
    runner = lameduck.Runner(server, signals=(), logger=False, **options)
    outcome: List[Optional[BaseException]] = []

    def target() -> None:
        try:
            runner.run()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    assert runner.wait_ready(10)
    return runner, server, thread, outcome


def test_failed_upgrades_raise_and_keep_serving() -> None:
    runner, server, thread, outcome = start_runner(upgrade_command=[sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(lameduck.UpgradeFailedError, match="exited with status 3 before it was ready") as info:
        runner.upgrade()
    assert isinstance(info.value, lameduck.LameDuckError) and info.value.kind == "UPGRADE_FAILED"
    assert runner.state is lameduck.State.READY and server.shutdowns == 0
    runner.stop()
    thread.join(30)
    assert outcome == [None]
    with pytest.raises(lameduck.NotRunningError, match="not running"):
        runner.upgrade()


def test_never_ready_is_terminated_and_a_second_upgrade_is_busy() -> None:
    runner, server, thread, outcome = start_runner(upgrade_command=["sleep", "30"], upgrade_timeout=1.0)
    first: List[BaseException] = []

    def upgrade() -> None:
        try:
            runner.upgrade()
        except lameduck.LameDuckError as e:
            first.append(e)

    t = threading.Thread(target=upgrade)
    t.start()
    while runner.state is not lameduck.State.UPGRADING:
        threading.Event().wait(0.001)
    with pytest.raises(lameduck.BusyError, match="an upgrade is already in progress"):
        runner.upgrade()
    t.join(30)
    assert isinstance(first[0], lameduck.UpgradeFailedError)
    assert "was not ready within 1s; stopped it with SIGTERM" in str(first[0])
    assert runner.state is lameduck.State.READY
    runner.stop()
    thread.join(30)
    assert outcome == [None]


def test_missing_program() -> None:
    runner, server, thread, outcome = start_runner(upgrade_command=["/nonexistent/server"])
    with pytest.raises(lameduck.UpgradeFailedError, match="cannot start /nonexistent/server: No such file or directory"):
        runner.upgrade()
    runner.stop()
    thread.join(30)


def test_successful_upgrade_with_the_one_line_protocol_ends_the_run() -> None:
    command = ["sh", "-c", 'echo READY=1 >&"$LAMEDUCK_READY_FD"; exec sleep 30']
    runner, server, thread, outcome = start_runner(upgrade_command=command)
    pid = runner.upgrade()
    try:
        thread.join(30)
        assert outcome == [None] and server.shutdowns == 1  # handed over, then lame-duck
        assert runner.state is lameduck.State.STOPPED
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_upgrade_async() -> None:
    async def main() -> None:
        server = Idle()
        runner = lameduck.Runner(server, signals=(), logger=False, upgrade_command=["false"])
        task = asyncio.ensure_future(runner.run_async())
        while runner.state is not lameduck.State.READY:
            await asyncio.sleep(0.001)
        with pytest.raises(lameduck.UpgradeFailedError, match="exited with status 1"):
            await runner.upgrade_async()
        runner.stop()
        await task

    asyncio.run(main())


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"upgrade_timeout": 0}, ValueError, "upgrade_timeout=0"),
        ({"upgrade_signals": (signal.SIGTERM,)}, ValueError, "cannot both trigger lame-duck and start an upgrade"),
        ({"upgrade_signals": (signal.SIGKILL,)}, ValueError, "cannot be caught"),
        ({"upgrade_command": "server"}, TypeError, "must be a sequence of strings"),
        ({"upgrade_command": []}, ValueError, "upgrade_command=[]: upgrade command is invalid"),
        ({"pid_file": 3}, TypeError, "must be a path"),
        ({"pid_file": ""}, ValueError, "pid_file=''"),
    ],
)
def test_invalid_upgrade_options(options: Any, error: type, message: str) -> None:
    with pytest.raises(error) as info:
        lameduck.Runner(Idle(), **options)
    assert message in str(info.value)


NEVER_READY = '''
import sys, threading, lameduck
sock = lameduck.listen(sys.argv[1])  # takes over the inherited unix socket
stopped = threading.Event()
class Server:
    def serve(self, ctx): stopped.wait()
    def shutdown(self, ctx): stopped.set()
    def close(self): stopped.set()
lameduck.run(Server(), explicit_ready=True, logger=False)  # never reports ready
'''


def test_a_new_process_that_never_got_ready_leaves_the_socket_path_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    listener = lameduck.listen(str(path))
    command = [sys.executable, "-c", NEVER_READY, str(path)]
    runner, server, thread, outcome = start_runner(upgrade_command=command, upgrade_timeout=3.0)
    try:
        with pytest.raises(lameduck.UpgradeFailedError, match="not ready within 3s; stopped it with SIGTERM"):
            runner.upgrade()
        assert path.exists(), "the failed process must not remove the path the old one still serves on"
        assert not lameduck.is_shared(listener), "not shared any more once the new process is gone"
    finally:
        runner.stop()
        thread.join(30)
        listener.close()
    assert not path.exists(), "the final stop of the last generation removes it"
