"""Pipeline-side progress streams and their coalescing: the hot path of the hooks.

A backend feeds ``begin`` / ``bump`` / ``end`` here from the rollout loop and gets
:class:`ProgressReport` values delivered to its ``send`` callable from one background thread,
which runs while a batch is open or a report is undelivered.
A report is the one record of the progress path: the hook layer builds the ``begin`` report, and
every later report of the batch is derived from it, so it travels unchanged to the scheduler's
demand ledger (:mod:`rlix_plugin.scheduler.demand`).

* every report carries its rollout's epoch (``rollout_id``); a bump or end for another rollout
  than the stream's open batch is a straggler and changes nothing (an end of rollout k never
  closes rollout k+1's batch);
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
    """One delivery to the scheduler: a batch began (``BEGIN``), its count (``PROGRESS``), or it
    ended (``END``). ``completed`` is absolute (latest wins within a rollout), in samples;
    ``rollout_id`` is the rollout's epoch: the scheduler ignores a report of a rollout older than
    the pipeline's current one."""

    kind: str
    pipeline_id: str
    rollout_id: int
    mode: str
    adapter_id: str | None
    step_target: int
    completed: int
    target_weight_version: int


class _Stream:
    __slots__ = ("completed", "dirty", "opened", "rollout_id", "version")

    def __init__(self, opened: ProgressReport) -> None:
        self.opened = opened
        self.rollout_id = opened.rollout_id
        self.completed = opened.completed
        self.version = opened.target_weight_version
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

    def begin(self, report: ProgressReport) -> None:
        """Open the batch ``report`` (a ``BEGIN``, checked by the caller) describes."""
        key = (report.pipeline_id, report.mode, report.adapter_id)
        with self._lock:
            if self._closed:
                return  # nothing is delivered after close
            # A begin on a stream whose end never came replaces the stale batch.
            self._streams[key] = _Stream(report)
            self._dirty.pop(key, None)
            self._lost.discard(key)
            self._events.append(report)
            self._ensure_thread()
            self._lock.notify()

    def bump(
        self,
        pipeline_id: str,
        rollout_id: int,
        mode: str,
        adapter_id: str | None,
        target_weight_version: int,
        count: int,
    ) -> None:
        key = (pipeline_id, mode, adapter_id)
        with self._lock:
            stream = self._streams.get(key)
            if stream is None or stream.rollout_id != rollout_id:
                return  # no open batch of that rollout: a straggler counts nothing
            stream.completed += count
            stream.version = target_weight_version
            if not stream.dirty:
                stream.dirty = True
                self._dirty[key] = None
                self._lock.notify()

    def end(self, pipeline_id: str, rollout_id: int, mode: str, adapter_id: str | None) -> None:
        key = (pipeline_id, mode, adapter_id)
        with self._lock:
            stream = self._streams.get(key)
            if stream is None or stream.rollout_id != rollout_id:
                return  # only its own rollout's end closes a batch
            del self._streams[key]
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
            self._lock.notify()  # with no batch left open, the delivery thread ends

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
        """Deliver what was accepted (for up to 5 s), then take nothing more."""
        self.flush()
        with self._lock:
            self._closed = True
            self._streams.clear()
            self._dirty.clear()
            self._lock.notify()

    # -- delivery thread ------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rlix-progress", daemon=True)
            self._thread.start()

    def _report(self, kind: str, key: tuple[str, str, str | None], stream: _Stream) -> ProgressReport:
        opened = stream.opened
        return ProgressReport(
            kind,
            opened.pipeline_id,
            opened.rollout_id,
            opened.mode,
            opened.adapter_id,
            opened.step_target,
            min(stream.completed, opened.step_target),
            stream.version,
        )

    def _run(self) -> None:
        while True:
            with self._lock:
                batch, wait = self._take_due()
                while not batch:
                    if self._closed or not self._streams:
                        # Nothing left to deliver and no batch open: the thread ends, and the
                        # next begin starts another. An owner that never calls close (a
                        # framework that drops its backend) leaves no thread behind.
                        self._thread = None
                        return
                    self._lock.wait(wait)
                    batch, wait = self._take_due()
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
