"""Listening sockets that survive restarts: inherited when the process was given one."""

from __future__ import annotations

import socket
from typing import Optional

from . import _lameduck

__all__ = ["listen", "is_shared"]


def listen(address: str, name: Optional[str] = None) -> socket.socket:
    """A listening socket for ``address`` (``PORT``, ``HOST:PORT``, ``[V6]:PORT`` or a unix path).

    It is the socket this process inherited for that address when there is one: systemd socket
    activation (``LISTEN_FDS`` with ``LISTEN_PID`` equal to this process, matched by ``name``
    against ``LISTEN_FDNAMES`` or by address), then Server::Starter's ``SERVER_STARTER_PORT``.
    Otherwise it is a fresh one, with ``SO_REUSEADDR``, not inheritable, and a backlog of
    ``SOMAXCONN``. The variables are read, and removed, on the first call. After an upgrade
    (SIGHUP or :meth:`Runner.upgrade`) the new process gets this same socket back from
    ``listen`` with the same arguments (a port of 0 matches the port first given).

    Raises ``ValueError`` naming the value for a bad address or a malformed variable, and
    ``OSError`` when binding fails.
    """
    return socket.socket(fileno=_lameduck.listen(address, name))


def is_shared(sock: "socket.socket | int") -> bool:
    """True when the listening socket is shared with other processes: inherited, or handed to a
    new generation by an upgrade. Stop accepting on a shared socket by closing it, never by
    draining it with a socket filter (that would stop the other processes too)."""
    fd = sock if isinstance(sock, int) else sock.fileno()
    return _lameduck.is_shared(fd)
