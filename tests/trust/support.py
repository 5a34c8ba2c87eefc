"""Shared pieces of the trust tests: engines that do what they are told, pipelines on a local
scheduler each through its own plugin manager, and a snapshot comparable before and after."""

from __future__ import annotations

from typing import Any

from rlix_plugin import Hooks, get_plugin_manager, hookimpl
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec


class Engines:
    """The supply side of one pipeline: wakes and sleeps at once."""

    def __init__(self, pipeline_id: str) -> None:
        self.pipeline_id = pipeline_id
        self.awake: set[int] = set()

    @hookimpl
    def rlix_resize_infer(self, pipeline_id, dp_ranks_to_remove, dp_ranks_to_add):
        if pipeline_id != self.pipeline_id:
            return None
        self.awake -= set(dp_ranks_to_remove)
        self.awake |= set(dp_ranks_to_add)
        return tuple(sorted(self.awake))


def seed_clusters(train: tuple[int, ...]) -> dict[str, ClusterSpec]:
    return {ACTOR_INFER: ClusterSpec(1, (0, 1, 2, 3)), ACTOR_TRAIN: ClusterSpec(len(train), train)}


def hooks_on(backend: str, options: dict[str, Any], engines: Engines | None = None) -> Hooks:
    pm = get_plugin_manager(backend, backend_options=options, autoload=False)
    if engines is not None:
        pm.register(engines, name=f"engines-{engines.pipeline_id}")
    return Hooks(pm)


def comparable(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A snapshot without what changes by itself (waiting times, counters of the clock)."""
    snap = dict(snapshot)
    snap["pending"] = {
        p: [{k: v for k, v in r.items() if k != "waiting_s"} for r in rs] for p, rs in snap.get("pending", {}).items()
    }
    for volatile in ("scheduler", "progress_reports"):
        snap.pop(volatile, None)
    return snap
