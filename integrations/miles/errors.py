"""Errors of the miles integration. Each message says what is wrong and what to do about it."""

from __future__ import annotations

from rlix_plugin.hookspecs import RlixError


class HooksNotInstalledError(RlixError):
    """The pipeline's miles ``RolloutManager`` does not hold this integration's hooks: ``install``
    was never called, failed, or ``set_rlix_hooks`` did not keep the object.

    Without them every progress call of miles' rollout function reaches ``NoOpRLixHooks`` and the
    scheduler never hears of the rollout (docs/design.md, failure mode F2), so demand is refused instead."""


class HooksNotPassedError(HooksNotInstalledError):
    """The ``RolloutManager`` holds the hooks but will never hand them to its rollout function:
    miles' experimental rollout path is on, or the configured rollout function has no
    ``rlix_hooks`` parameter. The rollout would report to ``NoOpRLixHooks``, as if ``install`` had
    never run."""


class MilesSurfaceError(RlixError, TypeError):
    """The object given as miles' ``RolloutManager`` lacks a method the integration needs (a miles
    version without the rlix seam, or the wrong object)."""


class EngineStateError(RlixError):
    """A resize met an engine it cannot act on: a ``shell`` engine (never started), or one caught
    half-way through a transition (``loading``, ``disabling``). Nothing was changed."""


class GpuMemoryError(RlixError):
    """Engines about to wake found their GPUs without the free memory they need: an earlier sleep
    on those GPUs (of this pipeline or another) did not release its memory. Nothing was changed."""


__all__ = ["EngineStateError", "GpuMemoryError", "HooksNotInstalledError", "HooksNotPassedError", "MilesSurfaceError"]
