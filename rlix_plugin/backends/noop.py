"""The no-op default: what answers every hook when no scheduler is configured.

Registered as a built-in by the plugin manager, always, with every implementation ``trylast`` so
that any backend or third-party plugin overrides it. A framework whose hooks reach only this plugin
runs exactly as it did without rlix: requests return unscheduled grants and progress goes nowhere.
The front end recognises it by ``RLIX_NOOP`` and skips the hot-path calls entirely.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlix_plugin.hookspecs import ACTOR_INFER, Grant, hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rlix_plugin.hookspecs import ClusterSpec

NAME = "rlix-noop"


class NoopPlugin:
    """Every hook, doing nothing."""

    RLIX_NOOP = True

    @hookimpl(trylast=True)
    def rlix_register_pipeline(self, pipeline_id: str, clusters: Mapping[str, ClusterSpec]) -> None:
        return None

    @hookimpl(trylast=True)
    def rlix_unregister_pipeline(self, pipeline_id: str, reason: str) -> None:
        return None

    @hookimpl(trylast=True)
    def rlix_signal_demand(self, pipeline_id: str, rollout_id: int) -> Grant:
        return Grant(pipeline_id=pipeline_id, cluster=ACTOR_INFER, scheduled=False)

    @hookimpl(trylast=True)
    def rlix_begin_progress_batch(self) -> None:
        return None

    @hookimpl(trylast=True)
    def rlix_bump_completed(self) -> None:
        return None

    @hookimpl(trylast=True)
    def rlix_end_progress_batch(self) -> None:
        return None

    @hookimpl(trylast=True)
    def rlix_report_preempt(self) -> None:
        return None

    @hookimpl(trylast=True)
    def rlix_request_gpus(self, pipeline_id: str, cluster: str) -> Grant:
        return Grant(pipeline_id=pipeline_id, cluster=cluster, scheduled=False)

    @hookimpl(trylast=True)
    def rlix_release(self) -> None:
        return None

    @hookimpl(trylast=True)
    def rlix_resize_infer(self) -> None:
        # The no-op owns no engines: returning None lets the call reach the pipeline's owner, and
        # tells the scheduler loudly when there is none.
        return None


def make_backend() -> None:
    """The ``noop`` backend adds nothing: the built-in no-op plugin is always registered."""
    return None
