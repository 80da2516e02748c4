"""How each adapter stops its listener when lame-duck begins: the connections queued then are
served, and a client that arrives afterwards is refused at once, never left waiting for its SYN
to be retransmitted (see src/listener/drain.rs in the core)."""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time
from typing import List, Tuple

import pytest

from conftest import LIMIT, response, send

ADAPTERS = ["http", "asyncio", "aiohttp"]
#: struct tcp_info: tcpi_total_retrans is the u32 at byte 100 (after 8 bytes of u8 fields and
#: 23 u32 ones), in every kernel since 2.6.
TOTAL_RETRANS = 100


def retransmitted(s: socket.socket) -> int:
    """The segments the socket retransmitted (TCP_INFO): a SYN the server dropped is
    retransmitted only after the initial RTO of 1 s, so any retransmission on 127.0.0.1 means
    the client was left waiting. A count, not a time: it does not depend on a busy machine."""
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TOTAL_RETRANS + 4)
    return int(struct.unpack_from("I", info, TOTAL_RETRANS)[0])


def attempt(port: int) -> Tuple[str, int]:
    """One fresh connection (`GET /`, `Connection: close`): "refused", the answer's first line,
    or "lost: …" (reset or closed after the connect without an answer); and its
    retransmissions. (Python's connect with a timeout is non-blocking and polls, so a failed
    connect keeps the socket's counters; a failed blocking connect would reset them.)"""
    with socket.socket() as s:
        s.settimeout(LIMIT)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return "refused", retransmitted(s)
        except OSError as e:
            return f"lost: connect: {e!r}", retransmitted(s)
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = response(s)
        except OSError as e:
            answer = f"lost: {e!r}"
        first = answer.split("\r\n", 1)[0] if answer.startswith("HTTP/1.1 ") else answer or "lost: no answer"
        return first, retransmitted(s)


@pytest.mark.parametrize("kind", ADAPTERS)
def test_a_client_storm_while_lame_duck_waits_for_a_slot_is_refused_at_once(start, kind):
    """The gate is full (a slow request holds the only slot, another client waits in the
    queue) when lame-duck begins, so it lasts until the slot frees. The adapter stops its
    listener at once all the same: a storm of clients arriving meanwhile is refused at once.
    With the drop filter on for the whole drain (as the adapters did) each one waited out the
    1 s RTO, and was refused only once the slot freed and the listener closed. The storm begins
    1 s into lame-duck (the new adapters stop their listener within a poll interval, 50 ms; the
    old ones had the filter on until the slow request, 4 s, ended) and ends when the server
    exits."""
    app = start("--app", kind, "--max-connections", "1", "--period", "10")
    slow = send(app.port, "/sleep?ms=4000")
    app.wait_for(r"app: request GET /sleep\?ms=4000")
    queued = send(app.port, "/")  # waits in the backlog for the slot
    app.signal(signal.SIGTERM)
    app.wait_for(r"^out: state SHUTTING_DOWN")
    time.sleep(1.0)
    stop = threading.Event()
    results: List[Tuple[str, int]] = []
    lock = threading.Lock()

    def storm() -> None:
        seen: List[Tuple[str, int]] = []
        while not stop.is_set() and len(seen) < 200:
            seen.append(attempt(app.port))
        with lock:
            results.extend(seen)

    threads = [threading.Thread(target=storm) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        code = app.finish()
    finally:
        stop.set()
        for t in threads:
            t.join(LIMIT)
    assert results
    for i, (outcome, retrans) in enumerate(results):
        assert outcome in ("refused", "HTTP/1.1 200 OK"), f"attempt {i} was neither served nor refused: {outcome}"
        assert retrans == 0, f"attempt {i} ({outcome}) needed a retransmission: its SYN was dropped, and it waited out the 1 s RTO"
    assert response(slow).startswith("HTTP/1.1 200"), "the request in flight completes"
    assert response(queued).startswith("HTTP/1.1 200"), "the client queued when lame-duck began is served"
    assert code == 0, app.text()
