"""An aiohttp app under lame-duck, with asyncio: python examples/python/asyncio_server.py"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

import lameduck
import lameduck.adapters


async def hello(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "0")))
    return web.Response(text="hello from lameduck\n")


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    app = web.Application()
    app.add_routes([web.get("/", hello)])
    # Kubernetes-style: keep serving (unready) for 2 s, then 10 s to finish in-flight requests.
    await lameduck.run_async(lameduck.adapters.aiohttp_app(app, "127.0.0.1", 8080), drain_delay=2.0, period=10.0)


if __name__ == "__main__":
    asyncio.run(main())
