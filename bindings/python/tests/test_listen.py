"""lameduck.listen: fresh sockets, systemd socket activation, malformed environments."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lameduck
from conftest import get

APP = Path(__file__).with_name("app.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fresh_listener_is_listening_and_not_inheritable() -> None:
    sock = lameduck.listen("127.0.0.1:0")
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert not sock.get_inheritable()
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        assert not lameduck._lameduck.is_inherited(sock.fileno())
    finally:
        sock.close()
    with pytest.raises(ValueError, match='address "nope" is invalid'):
        lameduck.listen("nope")


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate is not installed")
def test_socket_activation_with_the_http_server_adapter() -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", address, sys.executable, str(APP), "--app", "http", "--listen", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        assert f"Listening on {address}" in proc.stderr.readline()
        assert get(port, "/").startswith("HTTP/1.1 200")  # the first connection starts the app
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        assert lines == ["inherited True", f"port {port}"], lines
        while "state READY" not in proc.stdout.readline():
            pass
        proc.send_signal(signal.SIGTERM)  # systemd-socket-activate exec()s the app: same pid
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "env, message",
    [
        ("LISTEN_PID=$$ LISTEN_FDS=abc", 'LISTEN_FDS="abc" is not a number of descriptors'),
        ("LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=a", "LISTEN_FDNAMES has 1 name(s) but LISTEN_FDS=2"),
        ("SERVER_STARTER_PORT=8080", 'SERVER_STARTER_PORT="8080": entry "8080" is not KEY=FD'),
    ],
)
def test_malformed_environment_is_a_value_error(env: str, message: str) -> None:
    script = f"{env} exec {sys.executable} {APP} --app http --listen 127.0.0.1:{free_port()}"
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"ValueError: {message}" in result.stderr, result.stderr


COPIES = [
    # fd 3 came from "systemd" (LISTEN_FDS): a copy of it is as shared as the original, whichever
    # way the program made the copy, and so is never drained with the drop filter.
    (
        "copy = socket.fromfd(3, socket.AF_INET, socket.SOCK_STREAM)  # a dup: another number\n"
        "lameduck.adopt(copy)\n"
        "print(lameduck.is_shared(copy), lameduck.is_shared(lameduck.listen('127.0.0.1:0')))\n"
    ),
    (
        "taken = lameduck.listen(ADDRESS)  # the original, fd 3\n"
        "copy = taken.dup()\n"
        "lameduck.adopt(copy)\n"
        "print(lameduck.is_shared(copy), lameduck.is_shared(lameduck.listen('127.0.0.1:0')))\n"
    ),
]


def test_copies_of_an_inherited_socket_are_shared_too() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    # A launcher puts the listener at fd 3, as systemd does, then execs the program (same pid).
    launcher = (
        "import os, sys\n"
        "os.dup2(int(sys.argv[1]), 3)\n"
        "env = dict(os.environ, LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
        "os.execve(sys.executable, [sys.executable, '-c', sys.argv[2]], env)\n"
    )
    try:
        for body in COPIES:
            code = "import socket, lameduck\n" + body.replace("ADDRESS", repr(address))
            out = subprocess.run(
                [sys.executable, "-c", launcher, str(listener.fileno()), code],
                pass_fds=(listener.fileno(),),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            assert out.stdout.split() == ["True", "False"], (body, out.stdout, out.stderr)  # a fresh socket is not
    finally:
        listener.close()
