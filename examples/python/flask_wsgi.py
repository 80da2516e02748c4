"""A Flask (WSGI) app on hypercorn under lame-duck:
python examples/python/flask_wsgi.py [port] [--period S] [--drain S] [--idle-grace S]

Each request runs on a worker thread. Try: curl 'http://127.0.0.1:8000/sleep?ms=5000' and press
Ctrl-C while it runs: the slow request completes, new connections are refused, the exit status
is 0. WSGI has no lifespan: what must run once every request is done goes after the run.
`kill -HUP <pid>` upgrades with zero downtime.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

from flask import Flask, request

import lameduck
import lameduck.wsgi

app = Flask(__name__)


@app.get("/")
def hello() -> str:
    return "hello from lameduck\n"


@app.get("/sleep")
def sleep() -> str:
    ms = int(request.args.get("ms", "1000"))
    print(f"request /sleep?ms={ms}", flush=True)
    time.sleep(ms / 1000)
    print(f"request /sleep?ms={ms} done", flush=True)
    return f"slept {ms} ms\n"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int, nargs="?", default=8000)
    parser.add_argument("--period", type=float, default=10.0, help="seconds for in-flight requests")
    parser.add_argument("--drain", type=float, default=0.0, help="seconds to keep serving, unready, first")
    parser.add_argument("--idle-grace", type=float, default=1.0, help="seconds kept-alive connections stay open")
    args = parser.parse_args()
    runner = lameduck.wsgi.hypercorn(
        app,
        "127.0.0.1",
        args.port,
        idle_grace=args.idle_grace,
        period=args.period,  # every keyword but config= is a lameduck.Runner option
        drain_delay=args.drain,
        on_state_change=lambda old, new: print(f"state {new}", flush=True),
    )
    print(f"listening on http://127.0.0.1:{args.port} (pid {os.getpid()})", flush=True)
    try:
        asyncio.run(runner.run_async())
    except lameduck.LameDuckError as e:
        print(f"error {type(e).__name__}: {e}", flush=True)
        return 1
    print(f"shutdown: every request is done (pid {os.getpid()})", flush=True)  # WSGI's "lifespan shutdown"
    print("clean exit", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
