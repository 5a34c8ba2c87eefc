"""End to end on the embedded scheduler: pipelines really learn while sharing the pool, every
sample is generated on-policy by an awake engine, and nothing stalls."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rlix_plugin.hookspecs import InvalidRequestError
from rlix_plugin.reference.harness.runner import RunOptions, run_scenario
from rlix_plugin.scenario import bundled_scenario

from .support import TIME_SCALE, check_learned_and_complete, tiny_scenario


def test_seed_scenario_both_pipelines_finish_and_learn():
    scenario = bundled_scenario("seed")
    result = run_scenario(scenario, RunOptions(time_scale=TIME_SCALE, stall_timeout_s=5.0))
    check_learned_and_complete(result, scenario)
    assert result.switches > 0 and result.switch_gpu_s > 0, "the engines' switch costs were paid"
    assert all(m.max_stall_s < 5.0 for m in result.pipelines.values())


def test_with_instant_switches_the_seed_pipelines_generate_on_each_others_gpus():
    # With switches that cost nothing, GPUs one pipeline has no use for go to the other. The two
    # pipelines are staggered so that this happens whatever the machine's load: P1 rolls out alone
    # until P2 starts, and P2 alone once P1 has finished its three rollouts. (Run in lockstep, as the
    # bundled scenario is, each keeps its own half almost all the time under `finish_first`, and
    # whether either strays onto the other's half at all is a matter of milliseconds.)
    seed = bundled_scenario("seed").with_switch_costs(0.0)
    p1, p2 = seed.pipelines
    scenario = seed.with_pipelines((replace(p1, rollouts=3), replace(p2, start_delay_seconds=1.0)))
    result = run_scenario(scenario, RunOptions(time_scale=TIME_SCALE, stall_timeout_s=5.0))
    check_learned_and_complete(result, scenario)
    assert result.switch_gpu_s == 0.0
    # Both generated on GPUs the other trains on at some point: the pool was really shared.
    spans = result.recorder.gpu_intervals()
    for pipeline, other_train in (("P1", (2, 3)), ("P2", (0, 1))):
        assert any(h[0] == pipeline and h[1] == "infer" for g in other_train for _, _, h in spans[g]), pipeline
    assert all(m.max_stall_s < 5.0 for m in result.pipelines.values())


def test_three_pipelines_with_tp2_on_eight_gpus():
    scenario = bundled_scenario("three_tp2")
    result = run_scenario(scenario, RunOptions(time_scale=TIME_SCALE, stall_timeout_s=5.0))
    check_learned_and_complete(result, scenario)
    # A TP-2 engine always holds both GPUs of its bundle.
    for frame in result.recorder.frames:
        for first in range(0, 8, 2):
            a, b = frame.holders[first], frame.holders[first + 1]
            if (a and a[1] == "infer") or (b and b[1] == "infer"):
                assert a == b, frame


def test_static_partition_is_measured_with_the_same_work():
    scenario = tiny_scenario(rollouts=2, samples=8)
    result = run_scenario(scenario, RunOptions(stall_timeout_s=5.0, measure_static=True))
    assert result.ok, result.diagnostic
    assert result.static_partition_s is not None and result.static_partition_s > 0
    data = result.to_json()
    assert set(data) >= {"ok", "wall_s", "pipelines", "gpu_busy_fraction", "lower_bound_s", "static_partition_s"}
    assert set(data["pipelines"]["A"]) >= {
        "rollouts_completed",
        "samples_completed",
        "reward_first",
        "reward_last",
        "gpu_wait_s",
        "max_stall_s",
    }


def test_bad_options_are_rejected_before_anything_runs():
    with pytest.raises(InvalidRequestError, match="stall_timeout_s must be a finite number > 0 and <= 604800, got 0"):
        run_scenario(tiny_scenario(), RunOptions(stall_timeout_s=0))
    with pytest.raises(InvalidRequestError, match="unknown rlix backend 'nope'"):
        run_scenario(tiny_scenario(), RunOptions(backend="nope"))


def test_the_run_timeout_stops_every_pipeline_with_a_diagnostic():
    scenario = tiny_scenario(rollouts=50, samples=8)
    result = run_scenario(scenario, RunOptions(stall_timeout_s=5.0, timeout_s=0.5))
    assert not result.ok
    assert result.diagnostic.startswith("run timeout: not finished within 0.5s")
    assert "GPU holders:" in result.diagnostic and "framework view:" in result.diagnostic
    assert not result.errors  # every thread unwound: none is reported stuck
    assert {m.phase for m in result.pipelines.values()} == {"aborted"}
    assert all(m.rollouts_completed < 50 for m in result.pipelines.values())
    assert result.wall_s < 10
