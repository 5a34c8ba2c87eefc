"""The contract itself: names, typing, docstrings, and that every hook is tested and documented."""

from __future__ import annotations

import ast
import inspect
import pathlib
import re

import pluggy
import pytest

from rlix_plugin import hookspecs
from rlix_plugin.hookspecs import PROJECT_NAME, SPEC_MODULES, hook_names
from rlix_plugin.manager import get_plugin_manager

from .signatures import signature_line

REPO = pathlib.Path(__file__).resolve().parents[2]
SPECS = {name: getattr(module, name) for module in SPEC_MODULES for name in module.__all__}


def test_every_spec_module_hook_is_listed_and_prefixed():
    for module in SPEC_MODULES:
        defined = {n for n, f in vars(module).items() if inspect.isfunction(f) and n.startswith("rlix_")}
        assert defined == set(module.__all__), module.__name__
    assert all(name.startswith("rlix_") for name in hook_names())


def test_a_plugin_marked_with_the_bare_project_name_is_called():
    """Third-party plugins may mark hooks with ``pluggy.HookimplMarker("rlix")`` without importing
    this package: the project name is part of the contract."""

    class Counter:
        calls = 0

        @pluggy.HookimplMarker("rlix")
        def rlix_bump_completed(self, count):
            Counter.calls += count

    pm = get_plugin_manager("noop", autoload=False)
    assert pm.project_name == PROJECT_NAME
    pm.register(Counter())
    pm.hook.rlix_bump_completed(
        pipeline_id="p", rollout_id=0, mode="full", adapter_id=None, target_weight_version=0, count=3
    )
    assert Counter.calls == 3


def test_manager_knows_exactly_the_contract_hooks():
    pm = get_plugin_manager("noop", autoload=False)
    registered = {name for name in dir(pm.hook) if name.startswith("rlix_")}
    assert registered == set(hook_names())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_is_typed_and_documented(name):
    spec = SPECS[name]
    sig = inspect.signature(spec)
    assert sig.parameters, name
    for param in sig.parameters.values():
        assert param.annotation is not inspect.Parameter.empty, f"{name}.{param.name} is untyped"
        assert param.default is inspect.Parameter.empty, f"{name}.{param.name} has a default"
        assert f":param {param.name}:" in spec.__doc__, f"{name} does not document {param.name}"
    assert sig.return_annotation is not inspect.Signature.empty
    assert ":returns:" in spec.__doc__, name
    assert "Called" in spec.__doc__, f"{name} does not say when it is called"
    if spec.rlix_spec["firstresult"]:
        assert "first non-None result" in spec.__doc__, name


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_body_is_empty(name):
    source = inspect.getsource(SPECS[name])
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{name} has a body beyond its docstring"


def test_progress_hooks_carry_stream_and_version():
    for name in ("rlix_begin_progress_batch", "rlix_bump_completed"):
        params = inspect.signature(SPECS[name]).parameters
        assert {"mode", "adapter_id", "target_weight_version"} <= set(params), name
    assert {"mode", "adapter_id"} <= set(inspect.signature(SPECS["rlix_end_progress_batch"]).parameters)


def test_every_hook_has_a_test():
    """Each hook needs a ``test_<hook name>`` test in test_each_hook.py."""
    source = (pathlib.Path(__file__).parent / "test_each_hook.py").read_text()
    tested = set(re.findall(r"^def test_(rlix_\w+?)(?:__\w+)?\(", source, flags=re.M))
    missing = set(hook_names()) - tested
    assert not missing, f"hooks without a test in test_each_hook.py: {sorted(missing)}"


def test_every_hook_signature_is_documented():
    doc = (REPO / "docs" / "hooks.md").read_text()
    missing = [signature_line(spec) for spec in SPECS.values() if signature_line(spec) not in doc]
    assert not missing, "docs/hooks.md lacks these signatures (or they changed):\n" + "\n".join(missing)


def test_contract_types_are_reexported():
    for name in ("Grant", "ClusterSpec", "Priority", "hookimpl", "hookspec", "SchedulerTimeoutError"):
        assert hasattr(hookspecs, name)
    assert hookspecs.Priority.GENERATION == 6 and hookspecs.Priority.INITIALIZATION == 0
