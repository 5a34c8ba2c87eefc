"""miles' real fully-async rollout function (pinned ``generate_rollout_fully_async``), called by the
real ``call_rollout_fn`` from the RolloutManager, reporting through MilesRLixHooks to the local
scheduler: begin / one bump per group / end, in samples, keyed by the weight version the engines
serve (read from the router's ``/model_info``, as miles does).

The fully-async worker is a process-wide singleton that keeps generating between rollouts; each
test starts and stops its own.
"""

from __future__ import annotations

import sys
import threading

import pytest

from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.integrations.miles import install
from rlix_plugin.integrations.miles.hooks import held_hooks
from rlix_plugin.testing import HookRecorder

from ...waiting import wait_until
from .driver import seed_clusters
from .miles_manager import MilesRolloutManager, miles, miles_args  # skips the module without the pinned files

GROUPS, N, VERSION = 4, 3, 5
PROGRESS = ("rlix_begin_progress_batch", "rlix_bump_completed", "rlix_end_progress_batch")


@pytest.fixture(scope="module", autouse=True)
def miles_event_loop():
    """miles runs the fully-async worker on a process-wide event loop thread
    (``miles.utils.async_utils``) that a miles process ends by exiting; this module stops it."""
    yield
    async_utils = sys.modules.get("miles.utils.async_utils")
    holder = getattr(async_utils, "async_loop", None)
    if holder is not None:
        holder.loop.call_soon_threadsafe(holder.loop.stop)
        holder._thread.join(10)
        assert not holder._thread.is_alive(), "miles' event loop thread did not stop"
        holder.loop.close()
        async_utils.async_loop = None


@pytest.fixture
def scheduler():
    sched = LocalScheduler(4, 4, resize_timeout_s=10)
    yield sched
    sched.close()


@pytest.fixture
def fully_async(monkeypatch):
    """The pinned module with a fresh worker and a fresh weight-version cache."""
    module = miles.fully_async
    module.stop_global_worker()
    monkeypatch.setattr(module, "_cached_version", module._CachedWeightVersion())
    monkeypatch.setenv("RLIX_CONTROL_PLANE", "rlix")
    yield module
    module.stop_global_worker()


@pytest.fixture
def pipeline(scheduler, fully_async):
    """p1 installed on a RolloutManager whose rollout function is miles' fully-async one; its
    weight sync hands back VERSION, which the integration publishes with set_weight_version."""
    manager = MilesRolloutManager(miles_args(rollout_batch_size=GROUPS, n_samples_per_prompt=N, router=True))
    assert manager.generate_rollout is fully_async.generate_rollout_fully_async
    session = install(
        manager,
        pipeline_id="p1",
        clusters=seed_clusters((0, 1)),
        n_samples_per_prompt=N,
        rollout_batch_size=GROUPS,
        sync_weights=lambda engines: VERSION,
        backend="local",
        backend_options={"scheduler": scheduler},
        autoload=False,
        post_sleep_vram_threshold_gb=2.0,
    )
    recorder = HookRecorder(session.hooks.plugin_manager)
    yield session, manager, recorder
    recorder.close()
    session.close()
    manager.close()


def progress(recorder):
    return recorder.calls(*PROGRESS)


def settled(scheduler, session):
    backend = session.hooks.plugin_manager.get_plugin("rlix-backend")
    assert backend.flush_progress()
    return scheduler.snapshot()


def test_the_real_fully_async_rollout_reports_begin_bumps_and_end_in_samples(scheduler, pipeline):
    session, manager, recorder = pipeline
    events = []
    scheduler.service.add_listener(lambda event, _service: events.append(event) if event == "progress" else None)
    session.signal_rollout_demand(0)
    assert manager.routed_weight_version() == VERSION, "the woken engines were told the synced version"
    data = manager.generate(0)
    assert len(data) == GROUPS and all(len(group) == N for group in data)
    calls = progress(recorder)
    assert [c.name for c in calls] == [PROGRESS[0], *[PROGRESS[1]] * GROUPS, PROGRESS[2]]
    begin, *bumps, _end = calls
    # Groups became samples once: GROUPS x N, each bump N; all keyed by the version the router reports.
    assert (begin.step_target, begin.initial_completed, begin.target_weight_version) == (GROUPS * N, 0, VERSION)
    assert {(b.count, b.target_weight_version) for b in bumps} == {(N, VERSION)}
    snap = settled(scheduler, session)
    assert snap["open_demand"] == {} and snap["pipelines"]["p1"]["progress"] == [], "the end retired the rollout"
    assert len(events) >= 2, "begin and end reached the scheduler"


def test_the_fatal_path_of_the_real_fully_async_rollout_ends_the_batch(scheduler, pipeline):
    session, manager, recorder = pipeline
    manager.inject_fatal_group(1)  # one of the worker's first groups ends in EnginePreemptedError
    session.signal_rollout_demand(0)
    with pytest.raises(miles.base_types.EnginePreemptedError, match="preempted"):
        manager.generate(0)
    names = [c.name for c in progress(recorder)]
    assert names[0] == PROGRESS[0] and names[-1] == PROGRESS[2] and names.count(PROGRESS[1]) < GROUPS
    wait_until(lambda: settled(scheduler, session)["open_demand"] == {}, 10.0, "the fatal path's end retiring demand")

    manager.inject_fatal_group(None)
    recorder.clear()
    session.signal_rollout_demand(1)
    assert len(manager.generate(1)) == GROUPS, "the next rollout recovers"
    assert [c.name for c in progress(recorder)][-1] == PROGRESS[2]


def test_late_progress_of_the_real_rollout_cannot_retire_the_next_rollouts_demand(scheduler, pipeline, monkeypatch):
    """The race the rollout epoch closes, with the real fully-async rollout function: rollout 0's
    reports are held in delivery (a slow link from the RolloutManager's process) until rollout 1
    has signalled its demand. The signal does not wait for them, the session has told the hooks
    in the manager's process that rollout 1 is next, and when rollout 0's begin, count and end
    land they are ignored: rollout 1's demand stays open until rollout 1's own end."""
    session, manager, recorder = pipeline
    backend = session.hooks.plugin_manager.get_plugin("rlix-backend")
    gate, delivered = threading.Event(), []
    send = backend.port.send_progress

    def slow_link(lease, report):
        gate.wait(30)
        delivered.append(report)
        send(lease, report)

    monkeypatch.setattr(backend.port, "send_progress", slow_link)
    session.signal_rollout_demand(0)
    assert held_hooks(manager).rollout_id == 0
    assert len(manager.generate(0)) == GROUPS
    assert [c.rollout_id for c in progress(recorder)] == [0] * (GROUPS + 2), "every call of rollout 0 carries 0"
    assert progress(recorder)[-1].name == PROGRESS[2]

    session.signal_rollout_demand(1)  # returns while rollout 0's reports are still held back
    assert delivered == [] and not gate.is_set()
    assert held_hooks(manager).rollout_id == 1, "the session told the manager's hooks"
    assert scheduler.snapshot()["open_demand"] == {"p1": GROUPS * N}

    gate.set()
    wait_until(lambda: any(r.kind == "end" for r in delivered), 10.0, "rollout 0's late end to be delivered")
    snap = settled(scheduler, session)
    assert {r.rollout_id for r in delivered} == {0}
    assert snap["open_demand"] == {"p1": GROUPS * N}, "rollout 0's late end did not retire rollout 1's demand"
    assert snap["pipelines"]["p1"]["progress"] == [], "nor did its late begin open a stream"

    recorder.clear()
    assert len(manager.generate(1)) == GROUPS
    assert {c.rollout_id for c in progress(recorder)} == {1}
    assert settled(scheduler, session)["open_demand"] == {}, "rollout 1's own end retires it"
