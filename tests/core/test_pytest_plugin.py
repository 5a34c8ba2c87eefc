"""The shipped pytest plugin, used the way a framework's test suite uses it (via pytester)."""

from __future__ import annotations

TEST_FILE = """
from rlix_plugin import hookimpl

class MyScheduler:
    @hookimpl
    def rlix_request_gpus(self, pipeline_id, cluster):
        from rlix_plugin.hookspecs import Grant
        return Grant(pipeline_id, cluster, gpus=(7,), scheduled=True)

def test_inline_plugin_answers(rlix_hooks, rlix_register, rlix_recorder):
    rlix_register(MyScheduler(), name="mine")
    grant = rlix_hooks.request_gpus(pipeline_id="p", cluster="actor_train", priority=1)
    assert grant.gpus == (7,)
    call = rlix_recorder.getcall("request_gpus")
    assert call.pipeline_id == "p" and call.result.gpus == (7,)
    assert call.implementations[0] == "mine"

def test_next_test_gets_a_fresh_manager(rlix_pm):
    assert not rlix_pm.has_plugin("mine")
    assert [n for n, _ in rlix_pm.list_name_plugin()] == ["rlix-noop"]

def test_recorder_sees_noop_calls_in_order(rlix_hooks, rlix_recorder):
    rlix_hooks.begin_progress_batch(pipeline_id="p", rollout_id=0, step_target=4)
    rlix_hooks.bump_completed(pipeline_id="p", rollout_id=0)
    rlix_hooks.end_progress_batch(pipeline_id="p", rollout_id=0)
    rlix_recorder.assert_order("begin_progress_batch", "bump_completed", "end_progress_batch")
"""


def test_fixtures_work_in_a_framework_suite(pytester):
    pytester.makepyfile(test_framework=TEST_FILE)
    # Loaded through the installed pytest11 entry point, as in a framework's own suite.
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=3)


def test_recorder_order_assertion_names_the_missing_hook(rlix_hooks, rlix_recorder):
    rlix_hooks.end_progress_batch(pipeline_id="p", rollout_id=0)
    rlix_hooks.begin_progress_batch(pipeline_id="p", rollout_id=0, step_target=4)
    try:
        rlix_recorder.assert_order("end_progress_batch", "begin_progress_batch", "end_progress_batch")
    except AssertionError as exc:
        assert "missing from 'rlix_end_progress_batch'" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("assert_order accepted a wrong order")
