"""What verl's ``verl.plugins`` entry point loads (``import verl`` does, in every process).

Loading it gives each Ray job its own TransferQueue (:mod:`.transfer_queue`) and registers the
``rlix_sync`` trainer mode. The trainer module is large (it imports verl's whole trainer), and
most of a job's processes (training ranks, rollout servers, reward workers, the load balancer)
never look a trainer up; so the mode is registered when verl's trainer registry itself is
imported (``verl.trainer.ppo.v1.trainer_base``), at once if it already is.

verl loads entry points inside ``import verl`` and swallows their errors at DEBUG level, so a
failure here is logged at WARNING by this module, with the reason, and kept in
:data:`load_error`; verl then answers ``trainer_mode=rlix_sync`` with its own "Unknown trainer"
error.
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import sys
from typing import Any

from rlix_plugin.integrations.verl import TRAINER_MODE

log = logging.getLogger(__name__)

#: Why the integration did not load, or ``None`` if it did.
load_error: Exception | None = None


def _cpu_platform_first() -> None:
    """Register the CPU kit's platform before anything loaded here makes verl pick one.

    verl resolves its platform once per process, on first use (importing its trainer is one),
    and loads this entry point before ``rlix_cpu``; a job that asks for the CPU platform
    (``VERL_PLATFORM=cpu``) needs it registered by then.
    """
    from rlix_plugin.testing.verl_cpu import PLATFORM_NAME

    if os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME:
        import rlix_plugin.testing.verl_cpu.entry  # noqa: F401  (registers on import)


#: verl's trainer registry; the trainer mode is registered once this module exists.
REGISTRY_MODULE = "verl.trainer.ppo.v1.trainer_base"


def _failed(exc: Exception) -> bool:
    global load_error
    load_error = exc
    log.warning(
        "rlix: the verl integration failed to load; trainer mode %r is unavailable: %r",
        TRAINER_MODE,
        exc,
        exc_info=True,
    )
    return False


def register_trainer() -> bool:
    """Import the trainer module (which registers the mode); True on success. Idempotent."""
    global load_error
    try:
        import rlix_plugin.integrations.verl.trainer  # noqa: F401  (registers on import)
    except Exception as exc:
        return _failed(exc)
    load_error = None
    return True


class _AfterRegistryImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs :func:`register_trainer` right after :data:`REGISTRY_MODULE` executes, by wrapping
    the loader the other finders return for it. Removes itself once used."""

    def __init__(self) -> None:
        self._loader: Any = None

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != REGISTRY_MODULE:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None:
                self._loader, spec.loader = spec.loader, self
                return spec
        return None

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        register_trainer()


def load() -> bool:
    """Isolate TransferQueue and arrange the trainer registration; True on success. Idempotent."""
    global load_error
    try:
        _cpu_platform_first()
        from rlix_plugin.integrations.verl import transfer_queue

        transfer_queue.install()
    except Exception as exc:
        return _failed(exc)
    if REGISTRY_MODULE in sys.modules:
        return register_trainer()
    if not any(isinstance(finder, _AfterRegistryImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterRegistryImport())
    load_error = None
    return True


load()
