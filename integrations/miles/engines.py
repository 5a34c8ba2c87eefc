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
  with ``RLIX_CONTROL_PLANE=rlix``) and only then releases its memory. The integration never calls
  a bare offload, which would skip the pause.
* **Wake** is ``expand_engines`` (memory back, state ``loading``), then the pipeline's weight sync
  for exactly those engines, then ``set_weight_version`` when the sync returns a version, then
  ``activate_routing`` (state ``active``): an engine serves only after it holds the latest weights.
* Both are **verified**: the states are read back and the awake ranks returned to the scheduler
  are the ones miles reports ``active``, not the ones that were asked for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from rlix_plugin.hookspecs import ClusterSpec, InvalidRequestError
from rlix_plugin.supply import PipelineEngines

from . import LOGGER_NAME
from .errors import EngineStateError
from .rollout_manager import ManagerProxy

log = logging.getLogger(LOGGER_NAME)

#: ``sync_weights(engine_indices) -> version | None``: load the latest policy weights into these
#: engines (state ``loading``); return the version they now hold, or ``None`` when the sync
#: published the version itself (miles' model update service does).
WeightSync = Callable[[tuple[int, ...]], "int | None"]

ACTIVE, OFFLOADED, SHELL = "active", "offloaded", "shell"

#: Longest wait for one engine operation (memory release or reload, a weight sync). The
#: scheduler fences the pipeline at its own resize timeout regardless.
ENGINE_TIMEOUT_S = 120.0


def engine_table(cluster: ClusterSpec, engine_index_of_rank: Sequence[int] | None, engine_count: int) -> tuple[int, ...]:
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
    """

    def __init__(
        self,
        pipeline_id: str,
        manager: ManagerProxy,
        engine_index_of_rank: Sequence[int],
        sync_weights: WeightSync,
        *,
        timeout_s: float = ENGINE_TIMEOUT_S,
    ) -> None:
        if not callable(sync_weights):
            raise InvalidRequestError(f"sync_weights must be callable (engine indices -> version), got {sync_weights!r}")
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
            why = ("a 'shell' engine was never started; create the engines and offload them (finish_init_offload) "
                   "before install")
        else:
            why = ("an engine is between states: an earlier sleep or wake did not finish (or miles is changing it "
                   "outside the scheduler)")
        doing = doing or f"resize (sleep DP ranks {self._ranks(remove)}, wake {self._ranks(add)})"
        raise EngineStateError(f"pipeline {self.pipeline_id!r}: cannot {doing}: {described}; {why}. Nothing was changed.")

    def _sleep(self, engines: list[int]) -> None:
        self.manager.call("shrink_engines", list(engines), timeout_s=self.timeout_s)
        self._verify(engines, OFFLOADED, "sleep")

    def _wake(self, engines: list[int]) -> int | None:
        self.manager.call("expand_engines", list(engines), timeout_s=self.timeout_s)
        version = self.sync_weights(tuple(engines))
        if version is not None:
            self.manager.call("set_weight_version", int(version), engine_indices=list(engines), timeout_s=self.timeout_s)
        self.manager.call("activate_routing", list(engines), timeout_s=self.timeout_s)
        self._verify(engines, ACTIVE, "wake")
        return version

    def _verify(self, engines: list[int], wanted: str, what: str) -> None:
        """A sleep or wake is verified, not assumed (a release that releases nothing, failure
        mode 5): miles must report every engine in the state it was asked for."""
        states = self._states(engines)
        wrong = {e: s for e, s in states.items() if s != wanted}
        if wrong:
            raise RuntimeError(
                f"pipeline {self.pipeline_id!r}: after the {what} of engines {engines} miles reports "
                f"{ {e: s for e, s in sorted(wrong.items())} }, expected {wanted!r}"
            )

    def __repr__(self) -> str:
        return f"MilesEngines(pipeline_id={self.pipeline_id!r}, engines={list(self.engines)})"

    def describe(self) -> dict[str, Any]:
        """DP rank -> engine index, for logs."""
        return {rank: engine for rank, engine in enumerate(self.engines)}


__all__ = ["ACTIVE", "ENGINE_TIMEOUT_S", "OFFLOADED", "SHELL", "MilesEngines", "WeightSync", "engine_table"]
