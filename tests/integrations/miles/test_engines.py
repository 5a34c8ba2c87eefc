"""The supply side: rlix_resize_infer over a miles RolloutManager's engine state machine (the
stand-in, held as a plain object)."""

from __future__ import annotations

import pytest

from rlix_plugin.hookspecs import ClusterSpec, InvalidRequestError
from rlix_plugin.integrations.miles import EngineStateError, MilesEngines
from rlix_plugin.integrations.miles.engines import engine_table
from rlix_plugin.integrations.miles.rollout_manager import ManagerProxy

from .standins import RolloutManagerStandIn, miles_args

PIPELINE = "p1"


class Sync:
    """The pipeline's weight sync: records which engines it loaded, answers a version."""

    def __init__(self, manager, version=7):
        self.manager = manager
        self.version = version
        self.calls = []

    def __call__(self, engines):
        self.calls.append(engines)
        assert all(s == "loading" for s in self.manager.get_engine_states(engines).values())
        return self.version


def make(states=("offloaded",) * 4, table=None, version=7):
    manager = RolloutManagerStandIn(miles_args(initial_engine_states=list(states)), None)
    sync = Sync(manager, version)
    engines = MilesEngines(PIPELINE, ManagerProxy(manager, PIPELINE), table or tuple(range(len(states))), sync)
    return engines, manager, sync


def ops(manager, *names):
    return [(op, idx) for op, idx in manager.timeline if not names or op in names]


def test_answers_only_for_its_own_pipeline(rlix_hooks, rlix_register):
    engines, manager, _ = make()
    rlix_register(engines)
    assert rlix_hooks.resize_infer(pipeline_id="other", dp_ranks_to_add=(0,)) is None
    assert manager.timeline == []
    assert rlix_hooks.resize_infer(pipeline_id=PIPELINE, dp_ranks_to_add=(2, 0)) == (0, 2)


def test_wake_expands_syncs_versions_then_routes(rlix_hooks, rlix_register):
    engines, manager, sync = make(version=7)
    assert engines.resize(add=(1,)) == (1,)
    assert sync.calls == [(1,)]
    assert ops(manager) == [("resume_memory_occupation", 1), ("update_weight_version", 1),
                            ("register_with_router", 1)]
    assert manager.stats()["versions"][1] == 7 and manager.stats()["states"][1] == "active"


def test_a_sync_that_publishes_itself_is_not_published_again():
    engines, manager, _ = make(version=None)
    engines.resize(add=(0,))
    assert ops(manager, "update_weight_version") == []


def test_sleep_is_shrink_engines_never_a_bare_offload():
    engines, manager, _ = make(states=("active",) * 4)
    assert engines.resize(remove=(0, 3)) == (1, 2)
    assert ops(manager, "offload") == []
    assert ops(manager, "release_memory_occupation") == [("release_memory_occupation", 0),
                                                         ("release_memory_occupation", 3)]
    assert manager.stats()["states"] == {0: "offloaded", 1: "active", 2: "active", 3: "offloaded"}


def test_dp_ranks_map_to_engine_indices_not_gpu_ids():
    # DP rank r is served by engine table[r]; the GPU ids (here 4..7) never appear as indices.
    table = engine_table(ClusterSpec(1, (4, 5, 6, 7)), (3, 2, 1, 0), engine_count=4)
    engines, manager, sync = make(table=table)
    assert engines.resize(add=(0,)) == (0,)
    assert sync.calls == [(3,)] and manager.stats()["states"][3] == "active"
    assert engines.resize(add=(1,), remove=(0,)) == (1,)
    assert manager.stats()["states"] == {0: "offloaded", 1: "offloaded", 2: "active", 3: "offloaded"}


def test_idempotent_per_rank():
    engines, manager, sync = make()
    assert engines.resize(add=(0, 1)) == (0, 1)
    before = list(manager.timeline)
    assert engines.resize(add=(0, 1)) == (0, 1)  # waking awake engines: nothing happens
    assert engines.resize(remove=(2, 3)) == (0, 1)  # sleeping sleeping engines: nothing happens
    assert manager.timeline == before and sync.calls == [(0, 1)]
    assert engines.resize(remove=(0,), add=(1, 2)) == (1, 2)  # only what changes is touched
    assert sync.calls == [(0, 1), (2,)]


def test_shell_engine_is_a_clear_error_and_nothing_changes():
    engines, manager, _ = make(states=("offloaded", "shell", "offloaded", "offloaded"))
    with pytest.raises(EngineStateError, match=r"DP rank 1 \(engine 1\): 'shell'.*never started.*Nothing was changed"):
        engines.resize(add=(0, 1))
    assert manager.timeline == [] and manager.stats()["states"][0] == "offloaded"


def test_engine_between_states_is_a_clear_error_and_nothing_changes():
    engines, manager, _ = make(states=("active", "loading", "offloaded", "offloaded"))
    with pytest.raises(EngineStateError, match="'loading'.*between states.*Nothing was changed"):
        engines.resize(remove=(0,), add=(1, 2))
    assert manager.timeline == [] and manager.stats()["states"][0] == "active"


def test_ranks_out_of_range_change_nothing():
    engines, manager, _ = make()
    with pytest.raises(ValueError, match=r"DP ranks 0\.\.3; got \[4\]"):
        engines.resize(add=(0, 4))
    assert manager.timeline == []


def test_a_wake_that_does_not_take_is_reported():
    engines, manager, _ = make()
    manager.activate_routing = lambda engine_indices: list(engine_indices)  # claims success, changes nothing
    with pytest.raises(RuntimeError, match=r"after the wake of engines \[0\] miles reports \{0: 'loading'\}"):
        engines.resize(add=(0,))


def test_take_over_puts_every_awake_engine_to_sleep():
    engines, manager, _ = make(states=("active", "offloaded", "active", "offloaded"))
    assert engines.take_over() == [0, 2]
    assert set(manager.stats()["states"].values()) == {"offloaded"}


def test_take_over_refuses_engines_it_cannot_manage():
    engines, manager, _ = make(states=("active", "offloaded", "shell", "offloaded"))
    with pytest.raises(EngineStateError, match=r"cannot take over the engines: DP rank 2 \(engine 2\): 'shell'"):
        engines.take_over()
    assert manager.timeline == [] and manager.stats()["states"][0] == "active"


@pytest.mark.parametrize(
    ("gpus", "tp", "table", "count", "message"),
    [
        ((0, 1, 2, 3), 1, None, 3, "3 engines but actor_infer has 4 DP ranks"),
        ((0, 1, 2, 3), 2, (0, 1, 2), 4, "maps 3"),
        ((0, 1, 2, 3), 1, (0, 0, 1, 2), 4, "two DP ranks to one engine"),
        ((4, 5, 6, 7), 1, (4, 5, 6, 7), 8, None),
        ((4, 5, 6, 7), 1, (4, 5, 6, 7), 4, r"outside the RolloutManager's 0\.\.3"),
    ],
)
def test_engine_table_is_checked(gpus, tp, table, count, message):
    cluster = ClusterSpec(tp, gpus)
    if message is None:
        assert engine_table(cluster, table, count) == (4, 5, 6, 7)
    else:
        with pytest.raises(InvalidRequestError, match=message):
            engine_table(cluster, table, count)
