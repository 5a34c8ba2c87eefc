"""Where the dashboard reads the scheduler: a Ray cluster's scheduler actor, or a local scheduler
in this process. Both answer the same two reads; neither changes anything (no lease needed)."""

from __future__ import annotations

from typing import Any, Protocol


class PoolSource(Protocol):
    def snapshot(self) -> dict[str, Any]:
        """The scheduler's snapshot (:func:`rlix_plugin.scheduler.report.snapshot`)."""

    def decisions(self, since: int) -> tuple[list[dict[str, Any]], int]:
        """Decisions numbered above ``since``, oldest first (JSON forms), and the newest number of
        the log: below ``since`` when the log is another one (a new scheduler)."""


class RaySource:
    """The scheduler actor of a Ray cluster. A scheduler that went away is looked up again on the
    next read (a new one has a new log, which the server notices)."""

    def __init__(self, client: Any, address: str = "auto", timeout_s: float = 5.0) -> None:
        self.client: Any = client
        self.address = address
        self.timeout_s = timeout_s

    def snapshot(self) -> dict[str, Any]:
        return self._call(lambda client: client.snapshot(timeout_s=self.timeout_s))

    def decisions(self, since: int) -> tuple[list[dict[str, Any]], int]:
        page = self._call(lambda client: client.events(since, limit=1000, timeout_s=self.timeout_s))
        return page["decisions"], page["last"]

    def _call(self, read: Any) -> Any:
        from rlix_plugin.hookspecs import SchedulerUnavailableError
        from rlix_plugin.ray.client import connect

        if self.client is None:
            self.client = connect(self.address, create_if_missing=False, replace_stale=False)
        try:
            return read(self.client)
        except SchedulerUnavailableError:
            self.client = None  # gone: look it up again on the next read
            raise


class LocalSource:
    """A :class:`~rlix_plugin.backends.local.LocalScheduler` of this process."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def snapshot(self) -> dict[str, Any]:
        return self.scheduler.snapshot()

    def decisions(self, since: int) -> tuple[list[dict[str, Any]], int]:
        scheduler = self.scheduler
        log = scheduler.journal.log
        return scheduler.read(lambda: ([d.to_json() for d in log.since(since, None, 1000)], log.last_seq))


__all__ = ["LocalSource", "PoolSource", "RaySource"]
