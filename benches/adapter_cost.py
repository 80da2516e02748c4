"""The adapters' per-request cost (issue 13): server CPU time per request, with lameduck and without.

    .venv/bin/python benches/adapter_cost.py [--rounds 8] [--seconds 5]
                                             [--only python-threading,asyncio,aiohttp,uvicorn,hypercorn,node,c]
                                             [--bare-vs-bare]

Seven pairs, each the same server without lameduck ("bare") and with it (the default unlimited
gate, no max_connections):

- python-threading  http.server.ThreadingHTTPServer, bare vs under lameduck.adapters.http_server
- asyncio           an asyncio.start_server HTTP/1.1 keep-alive server, bare vs under
                    lameduck.adapters.asyncio_server (one handler function for both; the
                    lameduck side additionally does what the adapter asks of a handler:
                    ``await adapter.next_request(...)`` and a ``lame_duck`` check per request)
- aiohttp           web.AppRunner + web.TCPSite vs lameduck.adapters.aiohttp_app (skipped
                    when aiohttp is not installed)
- uvicorn           a plain ASGI app on uvicorn.Server vs under lameduck.asgi.uvicorn (issue 14;
                    skipped when uvicorn is not installed)
- hypercorn         the same app on hypercorn.asyncio.serve vs under lameduck.asgi.hypercorn
- node              node:http createServer vs lameduck's httpServer (bindings/node, built)
- c                 examples/http_server.c vs benches/bare_http_server.c, the same serving code
                    without lameduck (both built here with cc -O2 against target/release)

How one run is measured: the server starts as its own process on a free port of 127.0.0.1,
pinned to CPU 0 (taskset); it is ready once a GET / through a real connection is answered
(no sleeping). Then its CPU time (utime + stime of the whole process, from /proc/<pid>/stat,
in clock ticks) is read, ``wrk -t1 -c20 -d<seconds>s`` (keep-alive, pinned to CPU 1) loads
it, its CPU time is read again, and the server is killed. CPU per request = the CPU time
used during the wrk run / the requests wrk completed.

A round is one run of each side of a pair, in ABBA order (bare first in odd rounds, lameduck
first in even ones), so drift on a shared machine cancels out. Each round prints its ratios
(with lameduck / without): CPU per request (1.010 = lameduck costs 1% more CPU per request)
and requests/s. wrk's errors (Socket errors: connect/read/write/timeout, Non-2xx or 3xx
responses) are parsed: a round where either side had any is printed and left out of the
medians. The summary gives, per pair, the median of the clean rounds' ratios.

CPU time comes in clock ticks (usually 10 ms): a run of S seconds at one busy CPU measures
about 100*S ticks, so a single ratio is only good to about 1/(100*S); use --seconds 10 or
more, on a quiet machine, before deciding anything at the 1% level. ``--bare-vs-bare`` runs
the bare server on both sides of every round: its ratios are the noise floor of this machine
and duration (they should scatter around 1.000).
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import importlib.util
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
KINDS = ("python-threading", "asyncio", "aiohttp", "uvicorn", "hypercorn", "node", "c")
BODY = b"hello\n"
READY_TIMEOUT = 30.0  # seconds for a server to answer its first request

# --------------------------------------------------------------------------------------------
# The Python servers: this file run as `adapter_cost.py --serve KIND --port N [--lameduck]`.
# lameduck is imported only by the lameduck side.


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # wrk resets its connections when it stops: no tracebacks (on both sides)


def serve_python_threading(port: int, with_lameduck: bool) -> None:
    if with_lameduck:
        import lameduck
        import lameduck.adapters

        srv = Server(("127.0.0.1", port), Handler, bind_and_activate=False)
        lameduck.run(lameduck.adapters.http_server(srv), logger=False)
    else:
        Server(("127.0.0.1", port), Handler).serve_forever()


#: The asyncio adapter on the lameduck side, None on the bare side.
ADAPTER: Any = None
KEEP_ALIVE = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\n" + BODY
CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\n" + BODY


async def asyncio_handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The one handler both asyncio servers run, given straight to start_server or to the
    adapter (no wrapper of ours on either side)."""
    adapter = ADAPTER
    try:
        while True:
            read = reader.readline()
            line = await (adapter.next_request(read) if adapter is not None else read)
            if not line:
                break
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            closing = adapter is not None and adapter.lame_duck
            writer.write(CLOSE if closing else KEEP_ALIVE)
            await writer.drain()
            if closing:
                break
    except ConnectionError:
        pass  # wrk resets its connections when it stops
    writer.close()


def serve_asyncio(port: int, with_lameduck: bool) -> None:
    async def main() -> None:
        global ADAPTER
        if with_lameduck:
            import lameduck
            import lameduck.adapters

            ADAPTER = lameduck.adapters.asyncio_server(asyncio_handle, "127.0.0.1", port)
            await lameduck.run_async(ADAPTER, logger=False)
        else:
            server = await asyncio.start_server(asyncio_handle, "127.0.0.1", port)
            await server.serve_forever()

    asyncio.run(main())


def serve_aiohttp(port: int, with_lameduck: bool) -> None:
    from aiohttp import web

    async def hello(request: Any) -> Any:
        return web.Response(body=BODY)

    app = web.Application()
    app.router.add_get("/", hello)

    async def main() -> None:
        if with_lameduck:
            import lameduck
            import lameduck.adapters

            await lameduck.run_async(lameduck.adapters.aiohttp_app(app, "127.0.0.1", port), logger=False)
        else:
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            await asyncio.Event().wait()

    asyncio.run(main())


async def asgi_hello(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def serve_uvicorn(port: int, with_lameduck: bool) -> None:
    import uvicorn

    settings: Dict[str, Any] = {"log_level": "warning", "access_log": False}
    if with_lameduck:
        import lameduck.asgi

        asyncio.run(lameduck.asgi.uvicorn(asgi_hello, "127.0.0.1", port, config=settings, logger=False).run_async())
    else:
        asyncio.run(uvicorn.Server(uvicorn.Config(asgi_hello, host="127.0.0.1", port=port, **settings)).serve())


def serve_hypercorn(port: int, with_lameduck: bool) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    settings: Dict[str, Any] = {"accesslog": None, "errorlog": None}
    if with_lameduck:
        import lameduck.asgi

        asyncio.run(lameduck.asgi.hypercorn(asgi_hello, "127.0.0.1", port, config=settings, logger=False).run_async())
    else:
        asyncio.run(serve(asgi_hello, Config.from_mapping(settings, bind=[f"127.0.0.1:{port}"]), mode="asgi"))


PYTHON_SERVERS = {
    "python-threading": serve_python_threading,
    "asyncio": serve_asyncio,
    "aiohttp": serve_aiohttp,
    "uvicorn": serve_uvicorn,
    "hypercorn": serve_hypercorn,
}

#: The Node servers: `node -e NODE_SERVER PORT bare|lameduck BINDINGS_DIR`.
NODE_SERVER = r"""
const http = require('node:http')
const [port, side, bindings] = [Number(process.argv[1]), process.argv[2], process.argv[3]]
const server = http.createServer((req, res) => res.end('hello\n'))
if (side === 'lameduck') {
  const lameduck = require(bindings)
  lameduck.run(lameduck.httpServer(server, { port, host: '127.0.0.1' }), { logger: false }).catch((err) => {
    console.error(err)
    process.exit(1)
  })
} else {
  server.listen(port, '127.0.0.1')
}
"""

# --------------------------------------------------------------------------------------------
# What each pair needs, and the command that starts one side.


def pinned(cpu: int) -> List[str]:
    """taskset -c CPU (it execs, so the pid stays the program's), when there are 2+ CPUs."""
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def build_c_servers() -> Tuple[Path, Path]:
    """Builds liblameduck (cargo, release) and compiles the demo and the bare server with the
    same flags into target/adapter_cost/; returns their paths."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    subprocess.run(["cargo", "build", "--release", "--lib", "--quiet"], cwd=REPO, check=True)
    out = target / "adapter_cost"
    out.mkdir(parents=True, exist_ok=True)
    # The demo loads the library by its SONAME (liblameduck.so.0); cargo makes liblameduck.so.
    shutil.copyfile(target / "release/liblameduck.so", out / "liblameduck.so.0")
    if not (out / "liblameduck.so").is_symlink():
        (out / "liblameduck.so").symlink_to("liblameduck.so.0")
    cc = [os.environ.get("CC", "cc"), "-std=c11", "-Wall", "-Wextra", "-O2", "-pthread"]
    demo, bare = out / "http_server", out / "bare_http_server"
    subprocess.run(
        cc + ["-I", str(REPO / "include"), str(REPO / "examples/http_server.c"), "-L", str(out), "-llameduck"]
        + [f"-Wl,-rpath,{out}", "-o", str(demo)],
        check=True,
    )
    subprocess.run(cc + [str(REPO / "benches/bare_http_server.c"), "-o", str(bare)], check=True)
    return demo, bare


def why_unavailable(kind: str) -> Optional[str]:
    """The reason a pair cannot run here, or None."""
    if kind in PYTHON_SERVERS and importlib.util.find_spec("lameduck") is None:
        return f"lameduck is not installed for {sys.executable} (pip install ./bindings/python)"
    if kind in ("aiohttp", "uvicorn", "hypercorn") and importlib.util.find_spec(kind) is None:
        return f"{kind} is not installed (pip install {kind})"
    if kind == "node":
        if shutil.which("node") is None:
            return "node is not installed"
        check = subprocess.run(["node", "-e", f"require({str(REPO / 'bindings/node')!r})"], capture_output=True, text=True)
        if check.returncode != 0:
            return f"the Node addon does not load (cd bindings/node && npm install): {check.stderr.strip()[-300:]}"
    if kind == "c" and shutil.which(os.environ.get("CC", "cc")) is None:
        return "no C compiler (cc)"
    return None


def server_command(kind: str, port: int, with_lameduck: bool, c_servers: Optional[Tuple[Path, Path]]) -> List[str]:
    if kind in PYTHON_SERVERS:
        return [sys.executable, __file__, "--serve", kind, "--port", str(port)] + (["--lameduck"] if with_lameduck else [])
    if kind == "node":
        side = "lameduck" if with_lameduck else "bare"
        return ["node", "-e", NODE_SERVER, str(port), side, str(REPO / "bindings/node")]
    assert kind == "c" and c_servers is not None
    demo, bare = c_servers
    return [str(demo if with_lameduck else bare), "--host", "127.0.0.1", "--port", str(port)]


# --------------------------------------------------------------------------------------------
# One run: start a server, load it with wrk, read its CPU time.


class Run(NamedTuple):
    cpu_per_request: float  # seconds
    requests_per_second: float
    requests: int
    cpu_busy: float  # the server's CPU time / the run's wall time
    errors: str  # "" when wrk saw none


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_answering(proc: "subprocess.Popen[bytes]", port: int, log: Path) -> None:
    """Returns once GET / on a fresh connection is answered 200; fails if the server exits or
    does not answer within READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {log.read_text(errors='replace')[-800:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = b""
                while b"\r\n\r\n" not in answer:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            if answer.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"200"]:
                return
            raise RuntimeError(f"the server answered GET / with {answer[:200]!r}")
        except OSError:
            time.sleep(0.01)  # not listening yet: poll again
    raise RuntimeError(f"the server did not answer within {READY_TIMEOUT:.0f} s: {log.read_text(errors='replace')[-800:]}")


def cpu_ticks(pid: int) -> int:
    """utime + stime of the process (every thread, the exited ones included), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def wrk_errors(out: str) -> str:
    """wrk's error lines, '' when there are none."""
    errors = []
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors and any(int(n) for n in socket_errors.groups()):
        errors.append(socket_errors.group(0))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx and int(non_2xx.group(1)):
        errors.append(non_2xx.group(0))
    return "; ".join(errors)


def run_once(kind: str, with_lameduck: bool, seconds: int, c_servers: Optional[Tuple[Path, Path]]) -> Run:
    port = free_port()
    with tempfile.NamedTemporaryFile(prefix=f"adapter_cost-{kind}-", suffix=".log") as log_file:
        log = Path(log_file.name)
        proc = subprocess.Popen(
            pinned(0) + server_command(kind, port, with_lameduck, c_servers),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_answering(proc, port, log)
            before, started = cpu_ticks(proc.pid), time.monotonic()
            try:
                wrk = subprocess.run(
                    pinned(1) + ["wrk", "-t1", "-c20", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
                    capture_output=True,
                    text=True,
                    timeout=seconds + 60,
                )
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"wrk did not finish within {seconds + 60} s") from None
            used = (cpu_ticks(proc.pid) - before) / os.sysconf("SC_CLK_TCK")
            wall = time.monotonic() - started
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited during the run: {log.read_text(errors='replace')[-800:]}")
        finally:
            proc.kill()
            proc.wait()
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed ({wrk.returncode}): {wrk.stderr.strip() or wrk.stdout.strip()}")
    served = re.search(r"(\d+) requests in", wrk.stdout)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", wrk.stdout)
    if not served or not rate:
        raise RuntimeError(f"cannot read wrk's output: {wrk.stdout!r}")
    requests = int(served.group(1))
    return Run(used / max(requests, 1), float(rate.group(1)), requests, used / wall, wrk_errors(wrk.stdout))


# --------------------------------------------------------------------------------------------
# A pair: rounds in ABBA order, each round's ratios, the medians of the clean ones.


class Round(NamedTuple):
    bare: Run
    lameduck: Run

    @property
    def cpu_ratio(self) -> float:
        return self.lameduck.cpu_per_request / self.bare.cpu_per_request if self.bare.cpu_per_request else float("nan")

    @property
    def rps_ratio(self) -> float:
        return self.lameduck.requests_per_second / self.bare.requests_per_second

    @property
    def errors(self) -> str:
        return "; ".join(f"{side}: {run.errors}" for side, run in (("bare", self.bare), ("lameduck", self.lameduck)) if run.errors)


def describe(run: Run) -> str:
    return f"{run.cpu_per_request * 1e6:7.2f} us CPU/req {run.requests_per_second:8.0f} req/s (CPU {run.cpu_busy * 100:3.0f}%)"


def compare(kind: str, rounds: int, seconds: int, c_servers: Optional[Tuple[Path, Path]], bare_vs_bare: bool = False) -> List[Round]:
    """Runs the pair's rounds, printing each; bare_vs_bare runs the bare server on both sides
    (the ratios then show the noise alone)."""
    sides = "bare / bare (--bare-vs-bare: the noise floor)" if bare_vs_bare else "lameduck / bare"
    print(f"\n{kind}: {rounds} rounds of {seconds} s per side, ABBA order (ratio = {sides})", flush=True)
    done: List[Round] = []
    for i in range(rounds):
        order = (False, True) if i % 2 == 0 else (True, False)
        runs: Dict[bool, Run] = {}
        try:
            for with_lameduck in order:
                runs[with_lameduck] = run_once(kind, with_lameduck and not bare_vs_bare, seconds, c_servers)
        except RuntimeError as err:
            side = "lameduck" if with_lameduck else "bare"
            print(f"  round {i + 1:2}  FAILED ({side}): {err}  EXCLUDED", flush=True)
            continue
        r = Round(bare=runs[False], lameduck=runs[True])
        done.append(r)
        line = f"  round {i + 1:2}  bare {describe(r.bare)} | {'bare' if bare_vs_bare else 'lameduck'} {describe(r.lameduck)} | "
        line += f"CPU/req ratio {r.cpu_ratio:.3f}  req/s ratio {r.rps_ratio:.3f}"
        if r.errors:
            line += f"  EXCLUDED (wrk errors: {r.errors})"
        print(line, flush=True)
    return done


def summary_line(kind: str, rounds: List[Round], requested: int, other: str = "lameduck") -> str:
    clean = [r for r in rounds if not r.errors]
    tally = f"{len(clean)} clean of {requested} rounds: {len(rounds) - len(clean)} with wrk errors, {requested - len(rounds)} failed"
    if not clean:
        return f"{kind:<17} no clean round ({tally})"
    med = statistics.median
    return (
        f"{kind:<17} CPU/req ratio {med(r.cpu_ratio for r in clean):.3f}   req/s ratio {med(r.rps_ratio for r in clean):.3f}   "
        f"CPU/req bare {med(r.bare.cpu_per_request for r in clean) * 1e6:6.2f} us, {other} "
        f"{med(r.lameduck.cpu_per_request for r in clean) * 1e6:6.2f} us   "
        f"({tally}; ratios {', '.join(f'{r.cpu_ratio:.3f}' for r in clean)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Server CPU per request with lameduck vs without (issue 13).")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per pair (default 8)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per run (default 5)")
    parser.add_argument("--only", default=",".join(KINDS), help=f"comma-separated pairs (default {','.join(KINDS)})")
    parser.add_argument(
        "--bare-vs-bare", action="store_true", help="run the bare server on both sides: the ratios then show the noise alone"
    )
    parser.add_argument("--serve", choices=sorted(PYTHON_SERVERS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lameduck", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        PYTHON_SERVERS[args.serve](args.port, args.lameduck)
        return
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or args.rounds < 1 or args.seconds < 1:
        parser.error(f"unknown pair(s) {', '.join(unknown)} (known: {', '.join(KINDS)})" if unknown else "--rounds and --seconds must be >= 1")
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    if not pinned(0):
        print("warning: not pinning (no taskset, or one CPU): server and wrk share CPUs")
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(
        f"adapter_cost: server CPU per request, lameduck vs bare; {os.cpu_count()} CPUs, server on CPU 0, wrk -t1 -c20 on CPU 1; "
        f"clock tick {1000 / os.sysconf('SC_CLK_TCK'):.0f} ms; Python {sys.version.split()[0]}; {wrk_version.strip()}"
    )
    results: Dict[str, List[Round]] = {}
    skipped: Dict[str, str] = {}
    for kind in kinds:
        reason = why_unavailable(kind)
        if reason:
            skipped[kind] = reason
            print(f"\n{kind}: skipped: {reason}", flush=True)
            continue
        try:
            c_servers = build_c_servers() if kind == "c" else None
            results[kind] = compare(kind, args.rounds, args.seconds, c_servers, args.bare_vs_bare)
        except (RuntimeError, subprocess.CalledProcessError) as err:
            skipped[kind] = f"failed: {err}"
            print(f"  {kind}: FAILED: {err}", flush=True)
    sides = "bare / bare: --bare-vs-bare, both sides the bare server" if args.bare_vs_bare else "lameduck / bare"
    print(f"\nsummary: medians over the clean rounds (ratio = {sides}; 1.010 = 1% more CPU per request)")
    for kind in kinds:
        other = "bare" if args.bare_vs_bare else "lameduck"
        print(summary_line(kind, results[kind], args.rounds, other) if kind in results else f"{kind:<17} {skipped[kind]}")


if __name__ == "__main__":
    main()
