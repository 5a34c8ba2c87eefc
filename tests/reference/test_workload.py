"""Deterministic work and the lower bound, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest

from rlix_plugin.scenario import parse_scenario
from rlix_plugin.scenario.static import static_partition
from rlix_plugin.scenario.workload import lower_bound, sample_durations

from .support import tiny_scenario


def test_durations_are_deterministic_lognormal_draws():
    pipeline = tiny_scenario(samples=400).pipelines[0]
    first = sample_durations(pipeline, 0)
    assert first == sample_durations(pipeline, 0)
    assert first != sample_durations(pipeline, 1)
    median = sorted(first)[len(first) // 2]
    assert median == pytest.approx(0.02, rel=0.2)


def test_lower_bound_is_the_larger_of_pool_and_single_pipeline_bounds():
    # sigma 0: every sample takes exactly the median, so the bound is plain arithmetic.
    scenario = tiny_scenario(rollouts=3, samples=10, sigma=0.0)
    bound = lower_bound(scenario)
    # Per pipeline: 3 rollouts x (10 x 0.02 generation GPU-s + 0.05 s x 1 train GPU) = 0.75 GPU-s.
    assert bound.gpu_seconds == pytest.approx(1.5)
    assert bound.pool_bound_s == pytest.approx(1.5 / 2)
    # Alone on both GPUs: per rollout max(0.2 / 2, 0.02) + 0.05 = 0.15 s.
    assert bound.pipeline_bound_s == pytest.approx(0.45)
    assert bound.seconds == pytest.approx(0.75)
    assert lower_bound(scenario, time_scale=0.5).seconds == pytest.approx(0.375)


def test_a_late_pipeline_raises_the_single_pipeline_bound():
    scenario = tiny_scenario(rollouts=3, samples=10, sigma=0.0, start_delay_seconds=2.0)
    assert lower_bound(scenario).seconds == pytest.approx(2.45)


def test_static_partition_gives_each_pipeline_a_disjoint_slice():
    scenario = parse_scenario(
        """
[cluster]
gpus = 8
gpus_per_node = 8
"""
        + "".join(
            f"""
[[pipeline]]
name = "P{i}"
train_gpus = [0, 1, 2, 3]
infer_gpus = [0, 1, 2, 3, 4, 5, 6, 7]
infer_tp = 2
rollouts = 1
samples_per_rollout = 4
sample_seconds = {{ median = 0.1, sigma = 0.1 }}
train_seconds = 0.1
"""
            for i in range(3)
        )
    )
    static = static_partition(scenario)
    slices = [set(p.infer_gpus) | set(p.train_gpus) for p in static.pipelines]
    assert [p.infer_gpus for p in static.pipelines] == [(0, 1), (2, 3), (4, 5)]
    assert [p.train_gpus for p in static.pipelines] == [(0, 1), (2, 3), (4, 5)]
    assert all(not (a & b) for i, a in enumerate(slices) for b in slices[i + 1 :])
    assert [sample_durations(p, 0) for p in static.pipelines] == [sample_durations(p, 0) for p in scenario.pipelines]
    # Same generation work; training on the 2 GPUs of a slice instead of 4: 3 x 0.1 s x 2 GPUs less.
    assert math.isclose(lower_bound(static).gpu_seconds, lower_bound(scenario).gpu_seconds - 0.6)
