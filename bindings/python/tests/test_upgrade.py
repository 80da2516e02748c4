"""Zero-downtime upgrades from Python: SIGHUP to a real server, and Runner.upgrade()."""

from __future__ import annotations

import asyncio
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, List, Optional

import pytest

import lameduck
import lameduck.adapters
from conftest import APP, App, Load, free_port, get, kill_ours, wrk_path


@pytest.mark.parametrize("kind", ["http", "asyncio"])
def test_sighup_upgrades_of_an_adapter_lose_no_request(tmp_path: Path, kind: str) -> None:
    pid_file = tmp_path / "app.pid"
    # http: the app's own lameduck.listen() socket (adopted); asyncio: the adapter's listen()
    listen = ["--listen", "127.0.0.1:0"] if kind == "http" else []
    app = App("--app", kind, *listen, "--pid-file", str(pid_file))
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
            app.wait_count(r"lameduck: The previous generation handed over", n)  # upgradable again
            load.wait_more(20)
        ok, errors = load.stop()
        assert errors == [], f"{len(errors)} of {ok + len(errors)} requests failed: {errors}"
        assert pid_file.read_text() == f"{current}\n"
        assert app.text().count("Reported ready to the previous generation") == 4
        if kind == "http":
            assert app.text().count("out: inherited True") == 4  # each generation took the socket over
        os.kill(current, signal.SIGTERM)
        app.wait_count(r"^out: clean exit", 5)
        assert app.finish() == 0
        assert not pid_file.exists()
    finally:
        started = [int(pid) for pid in re.findall(r"Started new process (\d+)", app.text())]  # ready or not
        kill_ours(generations + started, str(APP))
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
    """Idle binds nothing, so its upgrades need upgrade_without_listeners (a worker without
    sockets); the refusal without it is tested below."""
    server = Idle()
    options.setdefault("upgrade_without_listeners", True)
    runner = lameduck.Runner(server, signals=(), logger=False, **options)
    thread, outcome = run_in_thread(runner)
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
        runner = lameduck.Runner(server, signals=(), logger=False, upgrade_command=["false"], upgrade_without_listeners=True)
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
        ({"listen_timeout": 0}, ValueError, "listen_timeout=0.0: listen timeout 0s is invalid"),
        ({"listen_timeout": -1}, ValueError, "listen_timeout=-1.0 is invalid"),
        ({"listen_timeout": "10"}, TypeError, "listen_timeout='10' must be a number of seconds"),
        ({"upgrade_confirm": 61}, ValueError, "upgrade_confirm=61.0: upgrade confirmation window 1m1s is invalid"),
        ({"upgrade_confirm": float("nan")}, ValueError, "upgrade_confirm=nan is invalid"),
        ({"upgrade_confirm": None}, TypeError, "upgrade_confirm=None must be a number of seconds"),
        ({"upgrade_without_listeners": 1}, TypeError, "upgrade_without_listeners=1 must be True or False"),
    ],
)
def test_invalid_upgrade_options(options: Any, error: type, message: str) -> None:
    with pytest.raises(error) as info:
        lameduck.Runner(Idle(), **options)
    assert message in str(info.value)
    with pytest.raises(error):
        lameduck.run(Idle(), **options)


def test_upgrade_option_bounds_are_accepted() -> None:
    lameduck.Runner(Idle(), upgrade_confirm=0, listen_timeout=0.001, upgrade_without_listeners=True)
    lameduck.Runner(Idle(), upgrade_confirm=60.0, listen_timeout=86400)


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


# --------------------------------------------------------------------------------------------
# listen_timeout, upgrade_confirm, upgrade_without_listeners, adopt, and the adapters' sockets

#: A new process that checks what it was handed: READY=1 when a listener on port argv[1] is
#: among them, else FAILED=<what it got>. Then it waits for the hand-over (EOF) and exits.
CHECK_HANDED = r"""
import os, socket, sys
ready = int(os.environ["LAMEDUCK_READY_FD"])
handed = [socket.socket(fileno=3 + i) for i in range(int(os.environ.get("LISTEN_FDS", "0")))]
ports = [s.getsockname()[1] for s in handed if s.family in (socket.AF_INET, socket.AF_INET6)]
listening = all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for s in handed)
if int(sys.argv[1]) in ports and listening:
    os.write(ready, b"READY=1\n")
else:
    os.write(ready, f"FAILED=handed ports {ports} (LISTEN_FDS={os.environ.get('LISTEN_FDS')})\n".encode())
while os.read(ready, 64):
    pass
"""


def check_handed(port: int) -> List[str]:
    return [sys.executable, "-c", CHECK_HANDED, str(port)]


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"hello\n")


class BoundByHand:
    """A server on a socket it bound itself (socketserver's default): lameduck knows nothing
    of it unless it is adopted."""

    def __init__(self) -> None:
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
        self.srv.daemon_threads = True
        self.port = int(self.srv.server_address[1])

    def serve(self, ctx: lameduck.Context) -> None:
        self.srv.serve_forever(poll_interval=0.05)

    def shutdown(self, ctx: lameduck.Context) -> None:
        self.srv.shutdown()
        self.srv.server_close()

    def close(self) -> None:
        self.srv.server_close()


def run_in_thread(runner: lameduck.Runner) -> "tuple[threading.Thread, List[Optional[BaseException]]]":
    outcome: List[Optional[BaseException]] = []

    def target() -> None:
        try:
            runner.run()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    assert runner.wait_ready(30)
    return thread, outcome


def test_upgrade_of_a_server_lameduck_does_not_know_is_refused_and_it_keeps_serving() -> None:
    # A fresh process (this one's listener registry is not empty after the tests above). Its
    # server binds its own ThreadingHTTPServer; without the refusal an upgrade would start a
    # copy that binds another port and takes over.
    app = App("--app", "plain", "--commands", stdin=True)
    try:
        app.wait_for(r"^out: state READY")
        app.send("upgrade")
        error = app.wait_for(r"^out: upgrade error (\w+): (.*)")
        assert error.group(1) == "UpgradeFailedError", error.group(0)
        assert "no listener known to lameduck" in error.group(2) and "lameduck.adopt" in error.group(2)
        assert get(app.port, "/").startswith("HTTP/1.1 200")  # still serving
        app.signal(signal.SIGHUP)
        app.wait_for(r"Received signal \[hangup\]; not upgrading: this process has no listener known to lameduck")
        assert get(app.port, "/").startswith("HTTP/1.1 200")
        assert "Started new process" not in app.text()
        app.signal(signal.SIGTERM)
        assert app.finish() == 0, app.text()
    finally:
        app.kill()


def test_upgrade_without_listeners_allows_it() -> None:
    app = App("--app", "plain", "--commands", "--upgrade-without-listeners", stdin=True)
    new = 0
    try:
        app.wait_for(r"^out: state READY")
        app.send("upgrade")
        # (not "upgraded N": the old process may exit before its command thread prints it)
        new = int(app.wait_for(r"lameduck: New process (\d+) is ready").group(1))
        assert app.finish() == 0, app.text()  # handed over, then lame-duck
        os.kill(new, signal.SIGTERM)
        app.wait_count(r"^out: clean exit", 2)
        app.wait_closed()
    finally:
        started = [int(pid) for pid in re.findall(r"Started new process (\d+)", app.text())]  # ready or not
        kill_ours([new, *started], str(APP))
        app.kill()


def test_adopt_hands_a_socket_bound_by_hand_on() -> None:
    server = BoundByHand()
    lameduck.adopt(server.srv.socket)
    lameduck.adopt(server.srv.socket.fileno(), "http")  # again, by fd, with a name: harmless
    runner = lameduck.Runner(
        server, signals=(), logger=False, upgrade_command=check_handed(server.port), upgrade_confirm=0
    )
    thread, outcome = run_in_thread(runner)
    try:
        runner.upgrade()  # UpgradeFailedError with CHECK_HANDED's FAILED= line otherwise
        thread.join(30)
        assert outcome == [None] and runner.state is lameduck.State.STOPPED
    finally:
        runner.stop()
        thread.join(30)


def test_adopt_errors() -> None:
    plain = socket.socket()
    try:
        with pytest.raises(ValueError, match=f"fd {plain.fileno()} from adopt is not a listening socket"):
            lameduck.adopt(plain)
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        with pytest.raises(ValueError, match="listener name \"a:b\" is invalid"):
            lameduck.adopt(plain, "a:b")
        with pytest.raises(TypeError, match="must be a socket or a file descriptor"):
            lameduck.adopt("127.0.0.1:80")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="name=3 must be a string"):
            lameduck.adopt(plain, 3)  # type: ignore[arg-type]
    finally:
        plain.close()
    with pytest.raises(ValueError, match="is closed"):
        lameduck.adopt(plain)
    with pytest.raises(ValueError, match="fd 100000 from adopt is not open"):
        lameduck.adopt(100000)


def test_listen_timeout_fails_an_upgrade_whose_new_process_never_takes_the_listener() -> None:
    # The new process runs a lameduck server that binds nothing: ready, but fd 3 is untaken.
    script = (
        "import threading, lameduck\n"
        "s = threading.Event()\n"
        "class S:\n"
        "    def serve(self, ctx): s.wait()\n"
        "    def shutdown(self, ctx): s.set()\n"
        "    def close(self): s.set()\n"
        "lameduck.run(S(), logger=False, listen_timeout=0.3)\n"
    )
    listener = lameduck.listen("127.0.0.1:0")
    port = listener.getsockname()[1]
    # upgrade_timeout 10 s: with the default listen timeout (10 s) it would time out instead.
    runner, server, thread, outcome = start_runner(upgrade_command=[sys.executable, "-c", script], upgrade_timeout=10.0)
    try:
        with pytest.raises(lameduck.UpgradeFailedError) as info:
            runner.upgrade()
        message = str(info.value)
        assert "cannot take over: no listen() call took fd 3 (127.0.0.1:%d) within 300ms" % port in message, message
        assert runner.state is lameduck.State.READY and server.shutdowns == 0
    finally:
        runner.stop()
        thread.join(30)
        listener.close()
    assert outcome == [None]


def test_a_new_process_that_exits_within_upgrade_confirm_is_a_failed_upgrade() -> None:
    command = ["sh", "-c", 'echo READY=1 >&"$LAMEDUCK_READY_FD"; sleep 1.5; exit 4']
    runner, server, thread, outcome = start_runner(upgrade_command=command, upgrade_confirm=5.0)
    try:
        with pytest.raises(lameduck.UpgradeFailedError, match="exited with status 4 within 5s of reporting ready"):
            runner.upgrade()  # with the default 1 s window it would have handed over
        assert runner.state is lameduck.State.READY and server.shutdowns == 0
    finally:
        runner.stop()
        thread.join(30)
    assert outcome == [None]


def _handed_on_by_http_server(srv: http.server.ThreadingHTTPServer) -> None:
    adapter = lameduck.adapters.http_server(srv, idle_grace=0.0)
    port = int(srv.server_address[1])
    assert port != 0 and srv.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    states: List[str] = []
    runner = lameduck.Runner(
        adapter,
        signals=(),
        logger=False,
        upgrade_command=check_handed(port),
        upgrade_confirm=0,
        on_state_change=lambda old, new: states.append(new),
    )
    thread, outcome = run_in_thread(runner)
    try:
        assert get(port, "/").startswith("HTTP/1.1 200")
        runner.upgrade()
        thread.join(30)
        assert outcome == [None] and runner.state is lameduck.State.STOPPED
    finally:
        runner.stop()
        thread.join(30)
    # every state the core reports is a lameduck.State; a hand-over is HANDING_OVER, not a drain
    assert [lameduck.State(s) for s in states][-4:] == [
        lameduck.State.READY,
        lameduck.State.UPGRADING,
        lameduck.State.HANDING_OVER,
        lameduck.State.STOPPED,
    ], states


def test_http_server_adapter_binds_an_unbound_server_with_listen_and_hands_it_on() -> None:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello, bind_and_activate=False)
    _handed_on_by_http_server(srv)
    assert srv.server_port == srv.server_address[1] and srv.server_name


def test_http_server_adapter_adopts_a_bound_server_and_hands_it_on() -> None:
    _handed_on_by_http_server(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello))


def _async_adapter_hands_its_socket_on(kind: str) -> None:
    port = free_port()
    if kind == "aiohttp":
        from aiohttp import web

        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="hello\n")

        app = web.Application(handler_args={"access_log": None})
        app.add_routes([web.get("/", hello)])
        adapter: Any = lameduck.adapters.aiohttp_app(app, "127.0.0.1", port, idle_grace=0.0)
    else:

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n")
            await writer.drain()

        adapter = lameduck.adapters.asyncio_server(handle, "127.0.0.1", port, idle_grace=0.0)
    listening_at_ready: List[int] = []

    def on_state(old: str, new: str) -> None:
        if new == "READY":
            listening_at_ready.append(len(adapter.sockets))

    # explicit_ready is not passed: the adapter's explicit_ready attribute decides.
    runner = lameduck.Runner(
        adapter, signals=(), logger=False, upgrade_command=check_handed(port), upgrade_confirm=0, on_state_change=on_state
    )

    async def main() -> None:
        task = asyncio.ensure_future(runner.run_async())
        while runner.state is not lameduck.State.READY:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.005)
        answer = await asyncio.get_running_loop().run_in_executor(None, get, port, "/")
        assert answer.startswith("HTTP/1.1 200"), answer
        await runner.upgrade_async()
        await asyncio.wait_for(task, 30)

    asyncio.run(main())
    assert listening_at_ready == [1], "READY before the adapter was listening"
    assert runner.state is lameduck.State.STOPPED


def test_asyncio_server_adapter_listens_with_listen_is_ready_once_listening_and_hands_it_on() -> None:
    _async_adapter_hands_its_socket_on("asyncio")


def test_aiohttp_adapter_listens_with_listen_is_ready_once_listening_and_hands_it_on() -> None:
    _async_adapter_hands_its_socket_on("aiohttp")


def test_adapter_addresses_for_listen() -> None:
    from lameduck._listen import _address

    assert _address(("127.0.0.1", 8080)) == "127.0.0.1:8080"
    assert _address(("", 8080)) == "8080"
    assert _address(("::1", 8080, 0, 0), socket.AF_INET6) == "[::1]:8080"
    assert _address(("", 0), socket.AF_INET6) == "[::]:0"
    assert _address(("localhost", 1)) == "localhost:1"
    assert _address("/run/app.sock", socket.AF_UNIX) == "/run/app.sock"
    assert _address("app.sock", socket.AF_UNIX) == "unix:app.sock"


@pytest.mark.skipif(wrk_path() is None, reason="wrk is installed by scripts/test-all.sh")
@pytest.mark.parametrize("kind", ["http", "asyncio"])
def test_the_last_generation_drains_its_socket_once_the_previous_one_has_exited(kind: str) -> None:
    """After an upgrade the socket is shared only while the old process lives; once it has
    exited, the new one drains the socket at its own SIGTERM (the connections in its accept
    queue are answered), as the first generation would. It used to close it undrained for ever,
    resetting whatever was queued."""
    listen = ["--listen", "127.0.0.1:0"] if kind == "http" else []
    app = App("--app", kind, *listen, "--period", "10")
    current = app.proc.pid
    try:
        app.wait_for(r"^out: state READY")
        os.kill(app.proc.pid, signal.SIGHUP)
        current = int(app.wait_count(r"lameduck: New process (\d+) is ready", 1).group(1))
        app.wait_count(r"lameduck: The previous generation handed over", 1)
        app.wait_count(r"^out: clean exit", 1)
        app.proc.wait(timeout=60)  # the old process is gone (its pidfd is readable)
        wrk = subprocess.Popen(
            [str(wrk_path()), "-t2", "-c20", "-d4s", "--timeout", "10s", f"http://127.0.0.1:{app.port}/"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(1.5)  # load is flowing
        os.kill(current, signal.SIGTERM)
        out, _ = wrk.communicate(timeout=60)
        app.wait_count(r"^out: clean exit", 2)
        requests = re.search(r"(\d+) requests in", out)
        assert requests is not None and int(requests.group(1)) > 100, out
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        read_errors, timeouts = (int(errors.group(2)), int(errors.group(4))) if errors else (0, 0)
        # As in test_servers: refused reconnects after the close are wrk "write" errors.
        assert (read_errors, timeouts) == (0, 0), out
        assert "Non-2xx" not in out, out
    finally:
        kill_ours([current], str(APP))
        app.kill()
