"""The miles integration across Ray processes, with the real scheduler actor behind the hooks.

One local Ray cluster for the module (4 logical GPUs, 2 CPUs). Each RolloutManager (the pinned
engine state machine and call_rollout_fn, :mod:`.miles_manager`) is a Ray actor created as rlix
creates it: no ``max_concurrency``, so it runs one call at a time. ``install`` sends it the hooks
(pickled), reads them back in its process, and starts the engine thread there; the rollout
function reports progress straight to the scheduler actor. The rlix actors are reset before each
test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from ray import cloudpickle  # noqa: E402

from rlix_plugin import Hooks, connect, get_plugin_manager  # noqa: E402
from rlix_plugin.hookspecs import (  # noqa: E402
    ACTOR_INFER,
    ACTOR_TRAIN,
    ClusterSpec,
    InvalidRequestError,
    PipelineGoneError,
    Priority,
    SchedulerTimeoutError,
)
from rlix_plugin.integrations.miles import (  # noqa: E402
    HooksNotInstalledError,
    HooksNotPassedError,
    MilesRLixHooks,
    MilesSession,
    MilesSurfaceError,
    install,
)
from rlix_plugin.integrations.miles.rollout_path import FULLY_ASYNC  # noqa: E402
from rlix_plugin.ray.names import NAMESPACE, ORCHESTRATOR_NAME, SCHEDULER_NAME  # noqa: E402

from ... import waiting  # noqa: E402
from . import driver, miles_fork, miles_manager, rollouts, train_loop  # noqa: E402  (skips without the pinned files)
from .driver import GROUPS, ROLLOUTS, TRAIN, N, check_runs, run_pipeline, seed_clusters  # noqa: E402

POOL = {"num_gpus": 4, "gpus_per_node": 4}
BACKEND = {"backend": "ray", "backend_options": POOL, "autoload": False}
#: The RolloutManager as rlix's drivers start it: RLIX_CONTROL_PLANE=rlix in its environment, and no
#: max_concurrency (one call at a time). Its process imports the pinned miles files.
MANAGER_OPTIONS = {"num_cpus": 0, "runtime_env": miles_fork.runtime_env({"RLIX_CONTROL_PLANE": "rlix"})}
WAIT_S = 30.0
#: Test-local modules travel by value: Ray workers cannot import the tests package.
BY_VALUE = (driver, miles_manager, rollouts, train_loop, sys.modules[__name__])


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    for module in BY_VALUE:
        cloudpickle.register_pickle_by_value(module)
    ray.init(
        num_cpus=2,
        num_gpus=4,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
        object_store_memory=80 * 1024 * 1024,
    )
    try:
        yield
    finally:
        ray.shutdown()
        for module in BY_VALUE:
            cloudpickle.unregister_pickle_by_value(module)


class GateActor:
    """Opened once by the test; rollouts wait on it (test plumbing)."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def _opened(self) -> asyncio.Event:
        if self._event is None:  # made on the actor's event loop
            self._event = asyncio.Event()
        return self._event

    async def wait(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._opened().wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def is_open(self) -> bool:
        return self._opened().is_set()

    async def open(self) -> None:
        self._opened().set()


class Gate:
    """``args.gate``: holds a rollout open from outside the RolloutManager, whose own calls queue
    behind the running ``generate``."""

    def __init__(self) -> None:
        self.handle = ray.remote(GateActor).options(num_cpus=0).remote()

    def wait_open(self, timeout_s: float) -> bool:
        return ray.get(self.handle.wait.remote(timeout_s), timeout=timeout_s + WAIT_S)

    def is_open(self) -> bool:
        return ray.get(self.handle.is_open.remote(), timeout=WAIT_S)

    def open(self) -> None:
        ray.get(self.handle.open.remote(), timeout=WAIT_S)


def wait_until(predicate, timeout_s, what):
    """:func:`tests.waiting.wait_until`, polling every 0.02 s: predicates here make actor calls."""
    return waiting.wait_until(predicate, timeout_s, what, interval_s=0.02)


def _actor(name):
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def reset_rlix():
    """Kill what an earlier test left of the rlix actors and wait until their names are free."""
    for name in (SCHEDULER_NAME, ORCHESTRATOR_NAME):
        handle = _actor(name)
        if handle is not None:
            ray.kill(handle, no_restart=True)
    wait_until(lambda: _actor(SCHEDULER_NAME) is None and _actor(ORCHESTRATOR_NAME) is None, WAIT_S, "rlix actors gone")


@pytest.fixture
def rlix():
    reset_rlix()
    yield connect(**POOL)
    reset_rlix()


@pytest.fixture
def managers():
    """Start RolloutManager actors; every one is killed at teardown."""
    started = []

    def start(pid="p1", cls=miles_manager.MilesRolloutManager, generate=True, options=None, env=None, **extra):
        extra.setdefault("rollout_function_path", driver.ROLLOUT_FUNCTION)
        args = miles_manager.miles_args(
            pipeline_id=pid,
            seed=driver.SEEDS.get(pid, 5),
            rollout_batch_size=GROUPS,
            n_samples_per_prompt=N,
            generate=generate,
            **extra,
        )
        actor_options = {**MANAGER_OPTIONS, **(options or {})}
        if env:
            actor_options["runtime_env"] = miles_fork.runtime_env({"RLIX_CONTROL_PLANE": "rlix", **env})
        handle = ray.remote(cls).options(**actor_options).remote(args, None)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        ray.kill(handle)


@pytest.fixture
def service():
    """rlix's model update service: its own actor, so a weight sync never queues behind generate."""
    handle = ray.remote(miles_manager.ModelUpdateServiceStandIn).options(num_cpus=0).remote()
    yield handle
    ray.kill(handle)


def sync_through(service):
    def sync_weights(engines):
        ray.get(
            service.sync_selected_workers.remote(sync_id=None, target_engine_indices=frozenset(engines), version=0),
            timeout=WAIT_S,
        )
        return None  # the service published the version itself

    return sync_weights


def install_ray(manager, pid="p1", train=None, sync=None, **extra):
    extra.setdefault("post_sleep_vram_threshold_gb", 2.0)
    return install(
        manager,
        pipeline_id=pid,
        clusters=seed_clusters(train or TRAIN.get(pid, (0, 1))),
        n_samples_per_prompt=N,
        rollout_batch_size=GROUPS,
        sync_weights=sync or (lambda engines: None),
        **BACKEND,
        **extra,
    )


def stats(manager):
    return ray.get(manager.stats.remote(), timeout=WAIT_S)


# -- install ----------------------------------------------------------------------------------


def test_install_on_an_actor_is_read_back_in_its_process(rlix, managers, caplog):
    caplog.set_level(logging.WARNING)
    manager = managers(generate=False)
    session = install_ray(manager)
    try:
        probe = session.installation.probe
        assert probe["process_id"] != os.getpid(), "verified where miles calls the hooks, not here"
        assert (probe["backend"], probe["registered"], probe["control_plane"]) == ("ray", True, "rlix")
        assert probe["live"] == ["rlix_begin_progress_batch", "rlix_bump_completed", "rlix_end_progress_batch"]
        assert probe["rollout"]["takes_hooks"] and probe["rollout"]["function"].endswith("generate_rollout_on_policy")
        channel = session.installation.manager.channel
        assert channel.where["process_id"] == probe["process_id"], "the engine thread runs in the manager's process"
        seen = stats(manager)
        assert (seen["hooks"], seen["set_hooks_calls"]) == ("MilesRLixHooks", 1)
        assert set(seen["states"].values()) == {"offloaded"}, "awake engines were put to sleep at install"
        assert rlix.is_registered("p1")
        assert not [r for r in caplog.records if "rlix" in r.getMessage()]
    finally:
        session.close()
    wait_until(lambda: stats(manager)["hooks"] is None, WAIT_S, "close uninstalling the hooks")
    wait_until(lambda: channel.where["thread"] not in threads(manager), WAIT_S, "close ending the engine thread")


def threads(manager):
    return ray.get(manager.__ray_call__.remote(lambda _self: [t.name for t in threading.enumerate()]), timeout=WAIT_S)


def test_engine_calls_through_the_thread_raise_miles_errors_and_nothing_else_passes(rlix, managers):
    manager = managers(generate=False)
    session = install_ray(manager)
    try:
        channel = session.installation.manager.channel
        assert channel.where["thread"] in threads(manager)
        with pytest.raises(KeyError, match="unknown engine_index 9"):  # miles' own error, re-raised here
            channel.call("get_engine_states", [9], timeout_s=WAIT_S)
        with pytest.raises(ValueError, match="'hold' is not an engine call"):
            channel.call("hold", 30, timeout_s=WAIT_S)
        assert channel.call("get_engine_states", [0], timeout_s=WAIT_S) == {0: "offloaded"}
    finally:
        session.close()


def test_an_actor_without_set_rlix_hooks_is_a_clear_error(rlix, managers):
    with pytest.raises(MilesSurfaceError, match=r"Ray actor\) has no set_rlix_hooks"):
        install_ray(managers(cls=miles_manager.ManagerWithoutSeam))
    assert not rlix.is_registered("p1")


def test_an_actor_whose_set_rlix_hooks_keeps_nothing_is_caught(rlix, managers):
    manager = managers(cls=miles_manager.ForgetfulManager, generate=False)
    with pytest.raises(HooksNotInstalledError, match="holds None, not the hooks just installed"):
        install_ray(manager)
    assert not rlix.is_registered("p1")
    wait_until(lambda: stats(manager)["set_hooks_calls"] == 2, WAIT_S, "the hooks, then their withdrawal")


def test_the_rollout_path_is_judged_in_the_managers_process(rlix, managers):
    # The switch is set in the actor's environment only: a check made here would miss it.
    assert "MILES_EXPERIMENTAL_ROLLOUT_REFACTOR" not in os.environ
    manager = managers(generate=False, env={"MILES_EXPERIMENTAL_ROLLOUT_REFACTOR": "1"})
    with pytest.raises(
        HooksNotPassedError, match="experimental rollout path.*Unset MILES_EXPERIMENTAL_ROLLOUT_REFACTOR"
    ):
        install_ray(manager)
    assert not rlix.is_registered("p1")
    with pytest.raises(HooksNotPassedError, match="generate_rollout_without_hooks.*no rlix_hooks parameter"):
        install_ray(managers(generate=False, rollout_function_path=rollouts.generate_rollout_without_hooks))


def test_a_busy_rollout_manager_times_out_with_the_likely_cause(rlix, managers):
    manager = managers(generate=False)  # one call at a time, as rlix creates it
    manager.hold.remote(30)  # the fixture kills the actor at teardown
    started = time.monotonic()
    with pytest.raises(
        TimeoutError,
        match=r"RolloutManager.serve_engine_calls did not answer within 1s.*one call at "
        r"a time: is a rollout or a weight sync running",
    ):
        install_ray(manager, timeout_s=1.0)
    assert time.monotonic() - started < 10.0
    assert not rlix.is_registered("p1"), "a failed install leaves nothing registered"


def test_the_local_backend_cannot_serve_an_actor(rlix, managers):
    with pytest.raises(InvalidRequestError, match="Ray actor but the session uses the 'local' backend"):
        install(
            managers(generate=False),
            pipeline_id="p1",
            clusters=seed_clusters((0, 1)),
            n_samples_per_prompt=N,
            rollout_batch_size=GROUPS,
            sync_weights=lambda e: 0,
            backend="local",
            backend_options={"num_gpus": 4, "gpus_per_node": 4},
            autoload=False,
        )


# -- miles' rollout function against the scheduler -------------------------------------------


def progress_of(client, pid):
    return client.snapshot()["pipelines"][pid]["progress"]


def test_rollout_function_progress_reaches_the_scheduler_on_every_path(rlix, managers):
    """begin / bump per group / end from the RolloutManager's process; end on success and on the
    fatal path; no end on another error, and the next rollout recovers."""
    manager = managers()
    session = install_ray(manager, train=(0, 1, 2, 3))
    try:
        session.signal_rollout_demand(0)
        assert len(ray.get(manager.generate.remote(0), timeout=WAIT_S)) == GROUPS
        wait_until(lambda: rlix.snapshot()["progress_reports"].get("p1", 0) >= 2, WAIT_S, "begin and end reported")
        wait_until(lambda: rlix.snapshot()["open_demand"] == {}, WAIT_S, "the end retiring the open demand")

        # Another error after one group: no end, so the stream stays open at the scheduler, in samples.
        ray.get(manager.inject_failure.remote(1, "other", 1), timeout=WAIT_S)
        session.signal_rollout_demand(1)
        with pytest.raises(ray.exceptions.RayTaskError, match="unexpected failure"):
            ray.get(manager.generate.remote(1), timeout=WAIT_S)
        stream = wait_until(
            lambda: [s for s in progress_of(rlix, "p1") if s["completed"] == N], WAIT_S, "the accepted group reported"
        )[0]
        assert stream["step_target"] == GROUPS * N
        assert rlix.snapshot()["open_demand"] == {"p1": GROUPS * N}

        # The next rollout's demand retires the stale stream; a fatal error then still ends the batch.
        ray.get(manager.inject_failure.remote(2, "fatal", 2), timeout=WAIT_S)
        session.signal_rollout_demand(2)
        with pytest.raises(ray.exceptions.RayTaskError, match="preempted for good"):
            ray.get(manager.generate.remote(2), timeout=WAIT_S)
        wait_until(
            lambda: rlix.snapshot()["open_demand"] == {} and progress_of(rlix, "p1") == [],
            WAIT_S,
            "the fatal path's end retiring the demand",
        )

        session.signal_rollout_demand(3)
        assert len(ray.get(manager.generate.remote(3), timeout=WAIT_S)) == GROUPS
    finally:
        session.close()


def test_the_real_fully_async_rollout_in_the_actor_reports_to_the_scheduler_actor(rlix, managers):
    """miles' own rollout function, run by the real call_rollout_fn in the RolloutManager actor:
    its batch reaches the scheduler actor in samples, keyed by the version the woken engines were
    given (published by the integration, read back by miles from the router's /model_info)."""
    gate = Gate()  # while closed, every group comes back aborted and is recycled: the batch stays open
    manager = managers(generate=False, router=True, gate=gate, rollout_function_path=FULLY_ASYNC)
    session = install_ray(manager, sync=lambda engines: 5)
    try:
        session.signal_rollout_demand(0)
        rollout = manager.generate.remote(0)
        (stream,) = wait_until(lambda: progress_of(rlix, "p1"), WAIT_S, "the rollout's begin at the scheduler")
        assert (stream["step_target"], stream["completed"], stream["target_weight_version"]) == (GROUPS * N, 0, 5)
        gate.open()
        data = ray.get(rollout, timeout=WAIT_S)
        assert len(data) == GROUPS and all(len(group) == N for group in data)
        wait_until(
            lambda: rlix.snapshot()["open_demand"] == {} and progress_of(rlix, "p1") == [],
            WAIT_S,
            "the end retiring the rollout",
        )
    finally:
        session.close()


def test_a_preemption_during_a_rollout_reaches_the_engines_at_concurrency_one(rlix, managers):
    """The RolloutManager runs one call at a time and is busy in generate; another pipeline's
    training takes two of its GPUs. The shrink goes through the engine thread, not the actor's
    queue: the training is granted while the rollout is still running (otherwise it would wait for
    a rollout that waits for it), and the rollout then finishes on the engines it kept."""
    gate = Gate()
    manager = managers(gate=gate, sample_seconds=0.05)
    session = install_ray(manager, train=(2, 3))
    hog = Hooks(get_plugin_manager("ray", backend_options=POOL, autoload=False))
    hog.register_pipeline(
        pipeline_id="hog", clusters={ACTOR_INFER: ClusterSpec(1, (0, 1, 2, 3)), ACTOR_TRAIN: ClusterSpec(2, (0, 1))}
    )
    try:
        grant = session.signal_rollout_demand(0)
        assert {0, 1} <= set(grant.dp_ranks), grant
        rollout = manager.generate.remote(0)
        wait_until(lambda: progress_of(rlix, "p1"), WAIT_S, "the rollout's begin at the scheduler")
        train = hog.request_gpus(
            pipeline_id="hog", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=WAIT_S
        )
        assert train.gpus == (0, 1)
        assert ray.wait([rollout], timeout=0)[0] == [], "granted while the rollout was still running"
        # Read through the engine thread too: the actor itself is still busy in generate.
        states = session.installation.manager.call("get_engine_states", [0, 1, 2, 3], timeout_s=WAIT_S)
        assert (states[0], states[1]) == ("offloaded", "offloaded") and "active" in (states[2], states[3])
        gate.open()
        data = ray.get(rollout, timeout=WAIT_S)
        assert len(data) == GROUPS and {s.weight_version for group in data for s in group} == {0}
        assert rlix.is_registered("p1"), "not fenced"
        wait_until(lambda: rlix.snapshot()["open_demand"] == {}, WAIT_S, "the end retiring the open demand")
        # miles' own shrink ran on engine 0: routing closed, abort, drain, pause (retract), release, residual.
        assert [op for op, index in stats(manager)["ops"] if index == 0][-6:] == [
            "unregister_from_router",
            "abort_all_requests",
            "is_idle",
            "pause_generation",
            "release_memory_occupation",
            "log_post_sleep_residual_diagnostics",
        ]
    finally:
        hog.release(pipeline_id="hog", cluster=ACTOR_TRAIN)
        hog.unregister_pipeline(pipeline_id="hog")
        session.close()


def test_progress_calls_return_at_once_when_the_scheduler_is_gone(caplog):
    reset_rlix()  # no scheduler anywhere
    caplog.set_level(logging.WARNING)
    hooks = MilesRLixHooks("p1", N, backend="ray", backend_options={**POOL, "create_if_missing": False}, autoload=False)
    hooks.set_rollout(0)
    started = time.monotonic()
    hooks.begin_progress_batch(0, 100, 0)
    for _ in range(100):
        hooks.bump_completed(target_weight_version=0)
    hooks.end_progress_batch()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"progress calls took {elapsed:.2f}s with no scheduler"
    backend = hooks.front_end.plugin_manager.get_plugin("rlix-backend")
    assert backend.flush_progress(WAIT_S)
    lost = [r for r in caplog.records if r.levelno == logging.WARNING and "progress signal lost" in r.getMessage()]
    assert len(lost) == 1, [r.getMessage() for r in lost]  # once for the batch, not once per call
    assert _actor(SCHEDULER_NAME) is None, "the hooks never start a scheduler of their own"


def test_demand_timeout_names_who_holds_the_gpus(rlix, managers):
    hog = Hooks(get_plugin_manager("ray", backend_options=POOL, autoload=False))
    hog.register_pipeline(
        pipeline_id="hog",
        clusters={ACTOR_INFER: ClusterSpec(1, (0, 1, 2, 3)), ACTOR_TRAIN: ClusterSpec(4, (0, 1, 2, 3))},
    )
    hog.request_gpus(pipeline_id="hog", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=WAIT_S)
    session = install_ray(managers(generate=False), demand_timeout_s=1.0)
    try:
        with pytest.raises(SchedulerTimeoutError, match="not granted within 1.0s") as info:
            session.signal_rollout_demand(0)
        assert "hog" in info.value.diagnostic and "p1" in info.value.diagnostic
    finally:
        session.close()
        hog.unregister_pipeline(pipeline_id="hog")


# -- end to end ---------------------------------------------------------------------------------


def run_seed(rlix, managers, service, *, with_install):
    handles = {pid: managers(pid) for pid in TRAIN}
    sessions = {}
    try:
        for pid, handle in handles.items():
            if with_install:
                sessions[pid] = install_ray(handle, pid, sync=sync_through(service))
            else:
                sessions[pid] = MilesSession(
                    pipeline_id=pid,
                    clusters=seed_clusters(TRAIN[pid]),
                    n_samples_per_prompt=N,
                    rollout_batch_size=GROUPS,
                    **BACKEND,
                )
                sessions[pid].register()

        def publisher(handle):
            async def publish(state):
                return await handle.publish_weights.remote(state)

            return publish

        def progress_count(pid):
            return lambda: rlix.snapshot()["progress_reports"].get(pid, 0)

        async def main():
            return await asyncio.wait_for(
                asyncio.gather(
                    *(
                        run_pipeline(
                            sessions[pid],
                            handles[pid],
                            publish=publisher(handles[pid]),
                            progress_count=progress_count(pid),
                        )
                        for pid in TRAIN
                    )
                ),
                timeout=90,
            )

        return asyncio.run(main()), handles
    finally:
        for session in sessions.values():
            session.close()


def test_two_miles_pipelines_complete_the_seed_scenario(rlix, managers, service):
    records, handles = run_seed(rlix, managers, service, with_install=True)
    check_runs(records)
    for record in records:
        # Progress came from the RolloutManager actor's process to the scheduler, every rollout.
        seen = record.progress_seen
        assert len(seen) == ROLLOUTS and seen[0] >= 2 and seen == sorted(seen) and seen[-1] > seen[0], seen
    woken = []
    for handle in handles.values():
        ops = [op for op, _ in stats(handle)["ops"]]
        assert ops.count("release_memory_occupation") >= ROLLOUTS, "training preempted its GPUs' engines"
        assert "update_weight_version" not in ops, "the service published the versions, once"
        woken += [i for op, i in stats(handle)["ops"] if op == "resume_memory_occupation"]
    synced = ray.get(service.synced.remote(), timeout=WAIT_S)
    assert sorted(i for engines, _ in synced for i in engines) == sorted(woken), "every wake went through the sync"
    snap = rlix.snapshot()
    assert snap["pipelines"] == {} and snap["open_demand"] == {} and snap["idle_gpus"] == [0, 1, 2, 3]


def test_the_same_run_without_install_fails_loudly_at_the_first_rollout(rlix, managers, service):
    started = time.monotonic()
    with pytest.raises(HooksNotInstalledError, match="rollout 0 refused.*NoOpRLixHooks"):
        run_seed(rlix, managers, service, with_install=False)
    assert time.monotonic() - started < 15.0
    assert rlix.snapshot()["pipelines"] == {}


def test_a_driver_bypassing_the_integration_is_fenced_at_the_first_wake(rlix):
    hooks = Hooks(get_plugin_manager("ray", backend_options=POOL, autoload=False))
    hooks.register_pipeline(pipeline_id="p1", clusters=seed_clusters((0, 1)))
    try:
        started = time.monotonic()
        with pytest.raises(PipelineGoneError, match="hooks were never installed"):
            hooks.signal_demand(pipeline_id="p1", rollout_id=0, step_target=GROUPS * N, timeout_s=WAIT_S)
        assert time.monotonic() - started < 10.0
    finally:
        hooks.unregister_pipeline(pipeline_id="p1")
