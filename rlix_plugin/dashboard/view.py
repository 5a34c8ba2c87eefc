"""What the dashboard page shows, computed from the scheduler's snapshot and decisions. Pure: the
caller passes the time; the page only draws what :meth:`PoolView.state` returns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlix_plugin.hookspecs import ACTOR_INFER
from rlix_plugin.scheduler.journal import describe

#: Seconds of ownership history the timeline keeps and shows.
TIMELINE_S = 180.0
#: The shortest span the timeline shows (a page opened on a new scheduler still has a scale).
TIMELINE_MIN_S = 20.0
#: Decisions the page lists (newest first).
DECISIONS_SHOWN = 40


@dataclass
class Segment:
    """One GPU held by one holder in one state, from ``start`` to ``end`` (None: still)."""

    start: float
    pipeline: str | None
    cluster: str | None
    state: str
    end: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "start": round(self.start, 3),
            "end": None if self.end is None else round(self.end, 3),
            "pipeline": self.pipeline,
            "cluster": self.cluster,
            "state": self.state,
        }


class Timeline:
    """Per GPU, the segments of the last :data:`TIMELINE_S` seconds."""

    def __init__(self, window_s: float = TIMELINE_S) -> None:
        self.window_s = window_s
        self.rows: list[deque[Segment]] = []
        self.first: float | None = None

    def observe(self, now: float, gpus: Sequence[Mapping[str, Any]]) -> None:
        """Record the GPUs' holders and states at ``now`` (a snapshot's ``gpus``)."""
        if self.first is None:
            self.first = now
        while len(self.rows) < len(gpus):
            self.rows.append(deque())
        del self.rows[len(gpus) :]
        for row, entry in zip(self.rows, gpus, strict=False):
            key = (entry["pipeline"], entry["cluster"], entry["state"])
            last = row[-1] if row else None
            if last is None or (last.pipeline, last.cluster, last.state) != key:
                if last is not None:
                    last.end = now
                row.append(Segment(now, *key))
            while row and row[0].end is not None and row[0].end < now - self.window_s:
                row.popleft()

    def to_json(self, now: float) -> dict[str, Any]:
        """The segments, and the span to draw: what was seen so far (at least
        :data:`TIMELINE_MIN_S`), then the last ``window_s`` seconds, scrolling."""
        seen = now - self.first if self.first is not None else 0.0
        span = min(self.window_s, max(TIMELINE_MIN_S, seen))
        return {
            "now": round(now, 3),
            "window_s": round(span, 3),
            "rows": [[s.to_json() for s in row] for row in self.rows],
        }


class PoolView:
    """The page's state, updated by :meth:`update` with each poll of the scheduler."""

    def __init__(self, window_s: float = TIMELINE_S) -> None:
        self.timeline = Timeline(window_s)
        self.snapshot: dict[str, Any] = {}
        self.decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS_SHOWN)
        #: Pipeline -> colour index, in the order they were first seen (stable while the page runs).
        self.colors: dict[str, int] = {}
        self.version = 0
        self.error: str | None = None
        self.updated_at = 0.0

    def update(self, now: float, snapshot: Mapping[str, Any], decisions: Sequence[Mapping[str, Any]]) -> None:
        self.snapshot = dict(snapshot)
        for decision in decisions:
            self.decisions.append(dict(decision, text=describe(decision)))
        for pid in sorted(snapshot.get("pipelines", {})):
            self.colors.setdefault(pid, len(self.colors))
        self.timeline.observe(now, snapshot.get("gpus", []))
        self.error = None
        self.updated_at = now
        self.version += 1

    def new_log(self) -> None:
        """The scheduler's log is another one (a new scheduler): forget the old decisions."""
        self.decisions.clear()

    def failed(self, now: float, error: str) -> None:
        """The scheduler did not answer: the page keeps the last state and says so."""
        self.error = error
        self.updated_at = now
        self.version += 1

    def state(self, now: float) -> dict[str, Any]:
        snap = self.snapshot
        pool = snap.get("pool", {})
        per_node = pool.get("gpus_per_node") or 1
        cells = [
            dict(entry, node=entry["gpu"] // per_node, label=_label(entry), role=_role(entry))
            for entry in snap.get("gpus", [])
        ]
        return {
            "version": self.version,
            "error": self.error,
            "updated_at": round(self.updated_at, 3),
            "pool": pool,
            "policy": snap.get("policy"),
            "cycles": snap.get("cycles"),
            "colors": self.colors,
            "gpus": cells,
            "pipelines": _pipelines(snap),
            "pending": [
                dict(r, priority=int(p))
                for p, rs in sorted(snap.get("pending", {}).items(), key=lambda kv: int(kv[0]))
                for r in rs
            ],
            "decisions": list(reversed(self.decisions)),
            "timeline": self.timeline.to_json(now),
        }


def _label(entry: Mapping[str, Any]) -> str:
    if entry["pipeline"] is None:
        return "idle"
    if entry["cluster"] == ACTOR_INFER:
        return f"{entry['pipeline']} dp{entry['dp_rank']}"
    return f"{entry['pipeline']} {entry['cluster']}"


def _role(entry: Mapping[str, Any]) -> str:
    """What the holder uses the GPU for: ``dp<rank>`` (an engine) or the stage's cluster."""
    if entry["pipeline"] is None:
        return ""
    return f"dp{entry['dp_rank']}" if entry["cluster"] == ACTOR_INFER else str(entry["cluster"])


def _pipelines(snap: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    entitled = snap.get("entitled_bundles", {})
    for pid, info in sorted(snap.get("pipelines", {}).items()):
        infer = info.get("clusters", {}).get(ACTOR_INFER, {})
        progress = info.get("progress", [])
        rows.append(
            {
                "pipeline": pid,
                "rollout": info.get("rollout"),
                "open_demand": info.get("open_demand"),
                "remaining": info.get("remaining"),
                "completed": sum(p["completed"] for p in progress),
                "step_target": sum(p["step_target"] for p in progress) or info.get("open_demand"),
                "awake": len(infer.get("awake_dp_ranks", [])),
                "dp_size": infer.get("dp_size"),
                "entitled": entitled.get(pid, 0),
                "fenced": info.get("fenced"),
            }
        )
    return rows


__all__ = ["DECISIONS_SHOWN", "PoolView", "Segment", "TIMELINE_MIN_S", "TIMELINE_S", "Timeline"]
