"""The watchdog fires on a stall (open demand, no awake engine) longer than the limit, and only then."""

from __future__ import annotations

import threading

import pytest

from rlix_plugin.reference.harness.status import PipelineStatus
from rlix_plugin.reference.harness.watchdog import Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_stall_accounting_follows_demand_and_awake_engines():
    clock = Clock()
    status = PipelineStatus("p", rollouts=1, samples_per_rollout=1, dp_size=2, clock=clock)
    status.demand(True)
    clock.now = 2.0
    assert status.stall_seconds() == 2.0
    status.engines((0,))
    assert status.stall_seconds() == 0.0 and status.view().max_stall_s == 2.0
    status.engines(())
    clock.now = 2.5
    status.demand(False)  # no demand: waiting without engines is no stall
    clock.now = 10.0
    assert status.stall_seconds() == 0.0 and status.view().max_stall_s == 2.0


def test_fires_once_naming_only_the_stalled_pipeline():
    clock = Clock()
    busy = PipelineStatus("busy", 1, 1, 1, clock=clock)
    stuck = PipelineStatus("stuck", 1, 1, 1, clock=clock)
    busy.demand(True)
    busy.engines((0,))
    stuck.demand(True)
    fired = threading.Event()
    calls = []

    def on_stall(names):
        calls.append(names)
        fired.set()

    watchdog = Watchdog({"busy": busy, "stuck": stuck}, stall_timeout_s=3.0, on_stall=on_stall)
    watchdog.start()
    try:
        clock.now = 2.9
        assert watchdog.check() == []
        clock.now = 3.1
        assert fired.wait(5.0)
    finally:
        watchdog.stop()
    assert calls == [["stuck"]] and watchdog.fired == ["stuck"]


def test_rejects_a_non_positive_limit():
    with pytest.raises(ValueError):
        Watchdog({}, 0, lambda names: None)
