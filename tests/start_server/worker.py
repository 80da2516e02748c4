"""A Server::Starter worker for the start_server tests (run by both start_servers).

Serves HTTP on the first socket of SERVER_STARTER_PORT: every answer is `GEN:PID`. Writes what
it was given to $REPORT_DIR/<generation>.env (SERVER_STARTER_PORT, LISTEN_FDS/LISTEN_PID,
FOO, cwd, the socket type). Exits 1 at once when its generation is listed in
$FAIL_GENERATIONS. On TERM/USR1 it records the signal name in $REPORT_DIR/signal-<pid>, waits
$SLEEP_ON_SIGNAL seconds, and exits 0.
"""

import os
import signal
import socket
import sys
import time

generation = os.environ.get("SERVER_STARTER_GENERATION", "?")
report_dir = os.environ.get("REPORT_DIR", "")
if generation in os.environ.get("FAIL_GENERATIONS", "").split(","):
    sys.exit(1)

entries = [e.rsplit("=", 1) for e in os.environ["SERVER_STARTER_PORT"].split(";") if e]
sock = socket.socket(fileno=int(entries[0][1])) if entries else None


def report(name: str, text: str) -> None:
    if report_dir:
        tmp = os.path.join(report_dir, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, os.path.join(report_dir, name))


report(
    f"{generation}.env",
    "\n".join(
        [
            f"SERVER_STARTER_PORT={os.environ['SERVER_STARTER_PORT']}",
            f"LISTEN_FDS={os.environ.get('LISTEN_FDS', '')}",
            f"LISTEN_PID_IS_ME={os.environ.get('LISTEN_PID') == str(os.getpid())}",
            f"FOO={os.environ.get('FOO', '')}",
            f"CWD={os.getcwd()}",
            f"TYPE={'udp' if sock is not None and sock.type == socket.SOCK_DGRAM else 'tcp'}",
            f"FD0={'socket' if entries and entries[0][1] == '0' else ''}",
        ]
    )
    + "\n",
)


def on_signal(signum: int, frame: object) -> None:
    report(f"signal-{os.getpid()}", signal.Signals(signum).name.removeprefix("SIG"))
    time.sleep(float(os.environ.get("SLEEP_ON_SIGNAL", "0")))
    os._exit(0)


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGUSR1, on_signal)

if sock is None or sock.type == socket.SOCK_DGRAM:
    while True:
        time.sleep(3600)
while True:
    conn, _ = sock.accept()
    with conn:
        conn.recv(4096)
        conn.sendall(f"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{generation}:{os.getpid()}\n".encode())
