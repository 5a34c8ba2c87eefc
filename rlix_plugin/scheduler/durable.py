"""Write-ahead persistence of the scheduler's record: group commit to a store, off the event loop.

The service calls :meth:`DurableLog.changed` after every committed change (the record is taken
later, on the loop, so one save covers every change made before it) and awaits
:meth:`DurableLog.flush` before anything leaves the scheduler that depends on a change: a grant,
a lease or a release answered to a caller, a resize call sent to an engine. So whatever a
pipeline was told, or an engine was asked to do, is in the store before it happens, and a
restarted scheduler never hands out GPUs it had already given away.

Saves run in a worker thread (a store call is a round trip: the GCS, or a file). Changes nobody
waits on (progress) are saved at most once per ``min_interval_s``; a flush saves at once. A save
that fails is retried (with a growing pause, logged once per outage) while waiters wait, bounded
by their own timeouts; :class:`~.store.StaleWriterError` is final: a newer incarnation owns the
store, every waiter gets the error and ``on_stale`` is called (the driver stops serving).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .store import StaleWriterError, StateStore

log = logging.getLogger(__name__)

#: Longest pause between two attempts of a save that keeps failing.
MAX_RETRY_PAUSE_S = 1.0


class DurableLog:
    """Saves ``record()`` to ``store`` under ``epoch``; one saving task per log."""

    def __init__(
        self,
        store: StateStore,
        epoch: int,
        record: Callable[[], dict[str, Any]],
        *,
        min_interval_s: float = 0.05,
        on_stale: Callable[[StaleWriterError], None] | None = None,
    ) -> None:
        self.store = store
        self.epoch = epoch
        self.min_interval_s = min_interval_s
        self._record = record
        self._on_stale = on_stale
        #: Changes recorded so far, and how many of them are saved.
        self.version = 0
        self.saved = 0
        self.saves = 0
        #: Why the last save failed, while saves keep failing.
        self.failure: str | None = None
        self._urgent = False
        self._stale: StaleWriterError | None = None
        self._stopped = False
        self._wakeup: asyncio.Event | None = None
        self._saved: asyncio.Condition | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start saving (on the running loop; idempotent)."""
        if self._task is None:
            self._wakeup, self._saved = asyncio.Event(), asyncio.Condition()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rlix-persist")
            if self.version > self.saved:
                self._wakeup.set()

    async def stop(self) -> None:
        """Stop saving; a later :meth:`flush` raises (nothing it waits for will be saved)."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        if self._saved is not None:
            async with self._saved:
                self._saved.notify_all()

    def status(self) -> dict[str, Any]:
        """Where saving stands, for operators: changes made and saved, saves, the last failure."""
        return {
            "store": self.store.where,
            "epoch": self.epoch,
            "changes": self.version,
            "saved": self.saved,
            "saves": self.saves,
            "failure": self.failure,
            "stale": None if self._stale is None else str(self._stale),
        }

    def changed(self) -> None:
        """A committed change: save it (soon)."""
        self.version += 1
        if self._wakeup is not None:
            self._wakeup.set()

    async def flush(self) -> None:
        """Return once every change made before this call is saved.

        :raises StaleWriterError: a newer incarnation owns the store.
        """
        if self._stale is not None:
            raise self._stale
        if self._stopped:
            raise StaleWriterError(f"{self.store.where}: this scheduler stopped saving its state")
        target = self.version
        if self.saved >= target:
            return
        assert self._saved is not None and self._wakeup is not None, "flush before start()"
        self._urgent = True
        self._wakeup.set()
        async with self._saved:
            await self._saved.wait_for(lambda: self.saved >= target or self._stale is not None or self._stopped)
        if self.saved < target:
            raise self._stale or StaleWriterError(f"{self.store.where}: this scheduler stopped saving its state")

    async def _run(self) -> None:
        assert self._wakeup is not None and self._saved is not None
        last = 0.0
        pause = 0.05
        failing = False
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.saved >= self.version:
                continue
            if not self._urgent:
                wait = last + self.min_interval_s - time.monotonic()
                if wait > 0:
                    try:  # a flush in the meantime cuts the wait short
                        await asyncio.wait_for(self._wakeup.wait(), wait)
                    except asyncio.TimeoutError:
                        pass
                    self._wakeup.clear()
            version = self.version
            try:
                record = self._record()  # on the loop: a consistent view of the state
                await asyncio.to_thread(self.store.save, self.epoch, version, record)
            except StaleWriterError as exc:
                log.error("%s; this scheduler stops writing its state", exc)
                self._stale = exc
                async with self._saved:
                    self._saved.notify_all()
                if self._on_stale is not None:
                    self._on_stale(exc)
                return
            except Exception as exc:  # the store is unreachable for now: keep trying
                if not failing:
                    log.exception("saving the scheduler state to %s failed (%r); retrying", self.store.where, exc)
                failing = True
                self.failure = repr(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_RETRY_PAUSE_S)
                self._wakeup.set()
                continue
            if failing:
                log.warning("saving the scheduler state to %s works again", self.store.where)
            failing, pause, self.failure = False, 0.05, None
            last = time.monotonic()
            self.saves += 1
            self.saved = max(self.saved, version)
            if self.saved >= self.version:
                self._urgent = False
            async with self._saved:
                self._saved.notify_all()
            if self.saved < self.version:
                self._wakeup.set()


__all__ = ["DurableLog", "MAX_RETRY_PAUSE_S"]
