"""A FastAPI app on uvicorn under lame-duck:
python examples/python/fastapi_uvicorn.py [port] [--period S] [--drain S] [--drain-quiet S]
    [--idle-grace S] [--health ADDRESS]

Try: curl 'http://127.0.0.1:8000/sleep?ms=5000' and press Ctrl-C while it runs. The slow
request still completes, new connections are refused, the app's lifespan shutdown runs once,
the process exits 0. `kill -HUP <pid>` upgrades with zero downtime: the script starts again on
the same socket, and once the new process serves this one lame-ducks. /health answers from
lameduck.current_runner() (lameduck.health.asgi_app() routed on the app): 200 while the runner is
ready, 503 once it drains. --health 127.0.0.1:8081 also serves /ready, /live and /health from the
library's own listener.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from typing import AsyncIterator, Dict

from fastapi import FastAPI
from starlette.routing import Route

import lameduck
import lameduck.asgi
import lameduck.health

@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    print(f"lifespan startup (pid {os.getpid()})", flush=True)
    yield  # open database pools before, close them after: lameduck runs this after the drain
    print(f"lifespan shutdown (pid {os.getpid()})", flush=True)


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def hello() -> Dict[str, str]:
    return {"hello": "from lameduck"}


@app.get("/sleep")
async def sleep(ms: int = 1000) -> Dict[str, int]:
    print(f"request /sleep?ms={ms}", flush=True)
    await asyncio.sleep(ms / 1000)
    print(f"request /sleep?ms={ms} done", flush=True)
    return {"slept_ms": ms}


# The run's own answers (state, pid, generation, connections) on the app's port.
app.router.routes.append(Route("/health", lameduck.health.asgi_app()))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int, nargs="?", default=8000)
    parser.add_argument("--period", type=float, default=10.0, help="seconds for in-flight requests")
    parser.add_argument("--drain", type=float, default=0.0, help="seconds to keep serving, unready, first")
    parser.add_argument("--drain-quiet", type=float, default=0.0, help="end the drain early after this quiet time")
    parser.add_argument("--idle-grace", type=float, default=1.0, help="seconds kept-alive connections stay open")
    parser.add_argument("--health", default=None, help="address of the built-in health listener")
    args = parser.parse_args()
    runner = lameduck.asgi.uvicorn(
        app,
        "127.0.0.1",
        args.port,
        idle_grace=args.idle_grace,
        config={"log_level": "warning"},  # uvicorn.Config's own settings
        period=args.period,  # every other keyword is a lameduck.Runner option
        drain_delay=args.drain,
        drain_quiet=args.drain_quiet,
        health=args.health,
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
