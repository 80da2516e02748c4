"""Listening sockets that survive restarts: inherited when the process was given one."""

from __future__ import annotations

import socket
from typing import Optional

from . import _lameduck

__all__ = ["listen"]


def listen(address: str, name: Optional[str] = None) -> socket.socket:
    """A listening socket for ``address`` (``PORT``, ``HOST:PORT``, ``[V6]:PORT`` or a unix path).

    It is the socket this process inherited for that address when there is one: systemd socket
    activation (``LISTEN_FDS`` with ``LISTEN_PID`` equal to this process, matched by ``name``
    against ``LISTEN_FDNAMES`` or by address), then Server::Starter's ``SERVER_STARTER_PORT``.
    Otherwise it is a fresh one, with ``SO_REUSEADDR``, not inheritable, and a backlog of
    ``SOMAXCONN``. The variables are read, and removed, on the first call.

    Raises ``ValueError`` naming the value for a bad address or a malformed variable, and
    ``OSError`` when binding fails.
    """
    return socket.socket(fileno=_lameduck.listen(address, name))
