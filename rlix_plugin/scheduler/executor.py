"""The executor: makes one resize call and returns its outcome. The I/O edge of the scheduler.

It never touches the state and never answers a waiter: it turns a call -- which may answer, raise,
hang or return nonsense -- into a :class:`~.state.ResizeOutcome` (the awake ranks or the error,
and how long it took), bounded by ``resize_timeout_s``. The service feeds the outcome to the pure
state, which decides what it means.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .state import ResizeAction, ResizeOutcome

#: ``async resize(pipeline_id, dp_ranks_to_remove, dp_ranks_to_add) -> awake ranks | None``
Resizer = Callable[[str, tuple[int, ...], tuple[int, ...]], Awaitable["tuple[int, ...] | None"]]


class ResizeExecutor:
    """Runs resize calls, each bounded by ``resize_timeout_s``; calls run concurrently."""

    def __init__(self, resize_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.resize_timeout_s = resize_timeout_s
        self._clock = clock

    async def run(self, resizer: Resizer, action: ResizeAction) -> ResizeOutcome:
        started = self._clock()
        try:
            awake = await asyncio.wait_for(
                resizer(action.pipeline_id, action.remove, action.add), self.resize_timeout_s
            )
        except asyncio.TimeoutError:
            return ResizeOutcome(None, f"resize took longer than {self.resize_timeout_s:.1f}s", self._clock() - started)
        except Exception as exc:  # the framework's failure, reported to the state as data
            return ResizeOutcome(None, repr(exc), self._clock() - started)
        ranks = tuple(sorted(awake)) if awake is not None else None
        return ResizeOutcome(ranks, None, self._clock() - started)


__all__ = ["ResizeExecutor", "Resizer"]
