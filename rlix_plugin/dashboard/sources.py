"""Where the dashboard reads the scheduler: a Ray cluster's scheduler actor, or a local scheduler
in this process. Both answer the same two reads; neither changes anything (no lease needed)."""

from __future__ import annotations

from typing import Any, Protocol


class PoolSource(Protocol):
    def snapshot(self) -> dict[str, Any]:
        """The scheduler's snapshot (:func:`rlix_plugin.scheduler.report.snapshot`)."""

    def decisions(self, since: int) -> list[dict[str, Any]]:
        """Decisions numbered above ``since``, oldest first (JSON forms)."""


class RaySource:
    """The scheduler actor behind an :class:`~rlix_plugin.ray.client.RlixClient`."""

    def __init__(self, client: Any, timeout_s: float = 5.0) -> None:
        self.client = client
        self.timeout_s = timeout_s

    def snapshot(self) -> dict[str, Any]:
        return self.client.snapshot(timeout_s=self.timeout_s)  # type: ignore[no-any-return]

    def decisions(self, since: int) -> list[dict[str, Any]]:
        return self.client.events(since, limit=1000, timeout_s=self.timeout_s)["decisions"]  # type: ignore[no-any-return]


class LocalSource:
    """A :class:`~rlix_plugin.backends.local.LocalScheduler` of this process."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def snapshot(self) -> dict[str, Any]:
        return self.scheduler.snapshot()  # type: ignore[no-any-return]

    def decisions(self, since: int) -> list[dict[str, Any]]:
        return self.scheduler.decisions(since, limit=1000)  # type: ignore[no-any-return]


__all__ = ["LocalSource", "PoolSource", "RaySource"]
