"""Never a silent hang: stop the run when a pipeline stalls.

A pipeline stalls while it has open demand and no awake engine (see :mod:`.status`). When any
stall lasts longer than ``stall_timeout_s``, the watchdog calls ``on_stall`` once with the names of
every pipeline over the limit and stops. It checks every ``stall_timeout_s / 10`` (at most every
0.1 s), so it fires at most that late.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from .status import PipelineStatus


class Watchdog:
    def __init__(
        self,
        statuses: Mapping[str, PipelineStatus],
        stall_timeout_s: float,
        on_stall: Callable[[list[str]], None],
    ) -> None:
        if not stall_timeout_s > 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {stall_timeout_s!r}")
        self.statuses = statuses
        self.stall_timeout_s = stall_timeout_s
        self.on_stall = on_stall
        self.fired: list[str] = []
        self._stop = threading.Event()
        self._interval = min(0.1, stall_timeout_s / 10)
        self._thread = threading.Thread(target=self._run, name="rlix-reference-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def check(self) -> list[str]:
        """Names of the pipelines stalled longer than the limit right now."""
        return [name for name, status in self.statuses.items() if status.stall_seconds() > self.stall_timeout_s]

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            stalled = self.check()
            if stalled:
                self.fired = stalled
                self.on_stall(stalled)
                return


__all__ = ["Watchdog"]
