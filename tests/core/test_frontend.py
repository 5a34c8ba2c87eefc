"""The typed front end: keyword-only calls, clear errors, and the hot-path guard."""

from __future__ import annotations

import pytest

from rlix_plugin import Hooks, get_plugin_manager, hookimpl


class Counter:
    def __init__(self):
        self.count = 0

    @hookimpl
    def rlix_bump_completed(self, count):
        self.count += count


def test_positional_arguments_are_rejected(rlix_hooks):
    with pytest.raises(TypeError, match="bump_completed"):
        rlix_hooks.bump_completed("p1", 1)
    with pytest.raises(TypeError, match="request_gpus"):
        rlix_hooks.request_gpus("p1", "actor_train", 1)


def test_unknown_and_missing_arguments_are_rejected(rlix_hooks):
    with pytest.raises(TypeError, match="unexpected keyword argument 'pipeline'"):
        rlix_hooks.bump_completed(pipeline="p1")
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'step_target'"):
        rlix_hooks.signal_demand(pipeline_id="p1", rollout_id=0)


def test_guard_follows_register_and_unregister(rlix_pm, rlix_hooks):
    counter = Counter()
    rlix_hooks.bump_completed(pipeline_id="p", rollout_id=0, count=3)  # only the no-op: skipped
    assert rlix_hooks._bump is None
    rlix_pm.register(counter, name="counter")
    rlix_hooks.bump_completed(pipeline_id="p", rollout_id=0, count=3)
    assert counter.count == 3
    rlix_pm.unregister(name="counter")
    rlix_hooks.bump_completed(pipeline_id="p", rollout_id=0, count=3)
    assert counter.count == 3
    assert rlix_hooks._bump is None


def test_monitoring_disables_the_guard(rlix_pm, rlix_hooks, rlix_recorder):
    rlix_hooks.bump_completed(pipeline_id="p", rollout_id=0, count=2)
    assert rlix_recorder.getcall("bump_completed").count == 2
    rlix_recorder.close()
    assert rlix_hooks._bump is None


def test_front_ends_do_not_keep_a_manager_alive_needlessly():
    pm = get_plugin_manager(autoload=False)
    hooks = Hooks(pm)
    assert hooks in set(pm._listeners)
    del hooks
    import gc

    gc.collect()
    assert len(pm._listeners) == 0
