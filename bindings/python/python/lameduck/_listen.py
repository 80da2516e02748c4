"""Listening sockets that survive restarts: inherited when the process was given one."""

from __future__ import annotations

import os
import socket
from typing import Any, Optional, Union

from . import _lameduck

__all__ = ["listen", "adopt", "is_shared"]


def listen(address: str, name: Optional[str] = None) -> socket.socket:
    """A listening socket for ``address`` (``PORT``, ``HOST:PORT``, ``[V6]:PORT`` or a unix path).

    It is the socket this process inherited for that address when there is one: systemd socket
    activation (``LISTEN_FDS`` with ``LISTEN_PID`` equal to this process, matched by ``name``
    against ``LISTEN_FDNAMES`` or by address), then Server::Starter's ``SERVER_STARTER_PORT``.
    Otherwise it is a fresh one, with ``SO_REUSEADDR``, not inheritable, and a backlog of
    ``SOMAXCONN``. The variables are read once, on first use, and left in the environment. After an upgrade
    (SIGHUP or :meth:`Runner.upgrade`) the new process gets this same socket back from
    ``listen`` with the same arguments (a port of 0 matches the port first given).

    Raises ``ValueError`` naming the value for a bad address or a malformed variable, and
    ``OSError`` when binding fails.
    """
    return socket.socket(fileno=_lameduck.listen(address, name))


def _fd(sock: Any, what: str) -> int:
    if isinstance(sock, bool):
        raise TypeError(f"{what}={sock!r} must be a socket or a file descriptor")
    if isinstance(sock, int):
        return sock
    fileno = getattr(sock, "fileno", None)
    if not callable(fileno):
        raise TypeError(f"{what}={sock!r} must be a socket or a file descriptor")
    fd = fileno()
    if not isinstance(fd, int) or fd < 0:
        raise ValueError(f"{what}={sock!r} is closed")
    return fd


def adopt(sock: "Union[socket.socket, int]", name: Optional[str] = None) -> None:
    """Registers a listening socket that was bound by other means (not by :func:`listen`), so
    that an upgrade hands it on to the new process like one from :func:`listen`.

    ``sock`` is a ``socket.socket`` (or anything with ``fileno()``) or a file descriptor; it
    stays yours (nothing is duplicated or closed), and adopting it again is harmless. ``name``
    becomes its ``LISTEN_FDNAMES`` entry. In the new process, :func:`listen` with its address
    (or ``name``) returns it. The new process must take it from :func:`listen`: a program that
    binds the same port itself fails with ``EADDRINUSE`` while the old process still holds it.

    Raises ``ValueError`` when it is not a listening socket or ``name`` is not 1 to 255
    printable characters without ``:``, and ``TypeError`` for something that is not a socket.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name={name!r} must be a string or None")
    _lameduck.adopt(_fd(sock, "sock"), name)


def is_shared(sock: "socket.socket | int") -> bool:
    """True when the listening socket is shared with other processes: inherited, or handed to a
    new generation by an upgrade. Stop accepting on a shared socket by closing it, never by
    draining it with a socket filter (that would stop the other processes too)."""
    fd = sock if isinstance(sock, int) else sock.fileno()
    return _lameduck.is_shared(fd)


def _address(address: Any, family: int = socket.AF_INET) -> str:
    """A ``socket``-style address (``(host, port)``, ``(host, port, flow, scope)`` or a unix
    path) as an address for :func:`listen`: ``HOST:PORT``, ``[V6]:PORT``, ``PORT`` (every IPv4
    interface, for host ``""``) or a unix path."""
    if isinstance(address, (str, bytes, os.PathLike)):
        path = os.fsdecode(address)
        if not path or path.startswith("\0"):
            raise ValueError(f"address {address!r}: lameduck.listen takes no abstract or empty unix socket address")
        return path if path.startswith("/") else f"unix:{path}"
    if not isinstance(address, tuple) or len(address) < 2:
        raise ValueError(f"address {address!r} is not (host, port) or a unix socket path")
    host, port = address[0], address[1]
    if host is None:
        host = ""
    if isinstance(host, bytes):
        host = host.decode()
    if isinstance(port, bool) or not isinstance(port, int):
        raise ValueError(f"address {address!r}: port {port!r} is not a number")
    if not isinstance(host, str):
        raise ValueError(f"address {address!r}: host {host!r} is not a string")
    if ":" in host or (family == socket.AF_INET6 and host == ""):
        return f"[{host or '::'}]:{port}"
    return f"{host}:{port}" if host else str(port)
