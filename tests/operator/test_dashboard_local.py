"""The dashboard's view (pure) and its server over a local scheduler: what ``/api/state`` says,
the assets it ships (no CDN), and the timeline it keeps. The page in a real browser: test_ray.py."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

from rlix_plugin.backends.local import LocalScheduler
from rlix_plugin.dashboard.server import ASSETS, DashboardServer
from rlix_plugin.dashboard.sources import LocalSource
from rlix_plugin.dashboard.view import TIMELINE_MIN_S, Timeline
from rlix_plugin.hookspecs import ACTOR_TRAIN, Priority, RlixError

from ..waiting import wait_until
from .support import SlowEngines, clusters, hooks_on


def get(url):
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.status, answer.headers["Content-Type"], answer.read()


@pytest.fixture
def scheduler():
    sched = LocalScheduler(4, 4, resize_timeout_s=5)
    yield sched
    sched.close()


def test_the_state_the_page_draws_matches_the_scheduler(scheduler):
    hooks = hooks_on("local", {"scheduler": scheduler}, SlowEngines("p1"))
    hooks.register_pipeline(pipeline_id="p1", clusters=clusters((0, 1)))
    hooks.signal_demand(pipeline_id="p1", rollout_id=0, step_target=8, timeout_s=10)
    hooks.request_gpus(pipeline_id="p1", cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=10)
    wait_until(lambda: scheduler.snapshot()["moves_in_flight"] == 0, 10, "a quiet pool")
    server = DashboardServer(LocalSource(scheduler), port=0, poll_s=0.05)
    try:
        snap = scheduler.snapshot()
        version = server.state()["version"]
        wait_until(lambda: server.state()["version"] > version, 10, "a poll after the pool went quiet")
        status, kind, body = get(server.url + "api/state")
        state = json.loads(body)
        assert status == 200 and kind == "application/json"
        assert [(c["gpu"], c["pipeline"], c["cluster"], c["state"], c["node"]) for c in state["gpus"]] == [
            (g["gpu"], g["pipeline"], g["cluster"], g["state"], 0) for g in snap["gpus"]
        ]
        assert [c["role"] for c in state["gpus"][:2]] == [ACTOR_TRAIN, ACTOR_TRAIN]
        assert state["pipelines"] == [
            {
                "pipeline": "p1",
                "rollout": 0,
                "open_demand": 8,
                "remaining": 8,
                "completed": 0,
                "step_target": 8,
                "awake": 2,
                "dp_size": 4,
                "entitled": snap["entitled_bundles"]["p1"],
                "fenced": None,
            }
        ]
        assert state["colors"] == {"p1": 0} and state["error"] is None
        seqs = [d["seq"] for d in state["decisions"]]
        assert seqs == sorted(seqs, reverse=True) and seqs[0] == scheduler.decisions()[-1]["seq"]
        assert state["decisions"][0]["text"].split(" ", 1)[1].startswith(f"#{seqs[0]}")
        rows = state["timeline"]["rows"]
        assert len(rows) == 4 and rows[0][-1]["state"] == "training" and rows[0][-1]["end"] is None
    finally:
        server.close()


def test_the_page_and_its_assets_ship_in_the_package_and_load_nothing_else(scheduler):
    server = DashboardServer(LocalSource(scheduler), port=0)
    try:
        for path, (_, kind) in ASSETS.items():
            status, served, body = get(server.url.rstrip("/") + path)
            assert status == 200 and served == kind and body
        _, _, page = get(server.url)
        references = re.findall(rb'(?:src|href)="([^"]+)"', page)
        assert sorted(references) == [b"/static/app.css", b"/static/app.js"], "everything comes from this server"
        _, _, script = get(server.url + "static/app.js")
        assert b"http" not in script.replace(b'"http://www.w3.org/2000/svg"', b""), "no network beyond /api/state"
        with pytest.raises(urllib.error.HTTPError) as missing:
            get(server.url + "static/jquery.js")
        assert missing.value.code == 404
    finally:
        server.close()


def test_a_scheduler_that_stops_answering_is_shown_not_fatal(scheduler):
    server = DashboardServer(LocalSource(scheduler), port=0, poll_s=0.05)
    try:
        scheduler.close()
        wait_until(lambda: server.state()["error"], 10, "the page to say the scheduler is gone")
        assert "the scheduler did not answer" in server.state()["error"]
        assert get(server.url + "api/state")[0] == 200
    finally:
        server.close()


def test_a_new_scheduler_is_read_from_the_start_of_its_log(scheduler):
    busy = hooks_on("local", {"scheduler": scheduler}, SlowEngines("p1"))
    busy.register_pipeline(pipeline_id="p1", clusters=clusters((0, 1)))
    busy.signal_demand(pipeline_id="p1", rollout_id=0, step_target=8, timeout_s=10)
    source = LocalSource(scheduler)
    server = DashboardServer(source, port=0, poll_s=0.05)
    fresh = LocalScheduler(4, 4)
    try:
        assert len(server.state()["decisions"]) >= 4
        source.scheduler = fresh  # the scheduler was replaced: its log starts again at 1
        hooks = hooks_on("local", {"scheduler": fresh}, SlowEngines("p9"))
        hooks.register_pipeline(pipeline_id="p9", clusters=clusters((0, 1)))
        wait_until(
            lambda: [(d["seq"], d["pipeline"]) for d in server.state()["decisions"]] == [(1, "p9")],
            10,
            "the page to show the new scheduler's log",
        )
    finally:
        server.close()
        fresh.close()


def test_the_port_must_be_free(scheduler):
    first = DashboardServer(LocalSource(scheduler), port=0)
    try:
        with pytest.raises(RlixError, match=f"cannot serve the dashboard on 127.0.0.1:{first.port}"):
            DashboardServer(LocalSource(scheduler), port=first.port)
    finally:
        first.close()


def gpu(pipeline, state):
    return {"pipeline": pipeline, "cluster": "actor_infer" if pipeline else None, "state": state}


def test_the_timeline_keeps_segments_per_gpu_and_scrolls():
    timeline = Timeline(window_s=60.0)
    timeline.observe(0.0, [gpu(None, "idle"), gpu("p1", "waking")])
    timeline.observe(1.0, [gpu(None, "idle"), gpu("p1", "awake")])
    timeline.observe(2.0, [gpu("p2", "awake"), gpu("p1", "awake")])
    view = timeline.to_json(2.0)
    assert view["window_s"] == TIMELINE_MIN_S, "a young timeline still has a scale"
    assert [(s["start"], s["end"], s["pipeline"], s["state"]) for s in view["rows"][1]] == [
        (0.0, 1.0, "p1", "waking"),
        (1.0, None, "p1", "awake"),
    ]
    assert [(s["start"], s["end"], s["pipeline"]) for s in view["rows"][0]] == [(0.0, 2.0, None), (2.0, None, "p2")]
    timeline.observe(100.0, [gpu(None, "idle"), gpu("p1", "awake")])
    view = timeline.to_json(100.0)
    assert view["window_s"] == 60.0
    assert [(s["start"], s["pipeline"]) for s in view["rows"][0]] == [(2.0, "p2"), (100.0, None)], (
        "segments that ended before the window are dropped"
    )
