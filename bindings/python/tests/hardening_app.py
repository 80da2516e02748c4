"""Scenarios for test_hardening.py, each in its own process: `python hardening_app.py MODE ...`.

- `abandon-async` / `abandon-sync`: a server on a real listener (a line `hello` to each
  connection) whose shutdown ignores its deadline and never returns, nor does close; the run
  abandons them and the process exits while they still run (code 3, `error ...` printed).
- `two-async ORDER PREVIOUS`: runners A and B with `run_async` on one loop; stdin `release X`
  lets X's shutdown return; ORDER (`AB`/`BA`) is only printed; PREVIOUS `handler` installs a
  SIGTERM handler with `loop.add_signal_handler` first (it prints `previous handler`), `none`
  leaves the default. After both ended it prints `both ended` and waits for stdin to close.
- `sync-threads`: `run()` on the main thread, a second runner with signals in a thread (refused),
  a third with `signals=()` in a thread (only `stop()` ends it).

Prints `port N`, `ready`, `X state NEW`, `X ended: ...`; lameduck's logs go to stderr, each
runner's prefixed with its name.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import threading
import time
from typing import Any, Dict, List

import lameduck


OUT = threading.Lock()


def out(line: str) -> None:
    with OUT:  # state callbacks come from each runner's own thread
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def greet_forever(sock: socket.socket) -> None:
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.sendall(b"hello\n")


class SyncStuck:
    """serve answers on a real listener; shutdown and close ignore their deadline forever,
    waking every millisecond (each time wanting the GIL back)."""

    def __init__(self) -> None:
        self.sock = lameduck.listen("127.0.0.1:0")
        out(f"port {self.sock.getsockname()[1]}")

    def serve(self, ctx: lameduck.Context) -> None:
        greet_forever(self.sock)

    def shutdown(self, ctx: lameduck.Context) -> None:
        while True:
            time.sleep(0.001)

    def close(self) -> None:
        forever = threading.Event()
        while not forever.wait(0.001):
            pass


class AsyncStuck:
    """The same with coroutine hooks on the loop (and a plain, sleeping close beside them)."""

    def __init__(self) -> None:
        self.sock = lameduck.listen("127.0.0.1:0")
        out(f"port {self.sock.getsockname()[1]}")

    async def serve(self, ctx: lameduck.Context) -> None:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(greet, sock=self.sock)
        async with server:
            await asyncio.Event().wait()

    async def shutdown(self, ctx: lameduck.Context) -> None:
        while True:  # the deadline passes; this goes on
            await asyncio.sleep(0.001)

    def close(self) -> None:
        while True:
            time.sleep(0.001)


def stuck_options() -> Dict[str, Any]:
    return dict(
        period=0.05,
        close_timeout=0.05,
        logger=False,
        on_state_change=lambda old, new: out("ready") if new == "READY" else None,
    )


def abandon(kind: str) -> int:
    try:
        if kind == "async":
            asyncio.run(lameduck.run_async(AsyncStuck(), **stuck_options()))
        else:
            lameduck.run(SyncStuck(), **stuck_options())
    except lameduck.LameDuckError as e:
        out(f"error {type(e).__name__} abandoned={e.abandoned}: {e}")
        return 3
    return 0


class Releasable:
    """serve waits for shutdown; shutdown waits for the stdin line `release NAME`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.release = asyncio.Event()
        self.stopped = asyncio.Event()

    async def serve(self, ctx: lameduck.Context) -> None:
        await self.stopped.wait()

    async def shutdown(self, ctx: lameduck.Context) -> None:
        out(f"{self.name} shutdown")
        await self.release.wait()
        self.stopped.set()

    async def close(self) -> None:
        self.stopped.set()


def named_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(f"runner.{name}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{name}: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


async def two_async(order: str, previous: str) -> int:
    loop = asyncio.get_running_loop()
    if previous == "handler":
        loop.add_signal_handler(signal.SIGTERM, out, "previous handler")
    servers = {name: Releasable(name) for name in "AB"}
    ready: List[str] = []

    def observer(name: str) -> Any:
        def on_state(old: str, new: str) -> None:
            out(f"{name} state {new}")
            if new == "READY":
                ready.append(name)
                if len(ready) == 2:
                    out("ready")

        return on_state

    async def one(name: str) -> None:
        try:
            await lameduck.run_async(
                servers[name],
                period=60.0,
                repeat_signal="ignore",
                logger=named_logger(name),
                on_state_change=observer(name),
            )
            out(f"{name} ended: ok")
        except lameduck.LameDuckError as e:
            out(f"{name} ended: {type(e).__name__}: {e}")

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks = [asyncio.ensure_future(one(name)) for name in "AB"]
    out(f"order {order}")
    both = asyncio.ensure_future(asyncio.gather(*tasks))
    line = asyncio.ensure_future(reader.readline())
    while not both.done():
        await asyncio.wait([line, both], return_when=asyncio.FIRST_COMPLETED)
        if line.done():
            words = line.result().decode().split()
            if words[:1] == ["release"]:
                servers[words[1]].release.set()
            line = asyncio.ensure_future(reader.readline())
    await both
    out("both ended")
    while await line:  # a SIGTERM now meets the previous disposition
        line = asyncio.ensure_future(reader.readline())
    return 0


def sync_threads() -> int:
    outcomes: Dict[str, str] = {}

    class Plain:
        def __init__(self, name: str) -> None:
            self.name = name
            self.stopped = threading.Event()

        def serve(self, ctx: lameduck.Context) -> None:
            self.stopped.wait()

        def shutdown(self, ctx: lameduck.Context) -> None:
            out(f"{self.name} shutdown")
            self.stopped.set()

        def close(self) -> None:
            self.stopped.set()

    def in_thread(name: str, runner: lameduck.Runner) -> None:
        try:
            runner.run()
            outcomes[name] = "ok"
        except lameduck.LameDuckError as e:
            outcomes[name] = f"{type(e).__name__}: {e}"
        out(f"{name} ended: {outcomes[name]}")

    main_runner = lameduck.Runner(
        Plain("A"), logger=named_logger("A"), on_state_change=lambda old, new: out("ready") if new == "READY" else None
    )
    refused = lameduck.Runner(Plain("B"), logger=named_logger("B"))
    quiet = lameduck.Runner(Plain("C"), signals=(), logger=named_logger("C"))
    b = threading.Thread(target=in_thread, args=("B", refused))
    c = threading.Thread(target=in_thread, args=("C", quiet))
    b.start()
    b.join()
    c.start()
    assert quiet.wait_ready(30)
    in_thread("A", main_runner)
    out(f"C state {quiet.state}")
    quiet.stop()
    c.join()
    out(f"SIGTERM handler restored {signal.getsignal(signal.SIGTERM) is signal.SIG_DFL}")
    return 0


def main() -> int:
    mode = sys.argv[1]
    if mode.startswith("abandon-"):
        return abandon(mode.split("-", 1)[1])
    if mode == "two-async":
        return asyncio.run(two_async(sys.argv[2], sys.argv[3]))
    if mode == "sync-threads":
        return sync_threads()
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main())
