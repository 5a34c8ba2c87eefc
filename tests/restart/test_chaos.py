"""Chaos on the demo: the seed scenario of the reference framework on the Ray backend (what
``rlix-plugin demo --backend ray`` runs), with the scheduler actor's process SIGKILLed once in the
middle of a resize and three more times. Both pipelines finish every rollout, and the trace
recorded from the framework side never shows a GPU held by two owners."""

from __future__ import annotations

import threading
import time

import pytest

ray = pytest.importorskip("ray")

from rlix_plugin import connect  # noqa: E402
from rlix_plugin.hookspecs import RlixError  # noqa: E402
from rlix_plugin.reference.harness.runner import RunOptions, execute  # noqa: E402
from rlix_plugin.scenario import bundled_scenario  # noqa: E402
from rlix_plugin.testing.chaos import SchedulerKiller  # noqa: E402

from ..ray.support import INIT_OPTIONS, reset_rlix  # noqa: E402

KILLS = 3


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(**INIT_OPTIONS)
    reset_rlix()
    yield
    reset_rlix()
    ray.shutdown()


def chaos(killer_box: dict, done: threading.Event, errors: list[BaseException]) -> None:
    """Once the run's pipelines are registered: one kill in the middle of a resize, then
    ``KILLS`` more, a moment apart."""
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = connect(create_if_missing=False)
                if len(client.describe()["pipelines"]) == 2:
                    break
            except RlixError:
                pass
            if time.monotonic() > deadline or done.is_set():
                raise TimeoutError("the run's pipelines never registered")
            time.sleep(0.05)
        killer = killer_box["killer"] = SchedulerKiller(client)
        killer.kill_mid_resize()
        for _ in range(KILLS):
            if done.wait(0.5):
                return
            killer.kill()
    except BaseException as exc:  # the test asserts there was none
        errors.append(exc)


def test_the_demo_rides_through_scheduler_kills_with_no_gpu_held_twice():
    scenario = bundled_scenario("seed")
    killer_box: dict = {}
    done = threading.Event()
    errors: list[BaseException] = []
    thread = threading.Thread(target=chaos, args=(killer_box, done, errors), daemon=True)
    thread.start()
    try:
        result = execute(
            scenario,
            RunOptions(backend="ray", time_scale=1.0, stall_timeout_s=30.0, timeout_s=240.0, resize_timeout_s=20.0),
        )
    finally:
        done.set()
        thread.join(90)
    assert not errors, errors
    kills = killer_box["killer"].kills
    assert len(kills) >= 1 + KILLS, f"the run ended after {len(kills)} kill(s): make it longer"
    assert any(k.in_doubt for k in kills), "one kill came in the middle of a resize"
    assert result.ok, (result.errors, result.stalled, result.diagnostic)
    for name, config in ((p.name, p) for p in scenario.pipelines):
        assert result.pipelines[name].rollouts_completed == config.rollouts, name
    assert result.recorder.double_holds == [], result.recorder.double_holds[:5]
    # Every GPU changed hands over the run (the trace is not empty) and ends idle.
    assert len({h for f in result.recorder.frames for h in f.holders if h}) > 2
    snap = connect(create_if_missing=False).snapshot()
    assert snap["pipelines"] == {} and snap["idle_gpus"] == [0, 1, 2, 3]
