"""rlix-plugin: share one GPU pool among several RL training pipelines, through pluggy hooks.

``import rlix_plugin`` is cheap (pluggy and the standard library): ray, torch and frameworks are
imported only by the backends and integrations that need them.

Start here:

* :func:`get_plugin_manager` -- build the manager (entry points, defaults, the selected backend);
* :class:`Hooks` -- the typed front end a framework integration calls;
* :data:`hookimpl` -- the marker for writing a plugin;
* :mod:`rlix_plugin.hookspecs` -- the contract;
* ``rlix_plugin.connect(address="auto", create_if_missing=True)`` -- attach to the rlix actors on a
  Ray cluster (:func:`rlix_plugin.ray.connect`); imports ray on first access only.
"""

from __future__ import annotations

from rlix_plugin.frontend import DEFAULT_TIMEOUT_S, Hooks
from rlix_plugin.hookspecs import hookimpl
from rlix_plugin.manager import PluginOrigin, RlixPluginManager, get_plugin_manager

#: The one place the version is written (pyproject.toml reads it from here).
__version__ = "0.1.0"


def get_hooks(backend: str | None = None, **kwargs: object) -> Hooks:
    """Shorthand: ``Hooks(get_plugin_manager(backend, **kwargs))``."""
    return Hooks(get_plugin_manager(backend, **kwargs))  # type: ignore[arg-type]


def __getattr__(name: str) -> object:
    # ``connect`` lives with the Ray deployment; resolving it lazily keeps ``import rlix_plugin``
    # free of ray.
    if name == "connect":
        from rlix_plugin.ray.client import connect

        return connect
    if name == "RlixHooks":  # the front end's name until 0.1.0; one letter from miles' RLixHooks
        import warnings

        warnings.warn("rlix_plugin.RlixHooks is now rlix_plugin.Hooks", DeprecationWarning, stacklevel=2)
        return Hooks
    raise AttributeError(f"module 'rlix_plugin' has no attribute {name!r}")


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Hooks",
    "PluginOrigin",
    "RlixPluginManager",
    "__version__",
    "get_hooks",
    "get_plugin_manager",
    "hookimpl",
]
