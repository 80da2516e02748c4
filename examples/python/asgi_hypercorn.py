"""A plain ASGI app (no framework) on hypercorn under lame-duck:
python examples/python/asgi_hypercorn.py [port] [--period S] [--drain S] [--idle-grace S]

Any ASGI callable works the same (Starlette, FastAPI, Django's ASGIHandler). Try:
curl 'http://127.0.0.1:8000/sleep?ms=5000' and press Ctrl-C while it runs: the slow request
completes, new connections are refused, the lifespan shutdown runs once, the exit status is 0.
`kill -HUP <pid>` upgrades with zero downtime.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any, Awaitable, Callable, Dict, MutableMapping
from urllib.parse import parse_qs

import lameduck
import lameduck.asgi

Message = MutableMapping[str, Any]


async def app(scope: Dict[str, Any], receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                print(f"lifespan startup (pid {os.getpid()})", flush=True)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                print(f"lifespan shutdown (pid {os.getpid()})", flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = b"hello from lameduck\n"
    if scope["path"] == "/sleep":
        ms = int(parse_qs(scope["query_string"].decode()).get("ms", ["1000"])[0])
        print(f"request /sleep?ms={ms}", flush=True)
        await asyncio.sleep(ms / 1000)
        print(f"request /sleep?ms={ms} done", flush=True)
        body = f"slept {ms} ms\n".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int, nargs="?", default=8000)
    parser.add_argument("--period", type=float, default=10.0, help="seconds for in-flight requests")
    parser.add_argument("--drain", type=float, default=0.0, help="seconds to keep serving, unready, first")
    parser.add_argument("--idle-grace", type=float, default=1.0, help="seconds kept-alive connections stay open")
    args = parser.parse_args()
    runner = lameduck.asgi.hypercorn(
        app,
        "127.0.0.1",
        args.port,
        idle_grace=args.idle_grace,
        config={"keep_alive_timeout": 30},  # hypercorn.Config's own settings
        period=args.period,  # every other keyword is a lameduck.Runner option
        drain_delay=args.drain,
        on_state_change=lambda old, new: print(f"state {new}", flush=True),
    )
    print(f"listening on http://127.0.0.1:{args.port} (pid {os.getpid()})", flush=True)
    try:
        asyncio.run(runner.run_async())
    except lameduck.LameDuckError as e:
        print(f"error {type(e).__name__}: {e}", flush=True)
        return 1
    print("clean exit", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
