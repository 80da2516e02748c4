"""An aiohttp app under lame-duck, with asyncio:
python examples/python/asyncio_server.py [--max-connections N]

With --max-connections N at most N connections are open at once; the others wait in the
kernel's accept queue (try N=1 and two `curl 'http://127.0.0.1:8080/?s=5'`). `kill -USR1 <pid>`
doubles the limit, `kill -USR2 <pid>` halves it (at least 1); each prints the new limit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from typing import Optional

from aiohttp import web

import lameduck
import lameduck.adapters


async def hello(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "0")))
    return web.Response(text="hello from lameduck\n")


def change_limit(runner: lameduck.Runner, signum: int) -> None:
    """SIGUSR1: twice the limit; SIGUSR2: half of it (at least 1)."""
    limit: Optional[int] = runner.max_connections
    if limit is None:
        print("max connections: unlimited (start with --max-connections N)", flush=True)
        return
    limit = limit * 2 if signum == signal.SIGUSR1 else max(1, limit // 2)
    runner.max_connections = limit
    print(f"max connections: {limit} ({runner.connection_stats().admitted} open now)", flush=True)


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-connections", type=int, default=None, help="0 or absent: unlimited")
    args = parser.parse_args()
    app = web.Application()
    app.add_routes([web.get("/", hello)])
    # Kubernetes-style: keep serving (unready) for 2 s, then 10 s to finish in-flight requests.
    runner = lameduck.Runner(
        lameduck.adapters.aiohttp_app(app, "127.0.0.1", 8080),
        drain_delay=2.0,
        period=10.0,
        max_connections=args.max_connections,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        loop.add_signal_handler(sig, change_limit, runner, sig)
    print(f"listening on http://127.0.0.1:8080 (pid {os.getpid()})", flush=True)
    await runner.run_async()


if __name__ == "__main__":
    asyncio.run(main())
