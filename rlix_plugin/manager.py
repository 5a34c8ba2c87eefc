"""The one factory that builds a plugin manager, and the manager class it builds.

Order, fixed (see :func:`get_plugin_manager`): specs -> names blocked by ``RLIX_BLOCK_PLUGINS`` ->
entry points of group ``rlix_plugin`` (unless ``RLIX_DISABLE_PLUGIN_AUTOLOAD=1``) -> built-in
defaults -> the selected backend -> ``check_pending()``.

Environment switches:

``RLIX_BACKEND``                 ``noop`` (default), ``local`` or ``ray``.
``RLIX_BLOCK_PLUGINS``           comma-separated plugin names never to register.
``RLIX_DISABLE_PLUGIN_AUTOLOAD`` ``1``: load no entry points.
``RLIX_STRICT_PLUGINS``          ``1``: a plugin that fails to load raises instead of being logged.
``RLIX_TRACE_HOOKS``             ``1``: log every hook call and its result (logger
                                 ``rlix_plugin.trace``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from rlix_plugin.backends import DEFAULT_BACKEND, check_backend_name, make_backend
from rlix_plugin.backends.noop import NAME as NOOP_NAME
from rlix_plugin.backends.noop import NoopPlugin
from rlix_plugin.hookspecs import PROJECT_NAME, SPEC_MODULES, RlixError, hook_names

if TYPE_CHECKING:
    from rlix_plugin.backends.hooks import SchedulerHooks

ENTRY_POINT_GROUP = "rlix_plugin"
ENV_BACKEND = "RLIX_BACKEND"
ENV_BLOCK = "RLIX_BLOCK_PLUGINS"
ENV_DISABLE_AUTOLOAD = "RLIX_DISABLE_PLUGIN_AUTOLOAD"
ENV_STRICT = "RLIX_STRICT_PLUGINS"
ENV_TRACE = "RLIX_TRACE_HOOKS"
BACKEND_PLUGIN_NAME = "rlix-backend"

log = logging.getLogger(__name__)
trace_log = logging.getLogger("rlix_plugin.trace")


class PluginLoadError(RlixError):
    """An entry-point plugin failed to load while ``RLIX_STRICT_PLUGINS=1``."""


@dataclass(frozen=True)
class PluginOrigin:
    """Where a registered plugin came from, for ``rlix-plugin plugins`` and operators.

    ``kind`` is ``built-in``, ``backend``, ``entry point`` or ``registered`` (by code at run time);
    ``source`` is the module or object, and for entry points the distribution and version.
    """

    kind: str
    source: str


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _describe(plugin: object) -> str:
    module = getattr(plugin, "__module__", None) or type(plugin).__module__
    qualname = getattr(plugin, "__qualname__", None) or type(plugin).__qualname__
    return f"{module}:{qualname}"


class RlixPluginManager(pluggy.PluginManager):
    """A :class:`pluggy.PluginManager` for project ``rlix`` that also records where each plugin
    came from, which plugins failed to load, and tells front ends when the set of
    implementations (or monitoring) changes, so their hot-path guards stay right."""

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self.origins: dict[str, PluginOrigin] = {}
        self.load_errors: dict[str, str] = {}
        self.backend_name: str = DEFAULT_BACKEND
        self._monitors = 0
        self._listeners: weakref.WeakSet[Any] = weakref.WeakSet()

    # -- change notification ------------------------------------------------------------------

    def add_listener(self, listener: Any) -> None:
        """Call ``listener.refresh()`` whenever plugins or monitoring change (held weakly)."""
        self._listeners.add(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener.refresh()

    def register(self, plugin: object, name: str | None = None, origin: PluginOrigin | None = None) -> str | None:
        registered = super().register(plugin, name)
        if registered is not None:
            self.origins[registered] = origin or PluginOrigin("registered", _describe(plugin))
            self._changed()
        return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        if name is None and plugin is not None:
            name = self.get_name(plugin)
        removed = super().unregister(plugin=plugin, name=name)
        if name is not None:
            self.origins.pop(name, None)
        self._changed()
        return removed

    def add_hookcall_monitoring(self, before: Callable[..., None], after: Callable[..., None]) -> Callable[[], None]:
        undo = super().add_hookcall_monitoring(before, after)
        self._monitors += 1
        self._changed()

        def undo_and_refresh() -> None:
            undo()
            self._monitors -= 1
            self._changed()

        return undo_and_refresh

    # -- queries --------------------------------------------------------------------------------

    @property
    def backend(self) -> SchedulerHooks | None:
        """The scheduler backend's plugin (leases, ``flush_progress``, ``is_registered``,
        ``close``), or ``None`` with the no-op default."""
        return self.get_plugin(BACKEND_PLUGIN_NAME)

    @property
    def monitored(self) -> bool:
        """True while a hook-call monitor (a recorder, tracing) is installed."""
        return self._monitors > 0

    def live_hooks(self) -> frozenset[str]:
        """Hooks that reach something other than the no-op default (all of them while monitored)."""
        if self.monitored:
            return frozenset(hook_names())
        live = set()
        for name in hook_names():
            caller = getattr(self.hook, name)
            if any(not getattr(impl.plugin, "RLIX_NOOP", False) for impl in caller.get_hookimpls()):
                live.add(name)
        return frozenset(live)

    def plugin_hooks(self, name: str) -> list[str]:
        """Names of the hooks plugin ``name`` implements."""
        plugin = self.get_plugin(name)
        callers = self.get_hookcallers(plugin) or []
        return sorted(caller.name for caller in callers)


def _blocked_names(blocked: Iterable[str] | None) -> list[str]:
    names = list(blocked or ())
    names += [n.strip() for n in os.environ.get(ENV_BLOCK, "").split(",") if n.strip()]
    return names


def _check_plugin_hooks(pm: RlixPluginManager, name: str) -> None:
    """Reject a plugin that implements a hook the contract does not have (a typo, or a plugin
    written for a newer contract), naming the hook; pluggy would only say so at check_pending."""
    plugin = pm.get_plugin(name)
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.spec is None:
            raise pluggy.PluginValidationError(plugin, f"plugin {name!r} implements unknown hook {caller.name!r}")


def _load_entry_points(pm: RlixPluginManager, strict: bool) -> None:
    """Register every ``rlix_plugin`` entry point, each in its own try/except."""
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or ep.name in seen:
                continue
            seen.add(ep.name)
            dist_name = f"{dist.metadata['name']} {dist.version}"
            if pm.is_blocked(ep.name):
                log.info("rlix plugin %r (%s) is blocked; not loaded", ep.name, dist_name)
                continue
            if pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name, origin=PluginOrigin("entry point", f"{dist_name}: {ep.value}"))
                _check_plugin_hooks(pm, ep.name)
            except Exception as exc:
                if pm.has_plugin(ep.name):
                    pm.unregister(name=ep.name)
                message = f"rlix plugin {ep.name!r} ({dist_name}: {ep.value}) failed to load: {exc!r}"
                pm.load_errors[ep.name] = message
                if strict:
                    raise PluginLoadError(message) from exc
                log.error("%s; continuing without it (set %s=1 to fail instead)", message, ENV_STRICT)


def _install_tracing(pm: RlixPluginManager) -> None:
    def before(hook_name: str, hook_impls: list[Any], kwargs: dict[str, Any]) -> None:
        trace_log.info("call %s(%s) -> %d impl(s)", hook_name, kwargs, len(hook_impls))

    def after(outcome: Any, hook_name: str, hook_impls: list[Any], kwargs: dict[str, Any]) -> None:
        exc = outcome.exception
        if exc is not None:
            trace_log.info("raise %s: %r", hook_name, exc)
        else:
            trace_log.info("return %s: %r", hook_name, outcome.get_result())

    pm.add_hookcall_monitoring(before, after)


def get_plugin_manager(
    backend: str | None = None,
    *,
    backend_options: dict[str, Any] | None = None,
    autoload: bool | None = None,
    blocked: Iterable[str] | None = None,
    strict: bool | None = None,
    trace: bool | None = None,
) -> RlixPluginManager:
    """Build a plugin manager for the ``rlix`` hooks.

    Arguments override the matching environment variable; ``None`` means "read the environment".

    :param backend: ``noop``, ``local`` or ``ray`` (default ``$RLIX_BACKEND``, else ``noop``).
    :param backend_options: Keyword arguments for the backend's factory.
    :param autoload: Load ``rlix_plugin`` entry points (default: unless
        ``RLIX_DISABLE_PLUGIN_AUTOLOAD=1``).
    :param blocked: Plugin names never to register, added to ``$RLIX_BLOCK_PLUGINS``.
    :param strict: Re-raise a plugin's load error (default ``$RLIX_STRICT_PLUGINS``).
    :param trace: Log every hook call (default ``$RLIX_TRACE_HOOKS``).
    :raises InvalidRequestError: unknown backend name (the message lists the choices).
    :raises BackendUnavailableError: the backend is not installed or not implemented.
    """
    backend_name = check_backend_name(backend or os.environ.get(ENV_BACKEND) or DEFAULT_BACKEND)
    pm = RlixPluginManager()
    pm.backend_name = backend_name
    for module in SPEC_MODULES:
        pm.add_hookspecs(module)
    for name in _blocked_names(blocked):
        pm.set_blocked(name)
    if autoload if autoload is not None else not _env_flag(ENV_DISABLE_AUTOLOAD):
        _load_entry_points(pm, strict if strict is not None else _env_flag(ENV_STRICT))
    pm.register(NoopPlugin(), name=NOOP_NAME, origin=PluginOrigin("built-in", _describe(NoopPlugin)))
    from rlix_plugin.backends.hooks import manager_resize

    backend_plugin = make_backend(backend_name, backend_options, manager_resize(pm))
    if backend_plugin is not None:
        pm.register(
            backend_plugin,
            name=BACKEND_PLUGIN_NAME,
            origin=PluginOrigin("backend", f"{backend_name}: {_describe(backend_plugin)}"),
        )
    pm.check_pending()
    if trace if trace is not None else _env_flag(ENV_TRACE):
        _install_tracing(pm)
    return pm


__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginLoadError",
    "PluginOrigin",
    "RlixPluginManager",
    "get_plugin_manager",
]
