"""Write a run's recording as a Perfetto trace (open it at ui.perfetto.dev).

Built with the ``perfetto`` package's :class:`TraceProtoBuilder` (synthetic TrackEvent packets):

* process "GPU pool": one track per GPU, a slice for every span it was held
  ("P1 generate dp0", "P2 train");
* process per pipeline: a phase track (rollout k, wait for train GPUs k, train k) and a counter of
  its open demand (the registry's step target, 0 when none);
* process "scheduler": a counter of pending requests per priority.

Contract: :func:`write_trace` writes one binary ``Trace`` protobuf file and returns the number of
packets; ``perfetto`` is imported only here (``pip install "rlix-plugin[demo]"``).
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

from rlix_plugin.hookspecs import Priority
from rlix_plugin.reference.harness.recorder import Holder, Recorder

_SEQUENCE_ID = 1  # every packet comes from one writer, so one trusted sequence


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def holder_label(holder: Holder) -> str:
    pipeline, role, rank = holder
    if role == "infer":
        return f"{pipeline} generate dp{rank}"
    return f"{pipeline} {role}"


class _Writer:
    def __init__(self) -> None:
        from perfetto.trace_builder.proto_builder import TraceProtoBuilder

        self.builder = TraceProtoBuilder()
        self._next_uuid = 1000
        self._first_uuid = self._next_uuid + 1
        self._events: list[tuple[int, int, Any]] = []  # (ts, order, fill) sorted before writing
        self._order = 0

    def track(
        self, name: str, parent: int | None = None, process: int | None = None, counter_unit: str | None = None
    ) -> int:
        self._next_uuid += 1
        uuid = self._next_uuid
        packet = self.builder.add_packet()
        packet.trusted_packet_sequence_id = _SEQUENCE_ID
        if uuid == self._first_uuid:
            # Mark the sequence's state valid from its first packet, as a tracing SDK does; trace
            # processors may otherwise treat the events that follow as possibly incomplete.
            packet.sequence_flags = packet.SEQ_INCREMENTAL_STATE_CLEARED
        desc = packet.track_descriptor
        desc.uuid = uuid
        if parent is not None:
            desc.parent_uuid = parent
        if process is not None:
            desc.process.pid = process
            desc.process.process_name = name
        else:
            desc.name = name
        if counter_unit is not None:
            desc.counter.unit_name = counter_unit
        return uuid

    def slice(self, track: int, start: float, end: float, name: str) -> None:
        self._event(_ns(start), track, "TYPE_SLICE_BEGIN", name=name)
        self._event(_ns(end), track, "TYPE_SLICE_END")

    def counter(self, track: int, t: float, value: int) -> None:
        self._event(_ns(t), track, "TYPE_COUNTER", value=value)

    def _event(self, ts: int, track: int, kind: str, name: str | None = None, value: int | None = None) -> None:
        self._order += 1
        self._events.append((ts, self._order, (track, kind, name, value)))

    def events(self) -> Iterator[tuple[int, tuple[int, str, str | None, int | None]]]:
        for ts, _, fill in sorted(self._events, key=lambda e: (e[0], e[1])):
            yield ts, fill

    def serialize(self) -> bytes:
        from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import TrackEvent

        for ts, (track, kind, name, value) in self.events():
            packet = self.builder.add_packet()
            packet.timestamp = ts
            packet.trusted_packet_sequence_id = _SEQUENCE_ID
            event = packet.track_event
            event.type = getattr(TrackEvent, kind)
            event.track_uuid = track
            if name is not None:
                event.name = name
            if value is not None:
                event.counter_value = value
        return self.builder.serialize()


def build_trace(recorder: Recorder) -> bytes:
    """The recording as serialised Perfetto ``Trace`` bytes."""
    writer = _Writer()
    pool = writer.track("GPU pool", process=1)
    for gpu, spans in enumerate(recorder.gpu_intervals()):
        track = writer.track(f"GPU {gpu}", parent=pool)
        for start, end, holder in spans:
            writer.slice(track, start, end, holder_label(holder))
    demand = recorder.demand_series()
    phases = recorder.phase_intervals()
    for index, name in enumerate(recorder.pipelines):
        process = writer.track(f"pipeline {name}", process=100 + index)
        phase_track = writer.track(f"{name} phases", parent=process)
        for start, end, label in phases.get(name, []):
            writer.slice(phase_track, start, end, label)
        demand_track = writer.track(f"{name} open demand", parent=process, counter_unit="samples")
        for t, value in demand.get(name, []):
            writer.counter(demand_track, t, value)
    scheduler = writer.track("scheduler", process=2)
    for priority, points in sorted(recorder.pending_series().items()):
        label = Priority(priority).name.lower() if priority in Priority._value2member_map_ else str(priority)
        track = writer.track(
            f"pending requests, priority {priority} ({label})", parent=scheduler, counter_unit="requests"
        )
        for t, value in points:
            writer.counter(track, t, value)
    return writer.serialize()


def write_trace(recorder: Recorder, path: str | pathlib.Path) -> int:
    """Write the trace file; returns its number of packets."""
    data = build_trace(recorder)
    pathlib.Path(path).write_bytes(data)
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace

    return len(Trace.FromString(data).packet)


__all__ = ["build_trace", "holder_label", "write_trace"]
