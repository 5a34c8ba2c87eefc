"""The live state of one pipeline: a :class:`~rlix_plugin.reference.framework.observer.
PipelineObserver` that the pipeline's loop and its engines report to, read by the progress
display, the watchdog and the final metrics. Every method takes the one lock; all are cheap.

A pipeline *stalls* while it has open demand (from the moment it asks for generation GPUs until it
ends the rollout's progress batch) and no awake engine. ``stalled_since`` marks the start of the
current stall, ``max_stall_s`` the longest finished one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlix_plugin.reference.framework.observer import STARTING, WAITING_ENGINES


@dataclass
class StatusView:
    """A consistent copy of a :class:`PipelineStatus` (plain data)."""

    name: str
    phase: str
    rollout: int
    rollouts_total: int
    rollouts_completed: int
    samples_done: int
    samples_per_rollout: int
    samples_completed: int
    awake: int
    dp_size: int
    demand_open: bool
    stall_s: float
    max_stall_s: float
    gpu_wait_s: float
    rewards: list[float]
    weight_version: int
    retracted: int
    busy_gpu_s: float
    switches: int
    switch_gpu_s: float
    error: str | None


class PipelineStatus:
    """Implements :class:`~rlix_plugin.reference.framework.observer.PipelineObserver`; its
    readers give a consistent :class:`StatusView`."""

    def __init__(
        self,
        name: str,
        rollouts: int,
        samples_per_rollout: int,
        dp_size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.name = name
        self._v: dict[str, Any] = dict(
            phase=STARTING,
            rollout=0,
            rollouts_total=rollouts,
            rollouts_completed=0,
            samples_done=0,
            samples_per_rollout=samples_per_rollout,
            samples_completed=0,
            awake=0,
            dp_size=dp_size,
            demand_open=False,
            max_stall_s=0.0,
            gpu_wait_s=0.0,
            rewards=[],
            weight_version=0,
            retracted=0,
            busy_gpu_s=0.0,
            switches=0,
            switch_gpu_s=0.0,
            error=None,
        )
        self._stalled_since: float | None = None

    # -- writers: the observer protocol ----------------------------------------------------------

    def phase(self, phase: str, rollout: int) -> None:
        with self._lock:
            self._v["phase"] = phase
            self._v["rollout"] = rollout
            if phase == WAITING_ENGINES:  # a new rollout: its sample count starts again
                self._v["samples_done"] = 0

    def demand(self, open_: bool) -> None:
        with self._lock:
            self._v["demand_open"] = open_
            self._update_stall()

    def engines(self, awake: tuple[int, ...]) -> None:
        with self._lock:
            self._v["awake"] = len(awake)
            self._update_stall()

    def waited(self, seconds: float) -> None:
        with self._lock:
            self._v["gpu_wait_s"] += seconds

    def busy(self, gpu_seconds: float) -> None:
        with self._lock:
            self._v["busy_gpu_s"] += gpu_seconds

    def switched(self, count: int, gpu_seconds: float) -> None:
        with self._lock:
            self._v["switches"] += count
            self._v["switch_gpu_s"] += gpu_seconds

    def retracted(self, count: int) -> None:
        with self._lock:
            self._v["retracted"] += count

    def sample_done(self) -> None:
        with self._lock:
            self._v["samples_done"] += 1
            self._v["samples_completed"] += 1

    def rollout_done(self, rollout: int, mean_reward: float, weight_version: int) -> None:
        with self._lock:
            self._v["rollouts_completed"] += 1
            self._v["rewards"].append(mean_reward)
            self._v["weight_version"] = weight_version

    def finished(self, phase: str, error: str | None) -> None:
        with self._lock:
            self._v["phase"] = phase
            self._v["error"] = error
            self._v["demand_open"] = False
            self._update_stall()

    # -- readers ------------------------------------------------------------------------------

    def stall_seconds(self) -> float:
        """How long the current stall has lasted (0 when not stalled)."""
        with self._lock:
            since = self._stalled_since
            return 0.0 if since is None else self._clock() - since

    def view(self) -> StatusView:
        with self._lock:
            values = dict(self._v)
            values["rewards"] = list(values["rewards"])
            stall = 0.0 if self._stalled_since is None else self._clock() - self._stalled_since
            values["max_stall_s"] = max(values["max_stall_s"], stall)
            return StatusView(name=self.name, stall_s=stall, **values)

    # -- internals ----------------------------------------------------------------------------

    def _update_stall(self) -> None:
        stalled = self._v["demand_open"] and self._v["awake"] == 0
        if stalled and self._stalled_since is None:
            self._stalled_since = self._clock()
        elif not stalled and self._stalled_since is not None:
            self._v["max_stall_s"] = max(self._v["max_stall_s"], self._clock() - self._stalled_since)
            self._stalled_since = None


__all__ = ["PipelineStatus", "StatusView"]
