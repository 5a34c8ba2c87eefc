"""pytest fixtures for testing code that calls or implements the rlix hooks.

Loaded automatically (``pytest11`` entry point). Every fixture is function-scoped: a fresh plugin
manager per test, never autoloading installed plugins, so tests do not leak plugins into each
other.

Fixtures:

``rlix_backend``   the backend name the manager is built with (``"noop"``); override it in a
                   conftest to run the same tests against ``"local"``.
``rlix_pm``        a fresh :class:`~rlix_plugin.RlixPluginManager`.
``rlix_hooks``     a :class:`~rlix_plugin.Hooks` front end over ``rlix_pm``.
``rlix_recorder``  a :class:`~rlix_plugin.testing.HookRecorder` attached to ``rlix_pm``.
``rlix_register``  ``rlix_register(plugin, name=None)`` registers an inline plugin on ``rlix_pm``
                   for this test only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from rlix_plugin.frontend import Hooks
from rlix_plugin.manager import RlixPluginManager, get_plugin_manager
from rlix_plugin.testing.recorder import HookRecorder


@pytest.fixture
def rlix_backend() -> str:
    """Backend of ``rlix_pm``; override to test against another backend."""
    return "noop"


@pytest.fixture
def rlix_pm(rlix_backend: str) -> Iterator[RlixPluginManager]:
    """A fresh plugin manager: specs, the no-op default and ``rlix_backend``; no entry points."""
    pm = get_plugin_manager(rlix_backend, autoload=False, blocked=(), strict=True, trace=False)
    yield pm
    for name, _plugin in list(pm.list_name_plugin()):
        pm.unregister(name=name)


@pytest.fixture
def rlix_hooks(rlix_pm: RlixPluginManager) -> Hooks:
    """The typed front end over ``rlix_pm``."""
    return Hooks(rlix_pm)


@pytest.fixture
def rlix_recorder(rlix_pm: RlixPluginManager) -> Iterator[HookRecorder]:
    """Records every hook call on ``rlix_pm`` (with arguments and results)."""
    recorder = HookRecorder(rlix_pm)
    yield recorder
    recorder.close()


@pytest.fixture
def rlix_register(rlix_pm: RlixPluginManager) -> Iterator[Callable[..., str]]:
    """Register an inline plugin on ``rlix_pm`` for one test; it is unregistered at teardown."""
    registered: list[str] = []

    def register(plugin: object, name: str | None = None) -> str:
        plugin_name = rlix_pm.register(plugin, name=name)
        if plugin_name is None:
            raise ValueError(f"plugin {name or plugin!r} is blocked and was not registered")
        rlix_pm.check_pending()
        registered.append(plugin_name)
        return plugin_name

    yield register
    for name in reversed(registered):
        if rlix_pm.has_plugin(name):
            rlix_pm.unregister(name=name)
