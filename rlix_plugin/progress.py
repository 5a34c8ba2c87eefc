"""Pipeline-side progress streams and their coalescing: the hot path of the hooks.

A backend feeds ``begin`` / ``bump`` / ``end`` here from the rollout loop and gets
:class:`ProgressReport` values delivered to its ``send`` callable from one background thread:

* ``begin`` and ``end`` are delivered at once, in call order;
* bumps only update a counter (a lock and an addition in the caller's thread); the latest count
  of each stream is delivered at most once per ``min_interval_s`` (about 20 reports a second per
  pipeline at the default 0.05 s), whatever the sample rate;
* the final count of a stream is delivered before its ``end``;
* ``send`` never runs in the caller's thread, so a slow or dead scheduler never blocks the
  rollout. A failing ``send`` is logged once per batch ("progress signal lost") and dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

BEGIN, PROGRESS, END = "begin", "progress", "end"


@dataclass(frozen=True)
class ProgressReport:
    """One delivery to the scheduler. ``completed`` is absolute (latest wins), in samples."""

    kind: str
    pipeline_id: str
    mode: str
    adapter_id: str | None
    step_target: int
    completed: int
    target_weight_version: int


class _Stream:
    __slots__ = ("completed", "dirty", "step_target", "version")

    def __init__(self, step_target: int, completed: int, version: int) -> None:
        self.step_target = step_target
        self.completed = completed
        self.version = version
        self.dirty = False


class ProgressCoalescer:
    """Coalesce rollout progress into at most one report per ``min_interval_s`` per pipeline."""

    def __init__(self, send: Callable[[ProgressReport], None], *, min_interval_s: float = 0.05) -> None:
        self._send = send
        self._interval = min_interval_s
        self._lock = threading.Condition(threading.Lock())
        self._streams: dict[tuple[str, str, str | None], _Stream] = {}
        self._events: deque[ProgressReport] = deque()
        self._dirty: dict[tuple[str, str, str | None], None] = {}
        self._last_sent: dict[str, float] = {}
        #: Streams whose current batch already logged a lost signal (logged once per batch).
        self._lost: set[tuple[str, str, str | None]] = set()
        self._closed = False
        #: Reports taken by the delivery thread and not delivered yet: flush waits for them too.
        self._delivering = 0
        self.sent = 0
        self._thread: threading.Thread | None = None

    # -- caller side (hot) ----------------------------------------------------------------------

    def begin(
        self,
        pipeline_id: str,
        mode: str,
        adapter_id: str | None,
        target_weight_version: int,
        step_target: int,
        initial_completed: int,
    ) -> None:
        key = (pipeline_id, mode, adapter_id)
        with self._lock:
            # A begin on a stream whose end never came replaces the stale batch.
            stream = _Stream(step_target, initial_completed, target_weight_version)
            self._streams[key] = stream
            self._dirty.pop(key, None)
            self._lost.discard(key)
            self._events.append(self._report(BEGIN, key, stream))
            self._ensure_thread()
            self._lock.notify()

    def bump(self, pipeline_id: str, mode: str, adapter_id: str | None, target_weight_version: int, count: int) -> None:
        key = (pipeline_id, mode, adapter_id)
        with self._lock:
            stream = self._streams.get(key)
            if stream is None:
                return  # no open batch: nothing to count against (logged at end of batch by begin)
            stream.completed += count
            stream.version = target_weight_version
            if not stream.dirty:
                stream.dirty = True
                self._dirty[key] = None
                self._lock.notify()

    def end(self, pipeline_id: str, mode: str, adapter_id: str | None) -> None:
        key = (pipeline_id, mode, adapter_id)
        with self._lock:
            stream = self._streams.pop(key, None)
            if stream is None:
                return
            if stream.dirty:
                self._dirty.pop(key, None)
                self._events.append(self._report(PROGRESS, key, stream))
            self._events.append(self._report(END, key, stream))
            self._ensure_thread()
            self._lock.notify()

    def lose(self, pipeline_id: object, mode: object, adapter_id: object, what: str, error: BaseException) -> None:
        """A call the caller made could not be taken (a bad argument, a pipeline not ours): log
        it once per batch of that stream, never raise."""
        key = tuple(v if v is None or isinstance(v, str) else repr(v) for v in (pipeline_id, mode, adapter_id))
        with self._lock:
            first = key not in self._lost
            self._lost.add(key)  # type: ignore[arg-type]
        if first:
            log.warning(
                "progress signal lost for pipeline %r (%s): %s; the rollout continues", pipeline_id, what, error
            )

    def forget(self, pipeline_id: str) -> None:
        """Drop every open stream of a pipeline (its generation cluster was released)."""
        with self._lock:
            for key in [k for k in self._streams if k[0] == pipeline_id]:
                del self._streams[key]
                self._dirty.pop(key, None)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything accepted so far was delivered. True on success."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            for key in list(self._dirty):
                self._last_sent.pop(key[0], None)
            self._lock.notify()
            while self._events or self._dirty or self._delivering:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
        return True

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closed = True
            self._lock.notify()

    # -- delivery thread ------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rlix-progress", daemon=True)
            self._thread.start()

    def _report(self, kind: str, key: tuple[str, str, str | None], stream: _Stream) -> ProgressReport:
        return ProgressReport(
            kind, key[0], key[1], key[2], stream.step_target, min(stream.completed, stream.step_target), stream.version
        )

    def _run(self) -> None:
        while True:
            with self._lock:
                batch, wait = self._take_due()
                while not batch and not self._closed:
                    self._lock.wait(wait)
                    batch, wait = self._take_due()
                if not batch and self._closed:
                    return
                self._delivering = len(batch)
            for report in batch:
                self._deliver(report)
            with self._lock:
                self._delivering = 0
                self._lock.notify_all()

    def _take_due(self) -> tuple[list[ProgressReport], float | None]:
        """Reports due now (under the lock), and how long to wait for the next one."""
        batch = list(self._events)
        self._events.clear()
        now = time.monotonic()
        wait: float | None = None
        for key in list(self._dirty):
            due = self._last_sent.get(key[0], 0.0) + self._interval
            if due <= now:
                stream = self._streams.get(key)
                del self._dirty[key]
                if stream is not None:
                    stream.dirty = False
                    batch.append(self._report(PROGRESS, key, stream))
                    self._last_sent[key[0]] = now
            else:
                wait = due - now if wait is None else min(wait, due - now)
        return batch, wait

    def _deliver(self, report: ProgressReport) -> None:
        try:
            self._send(report)
            self.sent += 1
        except Exception as exc:
            key = (report.pipeline_id, report.mode, report.adapter_id)
            with self._lock:
                first = key not in self._lost
                self._lost.add(key)
            if first:
                log.warning(
                    "progress signal lost for pipeline %s (%s): %r; the rollout continues",
                    report.pipeline_id,
                    report.kind,
                    exc,
                )


__all__ = ["BEGIN", "END", "PROGRESS", "ProgressCoalescer", "ProgressReport"]
