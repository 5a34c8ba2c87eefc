"""Stand-ins of miles' surfaces, written from shared/reference/miles-contract.md and miles' public
sources (``miles/utils/rlix_hooks.py``, ``miles/rollout/base_types.py``, ``miles/ray/rollout.py``,
``examples/fully_async/fully_async_rollout.py``, ``miles/utils/rlix_train_loop.py``).

miles is not on PyPI and needs GPUs; these keep its shapes and its call patterns:

* :class:`RLixHooks` / :class:`NoOpRLixHooks` -- the protocol miles holds and its default;
* :func:`call_rollout_fn` -- passes ``rlix_hooks`` only to a rollout function whose signature
  has it (and only when not ``None``);
* :func:`generate_rollout_fully_async` -- ``begin`` before the collection loop (not in a try),
  ``bump`` per accepted group inside a try/except that only logs, ``end`` on success and on the
  fatal path, no ``end`` on any other error;
* :class:`RolloutManagerStandIn` -- ``set_rlix_hooks`` and the engine state machine
  (``shell`` / ``active`` / ``disabling`` / ``offloaded`` / ``loading``) with miles' checks; its
  engines are the reference framework's (:class:`rlix_plugin.reference.engines.EnginePool`:
  they generate only while awake, retract in-flight work when put to sleep, and load the latest
  weights when woken). Double sleep / double wake raise here, as they kill a real engine;
* :func:`run_async_train_loop` -- miles' RLix train loop with the ``signal_demand`` step hook
  before every rollout dispatch.

Methods marked *test plumbing* are not miles surfaces: they stand in for miles' model update
service (weights from the trainer into engines) and let tests look inside.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import threading
from argparse import Namespace
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger("tests.miles_standins")


# ---------------------------------------------------------------------------------------------
# miles/utils/rlix_hooks.py
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class RLixHooks(Protocol):
    def begin_progress_batch(
        self,
        target_weight_version: int,
        step_target_groups: int,
        initial_completed: int,
        *,
        mode: str | None = None,
        adapter_id: str | None = None,
    ) -> None: ...

    def bump_completed(self, *, target_weight_version: int) -> None: ...

    def end_progress_batch(self) -> None: ...

    def report_preempt(self, engine_index: int, worker_url: str) -> None: ...


class NoOpRLixHooks:
    def begin_progress_batch(self, target_weight_version, step_target_groups, initial_completed, *, mode=None,
                             adapter_id=None):
        return None

    def bump_completed(self, *, target_weight_version):
        return None

    def end_progress_batch(self):
        return None

    def report_preempt(self, engine_index, worker_url):
        return None


# ---------------------------------------------------------------------------------------------
# miles/rollout/base_types.py
# ---------------------------------------------------------------------------------------------


@dataclass
class RolloutFnTrainOutput:
    samples: list
    metrics: dict | None = None


def call_rollout_fn(fn, *args, evaluation: bool, rlix_hooks=None, **kwargs):
    if rlix_hooks is not None and "rlix_hooks" in inspect.signature(fn).parameters:
        kwargs = {**kwargs, "rlix_hooks": rlix_hooks}
    output = fn(*args, **kwargs, evaluation=evaluation)
    if not isinstance(output, RolloutFnTrainOutput):
        output = RolloutFnTrainOutput(samples=output)
    return output


class EnginePreemptedError(Exception):
    """miles' fatal rollout error (surfaced through the ``_FatalError`` sentinel)."""


# ---------------------------------------------------------------------------------------------
# examples/fully_async/fully_async_rollout.py (the hook call pattern)
# ---------------------------------------------------------------------------------------------


class DataSourceStandIn:
    """miles' data buffer, plus the 'router' the rollout function dispatches through (here: the
    reference engine pool, which only lets awake engines generate)."""

    def __init__(self, args: Namespace, router: Any) -> None:
        self.args = args
        self.router = router
        self.failures: dict[int, tuple[str, int]] = {}

    def jobs(self, rollout_id: int) -> list[Any]:
        """The rollout's samples: ``n_samples_per_prompt`` per prompt group. A sample's index
        encodes its rollout (``rollout_id * ROLLOUT_STRIDE + group * n + j``) so that work left
        queued by a rollout that failed is recognised as stale by the next one."""
        from rlix_plugin.reference.engines import Job
        from rlix_plugin.reference.task import prompts

        args = self.args
        rng = random.Random(f"miles-standin/{args.seed}/{rollout_id}")
        mu = math.log(args.sample_seconds)
        n = args.n_samples_per_prompt
        return [
            Job(rollout_id, rollout_id * ROLLOUT_STRIDE + group * n + j, prompt, rng.lognormvariate(mu, 0.5))
            for group, prompt in enumerate(prompts(args.seed, rollout_id, args.rollout_batch_size))
            for j in range(n)
        ]


ROLLOUT_STRIDE = 1_000_000


def generate_rollout_fully_async(args, rollout_id, data_buffer, evaluation=False, *, rlix_hooks=None):
    from rlix_plugin.reference.engines import PoolAborted

    if evaluation:
        raise ValueError("Evaluation mode not supported in simple async rollout")
    if rlix_hooks is None:
        rlix_hooks = NoOpRLixHooks()
    target = args.rollout_batch_size
    n = args.n_samples_per_prompt
    failure = data_buffer.failures.pop(rollout_id, None)  # test plumbing: (kind, after_groups)
    current_weight_version = 0
    rlix_hooks.begin_progress_batch(
        target_weight_version=int(current_weight_version), step_target_groups=int(target), initial_completed=0
    )
    router = data_buffer.router
    router.submit(data_buffer.jobs(rollout_id))
    partial: dict[int, list[Any]] = {}
    data: list[list[Any]] = []
    while len(data) < target:
        if failure is not None and len(data) >= failure[1]:
            if failure[0] == "fatal":  # miles' _FatalError path: end, then raise
                rlix_hooks.end_progress_batch()
                raise EnginePreemptedError(f"rollout {rollout_id}: engine preempted for good (injected)")
            raise RuntimeError(f"rollout {rollout_id}: unexpected failure (injected)")  # no end
        try:
            (sample,) = router.collect(1, args.collect_timeout_s)  # TimeoutError: no end, as miles
        except PoolAborted as fatal:
            rlix_hooks.end_progress_batch()
            raise EnginePreemptedError(str(fatal)) from fatal
        if sample.index // ROLLOUT_STRIDE != rollout_id:
            continue  # left queued by a rollout that failed: stale
        key = (sample.index % ROLLOUT_STRIDE) // n
        group = partial.setdefault(key, [])
        group.append(sample)
        if len(group) < n:
            continue
        data.append(sorted(partial.pop(key), key=lambda s: s.index))
        try:
            rlix_hooks.bump_completed(target_weight_version=int(current_weight_version))
        except Exception as exc:  # noqa: BLE001 - miles only logs here
            logger.warning(f"rlix_hooks.bump_completed failed: {exc!r}")
    data = sorted(data, key=lambda g: g[0].index)
    rlix_hooks.end_progress_batch()
    return data


# ---------------------------------------------------------------------------------------------
# miles/ray/rollout.py: RolloutManager (the rlix surfaces)
# ---------------------------------------------------------------------------------------------


def miles_args(**overrides: Any) -> Namespace:
    """miles' args as the stand-ins read them (miles names first, stand-in knobs after)."""
    values: dict[str, Any] = dict(
        rollout_batch_size=4, n_samples_per_prompt=2, rollout_num_gpus=4, rollout_num_gpus_per_engine=1,
        # stand-in knobs
        pipeline_id="p1", seed=1, infer_gpus=(0, 1, 2, 3), sample_seconds=0.004, collect_timeout_s=20.0,
        generate=False, initial_engine_states=None,
    )
    values.update(overrides)
    return Namespace(**values)


@dataclass
class EngineInfo:
    engine_index: int
    state: str
    weight_version: int | None = None


class RolloutManagerStandIn:
    """miles' ``RolloutManager`` as the rlix integration sees it (use ``ray.remote`` on it for the
    actor). Thread-safe: a real deployment may give the actor ``max_concurrency > 1`` so that a
    resize does not wait for a running rollout."""

    def __init__(self, args, pg, *, all_engine_placements=None, active_engine_indices=None):
        self.args = args
        self.pg = pg
        self._rlix_hooks = None
        self._lock = threading.RLock()
        count = args.rollout_num_gpus // args.rollout_num_gpus_per_engine
        states = list(args.initial_engine_states or ["active"] * count)
        self._engines = {i: EngineInfo(i, state) for i, state in enumerate(states)}
        self.timeline: list[tuple[str, int]] = []  # test plumbing: engine operations in order
        self.set_hooks_calls = 0
        self.generate_rollout = generate_rollout_fully_async
        self.pool = None
        self.store = None
        if args.generate:
            self._start_engines()

    def _start_engines(self) -> None:
        from rlix_plugin.reference.engines import EnginePool
        from rlix_plugin.reference.policy import Trainer, WeightStore
        from rlix_plugin.reference.status import PipelineStatus

        args = self.args
        tp = args.rollout_num_gpus_per_engine
        gpus = tuple(args.infer_gpus)
        bundles = [gpus[i:i + tp] for i in range(0, len(gpus), tp)]
        self.store = WeightStore(Trainer(args.seed).model)  # version 0: the trainer's initial weights
        status = PipelineStatus(args.pipeline_id, 1, args.rollout_batch_size * args.n_samples_per_prompt, len(bundles))
        self.pool = EnginePool(args.pipeline_id, bundles, self.store, status, seed=args.seed, offset=1 + args.seed % 7)
        self.data_source = DataSourceStandIn(args, self.pool)
        # Engines start as miles left them: wake the pool engines of the active ones.
        active = tuple(i for i, info in self._engines.items() if info.state == "active")
        if active:
            self.pool.rlix_resize_infer(args.pipeline_id, (), active)

    # -- hooks ----------------------------------------------------------------------------------

    def set_rlix_hooks(self, hooks) -> None:
        self._rlix_hooks = hooks
        self.set_hooks_calls += 1

    def generate(self, rollout_id):
        output = call_rollout_fn(
            self.generate_rollout, self.args, rollout_id, self.data_source, evaluation=False,
            rlix_hooks=self._rlix_hooks,
        )
        return output.samples

    # -- the engine table -----------------------------------------------------------------------

    def get_engine_count(self) -> int:
        return len(self._engines)

    def get_engine_states(self, engine_indices) -> dict:
        with self._lock:
            snapshot = {}
            for idx in sorted({int(i) for i in engine_indices}):
                if idx not in self._engines:
                    raise KeyError(f"unknown engine_index {idx}")
                snapshot[idx] = self._engines[idx].state
            return snapshot

    def _resolve_engine_indices(self, engine_indices) -> list:
        requested = sorted({int(i) for i in engine_indices})
        for idx in requested:
            if idx not in self._engines:
                raise KeyError(f"unknown engine_index {idx}; known: {sorted(self._engines)}")
            if self._engines[idx].state == "shell":
                raise RuntimeError(f"engine_index {idx} is in state 'shell'; call expand_engines first")
        return requested

    def shrink_engines(self, engine_indices, *, post_sleep_vram_threshold_gb=None) -> list:
        with self._lock:
            indices = self._resolve_engine_indices(engine_indices)
            for idx in indices:
                if self._engines[idx].state != "active":
                    # miles would close routing, abort and release memory again: a double sleep
                    # kills a real engine (failure mode 7).
                    raise RuntimeError(f"engine_index {idx} is {self._engines[idx].state!r}: released twice")
                self._engines[idx].state = "disabling"
            for step in ("unregister_from_router", "abort_all_requests", "pause_generation(retract)"):
                self.timeline.extend((step, idx) for idx in indices)
            if self.pool is not None:
                # Retracts each engine's in-flight sample back to the queue, then drops its weights.
                self.pool.rlix_resize_infer(self.args.pipeline_id, tuple(indices), ())
            self.timeline.extend(("release_memory_occupation", idx) for idx in indices)
            for idx in indices:
                self._engines[idx].state = "offloaded"
                self._engines[idx].weight_version = None
            return indices

    def expand_engines(self, engine_indices) -> list:
        with self._lock:
            indices = sorted({int(i) for i in engine_indices})
            for idx in indices:
                if idx not in self._engines:
                    raise KeyError(f"unknown engine_index {idx}")
                if self._engines[idx].state == "shell":
                    raise RuntimeError(f"engine_index {idx} is shell; the shell -> loading INIT branch is not here")
                if self._engines[idx].state != "offloaded":
                    raise RuntimeError(f"engine_index {idx} state={self._engines[idx].state!r}, expected 'offloaded'")
            self.timeline.extend(("resume_memory_occupation", idx) for idx in indices)
            for idx in indices:
                self._engines[idx].state = "loading"
            return indices

    def finish_init_offload(self, engine_indices) -> list:
        with self._lock:
            indices = sorted({int(i) for i in engine_indices})
            for idx in indices:
                if self._engines[idx].state != "loading":
                    raise RuntimeError(f"finish_init_offload requires state=='loading'; engine_index {idx} is "
                                       f"{self._engines[idx].state!r}")
            for idx in indices:
                self._engines[idx].state = "offloaded"
            return indices

    def activate_routing(self, engine_indices) -> list:
        with self._lock:
            indices = sorted({int(i) for i in engine_indices})
            for idx in indices:
                if self._engines.get(idx) is None or self._engines[idx].state != "loading":
                    state = self._engines[idx].state if idx in self._engines else None
                    raise RuntimeError(f"activate_routing requires state=='loading'; engine_index {idx} is {state!r}")
            self.timeline.extend(("register_with_router", idx) for idx in indices)
            if self.pool is not None:
                self.pool.rlix_resize_infer(self.args.pipeline_id, (), tuple(indices))  # starts serving
            for idx in indices:
                self._engines[idx].state = "active"
            return indices

    def set_weight_version(self, version, engine_indices=None) -> int:
        with self._lock:
            if engine_indices is None:
                indices = [i for i, e in self._engines.items() if e.state != "shell"]
            else:
                indices = self._resolve_engine_indices(engine_indices)
            self.timeline.extend(("update_weight_version", idx) for idx in indices)
            for idx in indices:
                self._engines[idx].weight_version = int(version)
            return int(version)

    def offload(self, tags=None, engine_indices=None):
        # A bare release (no abort, no pause): the integration must never use it for a resize.
        with self._lock:
            self.timeline.extend(("offload", idx) for idx in (engine_indices or self._engines))

    # -- test plumbing ----------------------------------------------------------------------------

    def sync_selected_workers(self, engine_indices) -> int:
        """Stand-in of miles' model update service for woken engines: they get the latest weights
        (the reference engines load them from the store when they start serving). Returns the
        version."""
        with self._lock:
            for idx in engine_indices:
                if self._engines[idx].state != "loading":
                    raise RuntimeError(f"weight sync of engine {idx} in state {self._engines[idx].state!r}")
            self.timeline.extend(("sync_weights", idx) for idx in engine_indices)
            return self.store.latest()[0] if self.store is not None else 0

    def publish_weights(self, state) -> int:
        """After a training step: the new weights become the latest, and the engines still awake
        load them at once (the ``after_step`` sync to active engines)."""
        from rlix_plugin.reference.policy import load_policy

        with self._lock:
            version = self.store.publish(load_policy(state))
            self.pool.sync_weights()
            for info in self._engines.values():
                if info.state == "active":
                    info.weight_version = version
            return version

    def inject_failure(self, rollout_id: int, kind: str, after_groups: int) -> None:
        """Make rollout ``rollout_id`` fail after ``after_groups`` accepted groups: ``"fatal"``
        takes miles' fatal-error path (end, then raise), ``"other"`` any other error (no end)."""
        self.data_source.failures[rollout_id] = (kind, after_groups)

    def hold(self, seconds: float) -> None:
        """Keep this call running for ``seconds`` (a long rollout or weight sync in progress)."""
        threading.Event().wait(seconds)

    def stats(self) -> dict:
        with self._lock:
            return {
                "states": {i: e.state for i, e in self._engines.items()},
                "versions": {i: e.weight_version for i, e in self._engines.items()},
                "timeline": list(self.timeline),
                "hooks": type(self._rlix_hooks).__name__ if self._rlix_hooks is not None else None,
                "set_hooks_calls": self.set_hooks_calls,
            }

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


class ManagerWithoutSeam:
    """A miles RolloutManager from before the rlix seam: no ``set_rlix_hooks``."""

    def __init__(self, args=None, pg=None, **kwargs):
        self.args = args

    def get_engine_count(self) -> int:
        return 4


class ForgetfulManager(RolloutManagerStandIn):
    """A RolloutManager whose ``set_rlix_hooks`` accepts the hooks and keeps nothing."""

    def set_rlix_hooks(self, hooks) -> None:
        self.set_hooks_calls += 1


# ---------------------------------------------------------------------------------------------
# miles/utils/rlix_train_loop.py (with the signal_demand step hook of the rlix notes)
# ---------------------------------------------------------------------------------------------

StepHook = Callable[[int], Awaitable[None]]


async def run_async_train_loop(
    args,
    *,
    train_group,
    rollout_manager,
    before_step: StepHook,
    after_step: StepHook,
    release_only: StepHook | None = None,
    num_rollout_per_epoch: int | None = None,
    signal_demand: StepHook | None = None,
) -> None:
    start, num_rollout = int(getattr(args, "start_rollout_id", 0) or 0), int(args.num_rollout)
    if num_rollout <= start:
        return
    if signal_demand is not None:
        await signal_demand(start)
    next_rollout = rollout_manager.generate.remote(start)
    for rollout_id in range(start, num_rollout):
        data = await next_rollout
        next_rollout = None
        failed = False
        try:
            await before_step(rollout_id)
            await train_group.train(rollout_id, data)
        except BaseException:
            failed = True
            raise
        finally:
            if failed:
                if release_only is not None:
                    await release_only(rollout_id)
            else:
                await after_step(rollout_id)
        if rollout_id + 1 < num_rollout:
            if signal_demand is not None:
                await signal_demand(rollout_id + 1)
            next_rollout = rollout_manager.generate.remote(rollout_id + 1)


def states_of(manager: Any, indices: Iterable[int]) -> dict[int, str]:
    """Engine states of a local manager (helper for asserts)."""
    return manager.get_engine_states(list(indices))
