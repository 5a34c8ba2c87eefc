"""``connect()``: attach to (or start) Ray and the rlix actors, and call them.

Works the same from a driver, an actor or a task: inside Ray (actor or task) Ray is already
initialised and ``address`` is ignored; a driver that has not called ``ray.init`` is connected to
``address`` (``"auto"``: the running cluster; ``None``: ``RAY_ADDRESS`` or a new local one). The
rlix actors are found by name in namespace ``rlix`` whatever namespace the caller's job uses, and
created if missing (get-if-exists, so concurrent first callers end up sharing one).

Stale state (docs/design.md, failure mode F10): detached actors outlive the driver that made
them. A scheduler left by an earlier run is reused when compatible. One that speaks another
protocol version and serves no pipeline is replaced; one whose pool or options differ from what
the caller asks for explicitly is refused with a message naming both settings, unless the caller
passes ``replace=True`` with the operator credential and it serves no pipeline. Pipelines of
crashed runs do not linger: the scheduler unregisters a pipeline when its coordinator (owned by
the pipeline's process) dies.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import ray
from ray.exceptions import RayActorError

from rlix_plugin import arguments as check
from rlix_plugin.backends.port import Registration
from rlix_plugin.hookspecs import (
    Grant,
    InvalidRequestError,
    RlixError,
    SchedulerTimeoutError,
    SchedulerUnavailableError,
)
from rlix_plugin.scheduler.leases import operator_digest
from rlix_plugin.scheduler.policy import DEFAULT_POLICY, get_policy
from rlix_plugin.scheduler.rehydrate import PipelineReport

from .calls import GRACE_S, call_through_restarts, wait
from .names import NAMESPACE, ORCHESTRATOR_NAME, PROTOCOL, SCHEDULER_NAME
from .orchestrator import ORCHESTRATOR_OPTIONS, OrchestratorActorClass
from .scheduler_actor import SCHEDULER_OPTIONS, SchedulerActorClass

log = logging.getLogger(__name__)

#: Longest wait for a control-plane call (describe, register, unregister, status): these never
#: wait for GPUs, so anything longer means the actor is stuck.
CONTROL_TIMEOUT_S = 60.0
#: Longest wait for the diagnostic attached to a timeout: the caller already waited long enough.
DIAGNOSTIC_TIMEOUT_S = 2.0
#: The operator credential's environment variable (see :func:`connect`).
ENV_OPERATOR_TOKEN = "RLIX_OPERATOR_TOKEN"
#: Default per-resize timeout of a new scheduler: long enough for a real engine to load weights
#: and wake, short enough that a hung engine is fenced before its peers notice.
DEFAULT_RESIZE_TIMEOUT_S = 120.0

_connect_lock = threading.Lock()


def new_request_id() -> str:
    """A fresh idempotency key for one blocking call (sent again with each of its retries)."""
    return uuid.uuid4().hex


class RlixClient:
    """Handles to the rlix actors of one Ray cluster, with timeout-bounded calls on them.

    ``scheduler`` and ``orchestrator`` are Ray actor handles (picklable: pass them to actors).
    Scheduler calls ride through scheduler restarts: a call the restart interrupted is made again
    against the restarted actor, with its idempotency key and the time it has left
    (:func:`~.calls.call_through_restarts`). They raise :class:`SchedulerUnavailableError` when
    the scheduler is gone for good and :class:`SchedulerTimeoutError` when it does not answer in
    time.
    """

    def __init__(self, scheduler: Any, orchestrator: Any, info: dict[str, Any]) -> None:
        self.scheduler = scheduler
        self._orchestrator = orchestrator
        self.info = info
        #: The newest scheduler epoch this client heard of (see :meth:`saw_epoch`).
        self.epoch = int(info.get("epoch") or 0)

    def saw_epoch(self, epoch: int) -> None:
        """A restarted scheduler (``epoch``) is serving: calls still waiting on the one before are
        made again at once instead of waiting for Ray to report that it died."""
        self.epoch = max(self.epoch, int(epoch))

    # -- scheduler calls ----------------------------------------------------------------------------

    def _call(self, method: str, args: Callable[[float], tuple[Any, ...]], timeout_s: float, what: str) -> Any:
        """Call ``method`` within ``timeout_s``, through restarts; ``args(left_s)`` builds the
        arguments of each attempt from the seconds it has left. A wait that runs out here (not
        in the scheduler, which sends its own diagnostic) carries the scheduler's diagnostic if
        it still answers one."""

        def submit(left: float) -> Any:
            return getattr(self.scheduler, method).remote(*args(left))

        try:
            return call_through_restarts(
                submit, timeout_s, what, SCHEDULER_NAME, self._scheduler_gone, lambda: self.epoch
            )
        except SchedulerTimeoutError as exc:
            if exc.diagnostic:
                raise
            try:
                diagnostic = wait(
                    self.scheduler.diagnostic.remote("scheduler state now:"),
                    DIAGNOSTIC_TIMEOUT_S,
                    "diagnostic",
                    SCHEDULER_NAME,
                )
            except RlixError as inner:
                diagnostic = f"(no diagnostic either: {inner}; the scheduler's event loop may be stuck)"
            raise SchedulerTimeoutError(str(exc), diagnostic) from None

    def _scheduler_gone(self) -> bool:
        """Whether the scheduler this client calls is gone for good: its name resolves to nothing,
        or to another actor (an operator replaced it; that one does not know this client's
        pipelines)."""
        current = _lookup(SCHEDULER_NAME)
        return current is None or current != self.scheduler

    def _blocking(self, method: str, head: tuple[Any, ...], timeout_s: float, tail: tuple[Any, ...], what: str) -> Any:
        """A blocking call ``method(*head, actor_timeout, *tail)``: each attempt gets the original
        timeout minus the time already spent, the client waits a grace longer."""
        return self._call(method, lambda left: (*head, max(0.001, left - GRACE_S), *tail), timeout_s + GRACE_S, what)

    def signal_demand(
        self,
        pipeline_id: str,
        lease: str,
        rollout_id: int,
        step_target: int,
        timeout_s: float,
        request_id: str | None = None,
    ) -> Grant:
        return self._blocking(
            "signal_demand",
            (pipeline_id, lease, rollout_id, step_target),
            timeout_s,
            (request_id or new_request_id(),),
            f"signal_demand({pipeline_id}, rollout {rollout_id})",
        )

    def request_gpus(
        self,
        pipeline_id: str,
        lease: str,
        cluster: str,
        priority: int,
        step_target: int | None,
        timeout_s: float,
        request_id: str | None = None,
    ) -> Grant:
        return self._blocking(
            "request_gpus",
            (pipeline_id, lease, cluster, priority, step_target),
            timeout_s,
            (request_id or new_request_id(),),
            f"request_gpus({pipeline_id}_{cluster})",
        )

    def release(self, pipeline_id: str, lease: str, cluster: str) -> None:
        """Give a cluster back; for the generation cluster, once its workers sleep (bounded by the
        scheduler's resize timeout)."""
        timeout_s = float(self.info.get("resize_timeout_s", DEFAULT_RESIZE_TIMEOUT_S)) + 10.0
        self._blocking("release", (pipeline_id, lease, cluster), timeout_s, (), f"release({pipeline_id}_{cluster})")

    def reattach(
        self,
        pipeline_id: str,
        lease: str,
        resize_token: str,
        report: PipelineReport,
        coordinator: Any = None,
        timeout_s: float = CONTROL_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Reattach a pipeline to a restarted scheduler: its resizes go to ``coordinator`` with
        ``resize_token`` from now on, and its state is reconciled with ``report``."""
        return self._call(
            "reattach",
            lambda _: (pipeline_id, lease, resize_token, report, coordinator),
            timeout_s,
            f"reattach({pipeline_id})",
        )

    def describe(self, timeout_s: float = CONTROL_TIMEOUT_S) -> dict[str, Any]:
        return self._call("describe", lambda _: (), timeout_s, "describe")

    def snapshot(self, timeout_s: float = CONTROL_TIMEOUT_S) -> dict[str, Any]:
        """The scheduler's full view: pipelines, allocations, open demand, progress, queue."""
        return self._call("snapshot", lambda _: (), timeout_s, "snapshot")

    def events(
        self,
        since: int = 0,
        pipeline: str | None = None,
        limit: int = 1000,
        wait_s: float = 0.0,
        timeout_s: float = CONTROL_TIMEOUT_S,
    ) -> dict[str, Any]:
        """The decision log after ``since`` (:meth:`SchedulerActor.events
        <rlix_plugin.ray.scheduler_actor.SchedulerActor.events>`); ``wait_s`` long-polls."""
        return self._call("events", lambda _: (since, pipeline, limit, wait_s), timeout_s + wait_s, "events")

    def diagnostic(self, headline: str = "", timeout_s: float = 10.0) -> str:
        return str(self._call("diagnostic", lambda _: (headline,), timeout_s, "diagnostic"))

    def is_registered(self, pipeline_id: str, timeout_s: float = CONTROL_TIMEOUT_S) -> bool:
        return bool(self._call("is_registered", lambda _: (pipeline_id,), timeout_s, "is_registered"))

    def unregister_pipeline(
        self, pipeline_id: str, lease: str, reason: str, timeout_s: float = CONTROL_TIMEOUT_S
    ) -> None:
        """Straight to the scheduler: a pipeline must be able to give its GPUs back while the
        orchestrator is down. (Unregistering what is gone does nothing: safe to retry.)"""
        self._call(
            "unregister_pipeline",
            lambda _: (pipeline_id, lease, reason),
            timeout_s,
            f"unregister_pipeline({pipeline_id})",
        )

    # -- orchestrator calls -------------------------------------------------------------------------

    @property
    def orchestrator(self) -> Any:
        if self._orchestrator is None:
            self._orchestrator = _get_or_create(ORCHESTRATOR_NAME, OrchestratorActorClass, ORCHESTRATOR_OPTIONS, ())
        return self._orchestrator

    def _orchestrate(self, method: str, *args: Any, timeout_s: float = CONTROL_TIMEOUT_S) -> Any:
        """Call the orchestrator; if it died since this client found it, start a new one and try
        once more (it holds nothing a retry would lose)."""
        for attempt in (1, 2):
            ref = getattr(self.orchestrator, method).remote(*args)
            try:
                return wait(ref, timeout_s, method, ORCHESTRATOR_NAME)
            except SchedulerUnavailableError:
                if attempt == 2 or _lookup(ORCHESTRATOR_NAME) is not None and _alive(self._orchestrator):
                    raise  # the scheduler behind it is the one that is gone
                log.warning("the rlix orchestrator is gone; starting a new one")
                self._orchestrator = None
        raise AssertionError("unreachable")

    def register_pipeline(
        self, registration: Registration, coordinator: Any, resize_token: str, registration_key: str | None = None
    ) -> str:
        """Register and admit through the orchestrator (the front door); returns the lease.
        ``registration_key`` (a secret of the caller's) makes the call safe to retry: the same
        registration again, with the same key, gets a fresh lease instead of a refusal."""
        return str(
            self._orchestrate(
                "register_pipeline", registration, coordinator, resize_token, registration_key or new_request_id()
            )
        )

    def allocate_pipeline_id(self, prefix: str = "pipeline") -> str:
        return str(self._orchestrate("allocate_pipeline_id", prefix))

    def kill_pipeline(self, pipeline_id: str, operator: str | None, reason: str = "killed by an operator") -> list[str]:
        """Kill every named actor in the pipeline's namespace and unregister it (an operator
        action: ``operator`` is the credential the scheduler was started with)."""
        return list(self._orchestrate("kill_pipeline", pipeline_id, operator, reason))

    def drain(self, operator: str | None, timeout_s: float = CONTROL_TIMEOUT_S) -> list[str]:
        """Refuse new registrations from now on (an operator action); returns who is registered."""
        return list(self._call("drain", lambda _: (operator,), timeout_s, "drain"))

    def shutdown(self, operator: str | None, timeout_s: float = CONTROL_TIMEOUT_S) -> dict[str, Any]:
        """Kill every pipeline, the scheduler and the orchestrator (an operator action)."""
        result = self._orchestrate("shutdown", operator, timeout_s=timeout_s)
        ray.kill(self.orchestrator, no_restart=True)
        self._orchestrator = None
        return dict(result)


def _lookup(name: str) -> Any:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def _alive(handle: Any) -> bool:
    try:
        ray.get(handle.ping.remote(), timeout=5.0)
        return True
    except RayActorError:
        return False
    except Exception:
        return True  # slow is not dead


def _get_or_create(
    name: str, actor_class: Any, options: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None = None
) -> Any:
    return actor_class.options(name=name, namespace=NAMESPACE, get_if_exists=True, **options).remote(
        *args, **(kwargs or {})
    )


def _ensure_ray(address: str | None, init_options: Mapping[str, Any] | None) -> None:
    if ray.is_initialized():
        return  # a driver that called ray.init, or code inside an actor or task
    try:
        ray.init(address=address, **dict(init_options or {}))
    except ConnectionError as exc:
        raise SchedulerUnavailableError(
            f"no Ray cluster found at {address!r} ({exc}); start one with `ray start --head`, "
            "or call connect(address=None) to start a local one"
        ) from None


def detect_pool() -> tuple[int, int]:
    """(GPUs in the cluster, GPUs per node) from Ray's alive nodes. Global GPU ids assume
    identical nodes: node ``k`` holds ids ``k*gpus_per_node ..``."""
    per_node = [int(node["Resources"].get("GPU", 0)) for node in ray.nodes() if node.get("Alive")]
    per_node = [n for n in per_node if n > 0]
    if not per_node:
        return 0, 0
    return sum(per_node), max(per_node)


def _wanted(
    num_gpus: int | None, gpus_per_node: int | None, resize_timeout_s: float | None, policy: str | None
) -> dict[str, Any]:
    wanted: dict[str, Any] = {"protocol": PROTOCOL}
    if policy is not None:
        wanted["policy"] = get_policy(policy).name
    if num_gpus is not None:
        wanted["num_gpus"] = num_gpus
    if gpus_per_node is not None:
        wanted["gpus_per_node"] = gpus_per_node
    if resize_timeout_s is not None:
        wanted["resize_timeout_s"] = float(resize_timeout_s)
    return wanted


def _mismatch(info: dict[str, Any], wanted: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {key: (info.get(key), value) for key, value in wanted.items() if info.get(key) != value}


def _create_scheduler(
    num_gpus: int | None,
    gpus_per_node: int | None,
    resize_timeout_s: float | None,
    policy: str | None,
    operator: str | None,
    lifetimes: dict[str, float],
) -> Any:
    detected_gpus, detected_per_node = detect_pool()
    gpus = num_gpus if num_gpus is not None else detected_gpus
    if not gpus:
        raise InvalidRequestError(
            "the Ray cluster has no GPUs to schedule; pass num_gpus= to connect() (logical GPUs work)"
        )
    per_node = gpus_per_node if gpus_per_node is not None else (detected_per_node or gpus)
    timeout = float(resize_timeout_s) if resize_timeout_s is not None else DEFAULT_RESIZE_TIMEOUT_S
    name = get_policy(policy).name if policy is not None else DEFAULT_POLICY
    digest = operator_digest(operator) if operator else None
    return _get_or_create(
        SCHEDULER_NAME, SchedulerActorClass, SCHEDULER_OPTIONS, (gpus, per_node, timeout, name, digest), lifetimes
    )


def operator_token(explicit: str | None = None) -> str | None:
    """The operator credential: ``explicit``, else ``$RLIX_OPERATOR_TOKEN``, else None."""
    token = explicit if explicit is not None else os.environ.get(ENV_OPERATOR_TOKEN) or None
    return token


def _replace(handle: Any, info: dict[str, Any], mismatch: dict[str, tuple[Any, Any]], operator: str | None) -> None:
    """Replace a running scheduler whose settings differ from what was asked: automatically only
    when it speaks an older protocol and serves nobody (it cannot be used anyway); otherwise only
    as an operator action, and never while pipelines use it."""
    differences = ", ".join(f"{k}: running {have!r}, asked {want!r}" for k, (have, want) in mismatch.items())
    if info.get("pipelines"):
        raise InvalidRequestError(
            f"the rlix scheduler on this cluster serves pipelines {info['pipelines']} and differs from what "
            f"was asked ({differences}); connect without those options, or wait until they finish "
            "(`rlix-plugin status` shows what it serves)"
        )
    if set(mismatch) != {"protocol"}:
        if operator is None:
            raise InvalidRequestError(
                f"the rlix scheduler on this cluster differs from what was asked ({differences}); connect "
                "without those options, or replace it as an operator (connect(replace=True) with "
                f"{ENV_OPERATOR_TOKEN} set)"
            )
        wait(
            handle.check_operator.remote(operator, "replacing the scheduler"),
            CONTROL_TIMEOUT_S,
            "check_operator",
            SCHEDULER_NAME,
        )
    log.warning("replacing an idle rlix scheduler (%s)", differences)
    ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + 30.0
    while _lookup(SCHEDULER_NAME) is not None:  # the name is released asynchronously
        if time.monotonic() > deadline:
            raise SchedulerUnavailableError("the stale rlix scheduler did not go away within 30s")
        time.sleep(0.05)


def connect(
    address: str | None = "auto",
    create_if_missing: bool = True,
    *,
    num_gpus: int | None = None,
    gpus_per_node: int | None = None,
    resize_timeout_s: float | None = None,
    policy: str | None = None,
    init_options: Mapping[str, Any] | None = None,
    replace: bool = False,
    operator: str | None = None,
    fence_grace_s: float | None = None,
    liveness_timeout_s: float | None = None,
    replace_stale: bool = True,
) -> RlixClient:
    """Attach to (or start) Ray and the rlix actors; return a :class:`RlixClient`.

    :param address: For a driver that has not called ``ray.init``: ``"auto"`` (the running
        cluster) or ``None`` (``RAY_ADDRESS``, else start a local cluster), or an address.
        Ignored inside actors and tasks.
    :param create_if_missing: Start the scheduler and orchestrator when they are not running;
        with ``False`` a missing scheduler raises :class:`SchedulerUnavailableError`.
    :param num_gpus: Pool size of a new scheduler (default: the cluster's GPUs).
    :param gpus_per_node: GPUs per node of a new scheduler (default: the largest node's GPUs).
    :param resize_timeout_s: Per-resize timeout of a new scheduler (default 120 s).
    :param policy: Sharing policy of a new scheduler (default ``finish_first``; see
        :mod:`rlix_plugin.scheduler.policy`).
    :param init_options: Extra keyword arguments for ``ray.init`` when this call starts Ray.
    :param replace: Replace a running scheduler that serves nobody and differs from the options
        (an operator action: needs ``operator``).
    :param operator: The operator credential (default ``$RLIX_OPERATOR_TOKEN``). A scheduler this
        call starts keeps it (as a digest) and asks for it for every operator action; one started
        without it refuses them.
    :param fence_grace_s: How long a new scheduler lets a fenced pipeline keep its GPUs (default
        30 s) before it reclaims them.
    :param liveness_timeout_s: How long a new scheduler waits for a pipeline process's heartbeat
        (its resize poll) before it fences the pipeline as unresponsive (default 60 s).
    :param replace_stale: Replace an idle scheduler that speaks an older protocol (it cannot be
        used anyway). ``False`` for a caller that only reads: such a scheduler is then an error
        and the cluster is left as it is.
    :raises SchedulerUnavailableError: no Ray cluster, or no scheduler and ``create_if_missing``
        is False, or a scheduler of another protocol and ``replace_stale`` is False.
    :raises InvalidRequestError: a running scheduler differs from the explicit options (the
        message names both settings); a cluster without GPUs and no ``num_gpus``.
    :raises NotPipelineOwnerError: ``replace`` with a wrong operator credential.
    """
    with _connect_lock:
        _ensure_ray(address, init_options)
        wanted = _wanted(num_gpus, gpus_per_node, resize_timeout_s, policy)
        for _ in range(3):
            scheduler = _lookup(SCHEDULER_NAME)
            if scheduler is None:
                if not create_if_missing:
                    raise SchedulerUnavailableError(
                        f"no rlix scheduler is running on this Ray cluster (actor {SCHEDULER_NAME!r} in namespace "
                        f"{NAMESPACE!r}); it starts with the first pipeline that uses the ray backend, "
                        "or with rlix_plugin.connect()"
                    )
                lifetimes = {
                    k: float(check.timeout(v, k))
                    for k, v in (("fence_grace_s", fence_grace_s), ("liveness_timeout_s", liveness_timeout_s))
                    if v is not None
                }
                scheduler = _create_scheduler(
                    num_gpus, gpus_per_node, resize_timeout_s, policy, operator_token(operator), lifetimes
                )
            try:
                info = wait(scheduler.describe.remote(), CONTROL_TIMEOUT_S + GRACE_S, "describe", SCHEDULER_NAME)
            except SchedulerUnavailableError:
                continue  # it died between the lookup and the call: look again
            mismatch = _mismatch(info, wanted)
            if not mismatch:
                break
            if not replace_stale:
                raise SchedulerUnavailableError(
                    "the rlix scheduler on this cluster differs from this client ("
                    + ", ".join(f"{k}: running {have!r}, this client {want!r}" for k, (have, want) in mismatch.items())
                    + "); left as it is"
                )
            _replace(scheduler, info, mismatch, operator_token(operator) if replace else None)
        else:
            raise SchedulerUnavailableError("could not start or reach the rlix scheduler (3 attempts)")
        orchestrator = _lookup(ORCHESTRATOR_NAME)
        if orchestrator is None and create_if_missing:
            orchestrator = _get_or_create(ORCHESTRATOR_NAME, OrchestratorActorClass, ORCHESTRATOR_OPTIONS, ())
        return RlixClient(scheduler, orchestrator, info)


__all__ = [
    "CONTROL_TIMEOUT_S",
    "DEFAULT_RESIZE_TIMEOUT_S",
    "ENV_OPERATOR_TOKEN",
    "RlixClient",
    "connect",
    "detect_pool",
    "operator_token",
]
