"""Limit a verl weight update to the rollout replicas the scheduler granted.

verl 0.9.1's sync trainer forces the ``naive`` checkpoint backend (``trainer_base.py:382``): its
``update_weights`` runs on every training rank of the job (``engine_workers.py:728-826``), and in
each rank the rollout adapter (``worker.rollout``, a ``BaseRollout``) is told to resume the
replica's weights, load them, and resume its KV cache. Run as is, a partial wake would wake
every replica of the job, on GPUs the scheduler gave to another job, before the extras could be
put back to sleep.

:class:`SyncFilter` prevents that without changing verl. Once per training rank it wraps that
rank's adapter (in the rank's own process, through Ray's ``__ray_call__``) so that, while a
restriction is set, an adapter whose replica is not allowed

* ignores ``resume`` (neither weights nor KV cache are allocated), and
* drains the weight generator without loading anything.

Draining is required: every tensor the generator yields is an FSDP all-gather over all
training ranks, so every rank must take each one. That gather is the part of a partial wake that
still runs on an ungranted GPU; :class:`SkippedSync` measures it per rank (tensors, bytes, the
largest tensor, seconds). Removing it needs verl: a naive update that takes the target replicas
and exports each tensor to the ranks of those replicas only (a gather to them instead of
``DTensor.full_tensor()`` on every rank).

Outside :meth:`SyncFilter.only` (verl's own weight updates, e.g. around validation with a
colocated reward model) the adapters behave exactly as verl's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Longest wait for one training rank to apply or lift a restriction (an in-memory change).
RESTRICT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SkippedSync:
    """What one ungranted training rank did during a restricted update: it took part in the
    all-gather of ``tensors`` tensors (``bytes`` in all, ``largest`` the biggest) for
    ``seconds`` and dropped each one."""

    replica_rank: int
    tensors: int = 0
    bytes: int = 0
    largest: int = 0
    seconds: float = 0.0


class _AdapterGate:
    """Wraps one rollout adapter's ``resume`` and ``update_weights`` (in the training rank)."""

    def __init__(self, adapter: Any) -> None:
        rank = getattr(adapter, "replica_rank", None)
        if not isinstance(rank, int):
            raise TypeError(
                f"{type(adapter).__name__} has no integer replica_rank; the rlix integration cannot tell "
                "which replica this training rank serves"
            )
        self.adapter = adapter
        self.replica_rank = rank
        self.allowed: frozenset[int] | None = None
        self.skipped: SkippedSync | None = None
        self._resume = adapter.resume
        self._update_weights = adapter.update_weights
        adapter.resume = self.resume
        adapter.update_weights = self.update_weights

    @property
    def held_back(self) -> bool:
        return self.allowed is not None and self.replica_rank not in self.allowed

    async def resume(self, tags: list[str]) -> Any:
        if self.held_back:
            return None
        return await self._resume(tags)

    async def update_weights(self, weights: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.held_back:
            return await self._update_weights(weights, *args, **kwargs)
        started = time.monotonic()
        tensors = total = largest = 0
        async for _, tensor in _each(weights):
            size = int(tensor.numel()) * int(tensor.element_size())
            tensors, total, largest = tensors + 1, total + size, max(largest, size)
        self.skipped = SkippedSync(self.replica_rank, tensors, total, largest, time.monotonic() - started)
        return None


async def _each(weights: Any) -> AsyncIterator[Any]:
    if hasattr(weights, "__aiter__"):
        async for item in weights:
            yield item
    else:
        for item in weights:
            yield item


def _adapters(actor: Any) -> list[Any]:
    """The rollout adapters hosted by one training-rank actor (verl colocates several workers in
    one ``WorkerDict`` actor; the actor-rollout worker holds ``rollout``)."""
    hosts = [actor, *getattr(actor, "worker_dict", {}).values(), *getattr(actor, "fused_worker_dict", {}).values()]
    found = []
    for host in hosts:
        adapter = getattr(host, "rollout", None)
        if adapter is not None and hasattr(adapter, "update_weights") and adapter not in found:
            found.append(adapter)
    return found


def restrict(actor: Any, allowed: tuple[int, ...] | None) -> list[SkippedSync]:
    """Runs inside a training rank (``__ray_call__``): install the gates if needed, set the
    allowed replicas (``None``: all), and return what the gates held back since the last call.

    :raises LookupError: the actor hosts no rollout adapter.
    """
    adapters = _adapters(actor)
    if not adapters:
        raise LookupError(f"{type(actor).__name__} hosts no rollout adapter (no worker with a 'rollout')")
    reports = []
    for adapter in adapters:
        gate = adapter.__dict__.get("_rlix_gate")
        if gate is None:
            gate = _AdapterGate(adapter)
            adapter._rlix_gate = gate
        if gate.skipped is not None:
            reports.append(gate.skipped)
            gate.skipped = None
        gate.allowed = None if allowed is None else frozenset(allowed)
    return reports


class SyncFilter:
    """Restricts verl's weight updates to some replicas, on the job's training ranks.

    :param workers: Ray actor handles of the training ranks (``actor_rollout_wg.workers``).
    """

    def __init__(self, workers: Sequence[Any]) -> None:
        self._workers = list(workers)

    def install(self) -> None:
        """Wrap every rank's adapter now, so a rank that cannot be wrapped fails at bind time."""
        self._restrict_all(None)

    @contextmanager
    def only(self, replica_ranks: Iterable[int]) -> Iterator[list[SkippedSync]]:
        """Within the block, weight updates wake and load only ``replica_ranks``. The list it
        yields is filled, on exit, with one :class:`SkippedSync` per held-back training rank."""
        skipped: list[SkippedSync] = []
        self._restrict_all(tuple(sorted(set(replica_ranks))))
        try:
            yield skipped
        finally:
            skipped.extend(self._restrict_all(None))

    def _restrict_all(self, allowed: tuple[int, ...] | None) -> list[SkippedSync]:
        results = wait_all(
            [worker.__ray_call__.remote(restrict, allowed) for worker in self._workers], RESTRICT_TIMEOUT_S
        )
        return [report for reports in results for report in reports]


def wait_all(results: Sequence[Any], timeout_s: float) -> list[Any]:
    """The values of Ray object refs (waited for at most ``timeout_s``); other values as they
    are (what an actor stand-in returns)."""
    import ray

    refs = [r for r in results if isinstance(r, ray.ObjectRef)]
    values = iter(ray.get(refs, timeout=timeout_s)) if refs else iter(())
    return [next(values) if isinstance(r, ray.ObjectRef) else r for r in results]


__all__ = ["RESTRICT_TIMEOUT_S", "SkippedSync", "SyncFilter", "restrict", "wait_all"]
