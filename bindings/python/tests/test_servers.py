"""Each adapter and the plain API in a real subprocess, with real signals and real HTTP."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import Process, get, refused, response, send, wrk_path

ADAPTERS = ["http", "asyncio", "aiohttp"]
ALL = ADAPTERS + ["plain"]


@pytest.mark.parametrize("kind", ALL)
def test_in_flight_request_completes_and_new_connections_are_refused(start, kind):
    app = start("--app", kind, "--period", "10")
    assert get(app.port, "/").startswith("HTTP/1.1 200")
    slow = send(app.port, "/sleep?ms=1500")
    app.wait_for(r"app: request GET /sleep\?ms=1500")
    app.signal(signal.SIGTERM)
    app.wait_for(r"^out: state SHUTTING_DOWN")
    deadline = time.monotonic() + 10
    while not refused(app.port):  # the listener closes as shutdown begins
        assert time.monotonic() < deadline, "new connections are still accepted"
        time.sleep(0.01)
    answer = response(slow)
    assert answer.startswith("HTTP/1.1 200"), answer
    assert "slept 1500 ms" in answer
    assert app.finish() == 0, app.text()
    text = app.text()
    assert "lameduck: Received signal [terminated]; entering lame-duck mode for 10s" in text
    assert "lameduck: Completed lame-duck mode" in text
    assert "out: clean exit" in text


@pytest.mark.parametrize("kind", ADAPTERS)
def test_request_longer_than_the_period_expires(start, kind):
    app = start("--app", kind, "--period", "0.5")
    slow = send(app.port, "/sleep?ms=20000")
    app.wait_for(r"app: request GET /sleep\?ms=20000")
    app.signal(signal.SIGTERM)
    assert response(slow) == ""  # close cut it
    assert app.finish() == 1, app.text()
    assert re.search(r"out: error ExpiredError: Lame-duck period has expired", app.text()), app.text()
    assert "lameduck: Lame-duck period has expired" in app.text()


@pytest.mark.parametrize("kind", ADAPTERS)
def test_drain_delay_keeps_accepting_but_reports_not_ready(start, kind):
    app = start("--app", kind, "--drain", "4")
    assert get(app.port, "/health").startswith("HTTP/1.1 200")
    app.signal(signal.SIGTERM)
    app.wait_for(r"^out: state DRAINING")
    health = get(app.port, "/health")
    assert health.startswith("HTTP/1.1 503") and "DRAINING" in health, health
    assert get(app.port, "/").startswith("HTTP/1.1 200")
    app.wait_for(r"^out: state SHUTTING_DOWN")
    assert app.finish() == 0, app.text()
    assert "draining for 4s, then entering lame-duck mode for 3s" in app.text()


@pytest.mark.parametrize("kind", ADAPTERS)
def test_second_signal_forces_close(start, kind):
    app = start("--app", kind, "--period", "60")
    slow = send(app.port, "/sleep?ms=60000")
    app.wait_for(r"app: request GET /sleep")
    app.signal(signal.SIGTERM)
    app.wait_for(r"^out: state SHUTTING_DOWN")
    app.signal(signal.SIGTERM)
    assert response(slow) == ""
    assert app.finish() == 1, app.text()
    assert "out: error ForcedError: Lame-duck period was cut short by a repeated signal" in app.text()


def test_third_signal_kills_and_exit_policy(start):
    # close never returns, so the run is still going when the third signal comes
    app = start("--app", "plain", "--period", "60", "--hang-close", "--close-timeout", "60")
    send(app.port, "/sleep?ms=60000")
    app.wait_for(r"app: request GET /sleep")
    app.signal(signal.SIGTERM)
    app.wait_for(r"^out: state SHUTTING_DOWN")
    app.signal(signal.SIGTERM)
    app.wait_for(r"forcing close now")
    app.signal(signal.SIGTERM)
    assert app.finish() == -signal.SIGTERM

    app = start("--app", "http", "--period", "60", "--repeat", "exit")
    send(app.port, "/sleep?ms=60000")
    app.wait_for(r"app: request GET /sleep")
    app.signal(signal.SIGINT)
    app.wait_for(r"^out: state SHUTTING_DOWN")
    app.signal(signal.SIGINT)
    assert app.finish() == -signal.SIGINT


def test_ctrl_c_starts_lame_duck_instead_of_keyboard_interrupt(start):
    app = start("--app", "http")
    app.signal(signal.SIGINT)
    assert app.finish() == 0, app.text()
    assert "KeyboardInterrupt" not in app.text()
    assert "Received signal [interrupt]; entering lame-duck mode for 3s" in app.text()


def test_serve_raising_before_any_signal_is_failed_error_with_cause(start):
    from conftest import App

    app = App("--app", "plain", "--fail-serve")
    try:
        assert app.finish() == 1
        assert "out: error FailedError: OSError: cannot bind: address on fire cause=OSError('cannot bind: address on fire')" in app.text()
    finally:
        app.kill()


@pytest.mark.parametrize("kind", ADAPTERS)
def test_keep_alive_request_during_lame_duck_is_answered_with_connection_close(start, kind):
    app = start("--app", kind, "--period", "10", "--idle-grace", "3")
    conn = send(app.port, "/", keep_alive=True)
    first = response(conn, whole=False)
    assert first.startswith("HTTP/1.1 200") and "close" not in first.lower().split("connection:")[-1][:8], first
    app.signal(signal.SIGTERM)
    app.wait_for(r"^out: state SHUTTING_DOWN")
    time.sleep(0.3)  # inside the 3 s idle grace: the kept-alive connection is still open
    conn.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    second = response(conn)  # answered, and then closed by the server
    assert second.startswith("HTTP/1.1 200"), second
    assert re.search(r"(?i)connection: close", second), second
    conn.close()
    assert app.finish() == 0, app.text()


@pytest.mark.parametrize("kind", ADAPTERS)
def test_idle_keep_alive_connection_does_not_hold_shutdown_to_the_deadline(start, kind):
    app = start("--app", kind, "--period", "30", "--idle-grace", "0.2")
    idle = send(app.port, "/", keep_alive=True)
    assert response(idle, whole=False).startswith("HTTP/1.1 200")
    began = time.monotonic()
    app.signal(signal.SIGTERM)
    assert app.finish() == 0, app.text()
    assert time.monotonic() - began < 20, "an idle connection held shutdown until the deadline"
    assert response(idle) == ""  # closed by the server after the idle grace
    idle.close()


@pytest.mark.skipif(wrk_path() is None, reason="wrk is installed by scripts/test-all.sh")
@pytest.mark.parametrize("kind", ADAPTERS)
def test_sigterm_under_keep_alive_load_loses_nothing(start, kind):
    app = start("--app", kind, "--period", "10")
    wrk = subprocess.Popen(
        [wrk_path(), "-t2", "-c20", "-d4s", f"http://127.0.0.1:{app.port}/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1.5)  # load is flowing
    app.signal(signal.SIGTERM)
    out, _ = wrk.communicate(timeout=60)
    assert app.finish() == 0, app.text()
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    assert requests > 100, out
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    read_errors, timeouts = (int(errors.group(2)), int(errors.group(4))) if errors else (0, 0)
    # No request was lost: no read errors (a reset or close under a request wrk sent) and no
    # timeouts. wrk counts its refused reconnects, once the listener is closed, as "write"
    # errors (it has a "connect" bucket only for TLS), so those are expected.
    assert (read_errors, timeouts) == (0, 0), out
    assert "Non-2xx" not in out, out


# A run stopped by the program itself (runner.stop(), on the stdin line "stop"), whose shutdown
# holds on until the stdin line "release" (or close). A supervisor's SIGTERM after the stop is
# the same event; only the signal after that one forces.
STOPPER = r"""
import logging, sys, threading, lameduck
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
release, stopped = threading.Event(), threading.Event()
class Server:
    def serve(self, ctx): stopped.wait()
    def shutdown(self, ctx):
        print("shutdown called", flush=True)
        release.wait()
        stopped.set()
    def close(self):
        print("close called", flush=True)
        release.set()
        stopped.set()
runner = lameduck.Runner(Server(), period=60, on_state_change=lambda old, new: print("state", new, flush=True))
def commands():
    for line in sys.stdin:
        {"stop": runner.stop, "release": release.set}[line.strip()]()
threading.Thread(target=commands, daemon=True).start()
try:
    runner.run()
except lameduck.LameDuckError as e:
    print(f"error {type(e).__name__}: {e}", flush=True)
    sys.exit(1)
print("clean exit", flush=True)
"""


def start_stopped_run() -> Process:
    proc = Process([sys.executable, "-c", STOPPER], stdin=True)
    proc.wait_for(r"^out: state READY")
    proc.send("stop")
    proc.wait_for(r"^out: shutdown called")
    proc.signal(signal.SIGTERM)
    proc.wait_for(r"Received signal \[terminated\]; already in lame-duck mode since the stop request")
    return proc


def test_stop_then_sigterm_is_one_event_not_a_forced_close() -> None:
    proc = start_stopped_run()
    try:
        proc.send("release")
        assert proc.finish() == 0, proc.text()
        assert "out: clean exit" in proc.text()
        assert "forcing close" not in proc.text() and "close called" not in proc.text()
    finally:
        proc.kill()


def test_stop_then_two_sigterms_forces_the_close_and_does_not_kill() -> None:
    proc = start_stopped_run()
    try:
        proc.signal(signal.SIGTERM)  # the first repeat: forces, never kills
        proc.wait_for(r"Received signal \[terminated\] again; forcing close now")
        assert proc.finish() == 1, proc.text()  # exited by itself (not -SIGTERM)
        assert "out: close called" in proc.text()
        assert "out: error ForcedError: Lame-duck period was cut short by a repeated signal" in proc.text()
    finally:
        proc.kill()
