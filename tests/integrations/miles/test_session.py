"""install and the session on the local backend, with the RolloutManager held as a plain object:
the wiring is verified, a forgotten install fails at the first rollout, and two miles-shaped
pipelines complete the seed scenario."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from rlix_plugin import RlixHooks, get_plugin_manager
from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    ACTOR_TRAIN,
    ClusterSpec,
    InvalidRequestError,
    PipelineGoneError,
    Priority,
    SchedulerTimeoutError,
)
from rlix_plugin.integrations.miles import (
    LOGGER_NAME,
    EngineStateError,
    HooksNotInstalledError,
    MilesRLixHooks,
    MilesSession,
    MilesSurfaceError,
    install,
)

from .driver import GROUPS, N, ROLLOUTS, TRAIN, LocalCalls, check_runs, run_pipeline, seed_clusters
from .standins import ForgetfulManager, ManagerWithoutSeam, RolloutManagerStandIn, miles_args


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


def manager_for(pid="p1", generate=False, cls=RolloutManagerStandIn, states=None, **extra):
    args = miles_args(pipeline_id=pid, seed={"p1": 3, "p2": 4}.get(pid, 5), rollout_batch_size=GROUPS,
                      n_samples_per_prompt=N, generate=generate, initial_engine_states=states, **extra)
    return cls(args, None)


def install_local(manager, scheduler, pid="p1", **extra):
    return install(manager, pipeline_id=pid, clusters=seed_clusters(TRAIN.get(pid, (0, 1))), n_samples_per_prompt=N,
                   rollout_batch_size=GROUPS, sync_weights=lambda engines: manager.sync_selected_workers(list(engines)),
                   **options(scheduler), **extra)


def test_install_sets_hooks_once_reads_them_back_and_sleeps_awake_engines(scheduler, control_plane, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    manager = manager_for()  # miles starts its engines active
    session = install_local(manager, scheduler)
    assert isinstance(manager._rlix_hooks, MilesRLixHooks) and manager.set_hooks_calls == 1
    assert manager._rlix_hooks.token == session.installation.probe["token"]
    assert session.installation.probe["registered"] is True
    assert set(manager.stats()["states"].values()) == {"offloaded"}, "the scheduler starts with none awake"
    assert session.hooks.plugin_manager.has_plugin("rlix-miles-engines-p1")
    assert "p1" in scheduler.snapshot()["pipelines"]
    assert any("hooks installed" in r.getMessage() and "verified" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    session.close()


def test_a_manager_without_set_rlix_hooks_is_a_clear_error(scheduler):
    with pytest.raises(MilesSurfaceError, match="has no set_rlix_hooks"):
        install_local(ManagerWithoutSeam(), scheduler)
    assert scheduler.snapshot()["pipelines"] == {}, "nothing stays registered"


def test_a_set_rlix_hooks_that_keeps_nothing_is_caught_by_the_read_back(scheduler, control_plane):
    manager = manager_for(cls=ForgetfulManager)
    with pytest.raises(HooksNotInstalledError, match="holds None, not the hooks just installed"):
        install_local(manager, scheduler)
    assert manager.set_hooks_calls == 1
    assert scheduler.snapshot()["pipelines"] == {}


def test_engine_count_must_match_the_dp_ranks(scheduler):
    manager = manager_for(rollout_num_gpus=2)
    with pytest.raises(InvalidRequestError, match="2 engines but actor_infer has 4 DP ranks"):
        install_local(manager, scheduler)
    assert manager._rlix_hooks is None and manager.timeline == []


def test_a_shell_engine_fails_the_install(scheduler):
    with pytest.raises(EngineStateError, match="'shell'.*finish_init_offload"):
        install_local(manager_for(states=["offloaded", "offloaded", "shell", "offloaded"]), scheduler)
    assert scheduler.snapshot()["pipelines"] == {}


def test_missing_control_plane_in_the_manager_process_is_warned(scheduler, monkeypatch, caplog):
    monkeypatch.delenv("RLIX_CONTROL_PLANE", raising=False)
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    install_local(manager_for(), scheduler).close()
    assert any("RLIX_CONTROL_PLANE" in r.getMessage() and "retract" in r.getMessage() for r in caplog.records)


def test_forgotten_install_refuses_demand_at_once(scheduler):
    session = MilesSession(pipeline_id="p1", clusters=seed_clusters((0, 1)), n_samples_per_prompt=N,
                           rollout_batch_size=GROUPS, **options(scheduler))
    session.register()
    started = time.monotonic()
    with pytest.raises(HooksNotInstalledError, match="never installed on its miles RolloutManager.*install"):
        session.signal_rollout_demand(0)
    assert time.monotonic() - started < 1.0
    assert scheduler.snapshot()["open_demand"] == {}, "no demand was written"
    session.close()


def test_without_the_supply_plugin_the_scheduler_fences_the_first_wake(scheduler):
    # A driver that skips this integration and calls the hooks directly: nobody owns the engines.
    hooks = RlixHooks(get_plugin_manager("local", backend_options={"scheduler": scheduler}, autoload=False))
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
    session.signal_rollout_demand(1)  # default: rollout_batch_size groups
    assert scheduler.snapshot()["open_demand"] == {"p1": GROUPS * N}
    session.close()


def hog_all_gpus(scheduler):
    """Another pipeline whose training holds all four GPUs."""
    hog = RlixHooks(get_plugin_manager("local", backend_options={"scheduler": scheduler}, autoload=False))
    hog.register_pipeline(pipeline_id="hog", clusters={ACTOR_INFER: ClusterSpec(1, (0, 1, 2, 3)),
                                                       ACTOR_TRAIN: ClusterSpec(4, (0, 1, 2, 3))})
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


def run_seed(scheduler, *, with_install: bool):
    """Two miles-shaped pipelines on the seed topology, 5 rollouts each, in one event loop."""
    progress_events = []
    scheduler.service.add_listener(lambda event, _service: progress_events.append(event) if event == "progress" else None)
    managers = {pid: manager_for(pid, generate=True) for pid in TRAIN}
    sessions = {}
    try:
        for pid, manager in managers.items():
            if with_install:
                sessions[pid] = install_local(manager, scheduler, pid)
            else:
                sessions[pid] = MilesSession(pipeline_id=pid, clusters=seed_clusters(TRAIN[pid]),
                                             n_samples_per_prompt=N, rollout_batch_size=GROUPS, **options(scheduler))
                sessions[pid].register()

        def publisher(manager):
            async def publish(state):
                return await asyncio.to_thread(manager.publish_weights, state)
            return publish

        async def main():
            return await asyncio.wait_for(asyncio.gather(*(
                run_pipeline(sessions[pid], LocalCalls(managers[pid]), publish=publisher(managers[pid]))
                for pid in TRAIN
            )), timeout=60)

        return asyncio.run(main()), managers, progress_events
    finally:
        for session in sessions.values():
            session.close()
        for manager in managers.values():
            manager.close()


def test_two_miles_pipelines_complete_the_seed_scenario(scheduler, control_plane):
    records, managers, progress_events = run_seed(scheduler, with_install=True)
    check_runs(records)
    # Progress from the rollout functions reached the scheduler (begin, coalesced bumps, end).
    assert len(progress_events) >= 2 * 2 * ROLLOUTS
    for manager in managers.values():
        shrinks = [op for op, _ in manager.stats()["timeline"] if op == "release_memory_occupation"]
        assert len(shrinks) >= ROLLOUTS, "training preempted the engines on its GPUs every rollout"
    snap = scheduler.snapshot()
    assert snap["pipelines"] == {} and snap["open_demand"] == {} and snap["idle_gpus"] == [0, 1, 2, 3]


def test_the_same_run_without_install_fails_loudly_at_the_first_rollout(scheduler):
    started = time.monotonic()
    with pytest.raises(HooksNotInstalledError, match="rollout 0 refused"):
        run_seed(scheduler, with_install=False)
    assert time.monotonic() - started < 10.0
    assert scheduler.snapshot()["pipelines"] == {}
