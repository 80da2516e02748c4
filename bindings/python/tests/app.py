"""A test server run in a subprocess: `python app.py --app http|asyncio|aiohttp|plain [options]`.

Routes: GET / (hello), GET /sleep?ms=N (slow), GET /health (200 READY, UPGRADING or HANDING_OVER / 503 + state).
SIGHUP upgrades (the app is started again with its listener, when it uses --listen); with
--commands, the stdin line `upgrade` calls Runner.upgrade().
Prints `port N` and `state NEW` lines on stdout; lameduck logs go to stderr.
Exit 0 after a clean lame-duck; 1 with `error <Class>: <message> cause=<repr>` otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import logging
import sys
import threading
import time
import urllib.parse
from typing import Any, Optional

import lameduck
import lameduck.adapters


def out(line: str) -> None:
    print(line, flush=True)


RUNNER: Optional[lameduck.Runner] = None


def state_name() -> str:
    return str(RUNNER.state) if RUNNER is not None else "UNKNOWN"


def sleep_ms(path: str) -> int:
    query = urllib.parse.urlparse(path).query
    return int(urllib.parse.parse_qs(query).get("ms", ["1000"])[0])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        status, body = 200, b"hello\n"
        if self.path.startswith("/sleep"):
            ms = sleep_ms(self.path)
            sys.stderr.write(f"app: request GET {self.path}\n")
            time.sleep(ms / 1000)
            body = f"slept {ms} ms\n".encode()
        elif self.path == "/health":
            state = state_name()
            status, body = (200 if state in ("READY", "UPGRADING", "HANDING_OVER") else 503), f"{state}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def http_app(args: argparse.Namespace) -> Any:
    if args.listen:
        # lameduck.listen: the inherited socket (systemd, start_server) or a fresh one
        sock = lameduck.listen(args.listen)
        srv = http.server.ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
        srv.socket.close()
        srv.socket = sock
        out(f"inherited {lameduck._lameduck.is_inherited(sock.fileno())}")
    else:
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    out(f"port {srv.server_address[1]}")
    return lameduck.adapters.http_server(srv, idle_grace=args.idle_grace)


def asyncio_app(args: argparse.Namespace) -> Any:
    adapter: lameduck.adapters.AsyncioServerAdapter

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line = await adapter.next_request(reader.readline())
            if not line:
                return
            path = line.decode().split()[1]
            client_closes = False
            while True:
                header = await reader.readline()
                if header in (b"\r\n", b""):
                    break
                client_closes |= header.lower().strip() == b"connection: close"
            status, body = "200 OK", b"hello\n"
            if path.startswith("/sleep"):
                ms = sleep_ms(path)
                sys.stderr.write(f"app: request GET {path}\n")
                await asyncio.sleep(ms / 1000)
                body = f"slept {ms} ms\n".encode()
            elif path == "/health":
                state = state_name()
                status = "200 OK" if state in ("READY", "UPGRADING", "HANDING_OVER") else "503 Service Unavailable"
                body = f"{state}\n".encode()
            closing = adapter.lame_duck or client_closes
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: {'close' if closing else 'keep-alive'}\r\n\r\n".encode() + body
            )
            await writer.drain()
            if closing:
                return

    adapter = lameduck.adapters.asyncio_server(handle, "127.0.0.1", 0, idle_grace=args.idle_grace)
    return adapter


def aiohttp_app(args: argparse.Namespace) -> Any:
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello\n")

    async def slow(request: web.Request) -> web.Response:
        ms = int(request.query.get("ms", "1000"))
        sys.stderr.write(f"app: request GET {request.path_qs}\n")
        await asyncio.sleep(ms / 1000)
        return web.Response(text=f"slept {ms} ms\n")

    async def health(request: web.Request) -> web.Response:
        state = state_name()
        return web.Response(text=f"{state}\n", status=200 if state in ("READY", "UPGRADING", "HANDING_OVER") else 503)

    app = web.Application(handler_args={"access_log": None})
    app.add_routes([web.get("/", hello), web.get("/sleep", slow), web.get("/health", health)])
    return lameduck.adapters.aiohttp_app(app, "127.0.0.1", 0, idle_grace=args.idle_grace)


class PlainServer:
    """The plain API: serve/shutdown/close written by hand around a ThreadingHTTPServer."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.fail_serve = args.fail_serve
        self.hang_close = args.hang_close
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = False  # so server_close() waits for in-flight requests
        out(f"port {self.srv.server_address[1]}")

    def serve(self, ctx: lameduck.Context) -> None:
        if self.fail_serve:
            raise OSError("cannot bind: address on fire")
        self.srv.serve_forever(poll_interval=0.05)

    def shutdown(self, ctx: lameduck.Context) -> None:
        self.srv.shutdown()  # stop accepting
        self.srv.server_close()  # close the listener, wait for the request threads

    def close(self) -> None:
        if self.hang_close:
            threading.Event().wait()  # never returns
        self.srv.server_close()


def commands(runner: lameduck.Runner) -> None:
    """Reads commands from stdin: `upgrade` prints `upgraded PID` or `upgrade error ...`;
    `limit N` sets the connection limit and prints `limit N free-before F`; `stats` prints
    `stats limit=.. admitted=.. waiting=.. total=.. peak=.. phase=.. requests=..`."""
    for line in sys.stdin:
        words = line.split()
        if words == ["upgrade"]:
            try:
                out(f"upgraded {runner.upgrade()}")
            except lameduck.LameDuckError as e:
                out(f"upgrade error {type(e).__name__}: {e}")
        elif len(words) == 2 and words[0] == "limit":
            out(f"limit {words[1]} free-before {runner.set_max_connections(int(words[1]))}")
        elif words == ["stats"]:
            out("stats " + " ".join(f"{k}={v}" for k, v in runner.connection_stats()._asdict().items()))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", choices=["http", "asyncio", "aiohttp", "plain"], required=True)
    parser.add_argument("--period", type=float, default=3.0)
    parser.add_argument("--drain", type=float, default=0.0)
    parser.add_argument("--idle-grace", type=float, default=1.0)
    parser.add_argument("--repeat", default="force")
    parser.add_argument("--fail-serve", action="store_true")
    parser.add_argument("--hang-close", action="store_true")
    parser.add_argument("--listen")
    parser.add_argument("--close-timeout", type=float, default=5.0)
    parser.add_argument("--pid-file")
    parser.add_argument("--upgrade-without-listeners", action="store_true")
    parser.add_argument("--commands", action="store_true", help="stdin lines: upgrade, limit N, stats")
    parser.add_argument("--max-connections", type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)

    server = {"http": http_app, "asyncio": asyncio_app, "aiohttp": aiohttp_app, "plain": PlainServer}[args.app](args)

    def on_state(old: str, new: str) -> None:
        if new == "READY" and args.app in ("asyncio", "aiohttp"):
            out(f"port {server.sockets[0].getsockname()[1]}")
        out(f"state {new}")

    global RUNNER
    RUNNER = lameduck.Runner(
        server,
        period=args.period,
        drain_delay=args.drain,
        close_timeout=args.close_timeout,
        repeat_signal=args.repeat,
        # explicit_ready is left to the server: the adapters' explicit_ready attribute is True
        on_state_change=on_state,
        pid_file=args.pid_file,
        upgrade_without_listeners=args.upgrade_without_listeners,
        max_connections=args.max_connections,
    )
    if args.commands:
        threading.Thread(target=commands, args=(RUNNER,), daemon=True).start()
    try:
        if args.app in ("asyncio", "aiohttp"):
            asyncio.run(RUNNER.run_async())
        else:
            RUNNER.run()
    except lameduck.LameDuckError as e:
        out(f"error {type(e).__name__}: {e} cause={e.__cause__!r}")
        return 1
    out("clean exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
