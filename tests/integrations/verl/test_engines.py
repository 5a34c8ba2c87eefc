"""The supply side: rlix_resize_infer over (fake) verl rollout replicas."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("verl", reason="verl is not installed (the verl integration tests need rlix-plugin[verl])")

from rlix_plugin.integrations.verl.engines import VerlEngines, VerlRollout, run_sync
from rlix_plugin.integrations.verl.weight_sync import SyncFilter

from .fakes import FakeCheckpointManager, FakeLoadBalancer, FakeReplica, Timeline

PIPELINE = "p1"


class Version:
    """The trainer's weight version, changed by a test between resizes."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __call__(self) -> int:
        return self.value


def make_engines(rlix_hooks=None, dp=3, in_flight=0, step=7):
    timeline = Timeline()
    replicas = [FakeReplica(r, timeline, in_flight=in_flight) for r in range(dp)]
    lb = FakeLoadBalancer(timeline, [r.server_address for r in replicas])
    engines = VerlEngines(PIPELINE, rlix_hooks)
    checkpoint_manager = FakeCheckpointManager(replicas, timeline)
    version = Version(step)
    engines.bind(VerlRollout(replicas, checkpoint_manager, lb, version, SyncFilter(checkpoint_manager.ranks)))
    engines.version = version  # for the tests
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


def test_partial_wake_loads_only_the_granted_replica_and_never_wakes_the_others(caplog):
    engines, replicas, lb, timeline = make_engines(step=7)
    with caplog.at_level("INFO", logger="rlix_plugin.integrations.verl"):
        assert engines.resize(add=(1,)) == (1,)
    assert [r.awake for r in replicas] == [False, True, False]
    assert [r.version for r in replicas] == [None, 7, None]
    assert lb.servers == {"replica-1"}
    # verl's update ran on every training rank, but only rank 1's replica resumed anything:
    # the others neither allocated weights nor KV cache, and nothing had to go back to sleep.
    assert timeline.of("engine", "update_weights") == [7]
    assert timeline.of("engine", "resume weights") == [1]
    assert timeline.of("engine", "resume kv_cache") == [1]
    assert timeline.of("engine", "sleep") == []
    # Every rank drained every exported tensor (each is a collective all-gather)...
    checkpoint_manager = engines._rollout.checkpoint_manager
    assert len(checkpoint_manager.exported) == 3 * 3
    # ...and what the held-back ranks did is measured in the log.
    assert "replicas [0, 2] stayed asleep (per training rank at most 3 tensors, 384 bytes" in caplog.text


def test_waking_more_leaves_serving_replicas_alone():
    engines, replicas, lb, timeline = make_engines()
    engines.resize(add=(0,))
    timeline.events.clear()
    assert engines.resize(add=(2,)) == (0, 2)
    # Replica 0 serves the current weights: no abort, no reload, its gate stays open.
    assert timeline.of("engine", "abort") == []
    assert timeline.of("engine", "resume weights") == [2]
    assert lb.servers == {"replica-0", "replica-2"}
    assert [r.awake for r in replicas] == [True, False, True]


def test_a_serving_replica_with_older_weights_is_parked_and_reloaded():
    engines, replicas, lb, timeline = make_engines(step=3)
    engines.resize(add=(0,))
    engines.version.value = 4
    timeline.events.clear()
    assert engines.resize(add=(1,)) == (0, 1)
    names = timeline.names("engine")
    assert timeline.of("engine", "abort") == [(0, False)]  # parked, not rejected
    assert names.index("abort") < names.index("update_weights") < names.index("resume")
    assert timeline.of("engine", "resume") == [0]
    assert [r.version for r in replicas] == [4, 4, None]


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
