"""The work a scenario asks for, drawn deterministically, and the lower bound on its wall time.

Every per-sample generation time is a pure function of (pipeline seed, rollout, sample index), so
a shared run, a static-partition run and the lower bound all see exactly the same work, whichever
engine ends up generating which sample.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .scenario import PipelineConfig, Scenario


def sample_durations(pipeline: PipelineConfig, rollout: int) -> list[float]:
    """Generation seconds of each sample of one rollout (scenario seconds, unscaled)."""
    rng = random.Random(f"rlix-reference/durations/{pipeline.seed}/{rollout}")
    mu = math.log(pipeline.sample_seconds.median)
    sigma = pipeline.sample_seconds.sigma
    return [rng.lognormvariate(mu, sigma) for _ in range(pipeline.samples_per_rollout)]


@dataclass(frozen=True)
class LowerBound:
    """``seconds`` = max(``pool_bound_s``, ``pipeline_bound_s``).

    ``pool_bound_s``: total GPU-seconds of work (generation x TP, plus training x train GPUs)
    divided by the pool size. ``pipeline_bound_s``: the longest any one pipeline needs with every
    GPU to itself (start delay, then per rollout the larger of its generation work spread over all
    its DP workers and its longest sample, plus its training time).
    """

    seconds: float
    pool_bound_s: float
    pipeline_bound_s: float
    gpu_seconds: float


def lower_bound(scenario: Scenario, time_scale: float = 1.0) -> LowerBound:
    """No schedule of the scenario's work can finish sooner than this (in scaled seconds)."""
    gpu_seconds = 0.0
    longest = 0.0
    for pipeline in scenario.pipelines:
        alone = pipeline.start_delay_seconds
        for rollout in range(pipeline.rollouts):
            durations = sample_durations(pipeline, rollout)
            gpu_seconds += sum(durations) * pipeline.infer_tp
            gpu_seconds += pipeline.train_seconds * len(pipeline.train_gpus)
            alone += max(sum(durations) / pipeline.dp_size, max(durations)) + pipeline.train_seconds
        longest = max(longest, alone)
    pool = gpu_seconds / scenario.gpus
    return LowerBound(
        seconds=max(pool, longest) * time_scale,
        pool_bound_s=pool * time_scale,
        pipeline_bound_s=longest * time_scale,
        gpu_seconds=gpu_seconds * time_scale,
    )


__all__ = ["LowerBound", "lower_bound", "sample_durations"]
