"""A threaded http.server under lameduck, for the installed-wheel check (tests/dist/check.sh).

Prints ``listening on PORT`` once ready; SIGTERM must end it with exit status 0."""

import http.server
import logging
import sys

import lameduck
import lameduck.adapters


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"hello from lameduck {lameduck.__version__}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def on_state(old: str, new: str) -> None:
    if new == "READY":
        print(f"listening on {srv.server_address[1]}", flush=True)


logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello, bind_and_activate=False)
try:
    lameduck.run(lameduck.adapters.http_server(srv), period=5.0, on_state_change=on_state)
except lameduck.LameDuckError as err:
    print(f"run failed: {err}", file=sys.stderr)
    sys.exit(1)
