"""``MilesRLixHooks``: the object miles' rollout function calls, relaying to the ``rlix_*`` hooks.

miles holds a hooks object of a fixed shape (its runtime-checkable ``RLixHooks`` protocol in
``miles/utils/rlix_hooks.py``) and calls it from the fully-async rollout function, in the
``RolloutManager``'s process:

* ``begin_progress_batch(target_weight_version, step_target_groups, initial_completed, *,
  mode=None, adapter_id=None)`` once, before the collection loop;
* ``bump_completed(*, target_weight_version)`` once per group accepted into the batch;
* ``end_progress_batch()`` on success and on the fatal-error path (other errors skip it);
* ``report_preempt(engine_index, worker_url)`` when an engine was preempted mid-generation.

Contract of this implementation:

* **Units.** miles passes groups; the hooks get samples (``groups x n_samples_per_prompt``,
  :mod:`.units`).
* **Never raises into the rollout function, never blocks it.** Every call is guarded; a failure
  is logged once per batch at WARNING ("progress signal lost") and the rollout continues. The
  ``local`` and ``ray`` backends coalesce progress in a background thread, so a call costs a lock
  and a counter, whatever the scheduler is doing.
* **The rollout epoch.** miles' protocol passes no rollout id, so the hooks are told it:
  :meth:`~.session.MilesSession.signal_rollout_demand` sets it in the manager's process
  (:meth:`MilesRLixHooks.set_rollout`, through the engine channel, which does not wait behind a
  running ``generate``) before the rollout is dispatched, and each batch takes it when it
  begins: its bumps and its end carry that rollout even if the next rollout's id is set
  meanwhile. A ``begin`` before any rollout id was set is a lost signal (logged), not a guess.
* **Tolerant.** A ``begin`` while a batch is open replaces it (the backend closes the stale
  batch); an ``end`` with no open batch, or a second one, does nothing; a batch whose ``end``
  never comes is closed by the next ``begin``, by the next rollout's epoch (the scheduler
  ignores an older rollout's reports) or by releasing the generation cluster.
* **Crosses processes.** It is sent to the ``RolloutManager`` actor by ``set_rlix_hooks``, so it
  pickles as plain configuration (pipeline id, group size, backend name and options) and rebuilds
  its plugin manager and front end on first use on the far side. A hooks object for the
  ``local`` backend refuses to leave its process: the far side would talk to another scheduler.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rlix_plugin.hookspecs import MODE_FULL, MODE_LORA, InvalidRequestError

from .units import GroupUnits, check_groups

if TYPE_CHECKING:
    from rlix_plugin.frontend import Hooks

log = logging.getLogger(__name__)

#: Progress hooks that must reach a backend for the scheduler to see the rollout.
PROGRESS_HOOKS = ("rlix_begin_progress_batch", "rlix_bump_completed", "rlix_end_progress_batch")
#: Seconds the far side waits for the scheduler while answering :meth:`MilesRLixHooks.probe`.
PROBE_TIMEOUT_S = 10.0


class MilesRLixHooks:
    """miles' ``RLixHooks`` for one pipeline, relaying to the ``rlix_*`` hooks in samples.

    :param pipeline_id: The pipeline's id on the scheduler.
    :param n_samples_per_prompt: miles' group size (``args.n_samples_per_prompt``).
    :param backend: Backend name the far side rebuilds its plugin manager with (the resolved name
        of the near side's manager, so the far side never depends on its own environment).
    :param backend_options: ``backend_options`` for the far side's manager (must pickle).
    :param autoload: ``autoload`` for the far side's manager (``None``: its environment decides).
    :param engine_to_rank: Local engine index -> generation DP rank, for ``report_preempt``.
    :param hooks: A front end to use in this process (a ``RolloutManager`` held as a plain object
        uses it directly). Never pickled.
    """

    def __init__(
        self,
        pipeline_id: str,
        n_samples_per_prompt: int,
        *,
        backend: str,
        backend_options: Mapping[str, Any] | None = None,
        autoload: bool | None = None,
        engine_to_rank: Mapping[int, int] | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.pipeline_id = pipeline_id
        self.units = GroupUnits(n_samples_per_prompt)
        self.backend = backend
        self.backend_options = dict(backend_options or {})
        self.autoload = autoload
        self.engine_to_rank = dict(engine_to_rank or {})
        #: Identifies this installation: ``install`` reads it back from the manager's process.
        self.token = uuid.uuid4().hex
        self._init_runtime(hooks)

    def _init_runtime(self, hooks: Hooks | None) -> None:
        self._hooks = hooks
        self._lock = threading.Lock()
        #: (mode, adapter_id, rollout_id) of the open batch.
        self._stream: tuple[str, str | None, int] | None = None
        #: The rollout the next batch belongs to (set by :meth:`set_rollout`).
        self._rollout_id: int | None = None
        self._version = 0
        self._lost_logged = False

    # -- crossing a process boundary --------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        if self.backend == "local":
            raise TypeError(
                f"MilesRLixHooks of pipeline {self.pipeline_id!r} uses the 'local' backend, whose scheduler "
                "lives in this process; sent to another process (a Ray actor) it would report to a different "
                "scheduler. Use the 'ray' backend when the RolloutManager is a Ray actor."
            )
        return {
            "pipeline_id": self.pipeline_id,
            "n_samples_per_prompt": self.units.n_samples_per_prompt,
            "backend": self.backend,
            "backend_options": self.backend_options,
            "autoload": self.autoload,
            "engine_to_rank": self.engine_to_rank,
            "token": self.token,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.pipeline_id = state["pipeline_id"]
        self.units = GroupUnits(state["n_samples_per_prompt"])
        self.backend = state["backend"]
        self.backend_options = state["backend_options"]
        self.autoload = state["autoload"]
        self.engine_to_rank = state["engine_to_rank"]
        self.token = state["token"]
        self._init_runtime(None)  # the front end is rebuilt here, on first use

    @property
    def front_end(self) -> Hooks:
        """The front end, built on first use in this process from the backend name and options."""
        hooks = self._hooks
        if hooks is None:
            with self._lock:
                if self._hooks is None:
                    from rlix_plugin import Hooks, get_plugin_manager

                    pm = get_plugin_manager(
                        self.backend, backend_options=dict(self.backend_options), autoload=self.autoload
                    )
                    self._hooks = Hooks(pm)
                hooks = self._hooks
        return hooks

    # -- the rollout epoch ------------------------------------------------------------------------

    def set_rollout(self, rollout_id: int) -> None:
        """The next batch belongs to rollout ``rollout_id`` (an open batch keeps its own).

        :raises InvalidRequestError: ``rollout_id`` is not an int >= 0 (nothing changed).
        """
        if isinstance(rollout_id, bool) or not isinstance(rollout_id, int) or rollout_id < 0:
            raise InvalidRequestError(f"rollout_id must be an int >= 0, got {rollout_id!r}")
        with self._lock:
            self._rollout_id = rollout_id

    @property
    def rollout_id(self) -> int | None:
        """The rollout the next batch belongs to (``None`` until :meth:`set_rollout`)."""
        return self._rollout_id

    # -- miles' RLixHooks protocol ---------------------------------------------------------------

    def begin_progress_batch(
        self,
        target_weight_version: int,
        step_target_groups: int,
        initial_completed: int,
        *,
        mode: str | None = None,
        adapter_id: str | None = None,
    ) -> None:
        """Open the rollout's progress batch: ``step_target_groups`` groups, of which
        ``initial_completed`` are already done. Replaces a batch that never ended."""
        with self._lock:
            self._lost_logged = False  # a new batch may log its own lost signal
        try:
            groups = check_groups("step_target_groups", step_target_groups)
            done = min(check_groups("initial_completed", initial_completed, allow_zero=True), groups)
            stream = (mode or MODE_FULL, adapter_id)
            if stream[0] not in (MODE_FULL, MODE_LORA):
                raise InvalidRequestError(f"mode must be None, {MODE_FULL!r} or {MODE_LORA!r}, got {mode!r}")
            with self._lock:
                rollout_id = self._rollout_id
                if rollout_id is None:
                    raise InvalidRequestError(
                        "no rollout id: the batch's rollout was never signalled (call the session's "
                        "signal_rollout_demand before each rollout is dispatched)"
                    )
                self._stream = (*stream, rollout_id)
                self._version = int(target_weight_version)
            self.front_end.begin_progress_batch(
                pipeline_id=self.pipeline_id,
                rollout_id=rollout_id,
                step_target=self.units.samples(groups),
                target_weight_version=int(target_weight_version),
                initial_completed=self.units.samples(done),
                mode=stream[0],
                adapter_id=adapter_id,
            )
        except Exception as exc:
            self._signal_lost("begin_progress_batch", exc)

    def bump_completed(self, *, target_weight_version: int) -> None:
        """One group was accepted into the open batch (counts ``n_samples_per_prompt`` samples).
        Dropped when no batch is open (a straggler of a batch that already ended)."""
        try:
            stream = self._stream
            if stream is None:
                return
            self.front_end.bump_completed(
                pipeline_id=self.pipeline_id,
                rollout_id=stream[2],
                count=self.units.n_samples_per_prompt,
                target_weight_version=int(target_weight_version),
                mode=stream[0],
                adapter_id=stream[1],
            )
        except Exception as exc:
            self._signal_lost("bump_completed", exc)

    def end_progress_batch(self) -> None:
        """Close the open batch (the backend delivers its final count first); a no-op when none is
        open."""
        try:
            with self._lock:
                stream, self._stream = self._stream, None
            if stream is None:
                return
            self.front_end.end_progress_batch(
                pipeline_id=self.pipeline_id, rollout_id=stream[2], mode=stream[0], adapter_id=stream[1]
            )
        except Exception as exc:
            self._signal_lost("end_progress_batch", exc)

    def report_preempt(self, engine_index: int, worker_url: str) -> None:
        """Engine ``engine_index`` was preempted mid-generation. Relayed with its DP rank (miles
        passes no request count; a preemption mid-generation retracted at least one, reported as 1).
        Informational: an unknown engine index is dropped."""
        try:
            rank = self.engine_to_rank.get(int(engine_index))
            if rank is None:
                log.debug("rlix: preempt report for unknown engine %s of %r dropped", engine_index, self.pipeline_id)
                return
            self.front_end.report_preempt(
                pipeline_id=self.pipeline_id, dp_rank=rank, worker_url=worker_url, retracted=1
            )
        except Exception as exc:
            self._signal_lost("report_preempt", exc)

    # -- install's read-back ------------------------------------------------------------------------

    def probe(self) -> dict[str, Any]:
        """Build the front end here and say what it reaches (called by ``install`` in the
        manager's process). Never raises: a failure is reported in ``error``."""
        answer: dict[str, Any] = {
            "token": self.token,
            "pipeline_id": self.pipeline_id,
            "process_id": os.getpid(),
            "control_plane": os.environ.get("RLIX_CONTROL_PLANE"),
            "backend": None,
            "live": [],
            "registered": None,
            "error": None,
        }
        try:
            pm = self.front_end.plugin_manager
            answer["backend"] = pm.backend_name
            answer["live"] = sorted(set(PROGRESS_HOOKS) & pm.live_hooks())
            answer["registered"] = _registered(pm, self.pipeline_id)
        except Exception as exc:
            answer["error"] = f"{type(exc).__name__}: {exc}"
        return answer

    # -- failures ---------------------------------------------------------------------------------

    def _signal_lost(self, what: str, exc: BaseException) -> None:
        with self._lock:
            first = not self._lost_logged
            self._lost_logged = True
        if first:
            log.warning(
                "rlix: progress signal lost for pipeline %r (%s): %r; the rollout continues",
                self.pipeline_id,
                what,
                exc,
            )
        else:
            log.debug("rlix: progress signal lost for pipeline %r (%s): %r", self.pipeline_id, what, exc)

    def __repr__(self) -> str:
        return (
            f"MilesRLixHooks(pipeline_id={self.pipeline_id!r}, n_samples_per_prompt="
            f"{self.units.n_samples_per_prompt}, backend={self.backend!r})"
        )


def held_hooks(manager: Any) -> Any:
    """Runs in the manager's process: the rlix hooks ``manager`` holds (``get_rlix_hooks()`` if it
    has one, else the attribute miles stores them in, ``_rlix_hooks``); raises
    :class:`AttributeError` when it has neither."""
    getter = getattr(manager, "get_rlix_hooks", None)
    if callable(getter):
        return getter()
    if hasattr(manager, "_rlix_hooks"):
        return manager._rlix_hooks
    raise AttributeError(f"no rlix hooks attribute on {type(manager).__qualname__}")


def set_rollout_in(manager: Any, token: str, rollout_id: int) -> None:
    """Runs in the manager's process: :meth:`MilesRLixHooks.set_rollout` on the hooks of
    installation ``token``.

    :raises InvalidRequestError: the manager holds other hooks (or none), or a bad ``rollout_id``.
    """
    held = held_hooks(manager)
    if not isinstance(held, MilesRLixHooks) or held.token != token:
        raise InvalidRequestError(
            f"the RolloutManager no longer holds the hooks of this installation (it holds {held!r}); "
            "was set_rlix_hooks called again?"
        )
    held.set_rollout(rollout_id)


def _registered(pm: Any, pipeline_id: str) -> bool | None:
    """Whether the scheduler behind ``pm``'s backend knows ``pipeline_id``: one round trip that
    proves the far side reaches the right scheduler. ``None`` with no scheduler to ask (noop)."""
    backend = pm.backend
    return None if backend is None else bool(backend.is_registered(pipeline_id))


__all__ = ["PROBE_TIMEOUT_S", "PROGRESS_HOOKS", "MilesRLixHooks", "held_hooks", "set_rollout_in"]
