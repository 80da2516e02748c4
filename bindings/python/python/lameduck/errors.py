"""Exceptions raised by lameduck.

Every error from a run is a :class:`LameDuckError`, like Go's ``LameDuckError{Expired, Failed,
Err}``. A hook's own exception is the ``__cause__``, with its traceback intact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Type

if TYPE_CHECKING:
    from . import _lameduck


class LameDuckError(Exception):
    """A run ended in something other than a clean lame-duck shutdown.

    ``kind`` is the core's name for what happened (``"EXPIRED"``, ``"FAILED"``,
    ``"SHUTDOWN_FAILED"``, ``"FORCED"``, ``"CANCELED"``, …). ``abandoned`` is True when a hook
    did not return within the close timeout and was left running on its thread. ``code`` is the
    core's return code of the failing hook (1 for a Python hook that raised: its exception,
    the ``__cause__``, says more; 0 when no hook failed).
    """

    def __init__(self, message: str, *, kind: str = "", abandoned: bool = False, code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.abandoned = abandoned
        self.code = code

    @property
    def expired(self) -> bool:
        """Go's ``Expired``: the period ran out (or was forced short) and close was called."""
        return self.kind in ("EXPIRED", "FORCED")

    @property
    def failed(self) -> bool:
        """Go's ``Failed``: serve raised."""
        return self.kind == "FAILED"

    @property
    def forced(self) -> bool:
        """A repeated signal cut the period short."""
        return self.kind == "FORCED"


class ExpiredError(LameDuckError):
    """The lame-duck period expired (shutdown raised ``TimeoutError``, or serve was still running
    at the deadline) and close was called. ``__cause__`` is close's exception, if it raised."""


class ForcedError(ExpiredError):
    """A repeated trigger signal ended the period early and close was called."""


class FailedError(LameDuckError):
    """serve raised; its exception is ``__cause__``."""


class ShutdownError(LameDuckError):
    """shutdown raised (anything but ``TimeoutError``); its exception is ``__cause__``."""


class CanceledError(LameDuckError):
    """``stop()`` came before ``run()``: no hook was called."""


class SignalSetupError(LameDuckError, RuntimeError):
    """Trigger signals cannot be installed here (``run()`` off the main thread)."""


class BusyError(LameDuckError, RuntimeError):
    """The runner is running or has already run (a runner runs once), or an upgrade is
    already in flight."""


class UpgradeFailedError(LameDuckError):
    """An upgrade's new process could not start, exited, or was not ready within the upgrade
    timeout. It was terminated; the old process goes on serving."""


class GateClosedError(LameDuckError):
    """The connection gate admits no new connection: lame-duck has begun (or the run is
    closing). Raised by :meth:`lameduck.Gate.acquire` and its forms; an accept loop that gets
    it stops accepting (connections already in the accept queue may still be admitted with
    ``queued=True`` while lame-duck drains it)."""


class NotRunningError(LameDuckError, RuntimeError):
    """The runner is not serving: there is nothing to upgrade (not started, in lame-duck, or
    over)."""


_BY_KIND: Dict[str, Type[LameDuckError]] = {
    "EXPIRED": ExpiredError,
    "FORCED": ForcedError,
    "FAILED": FailedError,
    "SHUTDOWN_FAILED": ShutdownError,
    "CANCELED": CanceledError,
    "SIGNAL_SETUP": SignalSetupError,
    "BUSY": BusyError,
    "UPGRADE_FAILED": UpgradeFailedError,
    "NOT_RUNNING": NotRunningError,
    "GATE_CLOSED": GateClosedError,
}


def _from_native(failure: "_lameduck.RunFailure") -> LameDuckError:
    """The exception for a failed run or upgrade, as reported by the native runner."""
    kind = failure.kind
    error = _BY_KIND.get(kind, LameDuckError)(failure.message, kind=kind, abandoned=failure.abandoned, code=failure.code)
    error.__cause__ = failure.cause
    return error
