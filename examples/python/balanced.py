"""A FastAPI app on uvicorn meant to run behind a load balancer (benches/fleet.rs runs two behind
haproxy):

    python examples/python/balanced.py [--port N] [--health ADDRESS] [--drain MS]
                                       [--drain-quiet MS] [--period MS] [--pid-file PATH]

Each flag may come from the environment instead: PORT, HEALTH, DRAIN, DRAIN_QUIET, PERIOD,
PID_FILE (a flag wins); durations in milliseconds, as for the C demo and the Node example. The
balancer checks GET /ready on the --health port, which lameduck's core answers on its own thread
(200 while serving, 503 from SIGTERM on), so a busy event loop never fails a check. SIGTERM
drains: the app keeps serving, unready, for --drain ms, or less with --drain-quiet once the
balancer has seen the 503 (uvicorn's connections do not go through lameduck's gate, so only the
probe ends the quiet time); then it finishes what is in flight and exits. SIGHUP upgrades: the script starts again on the same sockets (the port and the
health port), and this process hands over. Every answer names the process (pid); lameduck's log
lines and each state change ("state READY") go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Optional

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

import lameduck
import lameduck.asgi

app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
async def hello() -> str:
    return f"hello from lameduck (pid {os.getpid()})\n"


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def env(name: str) -> Optional[str]:
    return os.environ.get(name) or None


def on_state_change(old: str, new: str) -> None:
    print(f"state {new}", file=sys.stderr, flush=True)


async def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=count, default=env("PORT") or "8080")
    parser.add_argument("--health", default=env("HEALTH"), help="host:port of the health listener")
    parser.add_argument("--drain", type=count, default=env("DRAIN") or "0")
    parser.add_argument("--drain-quiet", type=count, default=env("DRAIN_QUIET") or "0")
    parser.add_argument("--period", type=count, default=env("PERIOD") or "10000")
    parser.add_argument("--pid-file", default=env("PID_FILE"))
    args = parser.parse_args()
    runner = lameduck.asgi.uvicorn(
        app,
        "127.0.0.1",
        args.port,
        config={"log_level": "warning", "access_log": False},  # not a line per request
        health=args.health,
        drain_delay=args.drain / 1000,
        drain_quiet=args.drain_quiet / 1000,
        period=args.period / 1000,
        pid_file=args.pid_file,
        on_state_change=on_state_change,
    )
    await runner.run_async()


if __name__ == "__main__":
    asyncio.run(main())
