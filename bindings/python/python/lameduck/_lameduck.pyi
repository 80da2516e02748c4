"""Type stubs for the native half of lameduck (PyO3). Use the classes in ``lameduck`` instead."""

from typing import Any, Callable, Optional, Tuple

__version__: str
VERSION: Tuple[int, int, int]

class NativeContext:
    def remaining(self) -> Optional[float]: ...
    @property
    def deadline(self) -> Optional[float]: ...
    @property
    def done(self) -> bool: ...
    def wait(self, timeout: Optional[float] = None) -> bool: ...
    def ready(self) -> None: ...

RunFailure = Tuple[str, int, str, bool, Optional[BaseException]]

class NativeRunner:
    def __init__(
        self,
        bridge: Any,
        *,
        period: float,
        signals: list[int],
        drain_delay: float,
        close_timeout: float,
        logger: Any,
        repeat_signal: str,
        on_state_change: Optional[Callable[[str, str], Any]],
        explicit_ready: bool,
    ) -> None: ...
    def run(self) -> Optional[RunFailure]: ...
    def stop(self) -> None: ...
    def deliver_signal(self, signal: int) -> None: ...
    def wait_ready(self, timeout: Optional[float] = None) -> bool: ...
    @property
    def state(self) -> str: ...
    @property
    def running(self) -> bool: ...
