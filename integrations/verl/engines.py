"""Supply side for verl: put a pipeline's rollout replicas to sleep and wake them.

DP rank ``i`` of the pipeline's ``actor_infer`` cluster is verl's rollout replica ``i`` (one
inference server on ``rollout TP × DP × PP`` GPUs). :class:`VerlEngines` keeps four things in
step: which replicas are awake, which servers verl's load balancer routes requests to, the
weights (and their version) each awake replica serves, and which submission gates are closed.

Waking goes through the weight-update path, never a bare ``wake_up``: verl's sync trainer runs
its checkpoint engine with the ``naive`` backend, whose sleep frees the weights. That update is a
collective over every training rank, and as verl ships it wakes *every* colocated replica; the
:class:`~.weight_sync.SyncFilter` narrows it to the replicas being woken, so a partial wake
allocates nothing on the other replicas' GPUs (which the scheduler may have given to another
job) and leaves replicas already serving those weights alone. A replica still serving older
weights is parked (its requests aborted, to be re-sent) while it is updated.

Sleeping a replica takes it out of the load balancer first, then aborts its in-flight requests
with ``reject_request=True``; the trainer gives verl's abort-aware client
(``FullyAsyncLLMServerClient``) to the agent loop, which re-sends an aborted request, with the
tokens it already has, to a replica that is still awake.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlix_plugin.integrations.verl.weight_sync import SyncFilter, wait_all
from rlix_plugin.supply import PipelineEngines

if TYPE_CHECKING:
    from rlix_plugin import Hooks

log = logging.getLogger(__name__)

#: Longest wait for one load-balancer call (a small in-memory update on a Ray actor).
LOAD_BALANCER_TIMEOUT_S = 60.0


def run_sync(value: Any) -> Any:
    """Return ``value``, or its result if it is awaitable.

    verl mixes plain methods, coroutines and ``auto_await`` wrappers; the resize hook is called
    from a plain thread (the backend's resize worker or the trainer), where ``asyncio.run`` is
    right. If a loop is already running in this thread, the coroutine runs on a fresh loop in a
    helper thread instead, since blocking the running loop on itself would deadlock.
    """
    if not inspect.isawaitable(value):
        return value

    async def wait() -> Any:
        return await value

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(wait())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="rlix-verl-engines")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")


async def _each(calls: Sequence[Any]) -> list[Any]:
    return list(await asyncio.gather(*calls))


def _call_actor(method: Any, *args: Any) -> Any:
    """``method.remote(*args)`` and wait for it (a bounded wait: the load balancer is local)."""
    return wait_all([method.remote(*args)], LOAD_BALANCER_TIMEOUT_S)[0]


@dataclass
class VerlRollout:
    """The verl objects a resize acts on, taken from the trainer after ``_setup``.

    ``replicas``           verl ``RolloutReplica`` objects in replica-rank order.
    ``checkpoint_manager`` verl's ``CheckpointEngineManager`` (its ``update_weights`` wakes).
    ``load_balancer``      the global load balancer actor (``add_servers`` / ``remove_servers``).
    ``weight_version``     returns the version of the trainer's current weights, the one verl
                           tags a rollout with (``s - 1`` while step ``s`` rolls out).
    ``sync_filter``        narrows a weight update to some replicas
                           (:class:`~.weight_sync.SyncFilter` over the training ranks).
    """

    replicas: Sequence[Any]
    checkpoint_manager: Any
    load_balancer: Any
    weight_version: Callable[[], int]
    sync_filter: SyncFilter

    @classmethod
    def from_trainer(cls, trainer: Any) -> VerlRollout:
        manager = trainer.llm_server_manager
        return cls(
            replicas=list(manager.get_replicas()),
            checkpoint_manager=trainer.checkpoint_manager,
            load_balancer=manager.global_load_balancer,
            weight_version=lambda: int(trainer.rlix_weight_version),
            sync_filter=SyncFilter(trainer.actor_rollout_wg.workers),
        )


class VerlEngines(PipelineEngines):
    """The ``rlix_resize_infer`` implementation for one verl pipeline's rollout replicas.

    Registered on the pipeline's plugin manager; answers ``None`` for other pipelines. Every
    public method holds one lock, so a scheduler resize and the trainer's own sleep / wake never
    interleave.
    """

    def __init__(self, pipeline_id: str, hooks: Hooks | None = None) -> None:
        self.pipeline_id = pipeline_id
        self._hooks = hooks
        self._lock = threading.RLock()
        self._rollout: VerlRollout | None = None
        self._awake: set[int] = set()
        # Weight version each awake replica serves.
        self._versions: dict[int, int] = {}
        # Ranks whose server gate was closed by an abort with reject_request=True: verl's
        # naive weight update does not reopen it, so the wake must.
        self._gated: set[int] = set()

    # -- binding ----------------------------------------------------------------------------------

    def bind(self, rollout: VerlRollout) -> None:
        """Attach the replicas, which verl's ``_setup`` leaves all asleep.

        verl's load balancer starts with every server in it; under a scheduler only awake
        replicas may be routed to, so all are taken out here and put back as they wake.
        """
        with self._lock:
            rollout.sync_filter.install()
            self._rollout = rollout
            self._awake = set()
            self._versions = {}
            self._gated = set()
            _call_actor(rollout.load_balancer.remove_servers, self._addresses(range(self.dp_size)))

    @property
    def dp_size(self) -> int:
        return len(self._rollout.replicas) if self._rollout is not None else 0

    @property
    def awake(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(sorted(self._awake))

    # -- the hook: rlix_resize_infer comes from PipelineEngines ----------------------------------

    def resize(self, remove: Sequence[int] = (), add: Sequence[int] = (), *, retract: bool = True) -> tuple[int, ...]:
        """Sleep ``remove``, then wake ``add``; return the awake ranks, sorted. Idempotent.

        ``retract``: abort the in-flight requests of the replicas put to sleep (a preemption);
        the trainer's own end-of-rollout sleep passes ``False``, as verl's sync trainer does not
        abort there.

        :raises ValueError: a rank outside ``0 .. dp_size - 1``.
        :raises RuntimeError: a wake before the replicas exist (before verl's ``_setup``).
        """
        with self._lock:
            remove_set, add_set = set(remove), set(add)
            if self._rollout is None:
                if add_set:
                    raise RuntimeError(
                        f"pipeline {self.pipeline_id!r}: cannot wake dp ranks {sorted(add_set)}: "
                        "verl's rollout replicas are not built yet"
                    )
                return ()
            bad = sorted(r for r in remove_set | add_set if not 0 <= r < self.dp_size)
            if bad:
                raise ValueError(f"pipeline {self.pipeline_id!r} has dp ranks 0..{self.dp_size - 1}; got {bad}")
            to_sleep = sorted((self._awake & remove_set) - add_set)
            target = (self._awake - remove_set) | add_set
            to_wake = sorted(target - self._awake)
            if to_sleep:
                self._sleep(to_sleep, retract)
            if to_wake:
                self._wake(to_wake, target)
            if to_sleep or to_wake:
                log.info(
                    "rlix: pipeline %r resized: slept %s, woke %s; awake now %s",
                    self.pipeline_id,
                    to_sleep,
                    to_wake,
                    sorted(self._awake),
                )
            return tuple(sorted(self._awake))

    # -- what the trainer calls -------------------------------------------------------------------

    def wake_all(self) -> tuple[int, ...]:
        """Wake every replica with the latest weights (verl's own sync wake, used when no
        scheduler decides)."""
        with self._lock:
            if self._rollout is None:
                raise RuntimeError(f"pipeline {self.pipeline_id!r}: rollout replicas are not built yet")
            return self.resize((), tuple(range(self.dp_size)))

    def sleep_all(self) -> tuple[int, ...]:
        """Put every awake replica to sleep (the end of a sync rollout)."""
        with self._lock:
            return self.resize(tuple(self._awake), (), retract=False)

    # -- verl calls -------------------------------------------------------------------------------

    def _addresses(self, ranks: Sequence[int]) -> list[str]:
        assert self._rollout is not None
        return [self._rollout.replicas[r].server_address for r in ranks]

    def _sleep(self, ranks: Sequence[int], retract: bool) -> None:
        rollout = self._rollout
        assert rollout is not None
        replicas = [rollout.replicas[r] for r in ranks]
        # Out of the load balancer first, so no new request lands on a replica going to sleep.
        _call_actor(rollout.load_balancer.remove_servers, self._addresses(ranks))
        aborted: list[Any] = [None] * len(ranks)
        if retract:
            aborted = run_sync(_each([r.abort_all_requests(reject_request=True) for r in replicas]))
            self._gated |= set(ranks)
        run_sync(_each([r.sleep() for r in replicas]))
        self._awake -= set(ranks)
        for rank in ranks:
            self._versions.pop(rank, None)
        for rank, result in zip(ranks, aborted, strict=True):
            retracted = int(result.get("aborted_count", 0)) if isinstance(result, dict) else 0
            if retracted and self._hooks is not None:
                try:
                    self._hooks.report_preempt(
                        pipeline_id=self.pipeline_id,
                        dp_rank=rank,
                        worker_url=rollout.replicas[rank].server_address,
                        retracted=retracted,
                    )
                except Exception as exc:  # informational: never fail a resize over it
                    log.warning("rlix: preempt report for dp rank %d lost: %r", rank, exc)

    def _wake(self, ranks: Sequence[int], target: set[int]) -> None:
        rollout = self._rollout
        assert rollout is not None
        version = rollout.weight_version()
        stale = sorted(r for r in self._awake if self._versions.get(r) != version)
        synced = sorted(set(ranks) | set(stale))
        # A serving replica with older weights is parked (not rejected: it resumes right after).
        if stale:
            run_sync(_each([rollout.replicas[r].abort_all_requests() for r in stale]))
        try:
            with rollout.sync_filter.only(synced) as skipped:
                run_sync(rollout.checkpoint_manager.update_weights(version))
        finally:
            reopen = sorted((self._gated & set(ranks)) | set(stale))
            if reopen:
                run_sync(_each([rollout.replicas[r].resume_generation() for r in reopen]))
        self._gated -= set(ranks)
        self._awake = set(target)
        self._versions.update({rank: version for rank in synced})
        servers = {rollout.replicas[r].server_address: rollout.replicas[r].server_handle for r in ranks}
        _call_actor(rollout.load_balancer.add_servers, servers)
        if skipped:
            held = sorted({s.replica_rank for s in skipped})
            log.info(
                "rlix: pipeline %r: weights v%d went to replicas %s only; replicas %s stayed asleep "
                "(per training rank at most %d tensors, %d bytes, largest %d bytes, %.3fs of all-gather, dropped)",
                self.pipeline_id,
                version,
                synced,
                held,
                max(s.tensors for s in skipped),
                max(s.bytes for s in skipped),
                max(s.largest for s in skipped),
                max(s.seconds for s in skipped),
            )


__all__ = ["LOAD_BALANCER_TIMEOUT_S", "VerlEngines", "VerlRollout", "run_sync"]
