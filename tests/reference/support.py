"""Shared pieces of the reference-framework tests: small scenarios and condition waits."""

from __future__ import annotations

from typing import Any

from rlix_plugin.scenario import Scenario, parse_scenario

from ..waiting import wait_until  # noqa: F401  (used by the reference tests through this module)

#: Scenario durations are multiplied by this in the end-to-end tests: the seed scenario's five
#: rollouts then take about three seconds.
TIME_SCALE = 0.25


def tiny_scenario(rollouts: int = 2, samples: int = 8, sigma: float = 0.5, **extra: str) -> Scenario:
    """Two pipelines on 2 GPUs, a few short samples: for tests that need *a* run, fast."""
    p2_extra = "\n".join(f"{k} = {v}" for k, v in extra.items())
    return parse_scenario(
        f"""
name = "tiny"
[cluster]
gpus = 2
gpus_per_node = 2

[[pipeline]]
name = "A"
train_gpus = [0]
infer_gpus = [0, 1]
infer_tp = 1
rollouts = {rollouts}
samples_per_rollout = {samples}
sample_seconds = {{ median = 0.02, sigma = {sigma} }}
train_seconds = 0.05
seed = 3

[[pipeline]]
name = "B"
train_gpus = [1]
infer_gpus = [0, 1]
infer_tp = 1
rollouts = {rollouts}
samples_per_rollout = {samples}
sample_seconds = {{ median = 0.02, sigma = {sigma} }}
train_seconds = 0.05
seed = 4
{p2_extra}
""",
        "tiny.toml",
    )


def check_learned_and_complete(result: Any, scenario: Scenario) -> None:
    """Every pipeline finished every rollout, learned, and generated each rollout on-policy."""
    assert result.ok, result.diagnostic
    assert not result.stalled and not result.errors
    for config in scenario.pipelines:
        metrics = result.pipelines[config.name]
        assert metrics.rollouts_completed == config.rollouts
        assert metrics.samples_completed >= config.rollouts * config.samples_per_rollout
        assert metrics.reward_last > metrics.reward_first, (config.name, metrics)
        samples = result.samples[config.name]
        assert sorted(samples) == list(range(config.rollouts))
        for rollout, batch in samples.items():
            # On-policy: rollout k is generated with the weights of k training steps.
            assert [s.index for s in batch] == list(range(config.samples_per_rollout))
            assert {s.weight_version for s in batch} == {rollout}
            assert {s.dp_rank for s in batch} <= set(range(config.dp_size))
    assert 0.0 < result.gpu_busy_fraction <= 1.0
    assert result.wall_s >= result.lower_bound_s * 0.99  # nothing beats the bound
