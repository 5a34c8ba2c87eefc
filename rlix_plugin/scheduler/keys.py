"""Idempotency keys of blocking calls: what makes a retried call return what the first would have.

A blocking call (``request_gpus``, ``signal_demand``, ``release_and_request``) carries a key that
its caller picks once and sends again with every retry. The service notes the key of every
request it enqueues, and of every stage grant it makes, so that a retry -- against the same
scheduler, or against a restarted one that rehydrated these keys -- finds its request waiting or
its grant made, instead of being refused as a second request. Releases need no key: releasing
what is no longer held does nothing, so a retried release is harmless as it is.

Pure: plain dicts keyed by cluster id; persisted with the rest of the state.
"""

from __future__ import annotations

from typing import Any

from .topology import cluster_id


class RequestKeys:
    """Keys of pending requests and of granted stages, by cluster id. (A retried ``signal_demand``
    needs no key of its own: it names the same rollout, whose epoch is already open.)"""

    def __init__(self) -> None:
        self.pending: dict[str, str] = {}
        self.granted: dict[str, str] = {}

    def enqueued(self, cid: str, key: str | None) -> None:
        if key is None:
            self.pending.pop(cid, None)
        else:
            self.pending[cid] = key

    def satisfied(self, cid: str) -> None:
        """The pending request of ``cid`` was granted: its key now names the grant."""
        key = self.pending.pop(cid, None)
        if key is None:
            self.granted.pop(cid, None)
        else:
            self.granted[cid] = key

    def is_pending(self, cid: str, key: str | None) -> bool:
        return key is not None and self.pending.get(cid) == key

    def is_granted(self, cid: str, key: str | None) -> bool:
        return key is not None and self.granted.get(cid) == key

    def forget(self, pipeline_id: str, clusters: Any) -> None:
        for cluster in clusters:
            cid = cluster_id(pipeline_id, cluster)
            self.pending.pop(cid, None)
            self.granted.pop(cid, None)

    def dump(self) -> dict[str, dict[str, str]]:
        return {"pending": dict(self.pending), "granted": dict(self.granted)}

    def load(self, data: dict[str, dict[str, str]]) -> None:
        """Take a dumped record (one written before rollout epochs also holds each pipeline's
        last ``signal_demand`` key under ``demand``, which the epochs replaced: it is ignored)."""
        self.pending = {str(k): str(v) for k, v in data["pending"].items()}
        self.granted = {str(k): str(v) for k, v in data["granted"].items()}


__all__ = ["RequestKeys"]
