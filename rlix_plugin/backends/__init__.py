"""Scheduler backends, selected by name (``RLIX_BACKEND`` or ``get_plugin_manager(backend=)``).

A backend is a :class:`~.hooks.SchedulerHooks` plugin over a transport (:mod:`.port`) to a
scheduler; it answers the demand-side hooks. Each name maps to a factory imported only when
selected, so that ``import rlix_plugin`` never imports ray. A factory takes the supply side
(``resize``: runs ``rlix_resize_infer`` on the owning manager) first, then the backend's options.
"""

from __future__ import annotations

import importlib
from typing import Any

from rlix_plugin.hookspecs import BackendUnavailableError, InvalidRequestError

#: Backend name -> (module, factory, what to install when its import fails).
BACKENDS: dict[str, tuple[str, str, str]] = {
    "noop": ("rlix_plugin.backends.noop", "make_backend", "rlix-plugin"),
    "local": ("rlix_plugin.backends.local", "make_backend", "rlix-plugin"),
    "ray": ("rlix_plugin.backends.ray", "make_backend", "rlix-plugin[ray]"),
}

DEFAULT_BACKEND = "noop"


def check_backend_name(name: str) -> str:
    """Return ``name`` normalised, or raise naming the bad value and the choices."""
    normalised = name.strip().lower()
    if normalised not in BACKENDS:
        choices = ", ".join(sorted(BACKENDS))
        raise InvalidRequestError(f"unknown rlix backend {name!r}; choose one of: {choices}")
    return normalised


def make_backend(name: str, options: dict[str, Any] | None = None, resize: Any = None) -> Any:
    """Build the plugin object of backend ``name`` (``None`` for ``noop``); ``resize`` is the
    supply side its pipelines' resizes are run with.

    :raises InvalidRequestError: unknown name.
    :raises BackendUnavailableError: the backend's module or its dependencies cannot be imported.
    """
    name = check_backend_name(name)
    module_name, factory_name, install = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(f"rlix backend {name!r} is not available ({exc}); install {install!r}") from exc
    factory = getattr(module, factory_name)
    if name == "noop":
        return factory()
    try:
        return factory(resize, **(options or {}))
    except TypeError as exc:  # an option the backend does not take: name it
        raise InvalidRequestError(
            f"rlix backend {name!r}: bad backend_options {sorted(options or {})}: {exc}"
        ) from None


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "check_backend_name", "make_backend"]
