"""The demand ledger: the durable open-demand registry and the rollout progress streams.

Pure: plain dicts, the caller passes the time. What the planner reads from here is one number per
pipeline, :meth:`DemandLedger.remaining`; what the cycle trigger reads is whether that number
changed in a way that matters.

* ``open_demand``: ``pipeline_id -> step_target``, written by every generation request (the
  pre-signal before a rollout dispatches anything) and kept until the generation cluster is
  released, the pipeline's last progress stream ends, or it unregisters. This is what makes the
  seed race (two pipelines preempted to nothing at a rollout boundary, the first to report
  winning every engine) impossible: demand is visible for the whole rollout lifecycle.
* ``progress``: latest report per (pipeline, mode, adapter) stream; completed is clamped to
  ``[0, step_target]``.
* ``retired_streams``: streams of a finished rollout. Their late reports, which may arrive from
  another process after the next rollout's demand, are ignored until that stream's next begin.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Union

from rlix_plugin.hookspecs import (
    MODE_FULL,
    MODE_LORA,
    PROGRESS_MODES,
    InvalidRequestError,
    StreamProgress,
)

StreamKey = tuple[str, Union[str, None]]


def require_int(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidRequestError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class DemandLedger:
    """Open demand and progress of every pipeline. Mutated only by its methods."""

    def __init__(self) -> None:
        self.open_demand: dict[str, int] = {}
        self.progress: dict[str, dict[StreamKey, StreamProgress]] = {}
        self.retired_streams: dict[str, set[StreamKey]] = {}
        #: When each pipeline's open demand last ended (its rollout finished), for the planner's
        #: anticipation of the stage that follows a rollout.
        self.retired_at: dict[str, float] = {}
        #: Rollouts each pipeline has started (demand opened while it had none): its progress
        #: through its job, which the policy uses to keep pipelines abreast.
        self.rollouts: dict[str, int] = {}

    # -- the registry ---------------------------------------------------------------------------------

    def open(self, pipeline_id: str, step_target: int) -> None:
        if pipeline_id not in self.open_demand:
            self.rollouts[pipeline_id] = self.rollouts.get(pipeline_id, 0) + 1
        self.open_demand[pipeline_id] = step_target
        self.retired_at.pop(pipeline_id, None)

    def retire(self, pipeline_id: str, now: float) -> bool:
        """End the pipeline's open demand; True if it had one."""
        if self.open_demand.pop(pipeline_id, None) is None:
            return False
        self.retired_at[pipeline_id] = now
        return True

    def forget(self, pipeline_id: str) -> None:
        for table in (self.open_demand, self.progress, self.retired_streams, self.retired_at, self.rollouts):
            table.pop(pipeline_id, None)

    # -- progress streams -----------------------------------------------------------------------------

    def check_stream(self, pipeline_id: str, mode: str, adapter_id: str | None) -> StreamKey:
        if mode not in PROGRESS_MODES:
            raise InvalidRequestError(f"progress mode must be one of {list(PROGRESS_MODES)}, got {mode!r}")
        if mode == MODE_FULL and adapter_id is not None:
            raise InvalidRequestError(f"mode {MODE_FULL!r} takes no adapter_id, got {adapter_id!r}")
        if mode == MODE_LORA and not adapter_id:
            raise InvalidRequestError(f"mode {MODE_LORA!r} needs an adapter_id, got {adapter_id!r}")
        existing = {m for m, _ in self.progress.get(pipeline_id, {})}
        if existing and mode not in existing:
            raise InvalidRequestError(
                f"pipeline {pipeline_id!r} reports {sorted(existing)} progress; mixing in {mode!r} streams is not allowed"
            )
        return (mode, adapter_id)

    def report(
        self,
        pipeline_id: str,
        mode: str,
        adapter_id: str | None,
        step_target: int,
        completed: int,
        target_weight_version: int = 0,
        new_batch: bool = False,
    ) -> bool:
        """Latest wins per stream. ``new_batch`` marks a begin: it re-opens a retired stream; other
        reports of a retired stream are late ones of the previous rollout and are ignored.
        Returns True when the report was applied."""
        key = self.check_stream(pipeline_id, mode, adapter_id)
        require_int("step_target", step_target, 1)
        if not isinstance(completed, int) or isinstance(completed, bool):
            raise InvalidRequestError(f"completed must be an int, got {completed!r}")
        retired = self.retired_streams.get(pipeline_id)
        if retired and key in retired:
            if not new_batch:
                return False
            retired.discard(key)
        self.progress.setdefault(pipeline_id, {})[key] = StreamProgress(
            mode=mode,
            adapter_id=adapter_id,
            step_target=step_target,
            completed=min(max(completed, 0), step_target),
            target_weight_version=target_weight_version,
        )
        return True

    def clear(self, pipeline_id: str, mode: str | None, adapter_id: str | None, now: float) -> bool:
        """End one stream (or all with ``mode=None``). Ending the pipeline's last stream retires its
        open demand; returns True if it did. The end of a retired stream changes nothing."""
        if mode is not None and (mode, adapter_id) in self.retired_streams.get(pipeline_id, ()):
            return False
        streams = self.progress.get(pipeline_id)
        if streams is None:
            return False
        if mode is None:
            streams.clear()
        else:
            streams.pop((mode, adapter_id), None)
        if streams:
            return False
        del self.progress[pipeline_id]
        return self.retire(pipeline_id, now)

    def retire_streams(self, pipeline_id: str) -> None:
        """A rollout is over (the next one signals demand, or the generation cluster is released):
        drop its streams and ignore their late reports until they begin again."""
        streams = self.progress.pop(pipeline_id, None)
        if streams:
            self.retired_streams.setdefault(pipeline_id, set()).update(streams)

    # -- reading --------------------------------------------------------------------------------------

    def remaining(self, pipeline_id: str) -> int:
        """Samples the pipeline still has to generate: its streams' remaining work, or, while its
        open demand has no stream yet, the registry's step target."""
        streams = self.progress.get(pipeline_id)
        if streams:
            return sum(s.step_target - s.completed for s in streams.values())
        return self.open_demand.get(pipeline_id, 0)

    def completed(self, pipeline_id: str) -> int:
        streams = self.progress.get(pipeline_id)
        return sum(s.completed for s in streams.values()) if streams else 0

    def step_target(self, pipeline_id: str) -> int:
        streams = self.progress.get(pipeline_id)
        if streams:
            return sum(s.step_target for s in streams.values())
        return self.open_demand.get(pipeline_id, 0)

    def pipelines(self) -> Iterable[str]:
        return self.open_demand.keys()


__all__ = ["DemandLedger", "StreamKey", "require_int"]
