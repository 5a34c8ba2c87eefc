"""Generation engines in virtual time: the supply side of a simulated pipeline, and the decode
model.

One engine per generation DP rank, in one of five states: asleep, waking, awake, falling asleep,
syncing. Only an awake engine generates; one that is waking, falling asleep or syncing holds its
GPUs for the pipeline's ``wake_seconds`` / ``sleep_seconds`` / ``sync_seconds`` and generates
nothing, as the live reference engines do (:mod:`rlix_plugin.reference.framework.engines`). A sleep or a
sync first retracts the engine's sequences: each keeps what it generated and goes back to the
front of the pipeline's queue, to resume on an awake engine.

**Decode model.** An awake engine runs up to ``batch`` sequences at once; with ``n`` running,
each advances ``rate(n)`` units of work a second (:class:`~rlix_plugin.scenario.
DecodeModel`: tokens, falling with concurrency). The reference workload is the case ``batch = 1``
and one unit (a second of generation) a second. Free slots take queued sequences, least-loaded
engine first, so a rollout spreads over its engines; nothing migrates between awake engines, so
a tail of a few long sequences leaves engines running one sequence each, far below what they
could decode.

**Cost.** All sequences of one engine advance at one rate, so the engine keeps one counter (work
each sequence did since the engine's epoch) and each running sequence's finishing value in a
heap: one event per finished sequence and per change of state, whatever the time simulated.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from rlix_plugin.scenario import PipelineConfig
from rlix_plugin.scheduler.state import ResizeAction, ResizeOutcome

from .events import EventLoop, Timer

ASLEEP, WAKING, AWAKE, FALLING_ASLEEP, SYNCING = "asleep", "waking", "awake", "falling asleep", "syncing"
_SWITCHING = (WAKING, FALLING_ASLEEP, SYNCING)
_SERVING = (AWAKE, SYNCING)


@dataclass
class PipelineStats:
    """What a simulated pipeline did (seconds are virtual; GPU-seconds count every GPU of a
    bundle)."""

    name: str
    started_at: float | None = None
    finished_at: float | None = None
    #: Stopped by ``stop_after_seconds`` before its last rollout ended.
    stopped: bool = False
    rollouts_completed: int = 0
    #: GPU-seconds generating (an engine running at least one sequence) or training.
    busy_gpu_s: float = 0.0
    #: GPU-seconds weighted by how much of its peak an engine decoded (training counts fully).
    useful_gpu_s: float = 0.0
    switches: int = 0
    switch_gpu_s: float = 0.0
    retracted: int = 0
    tokens: float = 0.0
    waits: list[float] = field(default_factory=list)

    @property
    def jct_s(self) -> float | None:
        """Job completion time: from its start to its end."""
        if self.finished_at is None or self.started_at is None:
            return None
        return self.finished_at - self.started_at


class Job:
    """One sequence: its sample index and the work it has left."""

    __slots__ = ("index", "left")

    def __init__(self, index: int, left: float) -> None:
        self.index = index
        self.left = left


class _Engine:
    __slots__ = ("rank", "state", "heap", "progress", "since", "timer", "fire", "busy", "useful")

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.state = ASLEEP
        #: (finishing progress, admission order, job) of each running sequence.
        self.heap: list[tuple[float, int, Job]] = []
        self.progress = 0.0
        self.since = 0.0
        self.timer: Timer | None = None
        self.fire: Callable[[], None] = lambda: None
        #: GPUs this engine counts as generating, and its throughput-weighted share, right now.
        self.busy = 0
        self.useful = 0.0


class SimEngines:
    """The generation engines of one simulated pipeline (the supply side)."""

    def __init__(
        self, loop: EventLoop, config: PipelineConfig, stats: PipelineStats, on_sample: Callable[[int], None]
    ) -> None:
        self.loop = loop
        self.config = config
        self.stats = stats
        #: ``on_sample(index)`` once per finished sequence.
        self.on_sample = on_sample
        self.tp = config.infer_tp
        decode = config.decode
        self.batch = decode.batch if decode is not None else 1
        #: rate[n]: work a second of each of n sequences decoding together.
        self.rate = [0.0] + [decode.rate(n) if decode is not None else 1.0 for n in range(1, self.batch + 1)]
        peak = max(n * self.rate[n] for n in range(1, self.batch + 1))
        #: share[n]: the engine's throughput with n sequences, over its peak.
        self.share = [n * self.rate[n] / peak for n in range(self.batch + 1)]
        self.engines = [_Engine(rank) for rank in range(config.dp_size)]
        for engine in self.engines:
            engine.fire = partial(self._finish, engine)
        self.awake: set[int] = set()
        #: Ranks a resize outcome reports awake: awake or syncing.
        self.serving: set[int] = set()
        self.queue: deque[Job] = deque()
        self.stopped = False
        #: GPUs generating, their throughput-weighted sum, and GPUs switching, right now.
        self.busy_gpus = 0
        self.useful_gpus = 0.0
        self.switching_gpus = 0
        self._seq = itertools.count()
        #: rank -> callbacks waiting for that engine's sync to end
        self._after_sync: dict[int, list[Callable[[], None]]] = {}

    # -- supply side ----------------------------------------------------------------------------------

    def resize(self, action: ResizeAction, done: Callable[[ResizeOutcome], None]) -> None:
        if action.remove:
            self._sleep(list(action.remove), done)
        else:
            self._wake(list(action.add), done)

    def _outcome(self) -> ResizeOutcome:
        return ResizeOutcome(tuple(sorted(self.serving)))

    def _set(self, engine: _Engine, state: str) -> None:
        before = engine.state
        if before == AWAKE:
            self.awake.discard(engine.rank)
        elif before in _SWITCHING:
            self.switching_gpus -= self.tp
        engine.state = state
        if state == AWAKE:
            self.awake.add(engine.rank)
        elif state in _SWITCHING:
            self.switching_gpus += self.tp
        if state in _SERVING:
            self.serving.add(engine.rank)
        else:
            self.serving.discard(engine.rank)

    def _sleep(self, ranks: list[int], done: Callable[[ResizeOutcome], None]) -> None:
        engines = self.engines
        syncing = [r for r in ranks if engines[r].state == SYNCING]
        if syncing:  # the live engine waits for its sync to end before it can sleep
            pending = {"left": len(syncing)}

            def synced() -> None:
                pending["left"] -= 1
                if not pending["left"]:
                    self._sleep(ranks, done)

            for rank in syncing:
                self._after_sync.setdefault(rank, []).append(synced)
            return
        falling = [engines[r] for r in ranks if engines[r].state == AWAKE]
        for engine in falling:
            self._retract(engine)
            self._set(engine, FALLING_ASLEEP)
        self._dispatch()  # retracted sequences resume on other awake engines at once
        seconds = self.config.sleep_seconds

        def asleep() -> None:
            for engine in falling:
                self._set(engine, ASLEEP)
            self.stats.switches += len(falling)
            self.stats.switch_gpu_s += seconds * self.tp * len(falling)
            done(self._outcome())

        self.loop.after(seconds if falling else 0.0, asleep)

    def _wake(self, ranks: list[int], done: Callable[[ResizeOutcome], None]) -> None:
        waking = [self.engines[r] for r in ranks if self.engines[r].state == ASLEEP]
        for engine in waking:
            self._set(engine, WAKING)
        seconds = self.config.wake_seconds

        def awake() -> None:
            for engine in waking:
                self._set(engine, AWAKE)
            self.stats.switches += len(waking)
            self.stats.switch_gpu_s += seconds * self.tp * len(waking)
            self._dispatch()
            done(self._outcome())

        self.loop.after(seconds if waking else 0.0, awake)

    # -- framework side -------------------------------------------------------------------------------

    def submit(self, work: list[float]) -> None:
        """Queue a rollout's sequences (their work, in sample order)."""
        self.queue.extend(Job(i, w) for i, w in enumerate(work))
        self._dispatch()

    def sync(self, done: Callable[[], None]) -> None:
        """Weight sync into every awake engine, in parallel; ``done()`` when over."""
        syncing = [self.engines[r] for r in sorted(self.awake)]
        seconds = self.config.sync_seconds
        if not syncing or seconds <= 0:
            self.loop.after(0.0, done)
            return
        for engine in syncing:
            self._retract(engine)
            self._set(engine, SYNCING)

        def synced() -> None:
            for engine in syncing:
                if engine.state == SYNCING:
                    self._set(engine, AWAKE)
                for callback in self._after_sync.pop(engine.rank, []):
                    callback()
            self.stats.switch_gpu_s += seconds * self.tp * len(syncing)
            self._dispatch()
            done()

        self.loop.after(seconds, synced)

    def stop(self) -> None:
        """The pipeline stopped: its sequences are dropped and its engines generate no more."""
        now = self.loop.now()
        for engine in self.engines:
            if engine.heap:
                self._advance(engine, now)
                engine.heap.clear()
                self._schedule(engine)
        self.queue.clear()
        self.stopped = True

    # -- the decode model -----------------------------------------------------------------------------

    def _advance(self, engine: _Engine, now: float) -> None:
        """Bring the engine's progress counter (and the pipeline's GPU-seconds) up to ``now``."""
        n = len(engine.heap)
        if n:
            elapsed = now - engine.since
            engine.progress += elapsed * self.rate[n]
            stats = self.stats
            stats.busy_gpu_s += elapsed * self.tp
            stats.useful_gpu_s += elapsed * self.tp * self.share[n]
            stats.tokens += elapsed * self.rate[n] * n
        engine.since = now

    def _schedule(self, engine: _Engine) -> None:
        """Re-arm the engine's next completion after its running set changed."""
        if engine.timer is not None:
            engine.timer.cancel()
            engine.timer = None
        heap = engine.heap
        n = len(heap)
        busy = self.tp if n else 0
        useful = self.tp * self.share[n]
        self.busy_gpus += busy - engine.busy
        self.useful_gpus += useful - engine.useful
        engine.busy, engine.useful = busy, useful
        if n:
            engine.timer = self.loop.after(max(0.0, (heap[0][0] - engine.progress) / self.rate[n]), engine.fire)

    def _finish(self, engine: _Engine) -> None:
        engine.timer = None
        self._advance(engine, self.loop.now())
        heap = engine.heap
        limit = engine.progress + 1e-9 * (1.0 + engine.progress)
        finished = []
        while heap and heap[0][0] <= limit:
            finished.append(heapq.heappop(heap)[2].index)
        # While sequences are queued every other awake engine is full: this one takes the next.
        queue = self.queue
        while queue and len(heap) < self.batch and engine.state == AWAKE:
            job = queue.popleft()
            heapq.heappush(heap, (engine.progress + job.left, next(self._seq), job))
        self._schedule(engine)
        for index in finished:
            self.on_sample(index)

    def _dispatch(self) -> None:
        """Fill free slots of awake engines from the queue, least-loaded engine first."""
        queue = self.queue
        if not queue or self.stopped or not self.awake:
            return
        batch, engines = self.batch, self.engines
        free = [(len(engines[r].heap), r) for r in self.awake if len(engines[r].heap) < batch]
        if not free:
            return
        heapq.heapify(free)
        now = self.loop.now()
        touched: list[_Engine] = []
        seen: set[int] = set()
        while queue and free:
            n, rank = heapq.heappop(free)
            engine = engines[rank]
            if rank not in seen:
                seen.add(rank)
                self._advance(engine, now)
                touched.append(engine)
            job = queue.popleft()
            heapq.heappush(engine.heap, (engine.progress + job.left, next(self._seq), job))
            if n + 1 < batch:
                heapq.heappush(free, (n + 1, rank))
        for engine in touched:
            self._schedule(engine)

    def _retract(self, engine: _Engine) -> None:
        """Take the engine's sequences back to the front of the queue, with what they did."""
        if not engine.heap:
            return
        self._advance(engine, self.loop.now())
        running = sorted(engine.heap, key=lambda entry: entry[1])
        engine.heap.clear()
        for finish, _, job in running:
            job.left = max(0.0, finish - engine.progress)
        self.queue.extendleft(job for _, _, job in reversed(running))
        self.stats.retracted += len(running)
        self._schedule(engine)


__all__ = ["ASLEEP", "AWAKE", "FALLING_ASLEEP", "Job", "PipelineStats", "SYNCING", "SimEngines", "WAKING"]
