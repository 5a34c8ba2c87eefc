"""Static guard: the scheduler actor never reaches the orchestrator on its runtime paths.

Walks the call graph of ``rlix_plugin/ray/scheduler_actor.py`` (methods called through ``self.``,
module functions, nested closures such as the resizer) from every request, progress, release,
resize, clear and reaping entry point, and fails if anything reachable names the orchestrator or
looks an actor up by name at run time (which could reach it). One lookup is allowed, and checked
to be only that: a restarted scheduler finds each pipeline's coordinator by its name in the
pipeline's own namespace (``_coordinator_of``), which can never resolve to the orchestrator (a
pipeline namespace is never ``rlix``). No Ray needed: it reads source.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "rlix_plugin" / "ray" / "scheduler_actor.py"
SCHEDULER_PACKAGE = SOURCE.parents[1] / "scheduler"
ACTOR_CLASS = "SchedulerActor"
#: The runtime paths: requests, progress, releases, resizes, clears, and the death watch/reaping.
ENTRY_POINTS = (
    "request_gpus",
    "signal_demand",
    "release",
    "release_and_request",
    "planned_release",
    "apply_progress",
    "report_preempt",
    "_resizer",
    "_watch",
    "_reap",
    "_check_liveness",
    "_stop_pipeline",
    "register_pipeline",
    "unregister_pipeline",
)
FORBIDDEN_CALLS = {"get_actor", "list_named_actors"}
#: Functions allowed to look an actor up by name: each must look up exactly the coordinator name
#: in a pipeline's namespace (see test_the_one_allowed_lookup_is_a_pipelines_coordinator).
ALLOWED_LOOKUPS = {"_coordinator_of"}


def _functions(tree: ast.Module, class_name: str) -> tuple[dict[str, ast.AST], dict[str, ast.AST], dict[str, str]]:
    methods: dict[str, ast.AST] = {}
    functions: dict[str, ast.AST] = {}
    constants: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value.value
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions[node.name] = node
        elif isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    methods[item.name] = item
    return methods, functions, constants


def violations(source: str, class_name: str = ACTOR_CLASS, entry_points=ENTRY_POINTS) -> dict[str, list[str]]:
    """Entry point -> what it reaches that names the orchestrator or resolves actors by name."""
    tree = ast.parse(source)
    methods, functions, constants = _functions(tree, class_name)
    missing = [e for e in entry_points if e not in methods]
    if missing:
        raise AssertionError(f"entry points not found in {class_name}: {missing} (renamed? update the test)")
    found: dict[str, list[str]] = {}
    for entry in entry_points:
        seen: set[str] = set()
        todo = [entry]
        bad: list[str] = []
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            node = methods.get(name) or functions.get(name)
            if node is None:
                continue
            for sub in ast.walk(node):
                text = None
                if isinstance(sub, ast.Name):
                    text = f"{sub.id} = {constants[sub.id]}" if sub.id in constants else sub.id
                elif isinstance(sub, ast.Attribute):
                    text = sub.attr
                    if isinstance(sub.value, ast.Name) and sub.value.id == "self" and sub.attr in methods:
                        todo.append(sub.attr)
                    if sub.attr in FORBIDDEN_CALLS and name not in ALLOWED_LOOKUPS:
                        bad.append(f"{name}: calls {sub.attr}")
                elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    text = sub.value
                if isinstance(sub, ast.Name) and sub.id in functions:
                    todo.append(sub.id)
                if isinstance(sub, ast.Name) and sub.id in FORBIDDEN_CALLS and name not in ALLOWED_LOOKUPS:
                    bad.append(f"{name}: calls {sub.id}")
                if text is not None and "orchestrator" in text.lower():
                    bad.append(f"{name}: mentions {text!r}")
        if bad:
            found[entry] = sorted(set(bad))
    return found


def test_scheduler_actor_paths_never_reach_the_orchestrator():
    assert violations(SOURCE.read_text()) == {}


def test_scheduler_actor_module_does_not_import_the_orchestrator():
    tree = ast.parse(SOURCE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not [name for name in imported if "orchestrator" in name.lower()], imported


def test_the_scheduler_core_never_names_the_orchestrator():
    for path in SCHEDULER_PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not [n for n in names if "orchestrator" in n.lower()], path


PLANTED = """
import ray
ORCH = "rlix:orchestrator"

def _tell(handle):
    handle.note.remote()

class SchedulerActor:
    async def request_gpus(self):
        return await self._grant()

    async def _grant(self):
        _tell(ray.get_actor(ORCH))

    async def report_progress(self):
        pass
"""


def test_the_walker_catches_a_planted_dependency():
    # Reached through a helper method and a module function: both the lookup and the name.
    found = violations(PLANTED, entry_points=("request_gpus", "report_progress"))
    assert set(found) == {"request_gpus"}
    assert any("calls get_actor" in v for v in found["request_gpus"])
    assert any("ORCH = rlix:orchestrator" in v for v in found["request_gpus"])


def test_a_renamed_entry_point_fails_loudly():
    with pytest.raises(AssertionError, match="entry points not found"):
        violations(PLANTED, entry_points=("signal_demand",))


def test_the_one_allowed_lookup_is_a_pipelines_coordinator():
    tree = ast.parse(SOURCE.read_text())
    _, functions, _ = _functions(tree, ACTOR_CLASS)
    assert set(functions) >= ALLOWED_LOOKUPS
    for name in ALLOWED_LOOKUPS:
        calls = [
            n
            for n in ast.walk(functions[name])
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in FORBIDDEN_CALLS
        ]
        assert len(calls) == 1 and calls[0].func.attr == "get_actor", name
        (looked_up,) = calls[0].args
        namespace = {k.arg: k.value for k in calls[0].keywords}["namespace"]
        assert isinstance(looked_up, ast.Name) and looked_up.id == "COORDINATOR_NAME", ast.dump(looked_up)
        assert isinstance(namespace, ast.Call) and namespace.func.id == "pipeline_namespace", ast.dump(namespace)
