"""A ThreadingHTTPServer under lame-duck:
python examples/python/http_server.py [port] [--max-connections N]

Try: curl 'http://127.0.0.1:8000/sleep?ms=5000' and press Ctrl-C while it runs. The slow
request still completes, new connections are refused, the process exits 0.
`kill -HUP <pid>` upgrades with zero downtime: the script starts again on the same socket
(lameduck.listen), and once the new process is ready this one lame-ducks.

With --max-connections N at most N connections are open at once; the others wait in the
kernel's accept queue (try N=1 and two slow curls). `kill -USR1 <pid>` raises the limit by
one, `kill -USR2 <pid>` lowers it by one; each prints the new limit.
"""

from __future__ import annotations

import argparse
import http.server
import logging
import os
import signal
import sys
import time
from typing import Any

import lameduck
import lameduck.adapters


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body are separate writes

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the lameduck lines

    def do_GET(self) -> None:
        if self.path.startswith("/sleep"):
            time.sleep(int(self.path.partition("ms=")[2] or "1000") / 1000)
        body = b"hello from lameduck\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def change_limit_on_signals(runner: lameduck.Runner) -> None:
    """SIGUSR1: one more connection; SIGUSR2: one fewer (at least 1)."""

    def change(signum: int, frame: Any) -> None:
        limit = runner.max_connections
        if limit is None:
            print("max connections: unlimited (start with --max-connections N)", flush=True)
            return
        limit = limit + 1 if signum == signal.SIGUSR1 else max(1, limit - 1)
        free = runner.set_max_connections(limit)
        stats = runner.connection_stats()
        print(f"max connections: {limit} ({free} free before, {stats.admitted} open now)", flush=True)

    signal.signal(signal.SIGUSR1, change)
    signal.signal(signal.SIGUSR2, change)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int, nargs="?", default=8000)
    parser.add_argument("--max-connections", type=int, default=None, help="0 or absent: unlimited")
    args = parser.parse_args()
    port = args.port
    # The socket survives upgrades: a new generation gets this one back from lameduck.listen.
    sock = lameduck.listen(f"127.0.0.1:{port}")
    server = http.server.ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]} (pid {os.getpid()})", flush=True)
    try:
        runner = lameduck.Runner(lameduck.adapters.http_server(server), period=5.0, max_connections=args.max_connections)
        change_limit_on_signals(runner)
        runner.run()
    except lameduck.ExpiredError as e:
        print(f"in-flight requests were cut short: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
