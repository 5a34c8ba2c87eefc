"""Supply side for miles: ``rlix_resize_infer`` over a ``RolloutManager``'s engine state machine.

The scheduler speaks of generation **DP ranks** of the pipeline's ``actor_infer`` cluster (rank
``r`` is the ``r``-th TP bundle of its GPUs). miles speaks of **local engine indices** in its
``RolloutManager`` engine table. Neither is a physical GPU id. :class:`MilesEngines` maps one to
the other through an explicit table (identity by default, checked against the manager's engine
count at install) and never lets a GPU id stand in for either.

miles' engine states and what a resize does with each requested engine:

=============  ======================================  ===================================
state          sleep (``dp_ranks_to_remove``)          wake (``dp_ranks_to_add``)
=============  ======================================  ===================================
``active``     ``shrink_engines``                      nothing (already awake)
``offloaded``  nothing (already asleep)                expand, sync weights, route
``shell``      error: never started                    error: never started
``loading``    error: an earlier wake did not finish   error: same
``disabling``  error: an earlier sleep did not finish  error: same
=============  ======================================  ===================================

Every requested engine's state is checked before anything is changed, so a request that mixes
actionable engines with ones in other states fails as a whole and touches nothing.

* **Sleep** is miles' ``shrink_engines``, which closes the engine's router admission, aborts and
  drains its in-flight requests, pauses generation with ``mode="retract"`` (when the manager runs
  with ``RLIX_CONTROL_PLANE=rlix``) and only then releases its memory; it is given
  ``post_sleep_vram_threshold_gb`` when one is configured (:mod:`.memory`). The integration never
  calls a bare offload, which would skip the pause.
* **Wake** is, when a :class:`~.memory.FreeMemoryCheck` is configured, a wait until the engines'
  GPUs have the free memory they need; then ``expand_engines`` (memory back, state ``loading``),
  the pipeline's weight sync for exactly those engines, ``set_weight_version`` when the sync
  returns a version (a sync that publishes the version itself returns ``None``, so it is published
  once), then ``activate_routing`` (state ``active``): an engine serves only after it holds the
  latest weights.

What a resize verifies, exactly:

* after a sleep, that miles reports every slept engine ``offloaded`` (``get_engine_states``).
  That is engine state, not memory: miles marks an engine ``offloaded`` even when its memory was
  not freed, unless its ``shrink_engines`` enforces the threshold (some miles versions do, the
  pinned fork line only logs it);
* before a wake, with a :class:`~.memory.FreeMemoryCheck`, that the framework's callback reports at
  least ``min_free_gb`` free on every engine to wake; this is where memory a sleep failed to
  release (of this pipeline or another) is caught, before the engine tries to allocate it;
* after a wake, that miles reports every woken engine ``active``; the DP ranks returned to the
  scheduler are the ones miles reports ``active``, not the ones that were asked for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from rlix_plugin.hookspecs import ClusterSpec, InvalidRequestError
from rlix_plugin.supply import PipelineEngines

from .errors import EngineStateError
from .memory import FreeMemoryCheck, check_threshold
from .rollout_manager import ManagerProxy

log = logging.getLogger(__name__)

#: ``sync_weights(engine_indices) -> version | None``: load the latest policy weights into these
#: engines (state ``loading``); return the version they now hold, for the integration to publish
#: with ``set_weight_version``, or ``None`` when the sync published it itself (rlix's model update
#: service, ``sync_selected_workers(sync_id, target_engine_indices, version)``, does). It runs in
#: the process that called ``install``, during a resize: it must not go through the
#: ``RolloutManager`` actor's call queue, where it would wait behind a running ``generate``.
WeightSync = Callable[[tuple[int, ...]], "int | None"]

ACTIVE, OFFLOADED, SHELL, LOADING = "active", "offloaded", "shell", "loading"

#: Longest wait for one engine operation (memory release or reload, a weight sync). The
#: scheduler fences the pipeline at its own resize timeout regardless.
ENGINE_TIMEOUT_S = 120.0


def engine_table(
    cluster: ClusterSpec, engine_index_of_rank: Sequence[int] | None, engine_count: int
) -> tuple[int, ...]:
    """The engine index of each DP rank of ``cluster``, checked.

    :param engine_index_of_rank: ``[r] -> engine index``; ``None``: engine ``r`` serves rank ``r``.
    :param engine_count: ``RolloutManager.get_engine_count()``.
    :raises InvalidRequestError: wrong length, a repeated index, or one outside the manager's table.
    """
    dp_size = cluster.dp_size
    table = tuple(range(dp_size)) if engine_index_of_rank is None else tuple(int(i) for i in engine_index_of_rank)
    if len(table) != dp_size:
        raise InvalidRequestError(
            f"actor_infer has {dp_size} DP ranks (GPUs {list(cluster.gpus)}, TP {cluster.tp_size}) but the engine "
            f"table maps {len(table)}: {list(table)}"
        )
    if len(set(table)) != len(table):
        raise InvalidRequestError(f"engine table {list(table)} maps two DP ranks to one engine")
    if engine_index_of_rank is None and engine_count != dp_size:
        raise InvalidRequestError(
            f"the RolloutManager has {engine_count} engines but actor_infer has {dp_size} DP ranks (GPUs "
            f"{list(cluster.gpus)}, TP {cluster.tp_size}); pass engine_index_of_rank to say which engine serves "
            "which rank"
        )
    outside = [i for i in table if not 0 <= i < engine_count]
    if outside:
        raise InvalidRequestError(f"engine indices {outside} are outside the RolloutManager's 0..{engine_count - 1}")
    return table


class MilesEngines(PipelineEngines):
    """The ``rlix_resize_infer`` implementation for one miles pipeline.

    Registered on the pipeline's plugin manager by ``install``; answers ``None`` for any other
    pipeline. One resize at a time (a lock), so the scheduler's calls and :meth:`sleep_active`
    never interleave.

    :param pipeline_id: The pipeline it owns.
    :param manager: :class:`~.rollout_manager.ManagerProxy` of the pipeline's ``RolloutManager``.
    :param engine_index_of_rank: From :func:`engine_table`.
    :param sync_weights: The pipeline's weight sync for woken engines (:data:`WeightSync`).
    :param timeout_s: Longest wait for one manager call.
    :param post_sleep_vram_threshold_gb: Handed to every ``shrink_engines`` (``None``: not passed).
    :param free_memory_check: Run before every wake (``None``: memory is not checked).
    """

    def __init__(
        self,
        pipeline_id: str,
        manager: ManagerProxy,
        engine_index_of_rank: Sequence[int],
        sync_weights: WeightSync,
        *,
        timeout_s: float = ENGINE_TIMEOUT_S,
        post_sleep_vram_threshold_gb: float | None = None,
        free_memory_check: FreeMemoryCheck | None = None,
    ) -> None:
        if not callable(sync_weights):
            raise InvalidRequestError(
                f"sync_weights must be callable (engine indices -> version), got {sync_weights!r}"
            )
        if free_memory_check is not None and not isinstance(free_memory_check, FreeMemoryCheck):
            raise InvalidRequestError(f"free_memory_check must be a FreeMemoryCheck or None, got {free_memory_check!r}")
        self.post_sleep_vram_threshold_gb = check_threshold(post_sleep_vram_threshold_gb)
        self.free_memory_check = free_memory_check
        self.pipeline_id = pipeline_id
        self.manager = manager
        self.engines = tuple(engine_index_of_rank)
        self.rank_of_engine = {engine: rank for rank, engine in enumerate(self.engines)}
        self.sync_weights = sync_weights
        self.timeout_s = timeout_s
        self._lock = threading.Lock()

    # -- the hook: rlix_resize_infer comes from PipelineEngines ----------------------------------

    def resize(self, remove: Sequence[int] = (), add: Sequence[int] = ()) -> tuple[int, ...]:
        """Sleep the engines of ``remove``, then wake those of ``add``; return the DP ranks whose
        engines are ``active`` afterwards, sorted. Idempotent per rank.

        :raises ValueError: a DP rank outside ``0 .. dp_size - 1`` (nothing changed).
        :raises EngineStateError: a requested engine is ``shell`` or mid-transition (nothing changed).
        :raises RuntimeError: miles did not reach the state it was asked for.
        """
        with self._lock:
            remove_engines = self._engines_of(remove)
            add_engines = self._engines_of(add)
            states = self._states(sorted(set(remove_engines) | set(add_engines)))
            self._check(states, remove_engines, add_engines)
            to_sleep = sorted(e for e in remove_engines if states[e] == ACTIVE)
            # A rank both put to sleep and woken comes back with fresh weights.
            to_wake = sorted(e for e in add_engines if states[e] == OFFLOADED or e in to_sleep)
            version = None
            if to_sleep:
                self._sleep(to_sleep)
            if to_wake:
                version = self._wake(to_wake)
            awake = self.awake_ranks()
            if to_sleep or to_wake:
                done = []
                if to_sleep:
                    done.append(f"slept DP ranks {self._ranks(to_sleep)} (engines {to_sleep})")
                if to_wake:
                    weights = "weights published by the sync" if version is None else f"weight version {version}"
                    done.append(f"woke DP ranks {self._ranks(to_wake)} (engines {to_wake}) with {weights}")
                log.info("rlix: pipeline %r %s; awake DP ranks now %s", self.pipeline_id, ", ".join(done), list(awake))
            return awake

    def awake_ranks(self) -> tuple[int, ...]:
        """DP ranks whose engine miles reports ``active`` (one state read)."""
        states = self._states(list(self.engines))
        return tuple(rank for rank, engine in enumerate(self.engines) if states[engine] == ACTIVE)

    def take_over(self) -> list[int]:
        """Bring the engines into the scheduler's books, at install: every engine must be
        ``active`` or ``offloaded`` (:class:`EngineStateError` otherwise), and the ``active`` ones
        are put to sleep, since a newly registered pipeline has no engine awake for the scheduler
        and an engine holding GPU memory the scheduler thinks is free would break the next wake
        there. Returns the DP ranks put to sleep."""
        with self._lock:
            states = self._states(list(self.engines))
            self._check(states, (), self.engines, doing="take over the engines")
            active = [rank for rank, engine in enumerate(self.engines) if states[engine] == ACTIVE]
        if active:
            self.resize(remove=active)
        return active

    # -- steps ----------------------------------------------------------------------------------

    def _engines_of(self, ranks: Sequence[int]) -> list[int]:
        bad = sorted(r for r in ranks if not isinstance(r, int) or not 0 <= r < len(self.engines))
        if bad:
            raise ValueError(
                f"pipeline {self.pipeline_id!r} has generation DP ranks 0..{len(self.engines) - 1}; got {bad}"
            )
        return [self.engines[r] for r in dict.fromkeys(ranks)]

    def _ranks(self, engines: Sequence[int]) -> list[int]:
        return [self.rank_of_engine[e] for e in engines]

    def _states(self, engines: Sequence[int]) -> dict[int, str]:
        if not engines:
            return {}
        states = self.manager.call("get_engine_states", list(engines), timeout_s=self.timeout_s)
        return {int(engine): str(state) for engine, state in dict(states).items()}

    def _check(self, states: dict[int, str], remove: Sequence[int], add: Sequence[int], doing: str = "") -> None:
        """Every requested engine must be ``active`` or ``offloaded``; otherwise fail as a whole."""
        bad = {e: states.get(e, "unknown") for e in (*remove, *add) if states.get(e) not in (ACTIVE, OFFLOADED)}
        if not bad:
            return
        described = ", ".join(f"DP rank {self.rank_of_engine[e]} (engine {e}): {s!r}" for e, s in sorted(bad.items()))
        if all(s == SHELL for s in bad.values()):
            why = (
                "a 'shell' engine was never started; create the engines and offload them (finish_init_offload) "
                "before install"
            )
        elif doing and all(s == LOADING for s in bad.values()):
            why = (
                "engines still 'loading' at install were started with MILES_INIT_DEFER_ADD_WORKER=1 and not yet "
                f"offloaded: call rollout_manager.finish_init_offload({sorted(bad)}) before install"
            )
        else:
            why = (
                "an engine is between states: an earlier sleep or wake did not finish (or miles is changing it "
                "outside the scheduler)"
            )
        doing = doing or f"resize (sleep DP ranks {self._ranks(remove)}, wake {self._ranks(add)})"
        raise EngineStateError(
            f"pipeline {self.pipeline_id!r}: cannot {doing}: {described}; {why}. Nothing was changed."
        )

    def _sleep(self, engines: list[int]) -> None:
        threshold = self.post_sleep_vram_threshold_gb
        extra = {} if threshold is None else {"post_sleep_vram_threshold_gb": threshold}
        self.manager.call("shrink_engines", list(engines), timeout_s=self.timeout_s, **extra)
        self._verify(engines, OFFLOADED, "sleep")

    def _wake(self, engines: list[int]) -> int | None:
        if self.free_memory_check is not None:
            self.free_memory_check.wait(engines, f"pipeline {self.pipeline_id!r} (DP ranks {self._ranks(engines)})")
        self.manager.call("expand_engines", list(engines), timeout_s=self.timeout_s)
        version = self.sync_weights(tuple(engines))
        if version is not None:
            self.manager.call(
                "set_weight_version", int(version), engine_indices=list(engines), timeout_s=self.timeout_s
            )
        self.manager.call("activate_routing", list(engines), timeout_s=self.timeout_s)
        self._verify(engines, ACTIVE, "wake")
        return version

    def _verify(self, engines: list[int], wanted: str, what: str) -> None:
        """miles must report every engine in the state it was asked for (state only: memory is
        the business of the threshold and the free-memory check)."""
        states = self._states(engines)
        wrong = {e: s for e, s in states.items() if s != wanted}
        if wrong:
            raise RuntimeError(
                f"pipeline {self.pipeline_id!r}: after the {what} of engines {engines} miles reports "
                f"{ {e: s for e, s in sorted(wrong.items())} }, expected {wanted!r}"
            )

    def __repr__(self) -> str:
        return f"MilesEngines(pipeline_id={self.pipeline_id!r}, engines={list(self.engines)})"

    def describe(self) -> dict[int, int]:
        """DP rank -> engine index, for logs."""
        return {rank: engine for rank, engine in enumerate(self.engines)}


__all__ = ["ACTIVE", "ENGINE_TIMEOUT_S", "LOADING", "OFFLOADED", "SHELL", "MilesEngines", "WeightSync", "engine_table"]
