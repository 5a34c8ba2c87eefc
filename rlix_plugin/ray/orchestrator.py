"""The orchestrator: ``rlix:orchestrator`` in namespace ``rlix``, the pipelines' front door.

It allocates pipeline ids, registers and admits pipelines, and -- as operator actions, with the
operator credential -- kills a pipeline and every named actor in its namespace, and shuts the
whole deployment down. It calls the scheduler;
the scheduler never calls it. Only starting, stopping and killing go through it, so while it is
down running pipelines keep requesting, reporting and releasing as before, and
:func:`rlix_plugin.ray.client.connect` starts a new one for the next pipeline.

Admission policy today: admit at once, unless an operator is draining the scheduler.

It survives a scheduler restart: it keeps no scheduler handle it has not just looked up, and a
call the restart interrupts is made again against the restarted actor (registrations carry the
caller's registration key, so a retried one is answered, not refused).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from rlix_plugin.backends.port import Registration
from rlix_plugin.hookspecs import SchedulerUnavailableError

from .calls import RETRY_PAUSES_S, unwrap
from .kill import kill_namespace
from .names import HEAD_NODE_RESOURCE, NAMESPACE, SCHEDULER_NAME

log = logging.getLogger(__name__)

#: Longest the orchestrator keeps calling a scheduler that is restarting.
CALL_TIMEOUT_S = 30.0

#: Options of the orchestrator actor. Why each value:
ORCHESTRATOR_OPTIONS: dict[str, Any] = {
    # A restart would come back with an empty id counter and its callers would not know. It holds
    # nothing a running pipeline needs (unlike the scheduler, which is restarted and rehydrated),
    # so when it dies connect() simply starts a new one.
    "max_restarts": 0,
    # Registering or killing twice is not harmless (a second register is refused, a second kill
    # may hit the next run's actors); callers see the error instead.
    "max_task_retries": 0,
    # Control-plane calls that each wait on at most one scheduler call or a few kills. 64 lets a
    # sweep start or stop dozens of pipelines at once without one slow kill queuing the others;
    # nothing on a hot path comes here.
    "max_concurrency": 64,
    # Bookkeeping only: no CPU slot taken from the pipelines.
    "num_cpus": 0,
    # Outlives the driver that happened to start it; one per cluster.
    "lifetime": "detached",
    # Next to the scheduler, on the node that lives as long as the cluster.
    "resources": {HEAD_NODE_RESOURCE: 0.001},
}


class Orchestrator:
    """Front door for pipelines. Every method is a coroutine; Ray lookups run in a thread so that
    the actor's event loop keeps serving other calls."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._allocated: set[str] = set()
        self._killed: dict[str, list[str]] = {}
        self._started_at = time.time()
        self._scheduler_handle: Any = None

    async def _scheduler(self) -> Any:
        if self._scheduler_handle is None:
            try:
                self._scheduler_handle = await asyncio.to_thread(ray.get_actor, SCHEDULER_NAME, namespace=NAMESPACE)
            except ValueError:
                raise SchedulerUnavailableError(
                    f"no scheduler actor {SCHEDULER_NAME!r} in namespace {NAMESPACE!r}"
                ) from None
        return self._scheduler_handle

    async def _call_scheduler(self, method: str, *args: Any, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        """Call the scheduler, through its restarts: a call a restart interrupted is made again
        (every call made here is safe to repeat), and a handle to an actor that is gone for good
        is dropped, so that the next call looks the name up again."""
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            scheduler = await self._scheduler()
            try:
                return await getattr(scheduler, method).remote(*args)
            except RayTaskError as exc:
                raise unwrap(exc) from None
            except RayActorError as exc:
                if isinstance(exc, ActorDiedError):
                    self._scheduler_handle = None  # replaced or gone: look the name up again
                if time.monotonic() >= deadline:
                    raise SchedulerUnavailableError(f"the scheduler actor is gone: {exc}") from None
            await asyncio.sleep(RETRY_PAUSES_S[min(attempt, len(RETRY_PAUSES_S) - 1)])
            attempt += 1

    # -- pipelines ----------------------------------------------------------------------------------

    async def allocate_pipeline_id(self, prefix: str = "pipeline") -> str:
        """A pipeline id not registered on the scheduler and never handed out by this actor."""
        registered = set((await self._call_scheduler("describe"))["pipelines"])
        while True:
            candidate = f"{prefix}-{next(self._ids)}"
            if candidate not in registered and candidate not in self._allocated:
                self._allocated.add(candidate)
                return candidate

    async def register_pipeline(
        self, registration: Registration, coordinator: Any, resize_token: str, registration_key: str | None = None
    ) -> str:
        """Register and admit the pipeline on the scheduler; returns its lease."""
        lease = await self._call_scheduler(
            "register_pipeline", registration, coordinator, resize_token, registration_key
        )
        self._allocated.add(registration.pipeline_id)
        return str(lease)

    async def kill_pipeline(
        self, pipeline_id: str, operator: str | None, reason: str = "killed by an operator"
    ) -> list[str]:
        """Kill every named actor in the pipeline's namespace, then unregister it (an operator
        action). Killing first means its GPUs are handed to others only once the processes using
        them are gone, never while they may still hold memory. Returns the names that were in the
        namespace."""
        await self._call_scheduler("check_operator", operator, f"killing pipeline {pipeline_id!r}")
        names = await kill_namespace(pipeline_id)
        try:
            await self._call_scheduler("unregister_pipeline", pipeline_id, None, reason, operator)
        except SchedulerUnavailableError:
            log.warning("scheduler unavailable while killing %s; its actors are killed anyway", pipeline_id)
        self._killed[pipeline_id] = names
        return names

    async def shutdown(self, operator: str | None) -> dict[str, Any]:
        """Kill every registered pipeline and the scheduler (an operator action). The caller kills
        this actor after."""
        await self._call_scheduler("check_operator", operator, "shutting the rlix control plane down")
        pipelines: list[str] = []
        try:
            pipelines = list((await self._call_scheduler("describe"))["pipelines"])
        except SchedulerUnavailableError:
            pass
        killed = {pid: await self.kill_pipeline(pid, operator, "rlix shutdown") for pid in pipelines}
        try:
            # Its persisted state goes first: a deliberate stop leaves nothing to restart from.
            await self._call_scheduler("retire", operator)
            ray.kill(await self._scheduler(), no_restart=True)
        except SchedulerUnavailableError:
            pass
        self._scheduler_handle = None
        return {"pipelines": killed}

    async def describe(self) -> dict[str, Any]:
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "started_at": self._started_at,
            "allocated": sorted(self._allocated),
            "killed": dict(self._killed),
        }

    async def ping(self) -> str:
        return "ok"


#: The actor class; :func:`rlix_plugin.ray.client.connect` creates it with ``ORCHESTRATOR_OPTIONS``.
OrchestratorActorClass = ray.remote(Orchestrator)

__all__ = ["ORCHESTRATOR_OPTIONS", "Orchestrator", "OrchestratorActorClass"]
