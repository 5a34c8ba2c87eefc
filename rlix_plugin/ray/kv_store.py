"""The scheduler's durable store on Ray: the cluster's GCS key-value store.

Why the GCS store: it lives in the Global Control Service, which outlives every actor and
worker (and, with GCS fault tolerance and an external Redis, the head node itself); it needs no
extra service, volume or credential; and it is what Ray's own control planes persist to -- the
Serve controller, a detached actor restarted by Ray like this scheduler, checkpoints its state
through the same ``ray.experimental.internal_kv`` calls. Its limits are the reason for the
layout below: no transactions, and ``put(..., overwrite=False)`` as the only atomic operation.

Layout, in KV namespace ``rlix``:

* ``scheduler/epoch/<n>``: one key per claimed epoch, created with ``overwrite=False`` -- which
  fails for a key that exists, so two claimants never get the same epoch;
* ``scheduler/state/<n>``: the record saved by epoch ``n``. Each epoch writes only its own key,
  so a stale writer can never overwrite a newer epoch's record; :meth:`RayKVStore.load` reads the
  newest epoch's; a save first checks that no newer epoch was claimed (and raises
  :class:`~rlix_plugin.scheduler.store.StaleWriterError` if one was), and an epoch's first save
  deletes the records of older ones.

What is stored holds no secret: lease digests, not leases, and no resize token (a restarted
scheduler gets those back from each pipeline's process when it reattaches), because every
process that can reach the cluster can read this store.
"""

from __future__ import annotations

from typing import Any

from ray.experimental import internal_kv

from rlix_plugin.scheduler.store import StaleWriterError, StoredState, decode, encode

from .names import NAMESPACE


def _key(prefix: str, epoch: int) -> bytes:
    return f"{prefix}{epoch:012d}".encode()


def _epochs(prefix: str) -> list[int]:
    keys = internal_kv._internal_kv_list(prefix, namespace=NAMESPACE)
    return sorted(int(k.decode()[len(prefix) :]) for k in keys)


class RayKVStore:
    """A :class:`~rlix_plugin.scheduler.store.StateStore` in the GCS key-value store of the Ray
    cluster this process is connected to (see the module docstring)."""

    def __init__(self, name: str = "scheduler") -> None:
        """:param name: the keys' prefix (``scheduler``: the scheduler's; tests use their own)."""
        self.where = f"ray-gcs:{NAMESPACE}/{name}"
        self._epoch_prefix, self._state_prefix = f"{name}/epoch/", f"{name}/state/"
        self._cleaned: set[int] = set()

    def claim(self) -> int:
        epochs = _epochs(self._epoch_prefix)
        epoch = (epochs[-1] if epochs else 0) + 1
        while internal_kv._internal_kv_put(_key(self._epoch_prefix, epoch), b"1", overwrite=False, namespace=NAMESPACE):
            epoch += 1  # someone claimed it first: the next one
        return epoch

    def newest_epoch(self) -> int:
        """The newest epoch claimed so far (0: none)."""
        return max(_epochs(self._epoch_prefix), default=0)

    def load(self) -> StoredState | None:
        for epoch in reversed(_epochs(self._state_prefix)):
            raw = internal_kv._internal_kv_get(_key(self._state_prefix, epoch), namespace=NAMESPACE)
            if raw is None:
                continue  # deleted meanwhile
            entry = decode(raw)
            return StoredState(epoch, int(entry["version"]), entry["payload"])
        return None

    def save(self, epoch: int, version: int, payload: dict[str, Any]) -> None:
        newest = max(_epochs(self._epoch_prefix), default=0)
        if newest > epoch:
            raise StaleWriterError(f"{self.where}: epoch {epoch} was superseded by epoch {newest}")
        text = encode({"version": version, "payload": payload})
        internal_kv._internal_kv_put(
            _key(self._state_prefix, epoch), text.encode(), overwrite=True, namespace=NAMESPACE
        )
        if epoch not in self._cleaned:
            for old in _epochs(self._state_prefix):
                if old < epoch:
                    internal_kv._internal_kv_del(_key(self._state_prefix, old), namespace=NAMESPACE)
            for old in _epochs(self._epoch_prefix)[:-16]:  # keep the numbering, not every marker
                internal_kv._internal_kv_del(_key(self._epoch_prefix, old), namespace=NAMESPACE)
            self._cleaned.add(epoch)

    def clear(self) -> None:
        internal_kv._internal_kv_del(self._state_prefix.encode(), del_by_prefix=True, namespace=NAMESPACE)


__all__ = ["RayKVStore"]
