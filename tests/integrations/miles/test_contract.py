"""The surfaces miles defines, checked against what this integration and its test stand-ins offer.

The signatures below are written down from miles' sources (shared/reference/miles-contract.md);
when ``miles`` is importable the same checks run against its real protocol and ``call_rollout_fn``.
"""

from __future__ import annotations

import inspect
import pickle

import pytest

from rlix_plugin.integrations.miles import MilesRLixHooks

from . import standins

#: miles/utils/rlix_hooks.py, RLixHooks (the four methods miles calls).
PROTOCOL = {
    "begin_progress_batch": "(self, target_weight_version: int, step_target_groups: int, initial_completed: int, "
                            "*, mode: str | None = None, adapter_id: str | None = None) -> None",
    "bump_completed": "(self, *, target_weight_version: int) -> None",
    "end_progress_batch": "(self) -> None",
    "report_preempt": "(self, engine_index: int, worker_url: str) -> None",
}

#: miles/ray/rollout.py, RolloutManager methods the integration calls (parameter lists only:
#: miles annotates few of them).
MANAGER = {
    "set_rlix_hooks": "(self, hooks)",
    "get_engine_count": "(self)",
    "get_engine_states": "(self, engine_indices)",
    "shrink_engines": "(self, engine_indices, *, post_sleep_vram_threshold_gb=None)",
    "expand_engines": "(self, engine_indices)",
    "activate_routing": "(self, engine_indices)",
    "set_weight_version": "(self, version, engine_indices=None)",
    "finish_init_offload": "(self, engine_indices)",
    "generate": "(self, rollout_id)",
    "__init__": "(self, args, pg, *, all_engine_placements=None, active_engine_indices=None)",
}

#: miles/rollout/base_types.py and examples/fully_async/fully_async_rollout.py.
CALL_ROLLOUT_FN = "(fn, *args, evaluation: bool, rlix_hooks=None, **kwargs)"
ROLLOUT_FN = "(args, rollout_id, data_buffer, evaluation=False, *, rlix_hooks=None)"


def _params(fn) -> str:
    """The parameter list without annotations, as written in MANAGER."""
    sig = inspect.signature(fn)
    return str(sig.replace(parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
                           return_annotation=sig.empty))


@pytest.mark.parametrize("name", sorted(PROTOCOL))
def test_hooks_methods_have_miles_signatures_exactly(name):
    assert str(inspect.signature(getattr(MilesRLixHooks, name), eval_str=True)) == PROTOCOL[name]


def test_hooks_satisfy_the_protocol_as_miles_checks_it():
    hooks = MilesRLixHooks("p1", 4, backend="noop")
    assert isinstance(hooks, standins.RLixHooks)  # runtime_checkable, as miles' protocol
    # The stand-in protocol is the written-down one: a mismatch there would void the check above.
    for name, signature in PROTOCOL.items():
        assert str(inspect.signature(getattr(standins.RLixHooks, name), eval_str=True)) == signature


@pytest.mark.parametrize("name", sorted(MANAGER))
def test_rollout_manager_stand_in_has_miles_signatures(name):
    assert _params(getattr(standins.RolloutManagerStandIn, name)) == MANAGER[name]


def test_rollout_function_stand_ins_have_miles_signatures():
    assert str(inspect.signature(standins.call_rollout_fn, eval_str=True)) == CALL_ROLLOUT_FN
    assert _params(standins.generate_rollout_fully_async) == ROLLOUT_FN


def test_call_rollout_fn_passes_hooks_only_to_functions_that_take_them():
    seen = {}

    def with_hooks(args, rollout_id, data_buffer, evaluation=False, *, rlix_hooks=None):
        seen["with"] = rlix_hooks
        return []

    def without_hooks(args, rollout_id, data_buffer, evaluation=False):
        seen["without"] = evaluation
        return []

    hooks = MilesRLixHooks("p1", 4, backend="noop")
    standins.call_rollout_fn(with_hooks, None, 0, None, evaluation=False, rlix_hooks=hooks)
    standins.call_rollout_fn(without_hooks, None, 0, None, evaluation=False, rlix_hooks=hooks)
    assert seen == {"with": hooks, "without": False}


def test_hooks_pickle_as_configuration_for_the_rollout_manager_process():
    hooks = MilesRLixHooks("p1", 4, backend="ray", backend_options={"num_gpus": 4}, autoload=False,
                           engine_to_rank={2: 0})
    copy = pickle.loads(pickle.dumps(hooks))
    assert (copy.pipeline_id, copy.units.n_samples_per_prompt, copy.backend, copy.backend_options, copy.autoload,
            copy.engine_to_rank, copy.token) == ("p1", 4, "ray", {"num_gpus": 4}, False, {2: 0}, hooks.token)
    assert copy._hooks is None  # rebuilt on first use over there, not carried


def test_local_backend_hooks_refuse_to_leave_their_process():
    hooks = MilesRLixHooks("p1", 4, backend="local")
    with pytest.raises(TypeError, match="'local' backend.*'ray' backend"):
        pickle.dumps(hooks)


def _real_miles():
    return pytest.importorskip("miles.utils.rlix_hooks", reason="miles is not installed (it is not on PyPI)")


def test_real_miles_protocol_accepts_the_hooks():
    rlix_hooks = _real_miles()
    assert isinstance(MilesRLixHooks("p1", 4, backend="noop"), rlix_hooks.RLixHooks)
    for name in PROTOCOL:
        ours = inspect.signature(getattr(MilesRLixHooks, name), eval_str=True)
        theirs = inspect.signature(getattr(rlix_hooks.RLixHooks, name), eval_str=True)
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
               [(p.name, p.kind, p.default) for p in theirs.parameters.values()], name


def test_real_call_rollout_fn_hands_the_hooks_to_the_rollout_function():
    _real_miles()
    base_types = pytest.importorskip("miles.rollout.base_types", reason="miles is not installed (it is not on PyPI)")
    if "rlix_hooks" not in inspect.signature(base_types.call_rollout_fn).parameters:
        pytest.skip("this miles' call_rollout_fn predates the rlix_hooks parameter")
    seen = {}

    def rollout(args, rollout_id, data_buffer, evaluation=False, *, rlix_hooks=None):
        seen["hooks"] = rlix_hooks
        return []

    hooks = MilesRLixHooks("p1", 4, backend="noop")
    base_types.call_rollout_fn(rollout, None, 0, None, evaluation=False, rlix_hooks=hooks)
    assert seen["hooks"] is hooks
