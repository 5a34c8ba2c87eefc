"""What one pipeline and its engines report while they run, and to whom: a
:class:`PipelineObserver`.

The framework reports events; it keeps no display, watchdog or metrics of its own. Whoever runs
the pipeline implements the protocol (the demo's harness keeps a live status for its progress
bars, watchdog and results, and records phases for the trace); a framework used on its own passes
nothing and gets :class:`NullObserver`.

Contract: the pipeline calls the observer from its own thread, the engines from theirs, some
calls under the engine pool's lock (:meth:`~PipelineObserver.sample_done`,
:meth:`~PipelineObserver.busy`). So every method must be thread-safe, cheap, and must neither
block nor raise; an observer that needs to do real work hands it to a thread of its own.
"""

from __future__ import annotations

from typing import Protocol

# Phases of a pipeline, in the order a rollout goes through them, then the final ones.
STARTING = "starting"
WAITING_ENGINES = "waiting for engines"  # open demand: waiting for the first engine to wake
GENERATING = "generating"
WAITING_TRAIN = "waiting for train GPUs"
TRAINING = "training"
TRAINED = "trained"  # done with the training GPUs, about to release them
DONE = "done"
FAILED = "failed"
ABORTED = "aborted"
FINAL_PHASES = (DONE, FAILED, ABORTED)


class PipelineObserver(Protocol):
    """Receives the reports of one pipeline (see the module's contract)."""

    def phase(self, phase: str, rollout: int) -> None:
        """The pipeline entered ``phase`` (:data:`WAITING_ENGINES` .. :data:`TRAINED`) of rollout
        ``rollout`` (from 0). A rollout begins with :data:`WAITING_ENGINES`."""

    def demand(self, open_: bool) -> None:
        """Open demand began (the pipeline asked for generation GPUs) or ended (its rollout's
        progress batch ended)."""

    def waited(self, seconds: float) -> None:
        """The pipeline spent ``seconds`` blocked in a scheduler call (demand or a stage)."""

    def engines(self, awake: tuple[int, ...]) -> None:
        """The DP ranks awake after a resize (sorted)."""

    def switched(self, count: int, gpu_seconds: float) -> None:
        """``count`` engines woke or fell asleep (0 for a weight sync), holding their GPUs idle for
        ``gpu_seconds`` in all."""

    def retracted(self, count: int) -> None:
        """``count`` in-flight samples were taken back from engines put to sleep or synced."""

    def busy(self, gpu_seconds: float) -> None:
        """``gpu_seconds`` of useful work (generating, training) were done."""

    def sample_done(self) -> None:
        """One sample of the current rollout finished."""

    def rollout_done(self, rollout: int, mean_reward: float, weight_version: int) -> None:
        """Rollout ``rollout`` was trained on: its mean reward and the weight version it made."""

    def finished(self, phase: str, error: str | None) -> None:
        """The pipeline ended in ``phase`` (one of :data:`FINAL_PHASES`), with the error that
        ended it, if any. Called once, before the pipeline gives back what it still holds."""


class NullObserver:
    """Ignores every report: the default, and a base for an observer that wants only some."""

    def phase(self, phase: str, rollout: int) -> None:
        pass

    def demand(self, open_: bool) -> None:
        pass

    def waited(self, seconds: float) -> None:
        pass

    def engines(self, awake: tuple[int, ...]) -> None:
        pass

    def switched(self, count: int, gpu_seconds: float) -> None:
        pass

    def retracted(self, count: int) -> None:
        pass

    def busy(self, gpu_seconds: float) -> None:
        pass

    def sample_done(self) -> None:
        pass

    def rollout_done(self, rollout: int, mean_reward: float, weight_version: int) -> None:
        pass

    def finished(self, phase: str, error: str | None) -> None:
        pass


class Observers:
    """Hands every report to each of ``observers`` in turn."""

    def __init__(self, *observers: PipelineObserver) -> None:
        self.observers = observers

    def phase(self, phase: str, rollout: int) -> None:
        for observer in self.observers:
            observer.phase(phase, rollout)

    def demand(self, open_: bool) -> None:
        for observer in self.observers:
            observer.demand(open_)

    def waited(self, seconds: float) -> None:
        for observer in self.observers:
            observer.waited(seconds)

    def engines(self, awake: tuple[int, ...]) -> None:
        for observer in self.observers:
            observer.engines(awake)

    def switched(self, count: int, gpu_seconds: float) -> None:
        for observer in self.observers:
            observer.switched(count, gpu_seconds)

    def retracted(self, count: int) -> None:
        for observer in self.observers:
            observer.retracted(count)

    def busy(self, gpu_seconds: float) -> None:
        for observer in self.observers:
            observer.busy(gpu_seconds)

    def sample_done(self) -> None:
        for observer in self.observers:
            observer.sample_done()

    def rollout_done(self, rollout: int, mean_reward: float, weight_version: int) -> None:
        for observer in self.observers:
            observer.rollout_done(rollout, mean_reward, weight_version)

    def finished(self, phase: str, error: str | None) -> None:
        for observer in self.observers:
            observer.finished(phase, error)


__all__ = [
    "ABORTED",
    "DONE",
    "FAILED",
    "FINAL_PHASES",
    "GENERATING",
    "STARTING",
    "TRAINED",
    "TRAINING",
    "WAITING_ENGINES",
    "WAITING_TRAIN",
    "NullObserver",
    "Observers",
    "PipelineObserver",
]
