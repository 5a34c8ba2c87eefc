"""The outcome of a run as plain data, and its JSON form (what ``--json`` prints).

JSON keys (stable): ``ok``, ``scenario``, ``backend``, ``time_scale``, ``wall_s``,
``pipelines: {name: {rollouts_completed, rollouts, samples_completed, reward_first, reward_last,
gpu_wait_s, max_stall_s, retracted_samples, switches, switch_gpu_s, phase, error}}``,
``gpu_busy_fraction``, ``lower_bound_s``, ``static_partition_s`` (null when not measured),
``policy``, ``switches`` (engine wakes and sleeps), ``switches_per_rollout``, ``switch_gpu_s``
(GPU-seconds engines spent waking, falling asleep or syncing weights), ``stalled`` (pipelines the
watchdog stopped), ``diagnostic`` (null unless the run failed) and ``errors``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .status import StatusView


@dataclass
class PipelineMetrics:
    rollouts_completed: int
    rollouts: int
    samples_completed: int
    reward_first: float | None
    reward_last: float | None
    gpu_wait_s: float
    max_stall_s: float
    retracted_samples: int
    switches: int
    switch_gpu_s: float
    phase: str
    error: str | None

    @classmethod
    def from_view(cls, view: StatusView) -> PipelineMetrics:
        return cls(
            rollouts_completed=view.rollouts_completed,
            rollouts=view.rollouts_total,
            samples_completed=view.samples_completed,
            reward_first=round(view.rewards[0], 4) if view.rewards else None,
            reward_last=round(view.rewards[-1], 4) if view.rewards else None,
            gpu_wait_s=round(view.gpu_wait_s, 3),
            max_stall_s=round(view.max_stall_s, 3),
            retracted_samples=view.retracted,
            switches=view.switches,
            switch_gpu_s=round(view.switch_gpu_s, 3),
            phase=view.phase,
            error=view.error,
        )


@dataclass
class RunResult:
    ok: bool
    scenario: str
    backend: str
    time_scale: float
    wall_s: float
    pipelines: dict[str, PipelineMetrics]
    gpu_busy_fraction: float
    lower_bound_s: float
    static_partition_s: float | None = None
    policy: str = ""
    switches: int = 0
    switches_per_rollout: float = 0.0
    switch_gpu_s: float = 0.0
    stalled: list[str] = field(default_factory=list)
    diagnostic: str | None = None
    errors: list[str] = field(default_factory=list)
    #: Not serialised: the recording (for trace and timeline) and the pipelines' samples.
    recorder: Any = field(default=None, repr=False)
    samples: dict[str, dict[int, list[Any]]] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "scenario": self.scenario,
            "backend": self.backend,
            "time_scale": self.time_scale,
            "wall_s": round(self.wall_s, 3),
            "pipelines": {name: vars(m) for name, m in self.pipelines.items()},
            "gpu_busy_fraction": round(self.gpu_busy_fraction, 4),
            "lower_bound_s": round(self.lower_bound_s, 3),
            "static_partition_s": None if self.static_partition_s is None else round(self.static_partition_s, 3),
            "policy": self.policy,
            "switches": self.switches,
            "switches_per_rollout": round(self.switches_per_rollout, 2),
            "switch_gpu_s": round(self.switch_gpu_s, 3),
            "stalled": list(self.stalled),
            "diagnostic": self.diagnostic,
            "errors": list(self.errors),
        }


__all__ = ["PipelineMetrics", "RunResult"]
