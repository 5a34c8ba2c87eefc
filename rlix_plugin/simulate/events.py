"""Virtual time: a heap of timed callbacks. Cost grows with events, not with simulated time."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class Timer:
    """A scheduled callback; :meth:`cancel` makes it a no-op."""

    __slots__ = ("at", "callback", "cancelled")

    def __init__(self, at: float, callback: Callable[[], Any]) -> None:
        self.at = at
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Run callbacks in time order; ties in the order they were scheduled."""

    def __init__(self) -> None:
        self._now = 0.0
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self.events = 0

    def now(self) -> float:
        return self._now

    def at(self, when: float, callback: Callable[[], Any]) -> Timer:
        timer = Timer(max(when, self._now), callback)
        heapq.heappush(self._heap, (timer.at, next(self._seq), timer))
        return timer

    def after(self, delay: float, callback: Callable[[], Any]) -> Timer:
        return self.at(self._now + max(0.0, delay), callback)

    def run(self, until: float | None = None, stop: Callable[[], bool] | None = None) -> None:
        """Run until no event is left, virtual time passes ``until``, or ``stop()`` is true."""
        heap = self._heap
        while heap:
            when, _, timer = heap[0]
            if until is not None and when > until:
                self._now = until
                return
            heapq.heappop(heap)
            if timer.cancelled:
                continue
            self._now = when
            self.events += 1
            timer.callback()
            if stop is not None and stop():
                return


__all__ = ["EventLoop", "Timer"]
