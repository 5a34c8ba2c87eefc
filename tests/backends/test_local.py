"""The ``local`` backend through the hooks, with pipelines in threads as a framework runs them."""

from __future__ import annotations

import threading
import time

import pytest

from rlix_plugin import Hooks, get_plugin_manager, hookimpl
from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.hookspecs import (
    ACTOR_INFER,
    ACTOR_TRAIN,
    ClusterSpec,
    InvalidRequestError,
    NotPipelineOwnerError,
    PipelineGoneError,
    Priority,
    SchedulerTimeoutError,
    SchedulerUnavailableError,
)

from ..waiting import project_threads, wait_until_ended


class Engines:
    def __init__(self, pipeline_id):
        self.pipeline_id = pipeline_id
        self.awake = set()
        self.changed = threading.Condition()

    @hookimpl
    def rlix_resize_infer(self, pipeline_id, dp_ranks_to_remove, dp_ranks_to_add):
        if pipeline_id != self.pipeline_id:
            return None
        with self.changed:
            self.awake -= set(dp_ranks_to_remove)
            self.awake |= set(dp_ranks_to_add)
            self.changed.notify_all()
            return tuple(sorted(self.awake))

    def wait_awake(self, timeout_s):
        """Block until an engine is awake (the peer's training may preempt mine mid-rollout;
        the scheduler must wake one again)."""
        with self.changed:
            if not self.changed.wait_for(lambda: self.awake, timeout_s):
                raise AssertionError(f"{self.pipeline_id}: no engine awake for {timeout_s}s")


@pytest.fixture
def scheduler():
    sched = LocalScheduler(4, 4, resize_timeout_s=5)
    yield sched
    sched.close()


def pipeline(scheduler, pid, train, engines=True):
    pm = get_plugin_manager("local", backend_options={"scheduler": scheduler}, autoload=False)
    eng = Engines(pid)
    if engines:
        pm.register(eng, name=f"engines-{pid}")
    hooks = Hooks(pm)
    hooks.register_pipeline(
        pipeline_id=pid, clusters={ACTOR_INFER: ClusterSpec(1, (0, 1, 2, 3)), ACTOR_TRAIN: ClusterSpec(2, train)}
    )
    return hooks, eng


def test_progress_reaches_the_scheduler_and_end_retires_demand(scheduler):
    hooks, _ = pipeline(scheduler, "p1", (0, 1))
    backend = hooks.plugin_manager.get_plugin("rlix-backend")
    hooks.signal_demand(pipeline_id="p1", rollout_id=0, step_target=10, timeout_s=5)
    hooks.begin_progress_batch(pipeline_id="p1", rollout_id=0, step_target=10, target_weight_version=2)
    for _ in range(4):
        hooks.bump_completed(pipeline_id="p1", rollout_id=0, target_weight_version=2)
    assert backend.flush_progress()
    snap = scheduler.snapshot()
    assert snap["pipelines"]["p1"]["progress"] == [
        {"mode": "full", "adapter_id": None, "completed": 4, "step_target": 10, "target_weight_version": 2}
    ]
    assert snap["open_demand"] == {"p1": 10}
    hooks.end_progress_batch(pipeline_id="p1", rollout_id=0)
    assert backend.flush_progress()
    assert scheduler.snapshot()["open_demand"] == {}, "the last stream's end retires the demand"


def test_seed_scenario_through_the_hooks_in_threads(scheduler):
    results, errors = {}, []

    def run(pid, train):
        try:
            hooks, engines = pipeline(scheduler, pid, train)
            for rollout in range(5):
                grant = hooks.signal_demand(pipeline_id=pid, rollout_id=rollout, step_target=6, timeout_s=10)
                assert grant.scheduled and grant.dp_ranks
                hooks.begin_progress_batch(pipeline_id=pid, rollout_id=rollout, step_target=6)
                for _ in range(6):
                    engines.wait_awake(5.0)
                    hooks.bump_completed(pipeline_id=pid, rollout_id=rollout)
                hooks.end_progress_batch(pipeline_id=pid, rollout_id=rollout)
                train_grant = hooks.request_gpus(
                    pipeline_id=pid, cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=10
                )
                try:
                    assert not engines.awake & set(train_grant.gpus), "training GPUs still have my engines"
                finally:
                    hooks.release(pipeline_id=pid, cluster=ACTOR_TRAIN)
                results[pid] = rollout + 1
            hooks.release(pipeline_id=pid, cluster=ACTOR_INFER)
            hooks.unregister_pipeline(pipeline_id=pid)
        except Exception as exc:  # surfaced below
            errors.append((pid, exc))

    threads = [threading.Thread(target=run, args=a) for a in (("p1", (0, 1)), ("p2", (2, 3)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert results == {"p1": 5, "p2": 5}
    assert scheduler.snapshot()["idle_gpus"] == [0, 1, 2, 3]


def test_pipeline_without_supply_side_fails_loudly(scheduler):
    hooks, _ = pipeline(scheduler, "p1", (0, 1), engines=False)
    start = time.monotonic()
    with pytest.raises(PipelineGoneError, match="hooks were never installed"):
        hooks.signal_demand(pipeline_id="p1", rollout_id=0, step_target=4, timeout_s=10)
    assert time.monotonic() - start < 5


def test_bad_input_is_refused_through_the_hooks(scheduler):
    hooks, _ = pipeline(scheduler, "p1", (0, 1))
    with pytest.raises(InvalidRequestError, match="step_target must be an int >= 1, got -3"):
        hooks.signal_demand(pipeline_id="p1", rollout_id=0, step_target=-3, timeout_s=5)
    with pytest.raises(NotPipelineOwnerError, match="pipeline 'ghost' was not registered through this local backend"):
        hooks.request_gpus(pipeline_id="ghost", cluster=ACTOR_TRAIN, priority=1, timeout_s=5)
    with pytest.raises(InvalidRequestError, match="already registered"):
        pipeline(scheduler, "p1", (0, 1))
    assert scheduler.snapshot()["open_demand"] == {}


def test_default_scheduler_reads_the_environment(monkeypatch, own_process_wide_scheduler):
    monkeypatch.setenv("RLIX_LOCAL_GPUS", "six")
    with pytest.raises(InvalidRequestError, match="RLIX_LOCAL_GPUS"):
        get_plugin_manager("local", autoload=False)
    monkeypatch.setenv("RLIX_LOCAL_GPUS", "6")
    monkeypatch.setenv("RLIX_LOCAL_GPUS_PER_NODE", "2")
    first = get_plugin_manager("local", autoload=False).backend.port
    second = get_plugin_manager("local", autoload=False).backend.port
    assert first.scheduler is second.scheduler, "one process-wide scheduler"
    assert first.scheduler.snapshot()["pool"] == {"num_gpus": 6, "gpus_per_node": 2}


def test_scheduler_timeout_keeps_its_diagnostic_through_the_local_backend(scheduler):
    hooks, _ = pipeline(scheduler, "p1", (0, 1))
    other, _ = pipeline(scheduler, "p2", (2, 3))
    hooks.request_gpus(pipeline_id="p1", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=5)
    other.request_gpus(pipeline_id="p2", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=5)
    with pytest.raises(SchedulerTimeoutError) as caught:
        hooks.signal_demand(pipeline_id="p1", rollout_id=0, step_target=4, timeout_s=0.3)
    assert "p1_actor_infer was not granted within 0.3s" in str(caught.value)
    assert "p1_actor_train: [0, 1]" in caught.value.diagnostic


def test_a_backend_with_a_scheduler_of_its_own_closes_it_and_leaves_no_thread():
    before = project_threads()
    pm = get_plugin_manager("local", backend_options={"num_gpus": 2, "gpus_per_node": 2}, autoload=False)
    pm.register(Engines("p1"), name="engines-p1")
    hooks = Hooks(pm)
    hooks.register_pipeline(pipeline_id="p1", clusters={ACTOR_INFER: ClusterSpec(1, (0, 1))})
    grant = hooks.signal_demand(pipeline_id="p1", rollout_id=0, step_target=4, timeout_s=5)
    assert grant.dp_ranks, "a resize ran on the backend's own scheduler"
    hooks.begin_progress_batch(pipeline_id="p1", rollout_id=0, step_target=4)
    hooks.bump_completed(pipeline_id="p1", rollout_id=0, count=4)
    scheduler = pm.backend.port.scheduler
    pm.backend.close()
    assert scheduler.service.state.pipelines == {}, "closing unregistered the pipeline"
    with pytest.raises(SchedulerUnavailableError, match="closed"):
        scheduler.snapshot()
    wait_until_ended(project_threads() - before, 10.0, "the backend's threads to end after close")


def test_a_backend_on_a_shared_scheduler_leaves_it_running(scheduler):
    hooks, _ = pipeline(scheduler, "p1", (0, 1))
    hooks.plugin_manager.backend.close()
    assert "p1" not in scheduler.snapshot()["pipelines"], "the scheduler still answers, without p1"


def test_the_process_wide_scheduler_is_closed_at_exit():
    """Its loop thread must not outlive the program into the interpreter's teardown."""
    import subprocess
    import sys

    program = (
        "import atexit\n"
        "from rlix_plugin import get_plugin_manager\n"
        "from rlix_plugin.backends import local\n"
        "pm = get_plugin_manager('local', autoload=False)\n"
        "scheduler = pm.backend.port.scheduler\n"
        "assert scheduler is local.default_scheduler()\n"
        "atexit._run_exitfuncs()\n"
        "print('closed' if scheduler._closed and not scheduler._thread.is_alive() else 'running')\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["closed"]


def test_a_closed_scheduler_ends_its_loop_and_its_workers(tmp_path):
    """With a state file its writes run on the loop's worker threads: closing ends those too, and
    a call after close says the scheduler is closed."""
    before = set(threading.enumerate())
    sched = LocalScheduler(4, 4, state_path=tmp_path / "state.db")
    hooks, _ = pipeline(sched, "p1", (0, 1))
    hooks.signal_demand(pipeline_id="p1", rollout_id=0, step_target=4, timeout_s=5)
    hooks.plugin_manager.backend.close()
    sched.close()
    assert sched.loop.is_closed()
    wait_until_ended(set(threading.enumerate()) - before, 10.0, "the scheduler's threads to end after close")
    with pytest.raises(SchedulerUnavailableError, match="closed"):
        sched.call_soon(print, "never")
    with pytest.raises(SchedulerUnavailableError, match="closed"):
        sched.snapshot()
