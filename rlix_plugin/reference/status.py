"""The live state of one pipeline: written by its loop and its engines, read by the progress
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

# Phases, in the order a rollout goes through them.
STARTING = "starting"
WAITING_ENGINES = "waiting for engines"
GENERATING = "generating"
WAITING_TRAIN = "waiting for train GPUs"
TRAINING = "training"
DONE = "done"
FAILED = "failed"
ABORTED = "aborted"
FINAL_PHASES = (DONE, FAILED, ABORTED)


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

    # -- writers ------------------------------------------------------------------------------

    def set_phase(self, phase: str, rollout: int | None = None) -> None:
        with self._lock:
            self._v["phase"] = phase
            if rollout is not None:
                self._v["rollout"] = rollout
                self._v["samples_done"] = 0

    def set_demand(self, open_: bool) -> None:
        with self._lock:
            self._v["demand_open"] = open_
            self._update_stall()

    def set_awake(self, awake: int) -> None:
        with self._lock:
            self._v["awake"] = awake
            self._update_stall()

    def add_wait(self, seconds: float) -> None:
        with self._lock:
            self._v["gpu_wait_s"] += seconds

    def add_busy(self, gpu_seconds: float) -> None:
        with self._lock:
            self._v["busy_gpu_s"] += gpu_seconds

    def add_switches(self, count: int, gpu_seconds: float) -> None:
        """``count`` engine state changes that held their GPUs idle for ``gpu_seconds``."""
        with self._lock:
            self._v["switches"] += count
            self._v["switch_gpu_s"] += gpu_seconds

    def add_retracted(self, count: int) -> None:
        with self._lock:
            self._v["retracted"] += count

    def sample_done(self) -> None:
        with self._lock:
            self._v["samples_done"] += 1
            self._v["samples_completed"] += 1

    def rollout_done(self, mean_reward: float, weight_version: int) -> None:
        with self._lock:
            self._v["rollouts_completed"] += 1
            self._v["rewards"].append(mean_reward)
            self._v["weight_version"] = weight_version

    def finish(self, phase: str, error: str | None = None) -> None:
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


__all__ = [
    "ABORTED",
    "DONE",
    "FAILED",
    "FINAL_PHASES",
    "GENERATING",
    "STARTING",
    "TRAINING",
    "WAITING_ENGINES",
    "WAITING_TRAIN",
    "PipelineStatus",
    "StatusView",
]
