"""The library's import graph: no import from a lower layer into a higher one, and no cycle
(docs/design.md §2). Every ``import`` counts, also those inside functions, except under
``if TYPE_CHECKING:``; ``from package import name`` counts as importing the module
``package.name`` when there is one, else the package."""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
#: Installed package -> source folder (pyproject.toml's package-dir).
SOURCES = {
    "rlix_plugin": "rlix_plugin",
    "rlix_plugin.hookspecs": "hookspecs",
    "rlix_plugin.integrations": "integrations",
}
#: Layers, lowest first; a module belongs to the longest prefix listed.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("contract", ("rlix_plugin.hookspecs",)),
    ("base", ("rlix_plugin.arguments", "rlix_plugin.supply", "rlix_plugin.progress", "rlix_plugin.backends.port")),
    ("scheduler core", ("rlix_plugin.scheduler",)),
    ("transports", ("rlix_plugin.backends", "rlix_plugin.ray", "rlix_plugin.metrics")),
    ("front end", ("rlix_plugin", "rlix_plugin.manager", "rlix_plugin.frontend", "rlix_plugin.session")),
    ("integrations", ("rlix_plugin.integrations", "rlix_plugin.testing")),
    ("scenario format", ("rlix_plugin.scenario",)),
    ("simulator", ("rlix_plugin.simulate",)),
    ("reference framework", ("rlix_plugin.reference", "rlix_plugin.reference.framework")),
    ("run harness", ("rlix_plugin.reference.harness",)),
    ("output", ("rlix_plugin.reference.output", "rlix_plugin.dashboard")),
    ("commands", ("rlix_plugin.commands", "rlix_plugin.cli")),
]


def modules() -> dict[str, pathlib.Path]:
    found: dict[str, pathlib.Path] = {}
    for package, folder in SOURCES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if package == "rlix_plugin" and name.split(".")[1:2] in (["hookspecs"], ["integrations"]):
                continue
            found.setdefault(name, path)
    return found


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imports(mods: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_blocks(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in targets:
                resolved = known(target) if target.startswith("rlix_plugin") else None
                if resolved and resolved != name:
                    graph[name].add(resolved)
    return graph


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank >= 0, f"{module} is in no layer: add it to LAYERS"
    return rank


def test_no_import_from_a_lower_layer_into_a_higher_one():
    mods = modules()
    upward = sorted(
        f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
        for a, targets in imports(mods).items()
        for b in targets
        if layer_of(b) > layer_of(a)
    )
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    graph = imports(modules())
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(modules()):
        if module not in index:
            visit(module)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_every_module_is_in_a_layer():
    for module in modules():
        layer_of(module)


def test_the_reference_is_split_into_framework_below_harness_below_output():
    order = [
        layer_of(module)
        for module in (
            "rlix_plugin.scenario.format",
            "rlix_plugin.reference.framework.pipeline",
            "rlix_plugin.reference.harness.runner",
            "rlix_plugin.reference.output.trace",
            "rlix_plugin.commands.demo",
        )
    ]
    assert order == sorted(set(order)), [LAYERS[i][0] for i in order]
    assert layer_of("rlix_plugin.simulate.run") < layer_of("rlix_plugin.reference.framework.pipeline")
    stray = [
        module
        for module in modules()
        if module.startswith("rlix_plugin.reference.")
        and module.split(".")[2] not in ("framework", "harness", "output")
    ]
    assert not stray, f"modules of rlix_plugin.reference outside its three layers: {stray}"


#: Packages that promise, in their ``__init__`` docstring, to import no more than this.
ALLOWED_IMPORTS = {
    # The copyable framework reaches the scheduler only through the hooks.
    "rlix_plugin.reference.framework": (
        "rlix_plugin.hookspecs",
        "rlix_plugin.frontend",
        "rlix_plugin.session",
        "rlix_plugin.supply",
        "rlix_plugin.metrics",
        "rlix_plugin.scenario",
    ),
    "rlix_plugin.scenario": ("rlix_plugin.hookspecs", "rlix_plugin.scheduler.policy"),
}


@pytest.mark.parametrize("package", sorted(ALLOWED_IMPORTS))
def test_a_package_imports_only_what_its_docstring_allows(package):
    allowed = (package, *ALLOWED_IMPORTS[package])
    outside = sorted(
        f"{module} imports {target}"
        for module, targets in imports(modules()).items()
        if module == package or module.startswith(package + ".")
        for target in targets
        if not any(target == prefix or target.startswith(prefix + ".") for prefix in allowed)
    )
    assert not outside, "\n".join(outside)
