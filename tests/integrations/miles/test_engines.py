"""The supply side: rlix_resize_infer over the pinned real engine state machine of miles'
RolloutManager (held as a plain object), and the GPU memory checks around it."""

from __future__ import annotations

import pytest

from rlix_plugin.hookspecs import ClusterSpec, InvalidRequestError
from rlix_plugin.integrations.miles import EngineStateError, FreeMemoryCheck, GpuMemoryError, MilesEngines
from rlix_plugin.integrations.miles.engines import engine_table
from rlix_plugin.integrations.miles.rollout_manager import ManagerProxy

PIPELINE = "p1"
SLEEP = ["unregister_from_router", "abort_all_requests", "is_idle", "release_memory_occupation"]


class Sync:
    """The pipeline's weight sync: records which engines it loaded (checking miles has them
    ``loading``), answers a version."""

    def __init__(self, manager, version=7):
        self.manager = manager
        self.version = version
        self.calls = []

    def __call__(self, engines):
        self.calls.append(engines)
        assert all(s == "loading" for s in self.manager.get_engine_states(engines).values())
        return self.version


def manager_in(states, **args):
    """A manager whose engines went through miles' own transitions to ``states`` (log cleared)."""
    from .miles_manager import MilesRolloutManager, miles_args

    manager = MilesRolloutManager(miles_args(shell_engines=[i for i, s in enumerate(states) if s == "shell"], **args))
    for index, state in enumerate(states):
        if state in ("offloaded", "loading"):
            manager.shrink_engines([index])
        if state == "loading":
            manager.expand_engines([index])
        if state == "disabling":  # only ever seen half-way through a shrink
            manager._engines[index].state = "disabling"
    manager.log.clear()
    return manager


def make(states=("offloaded",) * 4, table=None, version=7, **options):
    manager = manager_in(states)
    sync = Sync(manager, version)
    engines = MilesEngines(
        PIPELINE, ManagerProxy(manager, PIPELINE), table or tuple(range(len(states))), sync, **options
    )
    return engines, manager, sync


def ops(manager, *names):
    return [(op, idx) for op, idx, _ in manager.log if not names or op in names]


def test_answers_only_for_its_own_pipeline(miles, rlix_hooks, rlix_register):
    engines, manager, _ = make()
    rlix_register(engines)
    assert rlix_hooks.resize_infer(pipeline_id="other", dp_ranks_to_add=(0,)) is None
    assert manager.log == []
    assert rlix_hooks.resize_infer(pipeline_id=PIPELINE, dp_ranks_to_add=(2, 0)) == (0, 2)


def test_wake_is_offloaded_to_loading_to_active_with_the_weights_in_between(miles):
    engines, manager, sync = make(version=7)
    assert engines.resize(add=(1,)) == (1,)
    assert sync.calls == [(1,)]  # while miles had engine 1 'loading'
    assert ops(manager) == [("resume_memory_occupation", 1), ("update_weight_version", 1), ("register_with_router", 1)]
    assert manager.stats()["versions"][1] == 7 and manager.stats()["states"][1] == "active"


def test_a_sync_that_publishes_the_version_itself_is_not_published_again(miles):
    engines, manager, _ = make(version=None)
    engines.resize(add=(0,))
    assert ops(manager, "update_weight_version") == [] and manager.stats()["states"][0] == "active"


def test_sleep_is_the_real_shrink_engines_abort_drain_then_release(miles, monkeypatch):
    monkeypatch.setenv("RLIX_CONTROL_PLANE", "rlix")
    engines, manager, _ = make(states=("active",) * 4)
    assert engines.resize(remove=(0, 3)) == (1, 2)
    names = [op for op, _ in ops(manager)]
    # Routing closed, requests aborted and drained, generation paused (retract), then memory released.
    assert (
        names
        == ["unregister_from_router"] * 2
        + ["abort_all_requests"] * 2
        + ["is_idle"] * 2
        + ["pause_generation"] * 2
        + ["release_memory_occupation"] * 2
    )
    assert {kw["mode"] for op, _, kw in manager.log if op == "pause_generation"} == {"retract"}
    assert manager.stats()["states"] == {0: "offloaded", 1: "active", 2: "active", 3: "offloaded"}
    assert manager.stats()["resident_gb"][0] == 0.0


def test_dp_ranks_map_to_engine_indices_not_gpu_ids(miles):
    # DP rank r is served by engine table[r]; the GPU ids (here 4..7) never appear as indices.
    table = engine_table(ClusterSpec(1, (4, 5, 6, 7)), (3, 2, 1, 0), engine_count=4)
    engines, manager, sync = make(table=table)
    assert engines.resize(add=(0,)) == (0,)
    assert sync.calls == [(3,)] and manager.stats()["states"][3] == "active"
    assert engines.resize(add=(1,), remove=(0,)) == (1,)
    assert manager.stats()["states"] == {0: "offloaded", 1: "offloaded", 2: "active", 3: "offloaded"}


def test_idempotent_per_rank_although_the_real_shrink_would_release_twice(miles):
    engines, manager, sync = make()
    assert engines.resize(add=(0, 1)) == (0, 1)
    before = list(manager.log)
    assert engines.resize(add=(0, 1)) == (0, 1)  # waking awake engines: nothing happens
    assert engines.resize(remove=(2, 3)) == (0, 1)  # sleeping sleeping engines: nothing happens
    assert manager.log == before and sync.calls == [(0, 1)]
    assert engines.resize(remove=(0,), add=(1, 2)) == (1, 2)  # only what changes is touched
    assert sync.calls == [(0, 1), (2,)]
    # miles' shrink_engines does not refuse an offloaded engine: it would release it again.
    manager.log.clear()
    assert manager.shrink_engines([3]) == [3]
    assert ops(manager, "release_memory_occupation") == [("release_memory_occupation", 3)]


def test_shell_engine_is_a_clear_error_and_nothing_changes(miles):
    engines, manager, _ = make(states=("offloaded", "shell", "offloaded", "offloaded"))
    with pytest.raises(EngineStateError, match=r"DP rank 1 \(engine 1\): 'shell'.*never started.*Nothing was changed"):
        engines.resize(add=(0, 1))
    assert manager.log == [] and manager.stats()["states"][0] == "offloaded"


@pytest.mark.parametrize("between", ["loading", "disabling"])
def test_engine_between_states_is_a_clear_error_and_nothing_changes(miles, between):
    engines, manager, _ = make(states=("active", between, "offloaded", "offloaded"))
    with pytest.raises(EngineStateError, match=f"'{between}'.*between states.*Nothing was changed"):
        engines.resize(remove=(0,), add=(1, 2))
    assert manager.log == [] and manager.stats()["states"][0] == "active"


def test_ranks_out_of_range_change_nothing(miles):
    engines, manager, _ = make()
    with pytest.raises(ValueError, match=r"DP ranks 0\.\.3; got \[4\]"):
        engines.resize(add=(0, 4))
    assert manager.log == []


def test_a_wake_that_does_not_take_is_reported(miles):
    engines, manager, _ = make()
    manager.activate_routing = lambda engine_indices: list(engine_indices)  # claims success, changes nothing
    with pytest.raises(RuntimeError, match=r"after the wake of engines \[0\] miles reports \{0: 'loading'\}"):
        engines.resize(add=(0,))


def test_take_over_puts_every_awake_engine_to_sleep(miles):
    engines, manager, _ = make(states=("active", "offloaded", "active", "offloaded"))
    assert engines.take_over() == [0, 2]
    assert set(manager.stats()["states"].values()) == {"offloaded"}


def test_take_over_refuses_engines_it_cannot_manage(miles):
    engines, manager, _ = make(states=("active", "offloaded", "shell", "offloaded"))
    with pytest.raises(EngineStateError, match=r"cannot take over the engines: DP rank 2 \(engine 2\): 'shell'"):
        engines.take_over()
    assert manager.log == [] and manager.stats()["states"][0] == "active"


def test_engines_started_loading_are_refused_until_finish_init_offload(miles, monkeypatch):
    from .miles_manager import MilesRolloutManager, miles_args

    monkeypatch.setenv("MILES_INIT_DEFER_ADD_WORKER", "1")  # miles' deferred init: engines start 'loading'
    manager = MilesRolloutManager(miles_args())
    engines = MilesEngines(PIPELINE, ManagerProxy(manager, PIPELINE), (0, 1, 2, 3), Sync(manager))
    with pytest.raises(EngineStateError, match=r"MILES_INIT_DEFER_ADD_WORKER=1.*finish_init_offload\(\[0, 1, 2, 3\]\)"):
        engines.take_over()
    assert set(manager.stats()["states"].values()) == {"loading"}
    manager.finish_init_offload([0, 1, 2, 3])  # miles' init step: release and land them offloaded
    assert engines.take_over() == [] and set(manager.stats()["states"].values()) == {"offloaded"}
    assert engines.resize(add=(2,)) == (2,)


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


# -- GPU memory -------------------------------------------------------------------------------


def residual_calls(manager):
    return [(idx, kw) for op, idx, kw in manager.log if op == "log_post_sleep_residual_diagnostics"]


def test_the_post_sleep_threshold_reaches_the_real_shrink_engines(miles):
    engines, manager, _ = make(states=("active",) * 4, post_sleep_vram_threshold_gb=2.5)
    engines.resize(remove=(1, 2))
    assert residual_calls(manager) == [(1, {"threshold_gb": 2.5}), (2, {"threshold_gb": 2.5})]
    plain, plain_manager, _ = make(states=("active",) * 4)
    plain.resize(remove=(1,))
    assert residual_calls(plain_manager) == [], "no threshold configured: shrink_engines gets none"


def test_state_alone_passes_a_release_that_released_nothing_the_wake_check_catches_it(miles):
    check = FreeMemoryCheck(free_gb=lambda engines: manager.free_gb(engines), min_free_gb=60.0, wait_s=0.2, poll_s=0.05)
    engines, manager, sync = make(states=("active",) * 4, free_memory_check=check)
    manager.leak_on_release(1, 30.0)
    assert engines.resize(remove=(1,)) == (0, 2, 3)  # miles reports 'offloaded' though 30 GiB stayed
    assert manager.stats()["states"][1] == "offloaded" and manager.stats()["resident_gb"][1] == 30.0
    manager.log.clear()
    with pytest.raises(
        GpuMemoryError,
        match=r"cannot wake engines \[1\].*60\.00 GiB.*engine 1: 50\.00 GiB.*"
        r"Nothing was changed",
    ):
        engines.resize(add=(1,))
    assert manager.log == [] and sync.calls == [] and manager.stats()["states"][1] == "offloaded"


def test_the_wake_waits_for_memory_a_release_frees_late_and_checks_before_expand(miles):
    seen = []

    def free_gb(engine_indices):
        states = manager.get_engine_states(engine_indices)
        seen.append((engine_indices, set(states.values()), len(ops(manager, "resume_memory_occupation"))))
        return {e: 10.0 if len(seen) < 3 else 75.0 for e in engine_indices}  # freed on the third look

    engines, manager, _ = make(free_memory_check=FreeMemoryCheck(free_gb, min_free_gb=60.0, wait_s=10.0, poll_s=0.01))
    assert engines.resize(add=(0, 3)) == (0, 3)
    assert seen == [((0, 3), {"offloaded"}, 0)] * 3, "asked about exactly the engines to wake, before any expand"


def test_a_malformed_free_memory_answer_fails_the_wake_and_changes_nothing(miles):
    check = FreeMemoryCheck(free_gb=lambda engines: {0: 70.0}, min_free_gb=60.0, wait_s=0.0)
    engines, manager, _ = make(free_memory_check=check)
    with pytest.raises(GpuMemoryError, match=r"answered \{0: 70\.0\} for engines \[0, 1\].*KeyError"):
        engines.resize(add=(0, 1))
    assert manager.log == []


@pytest.mark.parametrize(
    ("field", "value"), [("min_free_gb", -1), ("wait_s", float("nan")), ("poll_s", 0), ("free_gb", "nvidia-smi")]
)
def test_bad_free_memory_options_name_the_value(field, value):
    options = {"free_gb": dict, "min_free_gb": 1.0, field: value}
    with pytest.raises(InvalidRequestError, match=f"FreeMemoryCheck.{field}"):
        FreeMemoryCheck(**options)


@pytest.mark.parametrize("value", [0, -2.0, float("inf"), "2", True])
def test_a_bad_post_sleep_threshold_names_the_value(miles, value):
    with pytest.raises(InvalidRequestError, match=f"post_sleep_vram_threshold_gb must be None or a number.*{value!r}"):
        make(post_sleep_vram_threshold_gb=value)
