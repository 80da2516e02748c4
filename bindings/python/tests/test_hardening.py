"""Issue 10: abandoned hooks at interpreter exit, several runners and their signals, error texts.

Real processes (tests/hardening_app.py), real signals (os.kill), real sockets.
"""

from __future__ import annotations

import concurrent.futures
import math
import signal
import socket
import sys
from pathlib import Path
import pytest

import lameduck
from conftest import Process

APP = Path(__file__).with_name("hardening_app.py")
RUNS = 50
AT_ONCE = 5


def hardening_app(*args: str, stdin: bool = False) -> Process:
    return Process([sys.executable, str(APP), *args], stdin=stdin)


def abandon_once(kind: str) -> str:
    """One run whose shutdown and close never return; '' when it exited as it should, else
    what went wrong."""
    app = hardening_app(f"abandon-{kind}")
    try:
        port = int(app.wait_for(r"^out: port (\d+)").group(1))
        app.wait_for(r"^out: ready$")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            assert s.makefile().readline() == "hello\n"
        app.signal(signal.SIGTERM)
        code = app.finish()
        app.wait_closed()
        text = app.text()
        expected = "out: error ExpiredError abandoned=True: Lame-duck period has expired"
        if code != 3 or expected not in text or "Fatal Python error" in text:
            return f"exit code {code}:\n{text}"
        return ""
    finally:
        app.kill()


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_abandoned_hooks_do_not_abort_the_interpreter_at_exit(kind: str) -> None:
    """Before the fix, a hook still running (or woken, as asyncio.run cancels its task) while
    the interpreter finalized aborted it: `Fatal Python error: PyGILState_Release`, SIGABRT."""
    with concurrent.futures.ThreadPoolExecutor(AT_ONCE) as pool:
        failures = [f for f in pool.map(abandon_once, [kind] * RUNS) if f]
    assert not failures, f"{len(failures)} of {RUNS} runs went wrong; the first:\n{failures[0]}"


@pytest.mark.parametrize("order, previous", [("AB", "handler"), ("BA", "handler"), ("AB", "none"), ("BA", "none")])
def test_every_run_async_runner_on_a_loop_gets_sigterm(order: str, previous: str) -> None:
    """Two run_async runners on one loop: one SIGTERM starts both lame-ducks; once the first
    has ended, a SIGTERM still reaches the other (and not the previous handler); the previous
    disposition (a loop handler, or the default that ends the process) is back only after the
    last one ended."""
    app = hardening_app("two-async", order, previous, stdin=True)
    try:
        app.wait_for(r"^out: ready$")
        app.signal(signal.SIGTERM)
        for name in "AB":
            app.wait_for(rf"^err: {name}: Received signal \[terminated\]; entering lame-duck mode for 1m0s$")
            app.wait_for(rf"^out: {name} shutdown$")
        first, last = order
        app.send(f"release {first}")
        app.wait_for(rf"^out: {first} ended: ok$")
        app.signal(signal.SIGTERM)
        app.wait_for(rf"^err: {last}: Received signal \[terminated\] again; ignoring it")
        app.send(f"release {last}")
        app.wait_for(rf"^out: {last} ended: ok$")
        app.wait_for(r"^out: both ended$")
        assert "previous handler" not in app.text()
        app.signal(signal.SIGTERM)
        if previous == "handler":
            app.wait_for(r"^out: previous handler$")
            app.proc.stdin.close()  # type: ignore[union-attr]
            assert app.finish() == 0, app.text()
        else:
            assert app.finish() == -signal.SIGTERM, app.text()
        text = app.text()
        assert text.count("Received signal [terminated]; entering lame-duck") == 2, text
        assert text.count("again; ignoring it") == 1, text
    finally:
        app.kill()


def test_sync_run_owns_signals_on_the_main_thread_only() -> None:
    """signal.signal works only on the main thread, so one sync run() at a time can own them:
    a second runner with signals in another thread is refused before it starts, one with
    signals=() runs beside it untouched by SIGTERM, and the handler comes back afterwards."""
    app = hardening_app("sync-threads")
    try:
        app.wait_for(r"^out: ready$")
        assert "out: B ended: SignalSetupError: lameduck can install signal handlers only on the main thread" in app.text()
        app.signal(signal.SIGTERM)
        app.wait_for(r"^out: A ended: ok$")
        assert app.finish() == 0, app.text()
        text = app.text()
        assert "out: C state READY" in text, text
        assert "out: C ended: ok" in text and "out: C shutdown" in text, text
        assert "out: SIGTERM handler restored True" in text, text
        assert "B shutdown" not in text and "C: Received signal" not in text, text
    finally:
        app.kill()


class Idle:
    def serve(self, ctx: lameduck.Context) -> None: ...

    def shutdown(self, ctx: lameduck.Context) -> None: ...

    def close(self) -> None: ...


@pytest.mark.parametrize(
    "options, text",
    [
        ({"repeat_signal": "twice"}, "repeat_signal='twice': "),
        ({"drain_delay": math.nan}, "drain_delay=nan is invalid"),
        ({"period": 1e20}, "period=1e+20 "),
        ({"upgrade_command": [""]}, "upgrade_command=['']: upgrade command is invalid"),
        ({"upgrade_command": ["app", "a\0b"]}, "upgrade_command=['app', 'a\\x00b']: "),
        ({"signals": [signal.SIGKILL]}, "signals=[9]: "),
    ],
)
def test_option_errors_show_values_as_python_writes_them(options: dict, text: str) -> None:
    """The binding names a bad value in Python's repr, never in Rust's Debug form."""
    with pytest.raises(ValueError) as info:
        lameduck.Runner(Idle(), **options)
    assert text in str(info.value)
    name = next(iter(options))
    assert not str(info.value).startswith(f'{name}="'), str(info.value)  # Rust's Debug of a str
    for rust_only in ("NaN", "1e20", '[""]'):
        assert rust_only not in str(info.value), str(info.value)


def test_hook_error_texts_are_display_form() -> None:
    """A hook's exception becomes `Type: text`, as Python prints it."""

    class Broken(Idle):
        def serve(self, ctx: lameduck.Context) -> None:
            raise KeyError("no such route")

    with pytest.raises(lameduck.FailedError) as info:
        lameduck.run(Broken(), logger=False, signals=(), upgrade_signals=())
    assert str(info.value) == "KeyError: 'no such route'"
    assert isinstance(info.value.__cause__, KeyError) and info.value.__cause__.args == ("no such route",)
