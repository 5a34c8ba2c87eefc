"""The surfaces miles defines, checked against this integration.

The signatures are written down here from miles' sources (shared/reference/miles-contract.md) and
checked against the hooks always; the tests that take the ``miles`` fixture check them against the
pinned real files (``../shared/third_party/miles-rlix-fork``) and run the real ``call_rollout_fn``.
"""

from __future__ import annotations

import inspect
import pickle
from types import SimpleNamespace

import pytest

from rlix_plugin.integrations.miles import MilesRLixHooks, rollout_path

#: miles/utils/rlix_hooks.py, RLixHooks (the four methods miles calls).
PROTOCOL = {
    "begin_progress_batch": "(self, target_weight_version: int, step_target_groups: int, initial_completed: int, "
    "*, mode: str | None = None, adapter_id: str | None = None) -> None",
    "bump_completed": "(self, *, target_weight_version: int) -> None",
    "end_progress_batch": "(self) -> None",
    "report_preempt": "(self, engine_index: int, worker_url: str) -> None",
}

#: miles/ray/rollout.py, the RolloutManager methods the integration calls (parameter lists only:
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
}

#: miles/rollout/base_types.py and examples/fully_async/fully_async_rollout.py.
CALL_ROLLOUT_FN = "(fn, *args, evaluation: bool, rlix_hooks=None, **kwargs)"
ROLLOUT_FN = "(args, rollout_id, data_buffer, evaluation=False, *, rlix_hooks=None)"


def _params(fn) -> str:
    """The parameter list without annotations, as written in MANAGER."""
    sig = inspect.signature(fn)
    return str(
        sig.replace(
            parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()], return_annotation=sig.empty
        )
    )


@pytest.mark.parametrize("name", sorted(PROTOCOL))
def test_hooks_methods_have_miles_signatures_exactly(name):
    assert str(inspect.signature(getattr(MilesRLixHooks, name), eval_str=True)) == PROTOCOL[name]


def test_hooks_pickle_as_configuration_for_the_rollout_manager_process():
    hooks = MilesRLixHooks(
        "p1", 4, backend="ray", backend_options={"num_gpus": 4}, autoload=False, engine_to_rank={2: 0}
    )
    copy = pickle.loads(pickle.dumps(hooks))
    assert (
        copy.pipeline_id,
        copy.units.n_samples_per_prompt,
        copy.backend,
        copy.backend_options,
        copy.autoload,
        copy.engine_to_rank,
        copy.token,
    ) == ("p1", 4, "ray", {"num_gpus": 4}, False, {2: 0}, hooks.token)
    assert copy._hooks is None  # rebuilt on first use over there, not carried


def test_local_backend_hooks_refuse_to_leave_their_process():
    hooks = MilesRLixHooks("p1", 4, backend="local")
    with pytest.raises(TypeError, match="'local' backend.*'ray' backend"):
        pickle.dumps(hooks)


# -- against the pinned real files ----------------------------------------------------------------


def test_the_written_down_surfaces_are_the_pinned_files(miles):
    for name, signature in PROTOCOL.items():
        assert str(inspect.signature(getattr(miles.rlix_hooks.RLixHooks, name), eval_str=True)) == signature, name
    for name, params in MANAGER.items():
        assert _params(getattr(miles.state_machine.RealRolloutManagerEngineTable, name)) == params, name
    assert str(inspect.signature(miles.base_types.call_rollout_fn, eval_str=True)) == CALL_ROLLOUT_FN
    assert _params(miles.fully_async.generate_rollout_fully_async) == ROLLOUT_FN


def test_real_miles_protocol_accepts_the_hooks(miles):
    assert isinstance(MilesRLixHooks("p1", 4, backend="noop"), miles.rlix_hooks.RLixHooks)  # runtime_checkable
    for name in PROTOCOL:
        ours = inspect.signature(getattr(MilesRLixHooks, name), eval_str=True)
        theirs = inspect.signature(getattr(miles.rlix_hooks.RLixHooks, name), eval_str=True)
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
            (p.name, p.kind, p.default) for p in theirs.parameters.values()
        ], name


def test_real_call_rollout_fn_hands_the_hooks_only_to_a_function_that_takes_them(miles):
    seen = {}

    def with_hooks(args, rollout_id, data_buffer, evaluation=False, *, rlix_hooks=None):
        seen["with"] = rlix_hooks
        return [[1]]

    def without_hooks(args, rollout_id, data_buffer, evaluation=False, **kwargs):
        seen["without"] = kwargs
        return [[2]]

    hooks = MilesRLixHooks("p1", 4, backend="noop")
    output = miles.base_types.call_rollout_fn(with_hooks, None, 0, None, evaluation=False, rlix_hooks=hooks)
    miles.base_types.call_rollout_fn(without_hooks, None, 0, None, evaluation=False, rlix_hooks=hooks)
    assert seen == {"with": hooks, "without": {}}, "even **kwargs does not get them"
    assert isinstance(output, miles.base_types.RolloutFnTrainOutput) and output.samples == [[1]]


def test_the_rollout_path_check_reads_what_call_rollout_fn_reads(miles):
    """install's check (rollout_path) agrees with the real call_rollout_fn on miles' functions."""

    def manager(fn, experimental=False):
        return SimpleNamespace(
            generate_rollout=fn,
            use_experimental_refactor=experimental,
            args=SimpleNamespace(rollout_function_path="pkg.fn"),
        )

    def without_hooks(args, rollout_id, data_buffer, evaluation=False):
        return []

    for fn in (miles.fully_async.generate_rollout_fully_async, miles.fully_async.generate_rollout_async):
        path = rollout_path.describe(manager(fn))
        assert path["takes_hooks"] and path["call_rollout_fn_takes_hooks"] and rollout_path.problem(path) is None
    reason = rollout_path.problem(rollout_path.describe(manager(without_hooks)))
    assert "without_hooks (args.rollout_function_path = 'pkg.fn'), which has no rlix_hooks parameter" in reason
    assert rollout_path.FULLY_ASYNC in reason
    reason = rollout_path.problem(rollout_path.describe(manager(miles.fully_async.generate_rollout_fully_async, True)))
    assert "MILES_EXPERIMENTAL_ROLLOUT_REFACTOR=1" in reason and "Unset" in reason
    assert "has no generate_rollout" in rollout_path.problem(rollout_path.describe(SimpleNamespace()))
