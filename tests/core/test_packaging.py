"""Every package directory is listed for installation (a missing entry breaks non-editable
installs while editable ones keep working, so nothing else would notice)."""

from __future__ import annotations

import pathlib

import tomllib

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_every_package_is_installed():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {"rlix_plugin": "rlix_plugin", **config["package-dir"]}
    found = set()
    for package, directory in roots.items():
        base = REPO / directory
        for init in base.rglob("__init__.py"):
            relative = init.parent.relative_to(base)
            found.add(".".join([package, *relative.parts]) if relative.parts else package)
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert listed - found == set(), f"listed packages that do not exist: {sorted(listed - found)}"
