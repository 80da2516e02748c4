"""lameduck: coordinated lame-duck shutdown for Python servers, on a Rust core.

The same lifecycle as Go's ``toolman.org/net/lameduck`` and as lameduck's C and Node APIs:
on SIGINT/SIGTERM (or :meth:`Runner.stop`) optionally drain, then call ``shutdown(ctx)`` with a
deadline of now + ``period``; if it runs out of time, call ``close()``.

    import lameduck, lameduck.adapters
    lameduck.run(lameduck.adapters.http_server(my_threading_http_server))

SIGHUP (or :meth:`Runner.upgrade`) upgrades with zero downtime: the program is started again
with every listener from :func:`listen` (or registered with :func:`adopt`), and once it is
ready this process lame-ducks.

ASGI and WSGI apps (FastAPI, Starlette, Django, Flask) run on uvicorn or hypercorn with
:mod:`lameduck.asgi` and :mod:`lameduck.wsgi`; :func:`current_runner` is the runner in progress.
"""

from . import health
from ._gate import MAX_CONNECTIONS, ConnectionStats, Gate, Permit
from ._lameduck import VERSION, __version__
from ._listen import adopt, is_shared, listen
from ._runner import DEFAULT_SIGNALS, Context, Runner, State, current_runner, run, run_async
from .errors import (
    BusyError,
    CanceledError,
    ExpiredError,
    FailedError,
    ForcedError,
    GateClosedError,
    LameDuckError,
    NotRunningError,
    ShutdownError,
    SignalSetupError,
    UpgradeFailedError,
)

__all__ = [
    "__version__",
    "VERSION",
    "DEFAULT_SIGNALS",
    "Context",
    "Runner",
    "State",
    "run",
    "run_async",
    "current_runner",
    "listen",
    "adopt",
    "is_shared",
    "Gate",
    "Permit",
    "ConnectionStats",
    "MAX_CONNECTIONS",
    "health",
    "LameDuckError",
    "ExpiredError",
    "ForcedError",
    "FailedError",
    "ShutdownError",
    "CanceledError",
    "SignalSetupError",
    "BusyError",
    "UpgradeFailedError",
    "GateClosedError",
    "NotRunningError",
]
