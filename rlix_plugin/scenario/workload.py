"""The work a scenario asks for, drawn deterministically, and the lower bound on its wall time.

Every per-sample generation time (reference workload) or response length (token workload) is a
pure function of (pipeline seed, rollout, sample index), so a shared run, a static-partition run
and the lower bound all see exactly the same work, whichever engine ends up generating which
sample.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from .format import PipelineConfig, Scenario


def sample_durations(pipeline: PipelineConfig, rollout: int) -> list[float]:
    """Generation seconds of each sample of one rollout (scenario seconds, unscaled)."""
    if pipeline.sample_seconds is None:
        raise ValueError(f"pipeline {pipeline.name!r} has a token workload: its samples have lengths, not durations")
    rng = random.Random(f"rlix-reference/durations/{pipeline.seed}/{rollout}")
    mu = math.log(pipeline.sample_seconds.median)
    sigma = pipeline.sample_seconds.sigma
    return [rng.lognormvariate(mu, sigma) for _ in range(pipeline.samples_per_rollout)]


def response_lengths(pipeline: PipelineConfig, rollout: int) -> list[int]:
    """Tokens of each response of one rollout of a token workload, prompt by prompt (the samples
    of prompt ``p`` are ``p * samples_per_prompt ...``): each prompt's median is drawn around the
    workload's median, each of its samples around that, and truncated at the cap."""
    lengths = pipeline.response_tokens
    if lengths is None or pipeline.prompts is None or pipeline.samples_per_prompt is None:
        raise ValueError(f"pipeline {pipeline.name!r} has no token workload")
    rng = random.Random(f"rlix-reference/responses/{pipeline.seed}/{rollout}")
    mu, cap = math.log(lengths.median), lengths.cap
    out = []
    for _ in range(pipeline.prompts):
        prompt_mu = mu + lengths.prompt_sigma * rng.gauss(0.0, 1.0)
        for _ in range(pipeline.samples_per_prompt):
            out.append(min(cap, max(1, round(math.exp(prompt_mu + lengths.sigma * rng.gauss(0.0, 1.0))))))
    return out


def sample_work(pipeline: PipelineConfig, rollout: int) -> list[float]:
    """What each sample of one rollout asks of an engine: tokens (token workload) or seconds."""
    if pipeline.token_workload:
        return [float(n) for n in response_lengths(pipeline, rollout)]
    return sample_durations(pipeline, rollout)


@dataclass(frozen=True)
class LowerBound:
    """``seconds`` = max(``pool_bound_s``, ``pipeline_bound_s``).

    ``pool_bound_s``: total GPU-seconds of work (generation at the engines' peak throughput x TP,
    plus training x train GPUs) divided by the pool size. ``pipeline_bound_s``: the longest any
    one pipeline needs with every GPU to itself (start delay, then per rollout the larger of its
    generation work spread over all its DP workers at their peak and its longest sample decoded
    alone, plus its training time; at most its ``stop_after_seconds``). Pipelines that may be
    stopped early add nothing to the pool bound (how much of their work is done is not known).
    """

    seconds: float
    pool_bound_s: float
    pipeline_bound_s: float
    gpu_seconds: float
    #: Each pipeline's own bound on its job completion time (from its start).
    per_pipeline: dict[str, float] = field(default_factory=dict, compare=False)


def lower_bound(scenario: Scenario, time_scale: float = 1.0) -> LowerBound:
    """No schedule of the scenario's work can finish sooner than this (in scaled seconds)."""
    gpu_seconds = 0.0
    per_pipeline: dict[str, float] = {}
    longest = 0.0
    for pipeline in scenario.pipelines:
        decode = pipeline.decode
        alone_rate = decode.rate(1) if decode is not None else 1.0
        peak = decode.batch * decode.rate(decode.batch) if decode is not None else 1.0
        jct = work_gpu_s = 0.0
        for rollout in range(pipeline.rollouts):
            work = sample_work(pipeline, rollout)
            total = sum(work)
            train = pipeline.train_seconds_for(total) if pipeline.token_workload else pipeline.train_seconds
            work_gpu_s += total / peak * pipeline.infer_tp + train * len(pipeline.train_gpus)
            jct += max(total / peak / pipeline.dp_size, max(work) / alone_rate) + train
        if pipeline.stop_after_seconds is not None:
            jct = min(jct, pipeline.stop_after_seconds)
        else:
            gpu_seconds += work_gpu_s
        per_pipeline[pipeline.name] = jct * time_scale
        longest = max(longest, pipeline.start_delay_seconds + jct)
    pool = gpu_seconds / scenario.gpus
    return LowerBound(
        seconds=max(pool, longest) * time_scale,
        pool_bound_s=pool * time_scale,
        pipeline_bound_s=longest * time_scale,
        gpu_seconds=gpu_seconds * time_scale,
        per_pipeline=per_pipeline,
    )


__all__ = ["LowerBound", "lower_bound", "response_lengths", "sample_durations", "sample_work"]
