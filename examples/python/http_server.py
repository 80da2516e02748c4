"""A ThreadingHTTPServer under lame-duck: python examples/python/http_server.py [port]

Try: curl 'http://127.0.0.1:8000/sleep?ms=5000' and press Ctrl-C while it runs. The slow
request still completes, new connections are refused, the process exits 0.
`kill -HUP <pid>` upgrades with zero downtime: the script starts again on the same socket
(lameduck.listen), and once the new process is ready this one lame-ducks.
"""

from __future__ import annotations

import http.server
import logging
import os
import sys
import time

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


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    # The socket survives upgrades: a new generation gets this one back from lameduck.listen.
    sock = lameduck.listen(f"127.0.0.1:{port}")
    server = http.server.ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]} (pid {os.getpid()})", flush=True)
    try:
        lameduck.run(lameduck.adapters.http_server(server), period=5.0)
    except lameduck.ExpiredError as e:
        print(f"in-flight requests were cut short: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
