"""The scheduler a run's pipelines share, per backend: how each pipeline's plugin manager reaches
it, how to observe it, its diagnostic, and its cleanup.

* ``local``: one :class:`~rlix_plugin.backends.local.LocalScheduler` per run, shared by every
  pipeline's manager (``backend_options={"scheduler": ...}``); observable event by event through
  :meth:`SchedulerService.add_listener`.
* ``ray``: each manager is built with ``get_plugin_manager("ray", backend_options=...)``; the
  scheduler is the cluster's shared actor. Until that backend is installed, building the first
  manager raises the registry's :class:`BackendUnavailableError`, before any pipeline starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rlix_plugin.manager import RlixPluginManager, get_plugin_manager
from rlix_plugin.scenario import Scenario

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray")

#: ``listener(event, state)``: called on the scheduler's loop after every change (read only).
Listener = Callable[[str, Any], None]


class SharedBackend:
    """Base: plugin managers for one backend; no observation, a generic diagnostic."""

    name = "?"

    def __init__(self, scenario: Scenario, backend_options: dict[str, Any] | None, autoload: bool | None) -> None:
        self.scenario = scenario
        self.backend_options = dict(backend_options or {})
        self.autoload = autoload
        self._managers: list[RlixPluginManager] = []

    def plugin_manager(self) -> RlixPluginManager:
        pm = get_plugin_manager(self.name, backend_options=self._options(), autoload=self.autoload)
        self._managers.append(pm)
        return pm

    def close_backends(self) -> None:
        """Stop the threads of every backend plugin this shared backend built (progress, resizes)."""
        for pm in self._managers:
            backend = pm.backend
            if backend is not None:
                try:
                    backend.close()
                except Exception:  # cleanup must not hide the run's outcome
                    log.exception("closing a backend failed")
        self._managers.clear()

    def add_listener(self, listener: Listener) -> bool:
        """Observe every scheduler change; False when this backend cannot be observed in-process."""
        return False

    def diagnostic(self, headline: str) -> str:
        return f"{headline}\n(the {self.name} backend gives no in-process diagnostic)"

    def close(self) -> None:
        """Release what this shared backend started (idempotent)."""

    def _options(self) -> dict[str, Any]:
        return dict(self.backend_options)


class LocalSharedBackend(SharedBackend):
    name = "local"

    def __init__(
        self,
        scenario: Scenario,
        backend_options: dict[str, Any] | None = None,
        autoload: bool | None = None,
        *,
        durable_demand: bool = True,
        resize_timeout_s: float = 60.0,
        policy: str | None = None,
    ) -> None:
        super().__init__(scenario, backend_options, autoload)
        from rlix_plugin.backends.local import LocalScheduler

        self.scheduler = LocalScheduler(
            scenario.gpus,
            scenario.gpus_per_node,
            durable_demand=durable_demand,
            resize_timeout_s=resize_timeout_s,
            policy=policy or scenario.policy,
        )

    def _options(self) -> dict[str, Any]:
        return {**self.backend_options, "scheduler": self.scheduler}

    def add_listener(self, listener: Listener) -> bool:
        self.scheduler.add_listener(listener)
        return True

    def diagnostic(self, headline: str) -> str:
        return self.scheduler.diagnostic(headline)

    def snapshot(self) -> dict[str, Any]:
        return self.scheduler.snapshot()

    def close(self) -> None:
        self.close_backends()
        self.scheduler.close()


class RaySharedBackend(SharedBackend):
    """Pipelines of this process on the cluster's shared scheduler actor.

    ``backend_options`` are :func:`rlix_plugin.ray.connect`'s (``address``, ``init_options``,
    ...); the pool size comes from the scenario. With no ``address`` and no running Ray, a local
    cluster is started for the run and shut down at :meth:`close`. Every pipeline's manager reuses
    one connection (``client=``).
    """

    name = "ray"

    def __init__(
        self,
        scenario: Scenario,
        backend_options: dict[str, Any] | None = None,
        autoload: bool | None = None,
        *,
        resize_timeout_s: float = 60.0,
        policy: str | None = None,
    ) -> None:
        super().__init__(scenario, backend_options, autoload)
        from rlix_plugin.hookspecs import BackendUnavailableError

        try:
            import ray

            from rlix_plugin.ray import connect
        except ImportError as exc:
            raise BackendUnavailableError(
                f"rlix backend 'ray' is not available ({exc}); install 'rlix-plugin[ray]'"
            ) from exc
        self._ray = ray
        self._started_ray = not ray.is_initialized()
        options = dict(self.backend_options)
        options.setdefault("address", None)  # RAY_ADDRESS, else a local cluster for this run
        options.setdefault("init_options", {"include_dashboard": False, "logging_level": "ERROR"})
        self.client = connect(
            num_gpus=scenario.gpus,
            gpus_per_node=scenario.gpus_per_node,
            resize_timeout_s=resize_timeout_s,
            policy=policy or scenario.policy,
            **options,
        )

    def plugin_manager(self) -> RlixPluginManager:
        pm = get_plugin_manager(self.name, backend_options={"client": self.client}, autoload=self.autoload)
        self._managers.append(pm)
        return pm

    def diagnostic(self, headline: str) -> str:
        try:
            return str(self.client.diagnostic(headline, timeout_s=10.0))
        except Exception as exc:
            return f"{headline}\n(the scheduler actor did not answer: {exc!r})"

    def close(self) -> None:
        try:
            self.close_backends()  # unregisters this run's pipelines, stops progress threads
        finally:
            if self._started_ray and self._ray.is_initialized():
                self._ray.shutdown()
                self._started_ray = False


def open_shared_backend(
    backend: str,
    scenario: Scenario,
    *,
    backend_options: dict[str, Any] | None = None,
    autoload: bool | None = None,
    durable_demand: bool = True,
    resize_timeout_s: float = 60.0,
    policy: str | None = None,
) -> SharedBackend:
    """The shared backend for ``backend`` (``local`` or ``ray``).

    :raises InvalidRequestError: an unknown backend name.
    """
    from rlix_plugin.backends import check_backend_name
    from rlix_plugin.hookspecs import InvalidRequestError

    name = check_backend_name(backend)
    if name == "local":
        return LocalSharedBackend(
            scenario,
            backend_options,
            autoload,
            durable_demand=durable_demand,
            resize_timeout_s=resize_timeout_s,
            policy=policy,
        )
    if name == "ray":
        if not durable_demand:
            raise InvalidRequestError("pre-fix demand semantics exist only for the local backend")
        return RaySharedBackend(scenario, backend_options, autoload, resize_timeout_s=resize_timeout_s, policy=policy)
    raise InvalidRequestError(f"backend {backend!r} cannot run scenarios; choose one of: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "SharedBackend", "LocalSharedBackend", "RaySharedBackend", "open_shared_backend"]
