"""install and the session on the local backend, with miles' RolloutManager (the pinned engine state
machine and call_rollout_fn) held as a plain object: the wiring is verified, setups whose hooks
cannot reach the rollout function are refused, a forgotten install fails at the first rollout,
and two miles pipelines complete the seed scenario."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from rlix_plugin import Hooks, get_plugin_manager
from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    ACTOR_TRAIN,
    ClusterSpec,
    InvalidRequestError,
    PipelineGoneError,
    PipelineLimits,
    Priority,
    SchedulerTimeoutError,
    SchedulerUnavailableError,
)
from rlix_plugin.integrations.miles import (
    LOGGER_NAME,
    EngineStateError,
    FreeMemoryCheck,
    HooksNotInstalledError,
    HooksNotPassedError,
    MilesRLixHooks,
    MilesSession,
    MilesSurfaceError,
    install,
)
from rlix_plugin.scheduler.plan import BATCHED_BETWEEN_ROLLOUTS

from ...waiting import project_threads, wait_until_ended
from .driver import GROUPS, ROLLOUT_FUNCTION, ROLLOUTS, TRAIN, LocalCalls, N, check_runs, run_pipeline, seed_clusters
from .miles_manager import (
    ForgetfulManager,
    ManagerWithoutSeam,
    MilesRolloutManager,
    ModelUpdateServiceStandIn,
    miles_args,
)
from .rollouts import generate_rollout_without_hooks


@pytest.fixture
def scheduler():
    sched = LocalScheduler(4, 4, resize_timeout_s=10)
    yield sched
    sched.close()


@pytest.fixture
def control_plane(monkeypatch):
    """The RolloutManager's process runs with RLIX_CONTROL_PLANE=rlix (here: this process)."""
    monkeypatch.setenv("RLIX_CONTROL_PLANE", "rlix")


def options(scheduler):
    return {"backend": "local", "backend_options": {"scheduler": scheduler}, "autoload": False}


def manager_for(pid="p1", generate=False, cls=MilesRolloutManager, rollout_function=ROLLOUT_FUNCTION, **extra):
    args = miles_args(
        pipeline_id=pid,
        seed={"p1": 3, "p2": 4}.get(pid, 5),
        rollout_batch_size=GROUPS,
        n_samples_per_prompt=N,
        generate=generate,
        rollout_function_path=rollout_function,
        **extra,
    )
    return cls(args, None)


#: GPU memory verified as a miles run should: threshold to miles, free memory before a wake.
def memory_checks(manager):
    return {
        "post_sleep_vram_threshold_gb": 2.0,
        "free_memory_check": FreeMemoryCheck(free_gb=manager.free_gb, min_free_gb=60.0, wait_s=5.0),
    }


def install_local(manager, scheduler, pid="p1", service=None, **extra):
    service = service or ModelUpdateServiceStandIn()

    def sync_weights(engines):
        # rlix's service publishes the version itself: nothing to return for the integration to publish.
        service.sync_selected_workers(sync_id=None, target_engine_indices=frozenset(engines), version=0)
        return None

    extra = {**memory_checks(manager), **extra}
    return install(
        manager,
        pipeline_id=pid,
        clusters=seed_clusters(TRAIN.get(pid, (0, 1))),
        n_samples_per_prompt=N,
        rollout_batch_size=GROUPS,
        sync_weights=sync_weights,
        **options(scheduler),
        **extra,
    )


def test_install_sets_hooks_once_reads_them_back_and_sleeps_awake_engines(scheduler, control_plane, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    manager = manager_for()  # miles starts its engines active
    session = install_local(manager, scheduler)
    assert isinstance(manager._rlix_hooks, MilesRLixHooks) and manager.set_hooks_calls == 1
    assert manager._rlix_hooks.token == session.installation.probe["token"]
    assert session.installation.probe["registered"] is True
    rollout = session.installation.probe["rollout"]
    assert (rollout["function"], rollout["takes_hooks"], rollout["experimental"]) == (
        f"{ROLLOUT_FUNCTION.__module__}.generate_rollout_on_policy",
        True,
        False,
    )
    assert rollout["call_rollout_fn_takes_hooks"] is True, "the real call_rollout_fn, read in the manager's process"
    assert set(manager.stats()["states"].values()) == {"offloaded"}, "the scheduler starts with none awake"
    assert session.installation.manager.channel is None, "a plain object needs no engine channel"
    assert session.hooks.plugin_manager.has_plugin("rlix-miles-engines-p1")
    assert "p1" in scheduler.snapshot()["pipelines"]
    assert any("hooks installed" in r.getMessage() and "verified" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    session.close()


def test_upstream_miles_without_set_rlix_hooks_is_a_clear_error(scheduler):
    with pytest.raises(MilesSurfaceError, match="has no set_rlix_hooks.*predates the rlix hook seam"):
        install(
            ManagerWithoutSeam(),
            pipeline_id="p1",
            clusters=seed_clusters((0, 1)),
            n_samples_per_prompt=N,
            rollout_batch_size=GROUPS,
            sync_weights=lambda engines: None,
            **options(scheduler),
        )
    assert scheduler.snapshot()["pipelines"] == {}, "nothing stays registered"


def test_a_rollout_function_without_rlix_hooks_is_refused_with_the_fix(scheduler, control_plane):
    manager = manager_for(rollout_function=generate_rollout_without_hooks)
    with pytest.raises(
        HooksNotPassedError,
        match=r"never hand the hooks to its rollout function.*"
        r"generate_rollout_without_hooks.*no rlix_hooks parameter.*"
        r"generate_rollout_fully_async",
    ):
        install_local(manager, scheduler)
    assert scheduler.snapshot()["pipelines"] == {}
    assert manager._rlix_hooks is None and manager.set_hooks_calls == 0 and manager.log == [], "nothing changed"
    assert set(manager.stats()["states"].values()) == {"active"}


def test_miles_experimental_rollout_path_is_refused_with_the_fix(scheduler, control_plane, monkeypatch):
    monkeypatch.setenv("MILES_EXPERIMENTAL_ROLLOUT_REFACTOR", "1")
    manager = manager_for()  # miles reads the switch once, at construction
    monkeypatch.delenv("MILES_EXPERIMENTAL_ROLLOUT_REFACTOR")
    with pytest.raises(
        HooksNotPassedError, match="experimental rollout path.*Unset MILES_EXPERIMENTAL_ROLLOUT_REFACTOR"
    ):
        install_local(manager, scheduler)
    assert scheduler.snapshot()["pipelines"] == {} and manager.set_hooks_calls == 0 and manager.log == []


def test_a_threshold_miles_cannot_take_is_refused_before_anything_changes(scheduler, control_plane):
    class OlderManager(MilesRolloutManager):
        def shrink_engines(self, engine_indices):  # a miles before post_sleep_vram_threshold_gb
            return super().shrink_engines(engine_indices)

    manager = manager_for(cls=OlderManager)
    with pytest.raises(
        MilesSurfaceError,
        match=r"shrink_engines takes no post_sleep_vram_threshold_gb \(its "
        r"parameters: \['engine_indices'\]\)",
    ):
        install_local(manager, scheduler)
    assert set(manager.stats()["states"].values()) == {"active"} and manager.log == []
    install_local(manager, scheduler, post_sleep_vram_threshold_gb=None).close()  # without one it installs


def test_a_set_rlix_hooks_that_keeps_nothing_is_caught_by_the_read_back(scheduler, control_plane):
    manager = manager_for(cls=ForgetfulManager)
    with pytest.raises(HooksNotInstalledError, match="holds None, not the hooks just installed"):
        install_local(manager, scheduler)
    assert manager.set_hooks_calls == 2, "the hooks, then None as the failed install withdrew them"
    assert scheduler.snapshot()["pipelines"] == {}


def test_engine_count_must_match_the_dp_ranks(scheduler):
    manager = manager_for(rollout_num_gpus=2)
    with pytest.raises(InvalidRequestError, match="2 engines but actor_infer has 4 DP ranks"):
        install_local(manager, scheduler)
    assert manager._rlix_hooks is None and manager.log == []


def registered_limits(scheduler, pid="p1"):
    return scheduler.read(lambda: scheduler.service.state.limits[pid])


def test_install_declares_the_engines_batch_in_samples(scheduler, control_plane):
    # 8 samples per engine: with groups of N samples that is 8 // N groups, but the scheduler's
    # step_target is in samples (the session multiplies groups by N), so 8 crosses unconverted.
    session = install_local(manager_for(), scheduler, samples_per_engine=8)
    assert session.limits == PipelineLimits(samples_per_engine=8)
    assert registered_limits(scheduler) == PipelineLimits(samples_per_engine=8)
    session.close()


def test_without_samples_per_engine_install_declares_one_sample_per_engine(scheduler, control_plane):
    session = install_local(manager_for(), scheduler)
    assert registered_limits(scheduler) == PipelineLimits(samples_per_engine=1)
    session.close()


@pytest.mark.parametrize("value", [0, -2, True, 2.0, "8"])
def test_a_bad_samples_per_engine_is_refused_before_anything_is_registered(scheduler, value):
    manager = manager_for()
    with pytest.raises(InvalidRequestError, match=rf"samples_per_engine must be an int >= 1, got {value!r}"):
        install_local(manager, scheduler, samples_per_engine=value)
    assert scheduler.snapshot()["pipelines"] == {}
    assert manager._rlix_hooks is None and manager.log == [], "the manager was not touched"


def test_a_shell_engine_fails_the_install(scheduler):
    with pytest.raises(EngineStateError, match="'shell'.*finish_init_offload"):
        install_local(manager_for(shell_engines=[2]), scheduler)
    assert scheduler.snapshot()["pipelines"] == {}


def test_missing_control_plane_in_the_manager_process_is_warned(scheduler, monkeypatch, caplog):
    monkeypatch.delenv("RLIX_CONTROL_PLANE", raising=False)
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    install_local(manager_for(), scheduler).close()
    assert any("RLIX_CONTROL_PLANE" in r.getMessage() and "retract" in r.getMessage() for r in caplog.records)


def test_memory_judged_by_engine_state_alone_is_warned(scheduler, control_plane, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    install_local(manager_for(), scheduler, post_sleep_vram_threshold_gb=None, free_memory_check=None).close()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "engine state alone" in warning and "post_sleep_vram_threshold_gb" in warning


def test_forgotten_install_refuses_demand_at_once(scheduler):
    session = MilesSession(
        pipeline_id="p1",
        clusters=seed_clusters((0, 1)),
        n_samples_per_prompt=N,
        rollout_batch_size=GROUPS,
        **options(scheduler),
    )
    session.register()
    started = time.monotonic()
    with pytest.raises(HooksNotInstalledError, match="never installed on its miles RolloutManager.*install"):
        session.signal_rollout_demand(0)
    assert time.monotonic() - started < 1.0
    assert scheduler.snapshot()["open_demand"] == {}, "no demand was written"
    session.close()


def test_without_the_supply_plugin_the_scheduler_fences_the_first_wake(scheduler):
    # A driver that skips this integration and calls the hooks directly: nobody owns the engines.
    hooks = Hooks(get_plugin_manager("local", backend_options={"scheduler": scheduler}, autoload=False))
    hooks.register_pipeline(pipeline_id="p1", clusters=seed_clusters((0, 1)))
    started = time.monotonic()
    with pytest.raises(PipelineGoneError, match="hooks were never installed"):
        hooks.signal_demand(pipeline_id="p1", rollout_id=0, step_target=16, timeout_s=30)
    assert time.monotonic() - started < 5.0


def test_signal_rollout_demand_converts_groups_and_wakes_an_engine(scheduler, control_plane):
    manager = manager_for()
    session = install_local(manager, scheduler)
    grant = session.signal_rollout_demand(0, 3)
    assert grant.dp_ranks and scheduler.snapshot()["open_demand"] == {"p1": 3 * N}
    awake = [i for i, s in manager.stats()["states"].items() if s == "active"]
    assert sorted(awake) == sorted(grant.dp_ranks)
    calls = manager.stats()["calls"]
    assert [kw for op, _, kw in calls if op == "log_post_sleep_residual_diagnostics"][:1] == [{"threshold_gb": 2.0}], (
        "the install-time sleep handed miles the threshold"
    )
    session.signal_rollout_demand(1)  # default: rollout_batch_size groups
    assert scheduler.snapshot()["open_demand"] == {"p1": GROUPS * N}
    session.close()


def hog_all_gpus(scheduler):
    """Another pipeline whose training holds all four GPUs."""
    hog = Hooks(get_plugin_manager("local", backend_options={"scheduler": scheduler}, autoload=False))
    hog.register_pipeline(
        pipeline_id="hog",
        clusters={ACTOR_INFER: ClusterSpec(1, (0, 1, 2, 3)), ACTOR_TRAIN: ClusterSpec(4, (0, 1, 2, 3))},
    )
    hog.request_gpus(pipeline_id="hog", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=5)
    return hog


def test_demand_that_cannot_be_met_times_out_instead_of_hanging(scheduler, control_plane):
    # (The diagnostic it carries is checked on the ray backend, in test_ray.py.)
    hog_all_gpus(scheduler)
    session = install_local(manager_for(), scheduler, demand_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(SchedulerTimeoutError):
        session.signal_rollout_demand(0)
    assert time.monotonic() - started < 7.0
    session.close()


def test_async_demand_keeps_the_event_loop_running(scheduler, control_plane):
    hog = hog_all_gpus(scheduler)
    session = install_local(manager_for(), scheduler, demand_timeout_s=20)

    async def release_hog_later():
        # Runs on the same loop as the waiting demand: it can only get here if the wait does not
        # block the loop. Without the release the demand would time out.
        for _ in range(20):
            await asyncio.sleep(0.005)
        await asyncio.to_thread(hog.release, pipeline_id="hog", cluster=ACTOR_TRAIN)

    async def main():
        demand = asyncio.ensure_future(session.signal_rollout_demand_async(0))
        await release_hog_later()
        return await demand

    grant = asyncio.run(main())
    assert grant.dp_ranks and grant.waited_s > 0
    session.close()


def test_close_gives_everything_back_and_is_idempotent(scheduler, control_plane):
    manager = manager_for()
    session = install_local(manager, scheduler)
    session.signal_rollout_demand(0)
    assert session.close() is None and session.close() is None
    snap = scheduler.snapshot()
    assert snap["pipelines"] == {} and snap["open_demand"] == {} and snap["idle_gpus"] == [0, 1, 2, 3]
    assert manager._rlix_hooks is None, "uninstalled"
    assert set(manager.stats()["states"].values()) == {"offloaded"}, "releasing actor_infer slept its engines"
    assert not session.hooks.plugin_manager.has_plugin("rlix-miles-engines-p1")


def test_close_ends_the_backend_the_session_built_and_its_own_scheduler(control_plane):
    """A session built from a backend name owns that backend: closing the session stops its
    threads and the scheduler made for it; the closed session cannot register again."""
    before = project_threads()
    manager = manager_for()
    session = install(
        manager,
        pipeline_id="p1",
        clusters=seed_clusters(TRAIN["p1"]),
        n_samples_per_prompt=N,
        rollout_batch_size=GROUPS,
        sync_weights=lambda engines: None,
        backend="local",
        backend_options={"num_gpus": 4, "gpus_per_node": 4},
        autoload=False,
        **memory_checks(manager),
    )
    session.signal_rollout_demand(0)
    own = session.hooks.plugin_manager.backend.port.scheduler
    assert session.close() is None
    with pytest.raises(SchedulerUnavailableError, match="closed"):
        own.snapshot()
    wait_until_ended(project_threads() - before, 10.0, "the session's threads to end after close")
    with pytest.raises(InvalidRequestError, match="session is closed"):
        session.register()


def run_seed(scheduler, *, with_install: bool, **install_extra):
    """Two miles-shaped pipelines on the seed topology, 5 rollouts each, in one event loop
    (``install_extra``: more keywords of ``install``)."""
    progress_events = []
    scheduler.service.add_listener(
        lambda event, _service: progress_events.append(event) if event == "progress" else None
    )
    managers = {pid: manager_for(pid, generate=True) for pid in TRAIN}
    services = {pid: ModelUpdateServiceStandIn() for pid in TRAIN}
    sessions = {}
    try:
        for pid, manager in managers.items():
            if with_install:
                sessions[pid] = install_local(manager, scheduler, pid, service=services[pid], **install_extra)
            else:
                sessions[pid] = MilesSession(
                    pipeline_id=pid,
                    clusters=seed_clusters(TRAIN[pid]),
                    n_samples_per_prompt=N,
                    rollout_batch_size=GROUPS,
                    **options(scheduler),
                )
                sessions[pid].register()

        def publisher(manager):
            async def publish(state):
                return await asyncio.to_thread(manager.publish_weights, state)

            return publish

        async def main():
            return await asyncio.wait_for(
                asyncio.gather(
                    *(
                        run_pipeline(sessions[pid], LocalCalls(managers[pid]), publish=publisher(managers[pid]))
                        for pid in TRAIN
                    )
                ),
                timeout=60,
            )

        return asyncio.run(main()), managers, progress_events, services
    finally:
        for session in sessions.values():
            session.close()
        for manager in managers.values():
            manager.close()


def test_two_miles_pipelines_complete_the_seed_scenario(scheduler, control_plane):
    records, managers, progress_events, services = run_seed(scheduler, with_install=True)
    check_runs(records)
    # Progress from the rollout functions reached the scheduler (begin, coalesced bumps, end).
    assert len(progress_events) >= 2 * 2 * ROLLOUTS
    for pid, manager in managers.items():
        ops = [op for op, _ in manager.stats()["ops"]]
        assert ops.count("release_memory_occupation") >= ROLLOUTS, "training preempted the engines on its GPUs"
        # Every wake went through the weight sync, and the sync published the version (not the integration).
        woken = sorted(i for op, i in manager.stats()["ops"] if op == "resume_memory_occupation")
        assert sorted(i for engines, _ in services[pid].synced() for i in engines) == woken
        assert "update_weight_version" not in ops
    snap = scheduler.snapshot()
    assert snap["pipelines"] == {} and snap["open_demand"] == {} and snap["idle_gpus"] == [0, 1, 2, 3]


def test_batched_miles_pipelines_complete_the_seed_scenario(scheduler, control_plane):
    # Engines declared batched: the scheduler counts their running samples as not queued and
    # puts them to sleep between rollouts; both pipelines still finish every rollout.
    records, _, _, _ = run_seed(scheduler, with_install=True, samples_per_engine=4)
    check_runs(records)
    reasons = {decision["reason"] for decision in scheduler.decisions()}
    assert BATCHED_BETWEEN_ROLLOUTS in reasons, "the declared batch reached the planner"
    assert scheduler.snapshot()["pipelines"] == {}


def test_the_same_run_without_install_fails_loudly_at_the_first_rollout(scheduler):
    started = time.monotonic()
    with pytest.raises(HooksNotInstalledError, match="rollout 0 refused"):
        run_seed(scheduler, with_install=False)
    assert time.monotonic() - started < 10.0
    assert scheduler.snapshot()["pipelines"] == {}
