"""The Python leg of tests/conformance: one scenario run against the public ``lameduck`` package.

The protocol (arguments, hook behaviours, event lines, exit status) is tests/conformance/README.md.
Usage: ``python_driver.py key=value ...``; ``g1.KEY=VALUE`` applies only in generation 1
(``CONFORMANCE_GEN``). Option values go to ``lameduck.Runner`` unchanged: the driver validates
nothing the library validates, and reports its errors as event lines.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from typing import Any, Dict, List, NoReturn, Optional

import lameduck

INT_OPTIONS = {
    "period_ms": "period",
    "drain_delay_ms": "drain_delay",
    "close_timeout_ms": "close_timeout",
    "upgrade_confirm_ms": "upgrade_confirm",
    "upgrade_timeout_ms": "upgrade_timeout",
    "listen_timeout_ms": "listen_timeout",
    "drain_quiet_ms": "drain_quiet",
}
SIGNAL_OPTIONS = {"signals": "signals", "upgrade_signals": "upgrade_signals"}
OTHER_KEYS = {
    "repeat", "explicit_ready", "logging", "listen", "serve", "shutdown", "close", "before_run", "after_run",
    "max_connections", "health",
}
KEYS = set(INT_OPTIONS) | set(SIGNAL_OPTIONS) | OTHER_KEYS

BEHAVIOURS = {
    "serve": {
        "block", "return", "fail", "ready_block", "stop_block", "ignore_gate", "hang", "upgrade", "upgrade_busy",
        "hold_permits",
    },
    "shutdown": {
        "fail", "release", "hang", "wait_deadline", "ignore_deadline", "stop", "release_permits", "health_answers",
    },
    "close": {"fail", "release", "hang"},
}
DEFAULT_BEHAVIOUR = {"serve": "block", "shutdown": "release", "close": "release"}

_print_lock = threading.Lock()
GEN = 0


def emit(text: str) -> None:
    """Prints one event line, prefixed with the generation, flushed at once. The newline goes
    in the same write (print's end is a write of its own unbuffered), so that the lines of two
    generations sharing stdout never interleave."""
    with _print_lock:
        print(f"g{GEN} {text}\n", end="", flush=True)


def usage(message: str) -> NoReturn:
    print(f"python_driver: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


class HookError(Exception):
    """A hook's failure N (the C driver returns N)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"hook failure {code}")
        self.code = code


def kind_of(err: BaseException) -> str:
    """The protocol's KIND for an exception from the library."""
    if isinstance(err, lameduck.LameDuckError):
        return err.kind.lower()
    if isinstance(err, (ValueError, TypeError)):
        return "invalid_argument"
    raise err


class Logger:
    """The ``log(level, message)`` object given to the runner: every line becomes an event."""

    def log(self, level: int, msg: str) -> None:
        names = [(logging.ERROR, "error"), (logging.WARNING, "warn"), (logging.INFO, "info")]
        emit(f"log {next((n for lv, n in names if level >= lv), 'debug')} {msg}")


def on_state_change(old: str, new: str) -> None:
    emit(f"state {old} {new}")


def await_state(runner: lameduck.Runner, want: lameduck.State) -> None:
    """Polls (1 ms, up to 30 s) until the runner's state is `want`: an upgrade is only possible
    once the run is READY, which the core reports just after serve was called."""
    until = time.monotonic() + 30.0
    while runner.state != want and time.monotonic() < until:
        time.sleep(0.001)


def upgrade_kind(runner: lameduck.Runner) -> str:
    try:
        runner.upgrade()
    except lameduck.LameDuckError as err:
        return err.kind.lower()
    return "ok"


class Server:
    """serve/shutdown/close doing the behaviours of the README's table."""

    def __init__(self, behaviours: Dict[str, str], health: bool) -> None:
        self.behaviours = behaviours
        self.health = health
        self.runner: Optional[lameduck.Runner] = None
        self.gate = threading.Event()
        self.close_entered = threading.Event()
        self.never = threading.Event()
        # The permits hold_permits took from the run's connection gate (release_permits and
        # close give them back).
        self.held: List[Any] = []
        self.held_lock = threading.Lock()

    def _hold_permits(self, ctx: lameduck.Context) -> None:
        """Admits through the gate (a blocking acquire each) until it refuses: with a limit, the
        last acquire waits on the full gate until lame-duck ends it."""
        while True:
            if len(self.held) == 64:
                emit("accept busy")
                return
            try:
                permit = ctx.gate.acquire()
            except lameduck.LameDuckError as err:
                emit(f"accept {err.kind.lower()}")
                return
            with self.held_lock:
                self.held.append(permit)
                count = len(self.held)
            emit(f"admitted {count}")

    def _release_permits(self) -> None:
        with self.held_lock:
            held, self.held = self.held, []
        for permit in held:
            permit.release()

    def _runner(self) -> lameduck.Runner:
        assert self.runner is not None
        return self.runner

    def _behaviour(self, hook: str) -> tuple[str, int]:
        name, _, code = self.behaviours[hook].partition(":")
        return name, int(code) if name == "fail" else 0

    def _hang(self) -> NoReturn:
        while True:
            self.never.wait()

    def serve(self, ctx: lameduck.Context) -> None:
        emit("enter serve")
        if self.health:
            emit(f"health {self._runner().health_address or 'not_running'}")
        try:
            name, code = self._behaviour("serve")
            if name == "hang":
                self._hang()
            if name == "fail":
                raise HookError(code)
            if name == "return":
                return
            if name == "hold_permits":
                self._hold_permits(ctx)
                return
            if name == "ignore_gate":
                self.close_entered.wait()
                return
            if name == "ready_block":
                ctx.ready()
            elif name == "stop_block":
                self._runner().stop()
            elif name == "upgrade":
                await_state(self._runner(), lameduck.State.READY)
                emit(f"upgrade {upgrade_kind(self._runner())}")
            elif name == "upgrade_busy":
                self._upgrade_busy()
            self.gate.wait()
        finally:
            emit("exit serve")

    def _upgrade_busy(self) -> None:
        runner = self._runner()
        await_state(runner, lameduck.State.READY)
        first: List[str] = []
        background = threading.Thread(target=lambda: first.append(upgrade_kind(runner)), daemon=True)
        background.start()
        await_state(runner, lameduck.State.UPGRADING)
        emit(f"upgrade {upgrade_kind(runner)}")
        background.join()
        emit(f"upgrade {first[0]}")

    def shutdown(self, ctx: lameduck.Context) -> None:
        emit("enter shutdown")
        try:
            name, code = self._behaviour("shutdown")
            if name == "hang":
                self._hang()
            if name == "wait_deadline":
                ctx.wait()
                raise TimeoutError("deadline exceeded")
            if name == "ignore_deadline":
                self.close_entered.wait()
            elif name == "stop":
                self._runner().stop()
            elif name == "release_permits":
                self._release_permits()
            elif name == "health_answers":
                for path in ("/ready", "/live", "/health", "/nope"):
                    report = self._runner().health(path)
                    body = report.body[:-1] if report.body.endswith("\n") else report.body
                    emit(f"answer {path} {report.status} [{report.content_type}] {body}")
            self.gate.set()
            if name == "fail":
                raise HookError(code)
        finally:
            emit("exit shutdown")

    def close(self) -> None:
        self.close_entered.set()
        emit("enter close")
        self._release_permits()
        try:
            name, code = self._behaviour("close")
            if name == "hang":
                self._hang()
            self.gate.set()
            if name == "fail":
                raise HookError(code)
        finally:
            emit("exit close")


def parse_args(argv: List[str], gen: int) -> Dict[str, str]:
    """The arguments as a dict, with the ``g1.`` overrides applied in generation 1."""
    base: Dict[str, str] = {}
    overrides: Dict[str, str] = {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq:
            usage(f"argument {arg!r} is not key=value")
        target = base
        if key.startswith("g1."):
            key, target = key[3:], overrides
        if key not in KEYS:
            usage(f"unknown key {key!r}")
        target[key] = value
    if gen == 1:
        base.update(overrides)
    return base


def runner_options(args: Dict[str, str]) -> Dict[str, Any]:
    """The keyword arguments of ``lameduck.Runner`` for the given arguments."""
    options: Dict[str, Any] = {}
    for key, option in INT_OPTIONS.items():
        if key in args:
            try:
                options[option] = int(args[key]) / 1000
            except ValueError:
                usage(f"{key}={args[key]!r} is not an integer")
    for key, option in SIGNAL_OPTIONS.items():
        if key in args:
            names = [] if args[key] == "none" else args[key].split(",")
            try:
                options[option] = tuple(signal.Signals[name] for name in names)
            except KeyError:
                usage(f"{key}={args[key]!r}: unknown signal name")
    if "repeat" in args:
        options["repeat_signal"] = args["repeat"]
    if "health" in args:
        options["health"] = args["health"]
    if "max_connections" in args:
        try:
            options["max_connections"] = int(args["max_connections"])
        except ValueError:
            usage(f"max_connections={args['max_connections']!r} is not an integer")
    ready = args.get("explicit_ready", "false")
    if ready not in ("true", "false"):
        usage(f"explicit_ready={ready!r} is not true or false")
    options["explicit_ready"] = ready == "true"
    logging_value = args.get("logging", "on")
    if logging_value not in ("on", "off"):
        usage(f"logging={logging_value!r} is not on or off")
    options["logger"] = Logger() if logging_value == "on" else False
    options["on_state_change"] = on_state_change
    return options


def behaviours(args: Dict[str, str]) -> Dict[str, str]:
    chosen: Dict[str, str] = {}
    for hook, allowed in BEHAVIOURS.items():
        value = args.get(hook, DEFAULT_BEHAVIOUR[hook])
        name, colon, code = value.partition(":")
        if name not in allowed or (name == "fail") != bool(colon) or (colon and not re.fullmatch(r"-?[0-9]+", code)):
            usage(f"{hook}={value!r} is not a behaviour of {hook}")
        chosen[hook] = value
    if args.get("before_run", "stop") != "stop":
        usage(f"before_run={args['before_run']!r} is not stop")
    if args.get("after_run", "stop") not in ("stop", "run_again"):
        usage(f"after_run={args['after_run']!r} is not stop or run_again")
    return chosen


def finish(kind: str, cause: Optional[BaseException] = None, abandoned: bool = False) -> NoReturn:
    """Prints the result line and exits (without waiting for a hook left running)."""
    code = cause.code if isinstance(cause, HookError) else "none"
    emit(f"result {kind} cause={code} abandoned={'true' if abandoned else 'false'}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if kind == "ok" else 1)


def main() -> None:
    global GEN
    gen_text = os.environ.get("CONFORMANCE_GEN", "0")
    if not re.fullmatch(r"[0-9]+", gen_text):
        usage(f"CONFORMANCE_GEN={gen_text!r} is not a generation number")
    GEN = int(gen_text)
    args = parse_args(sys.argv[1:], GEN)
    options = runner_options(args)
    server = Server(behaviours(args), "health" in args)
    emit(f"start pid={os.getpid()}")
    os.environ["CONFORMANCE_GEN"] = str(GEN + 1)

    try:
        runner = lameduck.Runner(server, **options)
    except (ValueError, TypeError) as err:
        emit(f"message {err}")
        finish("invalid_argument")
    server.runner = runner

    sock: Optional[socket.socket] = None  # kept open for the run
    if "listen" in args:
        try:
            sock = lameduck.listen(args["listen"])
        except ValueError:
            finish("invalid_argument")
        except OSError:
            finish("system")
        emit(f"listen {args['listen']} shared={'true' if lameduck.is_shared(sock) else 'false'}")

    if args.get("before_run") == "stop":
        runner.stop()

    failure: Optional[lameduck.LameDuckError] = None
    try:
        runner.run()
    except lameduck.LameDuckError as err:
        failure = err

    after = args.get("after_run")
    if after is not None:
        try:
            runner.stop() if after == "stop" else runner.run()
            kind = "ok"
        except Exception as err:
            kind = kind_of(err)
        emit(f"{'stop_after' if after == 'stop' else after} {kind}")

    if failure is None:
        finish("ok")
    emit(f"message {failure}")
    finish(failure.kind.lower(), failure.__cause__, failure.abandoned)


if __name__ == "__main__":
    main()
