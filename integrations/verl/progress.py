"""Per-group rollout progress, from verl's agent-loop workers to the trainer's hooks.

verl runs a step's prompt groups in agent-loop worker actors (other processes), while the hooks
live in the trainer's process. Sending one RPC per finished group would put a Ray call on the
hot path, so progress is pulled instead:

* :class:`GroupProgressMixin` (in each worker) adds the group's size to a counter when a
  training group finishes, and answers :meth:`~GroupProgressMixin.rlix_take_completed`, a long
  poll that returns and zeroes the counter;
* :class:`ProgressPump` (a thread in the trainer's process) keeps one such poll outstanding per
  worker and hands every non-zero count to a sink (``VerlSession.groups_completed``). Under load
  one reply carries many groups: the RPC rate is bounded by the poll period, not the sample rate.

Counts are samples: a group of ``n`` sessions adds ``n``. Validation groups and groups in which
a session raised are not counted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

#: How long a worker holds a poll open when it has nothing to report, seconds. Bounds both the
#: idle RPC rate (one per worker per period) and how long stopping the pump takes.
POLL_S = 0.25


class GroupProgressMixin:
    """Put in front of verl's ``AgentLoopWorkerTQ`` (``class W(GroupProgressMixin,
    AgentLoopWorkerTQ.__ray_actor_class__)``). Relies on verl's ``_run_prompt(prompt,
    sampling_params, trajectory, trace)`` running one group to completion and on
    ``_run_agent_loop`` running one session of it with the prompt's fields as keywords."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rlix_completed = 0
        self._rlix_ready = asyncio.Event()
        self._rlix_failed_uids: set[Any] = set()

    async def _run_agent_loop(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super()._run_agent_loop(*args, **kwargs)  # type: ignore[misc]
        except BaseException:
            # verl settles the group's sessions with return_exceptions, so the group method never
            # sees this; remember it to leave the group out of the count.
            self._rlix_failed_uids.add(kwargs.get("uid"))
            raise

    async def _run_prompt(self, prompt: dict, sampling_params: dict, trajectory: dict, trace: bool = False) -> None:
        # Read before verl pops __rollout_n__ from the prompt.
        n = int(prompt.get("__rollout_n__", self.config.actor_rollout_ref.rollout.n))  # type: ignore[attr-defined,arg-type]
        uid = prompt.get("uid")
        try:
            await super()._run_prompt(prompt, sampling_params, trajectory, trace)  # type: ignore[misc]
        finally:
            failed = uid in self._rlix_failed_uids
            self._rlix_failed_uids.discard(uid)
        if failed or trajectory.get("validate", False):
            return
        self._rlix_completed += n
        self._rlix_ready.set()

    async def rlix_take_completed(self, wait_s: float) -> int:
        """Samples finished since the last call; waits up to ``wait_s`` for some if none are."""
        if self._rlix_completed == 0 and wait_s > 0:
            try:
                await asyncio.wait_for(self._rlix_ready.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
        count, self._rlix_completed = self._rlix_completed, 0
        self._rlix_ready.clear()
        return count


class ProgressPump:
    """Drains workers' finished-sample counts into ``sink`` from a daemon thread.

    :param workers: Ray actor handles with ``rlix_take_completed``.
    :param sink: Called with each non-zero count, in the pump thread. An exception is logged
        ("progress signal lost") and the pump goes on: progress must never break the rollout.
    :param poll_s: Long-poll period of each worker.
    """

    def __init__(self, workers: Sequence[Any], sink: Callable[[int], None], poll_s: float = POLL_S) -> None:
        self._workers = list(workers)
        self._sink = sink
        self._poll_s = poll_s
        self._dropped: set[int] = set()
        self._stop = threading.Event()
        self._flush_requests: list[threading.Event] = []
        self._flush_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rlix-verl-progress", daemon=True)

    def start(self) -> ProgressPump:
        self._thread.start()
        return self

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Deliver every count the workers hold now before returning (so a batch's final count
        precedes its end). False if that did not happen within ``timeout_s``."""
        if not self._thread.is_alive():
            return False
        done = threading.Event()
        with self._flush_lock:
            self._flush_requests.append(done)
        return done.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # -- pump thread ------------------------------------------------------------------------------

    def _deliver(self, count: Any) -> None:
        if not count:
            return
        try:
            self._sink(int(count))
        except Exception as exc:
            log.warning("rlix: progress signal lost (%d samples): %r", int(count), exc)

    def _collect(self, ref: Any, index: int, timeout_s: float) -> None:
        import ray

        try:
            self._deliver(ray.get(ref, timeout=timeout_s))
        except Exception as exc:
            # A dead worker stops counting; verl reports the failure on its own path.
            log.warning("rlix: progress poll of agent-loop worker %d failed, dropping it: %r", index, exc)
            self._dropped.add(index)

    def _run(self) -> None:
        import ray

        pending: dict[Any, int] = {}  # outstanding poll -> worker index
        grace = self._poll_s + 10.0
        while not self._stop.is_set():
            with self._flush_lock:
                flushes, self._flush_requests = self._flush_requests, []
            if flushes:
                # Outstanding polls first (they may already carry counts), then one
                # non-waiting poll per worker for what finished since.
                for ref, index in list(pending.items()):
                    self._collect(ref, index, grace)
                pending.clear()
                for index, ref in [(i, w.rlix_take_completed.remote(0.0)) for i, w in self._live()]:
                    self._collect(ref, index, grace)
                for done in flushes:
                    done.set()
                continue
            busy = set(pending.values())
            for index, worker in self._live():
                if index not in busy:
                    pending[worker.rlix_take_completed.remote(self._poll_s)] = index
            if not pending:
                self._stop.wait(self._poll_s)
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self._poll_s)
            for ref in ready:
                self._collect(ref, pending.pop(ref), grace)
        for ref, index in list(pending.items()):
            self._collect(ref, index, grace)

    def _live(self) -> list[tuple[int, Any]]:
        return [(i, w) for i, w in enumerate(self._workers) if i not in self._dropped]


__all__ = ["POLL_S", "GroupProgressMixin", "ProgressPump"]
