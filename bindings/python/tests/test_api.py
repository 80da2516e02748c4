"""The Python API in-process: options, errors and causes, threads, signals, asyncio."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import traceback
from typing import Any, Callable, List, Optional

import pytest

import lameduck


class Server:
    """serve blocks until shutdown (or close) releases it."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.serving = threading.Event()  # set once serve runs: the run's handlers are installed
        self.calls: List[str] = []
        self.shutdown_remaining: Optional[float] = None
        self.shutdown_deadline: Optional[float] = None

    def serve(self, ctx: lameduck.Context) -> None:
        self.calls.append("serve")
        self.serving.set()
        self.released.wait()

    def shutdown(self, ctx: lameduck.Context) -> None:
        self.calls.append("shutdown")
        self.shutdown_remaining = ctx.remaining()
        self.shutdown_deadline = ctx.deadline
        self.released.set()

    def close(self) -> None:
        self.calls.append("close")
        self.released.set()


def quiet(**options: Any) -> dict:
    return {"logger": False, **options}


def once_serving(server: Server, action: Callable[[], Any], runner: Optional[lameduck.Runner] = None) -> None:
    """Runs `action` on another thread once `server`'s serve has begun and, given the runner,
    once it reports ready (events, not a timer: on a busy machine a timer can fire before the
    run has even installed its handlers)."""

    def target() -> None:
        assert server.serving.wait(30), "serve never began"
        if runner is not None:
            assert runner.wait_ready(30), "the run never became ready"
        action()

    threading.Thread(target=target, daemon=True).start()


class Background:
    """runner.run() on another thread; `error` is what it raised (None for success)."""

    def __init__(self, runner: lameduck.Runner) -> None:
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._target, args=(runner,))
        self.thread.start()

    def _target(self, runner: lameduck.Runner) -> None:
        try:
            runner.run()
        except BaseException as e:  # the test inspects it
            self.error = e

    def join(self) -> Optional[BaseException]:
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.error


@pytest.mark.parametrize(
    "options, error, needle",
    [
        ({"period": 0}, ValueError, "period=0.0: lame-duck period 0s is invalid"),
        ({"period": -1}, ValueError, "period=-1.0 is invalid"),
        ({"period": float("inf")}, ValueError, "period=inf is invalid"),
        ({"period": 90000}, ValueError, "period=90000.0: lame-duck period 25h0m0s is invalid"),
        ({"period": "3"}, TypeError, "period='3' must be a number of seconds"),
        ({"drain_delay": float("nan")}, ValueError, "drain_delay=nan is invalid"),
        ({"close_timeout": 0}, ValueError, "close_timeout=0.0: close timeout 0s is invalid"),
        ({"signals": [signal.SIGKILL]}, ValueError, "signal 9 (killed) cannot be a trigger signal"),
        ({"signals": [0]}, ValueError, "signal 0 is invalid"),
        ({"signals": ["TERM"]}, TypeError, "'TERM' is not a signal number"),
        ({"signals": 15}, TypeError, "signals=15 must be a sequence of signal numbers"),
        ({"repeat_signal": "twice"}, ValueError, 'repeat signal policy "twice" is invalid'),
        ({"repeat_signal": 2}, TypeError, "repeat_signal=2 must be"),
        ({"logger": "stderr"}, TypeError, "logger='stderr' must be None, False"),
        ({"on_state_change": 5}, TypeError, "on_state_change=5 is not callable"),
    ],
)
def test_bad_options_raise_before_anything_starts(options: dict, error: type, needle: str) -> None:
    server = Server()
    with pytest.raises(error) as info:
        lameduck.Runner(server, **options)
    assert needle in str(info.value)
    with pytest.raises(error):
        lameduck.run(server, **options)
    assert server.calls == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_server_without_hooks_is_a_type_error() -> None:
    class NoClose:
        def serve(self, ctx: Any) -> None: ...

        def shutdown(self, ctx: Any) -> None: ...

    with pytest.raises(TypeError, match="has no callable close"):
        lameduck.Runner(NoClose())


def test_sigterm_runs_lame_duck_and_restores_handlers() -> None:
    def mine(signum: int, frame: Any) -> None:
        pass

    signal.signal(signal.SIGTERM, mine)
    try:
        server = Server()
        runner = lameduck.Runner(server, **quiet(period=5.0))
        once_serving(server, lambda: os.kill(os.getpid(), signal.SIGTERM))
        runner.run()
        assert server.calls == ["serve", "shutdown"]
        assert server.shutdown_remaining is not None and 4.0 < server.shutdown_remaining <= 5.0
        assert server.shutdown_deadline is not None and 4.0 < server.shutdown_deadline - time.monotonic() <= 5.0
        assert runner.state is lameduck.State.STOPPED and runner.state == "STOPPED"
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_ctrl_c_starts_lame_duck_not_keyboard_interrupt() -> None:
    server = Server()
    once_serving(server, lambda: os.kill(os.getpid(), signal.SIGINT))
    lameduck.run(server, **quiet())
    assert server.calls == ["serve", "shutdown"]


def test_stop_from_a_python_signal_handler() -> None:
    server = Server()
    runner = lameduck.Runner(server, **quiet(signals=[signal.SIGUSR2]))
    previous = signal.signal(signal.SIGUSR1, lambda s, f: runner.stop())
    try:
        once_serving(server, lambda: os.kill(os.getpid(), signal.SIGUSR1))
        runner.run()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert server.calls == ["serve", "shutdown"]


def test_serve_raising_is_failed_error_with_cause_and_traceback() -> None:
    class Broken(Server):
        def serve(self, ctx: lameduck.Context) -> None:
            raise OSError(98, "Address already in use")

    with pytest.raises(lameduck.FailedError) as info:
        lameduck.run(Broken(), **quiet())
    err = info.value
    assert isinstance(err, lameduck.LameDuckError)
    assert err.failed and not err.expired and not err.forced
    assert str(err) == "OSError: [Errno 98] Address already in use"
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == 98
    frames = traceback.extract_tb(err.__cause__.__traceback__)
    assert any(f.name == "serve" and "test_api.py" in f.filename for f in frames), frames


def test_shutdown_raising_is_shutdown_error() -> None:
    class Bad(Server):
        def shutdown(self, ctx: lameduck.Context) -> None:
            self.released.set()
            raise RuntimeError("drain failed")

    runner = lameduck.Runner(Bad(), **quiet(signals=()))
    runner.stop()  # before run: CanceledError
    with pytest.raises(lameduck.CanceledError):
        runner.run()

    bad = Bad()
    runner = lameduck.Runner(bad, **quiet(signals=()))
    once_serving(bad, runner.stop, runner)
    with pytest.raises(lameduck.ShutdownError) as info:
        runner.run()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.kind == "SHUTDOWN_FAILED"
    with pytest.raises(lameduck.BusyError):
        runner.run()  # a runner runs once


def test_timeout_error_in_shutdown_means_expired_and_close_error_is_the_cause() -> None:
    class Slow(Server):
        def shutdown(self, ctx: lameduck.Context) -> None:
            ctx.wait()
            raise TimeoutError

        def close(self) -> None:
            super().close()
            raise ConnectionError("reset everything")

    slow = Slow()
    runner = lameduck.Runner(slow, **quiet(signals=(), period=0.2))
    once_serving(slow, runner.stop, runner)
    with pytest.raises(lameduck.ExpiredError) as info:
        runner.run()
    assert info.value.expired and not info.value.forced
    assert str(info.value) == "Lame-duck period has expired + ConnectionError: reset everything"
    assert isinstance(info.value.__cause__, ConnectionError)


def test_hook_that_never_returns_is_bounded() -> None:
    class Stuck(Server):
        def shutdown(self, ctx: lameduck.Context) -> None:
            threading.Event().wait()  # never returns

    stuck = Stuck()
    runner = lameduck.Runner(stuck, **quiet(signals=(), period=0.2, close_timeout=0.3))
    once_serving(stuck, runner.stop, runner)
    began = time.monotonic()
    with pytest.raises(lameduck.ExpiredError) as info:
        runner.run()
    assert time.monotonic() - began < 10
    assert info.value.abandoned
    assert "shutdown did not return within 300ms (abandoned)" in str(info.value)


def test_run_off_the_main_thread_needs_signals_off() -> None:
    error = Background(lameduck.Runner(Server(), **quiet())).join()
    assert isinstance(error, lameduck.SignalSetupError)
    assert "main thread" in str(error)

    server = Server()
    runner = lameduck.Runner(server, **quiet(signals=()))
    background = Background(runner)
    assert runner.wait_ready(10)
    assert runner.state is lameduck.State.READY
    runner.stop()
    assert background.join() is None
    assert sorted(server.calls) == ["serve", "shutdown"]  # the GIL decides which runs first


def test_wait_ready_and_explicit_readiness() -> None:
    class Late(Server):
        def serve(self, ctx: lameduck.Context) -> None:
            assert ctx.remaining() is None and ctx.deadline is None and not ctx.done
            time.sleep(0.2)
            ctx.ready()
            super().serve(ctx)

    runner = lameduck.Runner(Late(), **quiet(signals=(), explicit_ready=True))
    assert not runner.wait_ready(0.01)
    background = Background(runner)
    assert not runner.wait_ready(0.05)
    assert runner.state is lameduck.State.SERVING
    assert runner.wait_ready(10)
    runner.stop()
    assert background.join() is None


def test_logger_and_state_observer() -> None:
    records: List[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.levelname} {record.getMessage()}")

    logger = logging.getLogger("lameduck.test")
    logger.addHandler(Capture())
    logger.setLevel(logging.DEBUG)
    states: List[str] = []
    server = Server()
    runner = lameduck.Runner(
        server, signals=(), drain_delay=0.1, logger=logger, on_state_change=lambda old, new: states.append(new)
    )
    once_serving(server, runner.stop, runner)
    runner.run()
    assert states == ["STARTING", "SERVING", "READY", "DRAINING", "SHUTTING_DOWN", "STOPPED"]
    assert records == [
        "INFO Upgrade on signals: [hangup]",  # taken by Python's signal module on the main thread
        "INFO Starting server",
        "INFO Stop requested; draining for 100ms, then entering lame-duck mode for 3s",
        "INFO Completed lame-duck mode",
        "INFO Server stopped",
    ]


def test_coroutine_hook_needs_run_async() -> None:
    class Async(Server):
        async def serve(self, ctx: lameduck.Context) -> None:  # type: ignore[override]
            pass

    with pytest.raises(lameduck.FailedError) as info:
        lameduck.run(Async(), **quiet())
    assert isinstance(info.value.__cause__, TypeError)
    assert "use lameduck.run_async()" in str(info.value.__cause__)


class AsyncServer:
    def __init__(self) -> None:
        self.released: Optional[asyncio.Event] = None
        self.calls: List[str] = []

    async def serve(self, ctx: lameduck.Context) -> None:
        self.released = asyncio.Event()
        self.calls.append("serve")
        await self.released.wait()

    async def shutdown(self, ctx: lameduck.Context) -> None:
        self.calls.append("shutdown")
        assert not await ctx.wait_async(0.01)  # the deadline is seconds away
        assert self.released is not None
        self.released.set()

    async def close(self) -> None:
        self.calls.append("close")


def test_run_async_takes_signals_on_the_loop_and_never_blocks_it() -> None:
    server = AsyncServer()
    ticks = 0

    async def main() -> None:
        nonlocal ticks

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.ensure_future(ticker())
        asyncio.get_running_loop().call_later(0.3, os.kill, os.getpid(), signal.SIGTERM)
        await lameduck.run_async(server, **quiet())
        t.cancel()

    asyncio.run(main())
    assert server.calls == ["serve", "shutdown"]
    assert ticks >= 10, "the event loop was blocked"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_run_async_cancellation_stops_gracefully() -> None:
    server = AsyncServer()

    async def main() -> None:
        task = asyncio.ensure_future(lameduck.run_async(server, **quiet(signals=())))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert server.calls == ["serve", "shutdown"]


def test_run_async_raises_hook_errors_with_cause() -> None:
    class Broken(AsyncServer):
        async def serve(self, ctx: lameduck.Context) -> None:
            raise ValueError("no config")

    with pytest.raises(lameduck.FailedError) as info:
        asyncio.run(lameduck.run_async(Broken(), **quiet()))
    assert isinstance(info.value.__cause__, ValueError)


def test_current_runner_is_the_run_in_progress_from_any_thread_and_asyncio() -> None:
    assert lameduck.current_runner() is None
    first, second = Server(), Server()
    outer = lameduck.Runner(first, signals=(), **quiet())
    inner = lameduck.Runner(second, signals=(), **quiet())
    seen: List[Optional[lameduck.Runner]] = []
    threads = [threading.Thread(target=r.run, daemon=True) for r in (outer, inner)]
    threads[0].start()
    assert outer.wait_ready(30)
    assert lameduck.current_runner() is outer  # asked from another thread than the run's
    threads[1].start()
    assert inner.wait_ready(30)
    assert lameduck.current_runner() is inner  # the one started last
    inner.stop()
    threads[1].join(30)
    assert lameduck.current_runner() is outer
    outer.stop()
    threads[0].join(30)
    assert lameduck.current_runner() is None

    class Async:
        async def serve(self, ctx: lameduck.Context) -> None:
            seen.append(lameduck.current_runner())  # inside a hook on the loop
            lameduck.current_runner().stop()  # type: ignore[union-attr]

        async def shutdown(self, ctx: lameduck.Context) -> None:
            pass

        def close(self) -> None:
            pass

    runner = lameduck.Runner(Async(), signals=(), **quiet())
    asyncio.run(runner.run_async())
    assert seen == [runner] and lameduck.current_runner() is None
    with pytest.raises(lameduck.CanceledError):  # stopped before it ran: not in progress after
        stopped = lameduck.Runner(Server(), signals=(), **quiet())
        stopped.stop()
        stopped.run()
    assert lameduck.current_runner() is None
