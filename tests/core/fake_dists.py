"""Fake ``importlib.metadata`` distributions for entry-point loading tests."""

from __future__ import annotations

import importlib.metadata


class FakeEntryPoint:
    def __init__(self, name, group, loader, value=None):
        self.name = name
        self.group = group
        self.value = value or f"fake_module:{name}"
        self._loader = loader

    def load(self):
        return self._loader()


class FakeDistribution:
    def __init__(self, name, version, entry_points):
        self.metadata = {"name": name}
        self.version = version
        self.entry_points = entry_points


def install(monkeypatch, *dists):
    """Make ``importlib.metadata.distributions()`` return exactly ``dists``."""
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: list(dists))
