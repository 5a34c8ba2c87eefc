"""End to end on the ray backend: the seed scenario's pipelines share the cluster's scheduler
actor (a local Ray cluster started for the run and shut down after it)."""

from __future__ import annotations

import pytest

from rlix_plugin.reference.harness.runner import RunOptions, run_scenario
from rlix_plugin.scenario import bundled_scenario

from .support import TIME_SCALE, check_learned_and_complete

ray = pytest.importorskip("ray")

#: A small local cluster: few CPUs (the machine is shared), a small object store.
INIT_OPTIONS = {
    "num_cpus": 2,
    "include_dashboard": False,
    "logging_level": "ERROR",
    "object_store_memory": 80 * 1024 * 1024,
}


def test_seed_scenario_on_the_ray_backend():
    attached = ray.is_initialized()  # a cluster left by another test is used, and left alone
    scenario = bundled_scenario("seed")
    result = run_scenario(
        scenario,
        RunOptions(
            backend="ray",
            time_scale=TIME_SCALE,
            stall_timeout_s=10.0,
            backend_options={"address": None, "init_options": INIT_OPTIONS},
        ),
    )
    check_learned_and_complete(result, scenario)
    assert result.backend == "ray"
    # The scheduler lives in another process: ownership was recorded from the framework side.
    holders = {h for frame in result.recorder.frames for h in frame.holders if h is not None}
    assert {("P1", "train", None), ("P2", "train", None)} <= holders
    assert any(h[1] == "infer" and h[0] == "P1" for h in holders)
    assert 32 in {value for _, value in result.recorder.demand_series()["P1"]}  # the rollout's step target
    assert ray.is_initialized() == attached  # a cluster the run started is shut down with it
