"""The supply side: rlix_resize_infer over (fake) verl rollout replicas."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("verl", reason="verl is not installed (the verl integration tests need rlix-plugin[verl])")

from rlix_plugin.integrations.verl.engines import VerlEngines, VerlRollout, run_sync  # noqa: E402

from .fakes import FakeCheckpointManager, FakeLoadBalancer, FakeReplica, Timeline  # noqa: E402

PIPELINE = "p1"


def make_engines(rlix_hooks=None, dp=3, in_flight=0, step=7):
    timeline = Timeline()
    replicas = [FakeReplica(r, timeline, in_flight=in_flight) for r in range(dp)]
    lb = FakeLoadBalancer(timeline, [r.server_address for r in replicas])
    engines = VerlEngines(PIPELINE, rlix_hooks)
    engines.bind(VerlRollout(replicas, FakeCheckpointManager(replicas, timeline), lb, lambda: step))
    return engines, replicas, lb, timeline


def test_bind_takes_every_server_out_of_the_load_balancer():
    engines, replicas, lb, _ = make_engines()
    assert lb.servers == set() and engines.awake == ()


def test_hook_answers_only_for_its_pipeline(rlix_hooks, rlix_register):
    engines, replicas, lb, _ = make_engines(rlix_hooks)
    rlix_register(engines)
    assert rlix_hooks.resize_infer(pipeline_id="other", dp_ranks_to_add=(0,)) is None
    assert not any(r.awake for r in replicas)
    assert rlix_hooks.resize_infer(pipeline_id=PIPELINE, dp_ranks_to_add=(2, 0)) == (0, 2)


def test_partial_wake_goes_through_the_weight_update_and_resleeps_the_rest():
    engines, replicas, lb, timeline = make_engines(step=7)
    assert engines.resize(add=(1,)) == (1,)
    assert [r.awake for r in replicas] == [False, True, False]
    assert lb.servers == {"replica-1"}
    # Weights first (tagged with the trainer's step), then the ungranted replicas back to sleep.
    assert timeline.names("engine") == ["update_weights", "sleep", "sleep"]
    assert timeline.of("engine", "update_weights") == [7]
    assert sorted(timeline.of("engine", "sleep")) == [0, 2]


def test_waking_more_parks_and_resumes_the_serving_replicas():
    engines, replicas, lb, timeline = make_engines()
    engines.resize(add=(0,))
    timeline.events.clear()
    assert engines.resize(add=(2,)) == (0, 2)
    names = timeline.names("engine")
    assert names[0] == "abort" and timeline.of("engine", "abort") == [(0, False)]
    assert names.index("update_weights") < names.index("resume")
    assert timeline.of("engine", "resume") == [0]
    assert lb.servers == {"replica-0", "replica-2"}
    assert [r.awake for r in replicas] == [True, False, True]


def test_shrink_retracts_reports_and_reopens_the_gate_on_the_next_wake(rlix_hooks, rlix_recorder):
    engines, replicas, lb, timeline = make_engines(rlix_hooks, in_flight=5)
    engines.resize(add=(0, 1))
    assert engines.resize(remove=(1,)) == (0,)
    assert lb.servers == {"replica-0"}
    assert not replicas[1].awake and not replicas[1].gate_open
    assert (1, True) in timeline.of("engine", "abort")
    preempt = rlix_recorder.getcall("report_preempt")
    assert (preempt.dp_rank, preempt.retracted, preempt.worker_url) == (1, 5, "replica-1")
    engines.resize(add=(1,))
    assert replicas[1].gate_open and replicas[1].awake


def test_resize_is_idempotent_and_shrinks_before_expanding():
    engines, replicas, lb, timeline = make_engines()
    engines.resize(add=(0, 1))
    timeline.events.clear()
    assert engines.resize(add=(0, 1)) == (0, 1)
    assert engines.resize(remove=(2,)) == (0, 1)
    assert timeline.events == []
    assert engines.resize(remove=(0,), add=(2,)) == (1, 2)
    names = timeline.names("engine")
    assert names.index("sleep") < names.index("update_weights")


def test_trainer_sleep_does_not_abort_and_wake_all_wakes_everything():
    engines, replicas, lb, timeline = make_engines()
    assert engines.wake_all() == (0, 1, 2)
    assert lb.servers == {"replica-0", "replica-1", "replica-2"}
    assert engines.sleep_all() == ()
    assert timeline.of("engine", "abort") == []
    assert lb.servers == set()


def test_bad_ranks_and_unbound_engines_are_errors():
    engines, *_ = make_engines(dp=2)
    with pytest.raises(ValueError, match=r"dp ranks 0..1; got \[2\]"):
        engines.resize(add=(2,))
    unbound = VerlEngines(PIPELINE)
    assert unbound.resize(remove=(0,)) == ()
    with pytest.raises(RuntimeError, match="not built yet"):
        unbound.resize(add=(0,))


def test_run_sync_works_inside_a_running_loop():
    async def answer():
        return 42

    async def inside():
        return run_sync(answer())

    assert run_sync(answer()) == 42
    assert asyncio.run(inside()) == 42
    assert run_sync("plain") == "plain"
