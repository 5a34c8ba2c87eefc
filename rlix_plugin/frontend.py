"""The typed front end: one keyword-only method per hook.

This is the only place the hooks' keyword names are spelled out, so a type checker catches a
misspelt argument and a positional call fails with a TypeError naming the method.

Hot-path guard: the progress hooks (begin / bump / end / report_preempt) are skipped outright
while only the no-op default implements them, which makes a call cost about as much as a plain
method call. The guard is recomputed whenever a plugin registers or unregisters, or a monitor
(recorder, tracing) is installed, since then every call must be seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rlix_plugin.hookspecs import ACTOR_INFER, MODE_FULL, Grant

if TYPE_CHECKING:
    from rlix_plugin.hookspecs import ClusterSpec, PipelineLimits, SwitchCosts
    from rlix_plugin.manager import RlixPluginManager

#: Default wait of the blocking calls, seconds. Long enough for a training stage to finish and
#: release its GPUs, short enough that a stuck pipeline is reported within a coffee break.
DEFAULT_TIMEOUT_S = 600.0


class Hooks:
    """Call the ``rlix`` hooks of one plugin manager.

    Build one per manager (``Hooks(get_plugin_manager())``); it is cheap and thread-safe as
    long as the manager is not changed concurrently with calls.
    """

    __slots__ = ("_begin", "_bump", "_end", "_hook", "_pm", "_preempt", "__weakref__")

    def __init__(self, pm: RlixPluginManager) -> None:
        self._pm = pm
        self._hook: Any = pm.hook
        self._begin: Any = None
        self._bump: Any = None
        self._end: Any = None
        self._preempt: Any = None
        self.refresh()
        pm.add_listener(self)

    @property
    def plugin_manager(self) -> RlixPluginManager:
        return self._pm

    def refresh(self) -> None:
        """Recompute the hot-path guards (called by the manager on every change)."""
        live = self._pm.live_hooks()
        hook = self._hook
        self._begin = hook.rlix_begin_progress_batch if "rlix_begin_progress_batch" in live else None
        self._bump = hook.rlix_bump_completed if "rlix_bump_completed" in live else None
        self._end = hook.rlix_end_progress_batch if "rlix_end_progress_batch" in live else None
        self._preempt = hook.rlix_report_preempt if "rlix_report_preempt" in live else None

    # -- lifecycle --------------------------------------------------------------------------------

    def register_pipeline(
        self,
        *,
        pipeline_id: str,
        clusters: Mapping[str, ClusterSpec],
        switch_costs: SwitchCosts | None = None,
        limits: PipelineLimits | None = None,
    ) -> None:
        self._hook.rlix_register_pipeline(
            pipeline_id=pipeline_id, clusters=dict(clusters), switch_costs=switch_costs, limits=limits
        )

    def unregister_pipeline(self, *, pipeline_id: str, reason: str = "finished") -> None:
        self._hook.rlix_unregister_pipeline(pipeline_id=pipeline_id, reason=reason)

    # -- demand -----------------------------------------------------------------------------------

    def signal_demand(
        self,
        *,
        pipeline_id: str,
        rollout_id: int,
        step_target: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> Grant:
        grant = self._hook.rlix_signal_demand(
            pipeline_id=pipeline_id, rollout_id=rollout_id, step_target=step_target, timeout_s=timeout_s
        )
        return grant if grant is not None else Grant(pipeline_id=pipeline_id, cluster=ACTOR_INFER)

    def begin_progress_batch(
        self,
        *,
        pipeline_id: str,
        rollout_id: int,
        step_target: int,
        target_weight_version: int = 0,
        initial_completed: int = 0,
        mode: str = MODE_FULL,
        adapter_id: str | None = None,
    ) -> None:
        call = self._begin
        if call is not None:
            call(
                pipeline_id=pipeline_id,
                rollout_id=rollout_id,
                mode=mode,
                adapter_id=adapter_id,
                target_weight_version=target_weight_version,
                step_target=step_target,
                initial_completed=initial_completed,
            )

    def bump_completed(
        self,
        *,
        pipeline_id: str,
        rollout_id: int,
        count: int = 1,
        target_weight_version: int = 0,
        mode: str = MODE_FULL,
        adapter_id: str | None = None,
    ) -> None:
        call = self._bump
        if call is not None:
            call(
                pipeline_id=pipeline_id,
                rollout_id=rollout_id,
                mode=mode,
                adapter_id=adapter_id,
                target_weight_version=target_weight_version,
                count=count,
            )

    def end_progress_batch(
        self, *, pipeline_id: str, rollout_id: int, mode: str = MODE_FULL, adapter_id: str | None = None
    ) -> None:
        call = self._end
        if call is not None:
            call(pipeline_id=pipeline_id, rollout_id=rollout_id, mode=mode, adapter_id=adapter_id)

    def report_preempt(
        self, *, pipeline_id: str, dp_rank: int, worker_url: str | None = None, retracted: int = 0
    ) -> None:
        call = self._preempt
        if call is not None:
            call(pipeline_id=pipeline_id, dp_rank=dp_rank, worker_url=worker_url, retracted=retracted)

    def request_gpus(
        self,
        *,
        pipeline_id: str,
        cluster: str,
        priority: int,
        step_target: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> Grant:
        if isinstance(priority, int) and not isinstance(priority, bool):
            priority = int(priority)  # a Priority member travels as the plain int; anything else is refused below
        grant = self._hook.rlix_request_gpus(
            pipeline_id=pipeline_id,
            cluster=cluster,
            priority=priority,
            step_target=step_target,
            timeout_s=timeout_s,
        )
        return grant if grant is not None else Grant(pipeline_id=pipeline_id, cluster=cluster)

    def release(self, *, pipeline_id: str, cluster: str) -> None:
        self._hook.rlix_release(pipeline_id=pipeline_id, cluster=cluster)

    # -- supply -----------------------------------------------------------------------------------

    def resize_infer(
        self,
        *,
        pipeline_id: str,
        dp_ranks_to_remove: tuple[int, ...] = (),
        dp_ranks_to_add: tuple[int, ...] = (),
    ) -> tuple[int, ...] | None:
        return self._hook.rlix_resize_infer(
            pipeline_id=pipeline_id,
            dp_ranks_to_remove=tuple(dp_ranks_to_remove),
            dp_ranks_to_add=tuple(dp_ranks_to_add),
        )


__all__ = ["DEFAULT_TIMEOUT_S", "Hooks"]
