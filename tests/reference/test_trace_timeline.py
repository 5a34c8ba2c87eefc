"""The Perfetto trace and the timeline picture of a run."""

from __future__ import annotations

import pytest

from rlix_plugin.reference.harness.runner import RunOptions, run_scenario
from rlix_plugin.reference.output.trace import build_trace, write_trace

from .support import tiny_scenario

perfetto_trace = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")


@pytest.fixture(scope="module")
def result():
    run = run_scenario(tiny_scenario(rollouts=2, samples=8), RunOptions(stall_timeout_s=5.0))
    assert run.ok, run.diagnostic
    return run


def parse(data: bytes):
    trace = perfetto_trace.Trace.FromString(data)
    tracks = {p.track_descriptor.uuid: p.track_descriptor for p in trace.packet if p.HasField("track_descriptor")}
    events = [p for p in trace.packet if p.HasField("track_event")]
    return tracks, events


def track_name(desc) -> str:
    return desc.process.process_name if desc.HasField("process") else desc.name


def test_trace_has_gpu_ownership_demand_and_pending_tracks(result, tmp_path):
    path = tmp_path / "run.pftrace"
    packets = write_trace(result.recorder, path)
    tracks, events = parse(path.read_bytes())
    assert packets == len(tracks) + len(events)
    first = perfetto_trace.Trace.FromString(path.read_bytes()).packet[0]
    assert first.sequence_flags == perfetto_trace.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    names = {uuid: track_name(d) for uuid, d in tracks.items()}
    assert {"GPU pool", "GPU 0", "GPU 1", "pipeline A", "A phases", "A open demand", "B open demand"} <= set(
        names.values()
    )
    assert any(n.startswith("pending requests, priority 1") for n in names.values())
    for desc in tracks.values():  # every child track hangs under a declared parent
        assert not desc.parent_uuid or desc.parent_uuid in tracks
    # Slices on every track nest properly (each BEGIN has its END, never overlapping on a track).
    TYPE = perfetto_trace.TrackEvent
    open_slices: dict[int, int] = {}
    slice_names: dict[str, set[str]] = {}
    last_ts = 0
    for packet in events:
        event = packet.track_event
        assert packet.timestamp >= last_ts and packet.trusted_packet_sequence_id == 1
        last_ts = packet.timestamp
        if event.type == TYPE.TYPE_SLICE_BEGIN:
            assert open_slices.get(event.track_uuid, 0) == 0
            open_slices[event.track_uuid] = 1
            slice_names.setdefault(names[event.track_uuid], set()).add(event.name)
        elif event.type == TYPE.TYPE_SLICE_END:
            assert open_slices.get(event.track_uuid) == 1
            open_slices[event.track_uuid] = 0
    assert not any(open_slices.values())
    on_gpus = slice_names["GPU 0"] | slice_names["GPU 1"]
    assert {"A train", "B train", "A generate dp0", "B generate dp1"} <= on_gpus
    assert "A train" in slice_names["GPU 0"] and "B train" in slice_names["GPU 1"]  # their fixed mappings
    assert {"rollout 0", "train 0", "rollout 1", "train 1"} <= slice_names["A phases"]
    demand = [p.track_event.counter_value for p in events if names[p.track_event.track_uuid] == "A open demand"]
    assert 8 in demand and demand[-1] == 0  # the step target while rolling out, none at the end


def test_trace_is_deterministic_for_a_recording(result):
    assert build_trace(result.recorder) == build_trace(result.recorder)


def test_timeline_png(result, tmp_path):
    pytest.importorskip("matplotlib")
    from rlix_plugin.reference.output.timeline import draw_timeline

    path = tmp_path / "timeline.png"
    draw_timeline(result.recorder, path, title="tiny")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
