"""Generation engines of one pipeline, and the supply-side plugin that sleeps and wakes them.

One :class:`Engine` per generation DP rank; each is served by one thread. An engine generates only
while awake, i.e. while the scheduler has granted it its TP bundle of GPUs:

* waking loads the latest weights from the :class:`~.policy.WeightStore` (a CPU copy) and
  records their version; sleeping drops the weights, so a sleeping engine provably holds nothing;
* sleep (and weight sync) first *pauses* the engine: its in-flight sample is retracted and put
  back at the front of the queue, to be re-dispatched to an awake engine, and the preemption is
  reported with ``rlix_report_preempt`` -- idle is not quiescent. A retracted sample keeps what it
  generated so far (a partial rollout, as engines that return the aborted request's tokens allow)
  and resumes for its remaining time wherever it is re-dispatched;
* resizing is idempotent per rank: waking an awake engine or sleeping a sleeping one is a no-op;
* switching takes time (the scenario's ``wake_seconds``, ``sleep_seconds``, ``sync_seconds``):
  an engine that is waking, falling asleep or syncing weights holds its GPUs and generates
  nothing. Engines change state in parallel -- within one call, and across concurrent calls for
  different ranks, which the scheduler makes when different moves involve one pipeline.

:class:`EnginePool` is the pipeline's supply side: a :class:`~rlix_plugin.supply.PipelineEngines`
registered as a plugin on the pipeline's plugin manager, which answers ``rlix_resize_infer`` for its
own pipeline (``None`` for any other) with :meth:`EnginePool.resize`, returning the DP ranks awake
afterwards. One condition variable guards all engines of the pool; every state change notifies it,
so waiting threads never poll, and resizes of different ranks run concurrently
(``concurrent_resizes``). The pool reports to the pipeline's
:class:`~.observer.PipelineObserver`: engines awake, switches, retracted and finished samples.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from rlix_plugin.hookspecs import SwitchCosts
from rlix_plugin.metrics import report_weight_sync
from rlix_plugin.supply import PipelineEngines

from .observer import NullObserver, PipelineObserver
from .policy import Sample, WeightStore, load_policy, sample_answer
from .task import reward

if TYPE_CHECKING:
    from rlix_plugin.frontend import Hooks

log = logging.getLogger(__name__)

#: Longest a serving thread sleeps on the condition before re-checking; only bounds the reaction
#: to a lost notification, never on the normal path (every change notifies).
_IDLE_WAIT_S = 1.0


class PoolAborted(RuntimeError):
    """The run was aborted while the pipeline waited for samples."""


@dataclass(frozen=True)
class Job:
    """One sample to generate: which rollout, its index, its prompt, and how long it takes."""

    rollout: int
    index: int
    prompt: int
    seconds: float


class Engine:
    """One generation DP worker (state only; :class:`EnginePool` drives it under its lock)."""

    def __init__(self, rank: int, gpus: tuple[int, ...]) -> None:
        self.rank = rank
        self.gpus = gpus
        self.awake = False
        self.model: Any = None
        self.weight_version: int | None = None
        self.current: Job | None = None
        self.started = 0.0  # when the current job started on this engine
        #: "waking", "falling asleep" or "syncing" while the engine switches (it serves nothing).
        self.transition: str | None = None
        self.wakes = 0
        self.sleeps = 0


class EnginePool(PipelineEngines):
    """The engines of one pipeline, their job queue and the ``rlix_resize_infer`` plugin."""

    #: Thread-safe (one condition guards the engines), and engines switch in parallel.
    concurrent_resizes = True

    def __init__(
        self,
        pipeline_id: str,
        bundles: Sequence[tuple[int, ...]],
        store: WeightStore,
        observer: PipelineObserver | None = None,
        *,
        seed: int,
        offset: int,
        clock: Callable[[], float] = time.monotonic,
        switch_costs: SwitchCosts = SwitchCosts(),
    ) -> None:
        self.pipeline_id = pipeline_id
        self.switch_costs = switch_costs
        self.engines = [Engine(rank, tuple(gpus)) for rank, gpus in enumerate(bundles)]
        self.hooks: Hooks | None = None  # set once the pool's plugin manager exists
        self._store = store
        self._observer = observer if observer is not None else NullObserver()
        self._seed = seed
        self._offset = offset
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._results: list[Sample] = []
        self._closed = False
        self._aborted: str | None = None
        self._threads = [
            threading.Thread(target=self._serve, args=(engine,), name=f"{pipeline_id}-engine{engine.rank}", daemon=True)
            for engine in self.engines
        ]
        for thread in self._threads:
            thread.start()

    # -- supply side: the plugin ------------------------------------------------------------------

    def resize(self, remove: Sequence[int] = (), add: Sequence[int] = ()) -> tuple[int, ...]:
        pipeline_id = self.pipeline_id
        bad = sorted(r for r in (*remove, *add) if not 0 <= r < len(self.engines))
        if bad:
            raise ValueError(f"pipeline {pipeline_id!r}: DP ranks {bad} out of range 0..{len(self.engines) - 1}")
        preempted: list[int] = []
        costs = self.switch_costs
        with self._cond:
            falling = []
            for rank in remove:
                engine = self.engines[rank]
                self._settle(engine)
                if not engine.awake:
                    continue  # idempotent: a second sleep must not touch the engine again
                if self._retract(engine):
                    preempted.append(rank)
                engine.awake = False
                engine.transition = "falling asleep"
                falling.append(engine)
            self._cond.notify_all()
            self._hold(costs.sleep_seconds, falling)
            for engine in falling:
                engine.transition = None
                engine.model = None  # release the weights: the GPUs are about to change hands
                engine.weight_version = None
                engine.sleeps += 1
            waking = []
            for rank in add:
                engine = self.engines[rank]
                self._settle(engine)
                if engine.awake:
                    continue  # idempotent
                engine.transition = "waking"
                waking.append(engine)
            self._hold(costs.wake_seconds, waking)
            if waking:
                version, state = self._store.latest()
                for engine in waking:
                    engine.transition = None
                    engine.model = load_policy(state)
                    engine.weight_version = version
                    engine.awake = True
                    engine.wakes += 1
            # Verify rather than assume: a sleeping engine must hold no weights.
            leaked = [e.rank for e in self.engines if not e.awake and e.transition is None and e.model is not None]
            if leaked:
                raise RuntimeError(f"pipeline {pipeline_id!r}: engines {leaked} still hold weights after sleep")
            awake = tuple(e.rank for e in self.engines if e.awake)
            self._cond.notify_all()
        self._observer.switched(
            len(falling) + len(waking), costs.sleep_seconds * _gpus(falling) + costs.wake_seconds * _gpus(waking)
        )
        if preempted:
            self._observer.retracted(len(preempted))
        for rank in preempted:
            self._report_preempt(rank)
        self._observer.engines(awake)
        return awake

    # -- framework side ---------------------------------------------------------------------------

    def submit(self, jobs: Iterable[Job]) -> None:
        """Queue a rollout's samples; awake engines pick them up in order."""
        with self._cond:
            self._queue.extend(jobs)
            self._cond.notify_all()

    def collect(self, count: int, timeout_s: float) -> list[Sample]:
        """Block until ``count`` samples finished; return them (and forget them).

        :raises PoolAborted: the run was aborted meanwhile.
        :raises TimeoutError: not done within ``timeout_s``, with the pool's state in the message.
        """
        deadline = self._clock() + timeout_s
        with self._cond:
            while len(self._results) < count:
                if self._aborted is not None:
                    raise PoolAborted(self._aborted)
                left = deadline - self._clock()
                if left <= 0:
                    raise TimeoutError(
                        f"pipeline {self.pipeline_id!r}: {len(self._results)}/{count} samples after "
                        f"{timeout_s:.1f}s; {self._describe()}"
                    )
                self._cond.wait(left)
            results, self._results = self._results[:count], self._results[count:]
            return sorted(results, key=lambda s: s.index)

    def sync_weights(self) -> int:
        """Load the latest published weights into every awake engine; return their version.
        Engines are paused first (an in-flight sample is retracted), as a real weight sync needs,
        and serve nothing for ``sync_seconds``, in parallel. The sync's duration is reported to the
        metrics (``rlix_weight_sync_seconds``), as a framework integration would."""
        version, state = self._store.latest()
        retracted = 0
        started = self._clock()
        with self._cond:
            syncing = [e for e in self.engines if e.awake]
            for engine in syncing:
                retracted += self._retract(engine)
                engine.awake = False
                engine.transition = "syncing"
            self._cond.notify_all()
            self._hold(self.switch_costs.sync_seconds, syncing)
            for engine in syncing:
                engine.transition = None
                engine.model = load_policy(state)
                engine.weight_version = version
                engine.awake = True
            self._cond.notify_all()
        if retracted:
            self._observer.retracted(retracted)
        if syncing and self.switch_costs.sync_seconds:
            self._observer.switched(0, self.switch_costs.sync_seconds * _gpus(syncing))
        if syncing:
            report_weight_sync(self.pipeline_id, max(0.0, self._clock() - started))
        return version

    def awake_ranks(self) -> tuple[int, ...]:
        with self._cond:
            return tuple(e.rank for e in self.engines if e.awake)

    def weight_versions(self) -> dict[int, int | None]:
        with self._cond:
            return {e.rank: e.weight_version for e in self.engines}

    def abort(self, reason: str) -> None:
        """Make :meth:`collect` raise :class:`PoolAborted` (the run is being stopped)."""
        with self._cond:
            self._aborted = reason
            self._cond.notify_all()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the serving threads (engines stop generating; queued work is dropped)."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            for engine in self.engines:
                engine.current = None
            self._cond.notify_all()
        deadline = self._clock() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - self._clock()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("engine threads did not stop within %.1fs: %s", timeout_s, alive)

    # -- internals --------------------------------------------------------------------------------

    def _hold(self, seconds: float, engines: list[Engine]) -> None:
        """Let ``seconds`` pass while ``engines`` switch (under the lock, which the wait releases,
        so other engines keep serving and other resizes proceed). Ends early on close."""
        if seconds <= 0 or not engines:
            return
        deadline = self._clock() + seconds
        while not self._closed:
            left = deadline - self._clock()
            if left <= 0:
                return
            self._cond.wait(left)

    def _settle(self, engine: Engine) -> None:
        """Wait until another call has finished switching ``engine`` (under the lock)."""
        while engine.transition is not None and not self._closed:
            self._cond.wait(_IDLE_WAIT_S)

    def _retract(self, engine: Engine) -> int:
        """Take the engine's in-flight sample back for re-dispatch (under the lock)."""
        job = engine.current
        if job is None:
            return 0
        engine.current = None
        left = max(0.0, job.seconds - (self._clock() - engine.started))
        self._queue.appendleft(replace(job, seconds=left))
        return 1

    def _describe(self) -> str:
        awake = [e.rank for e in self.engines if e.awake]
        busy = [e.rank for e in self.engines if e.current is not None]
        return f"awake DP ranks {awake}, busy {busy}, queued {len(self._queue)}"

    def _report_preempt(self, rank: int) -> None:
        if self.hooks is None:
            return
        try:
            self.hooks.report_preempt(pipeline_id=self.pipeline_id, dp_rank=rank, retracted=1)
        except Exception as exc:  # informational: never let it fail a resize
            log.warning("pipeline %s: report_preempt for DP rank %s failed: %r", self.pipeline_id, rank, exc)

    def _serve(self, engine: Engine) -> None:
        """The engine's thread: take a job while awake, 'generate' for its duration, finish it
        unless it was retracted meanwhile."""
        with self._cond:
            while not self._closed:
                if not (engine.awake and self._queue):
                    self._cond.wait(_IDLE_WAIT_S)
                    continue
                job = self._queue.popleft()
                engine.current = job
                engine.started = started = self._clock()
                deadline = started + job.seconds
                while engine.current is job and not self._closed:
                    left = deadline - self._clock()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                self._observer.busy((self._clock() - started) * len(engine.gpus))
                if engine.current is not job or self._closed:
                    continue  # retracted (re-queued by whoever paused us) or shutting down
                engine.current = None
                self._finish(engine, job)
                self._cond.notify_all()

    def _finish(self, engine: Engine, job: Job) -> None:
        """Generate the answer with the engine's weights and publish the sample (under the lock,
        so that the progress bump is delivered before the collector can end the batch)."""
        answer = sample_answer(engine.model, job.prompt, self._seed, job.rollout, job.index)
        version = engine.weight_version if engine.weight_version is not None else -1
        sample = Sample(job.index, job.prompt, answer, reward(job.prompt, answer, self._offset), version, engine.rank)
        if self.hooks is not None:
            try:
                self.hooks.bump_completed(
                    pipeline_id=self.pipeline_id, rollout_id=job.rollout, count=1, target_weight_version=version
                )
            except Exception as exc:  # hooks never break the framework
                log.warning("pipeline %s: progress signal lost: %r", self.pipeline_id, exc)
        self._observer.sample_done()
        self._results.append(sample)


def _gpus(engines: list[Engine]) -> int:
    return sum(len(e.gpus) for e in engines)


__all__ = ["Engine", "EnginePool", "Job", "PoolAborted"]
