"""The operator's view on a Ray cluster (one cluster for the module, a logical pool of 8 GPUs on
2 nodes): the metrics on Ray's own endpoint against the snapshot and the decision log, the
``events`` and ``status --why`` commands, the dashboard page in a real headless Chromium, the
Grafana dashboard's queries in a real Prometheus scraping Ray, and the restart count."""

from __future__ import annotations

import json
import os
import pathlib
import queue
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from rlix_plugin.dashboard.server import DashboardServer
from rlix_plugin.dashboard.sources import RaySource
from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, Priority
from rlix_plugin.metrics import catalog
from rlix_plugin.ray.client import connect

from ..ray.support import INIT_OPTIONS, reset_rlix
from ..waiting import wait_until
from .prom import PROMETHEUS, Prometheus, wait_answered
from .prom import SKIP_REASON as NO_PROMETHEUS
from .support import SlowEngines, clusters, comparable, expected_gauges, free_port, hooks_on, spawn

CHROMIUM = shutil.which("chromium")
NO_CHROMIUM = (
    "the Debian package 'chromium' is not installed (apt-get update && apt-get install -y chromium); "
    ".ci/run installs it"
)
REPO = pathlib.Path(__file__).resolve().parents[2]
#: Set to write the README's screenshot (docs/img/dashboard.png) from the page this test drives.
SAVE_SCREENSHOT = "RLIX_SAVE_SCREENSHOT"
POOL = {"num_gpus": 8, "gpus_per_node": 4}


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Any, Any]]:
    saved = os.environ.get("RAY_metrics_report_interval_ms")
    # Ray's agents report metrics every 10 s by default; the tests wait on 0.5 s.
    os.environ["RAY_metrics_report_interval_ms"] = "500"
    context = ray.init(**INIT_OPTIONS)
    try:
        reset_rlix()
        yield context, connect(**POOL)
    finally:
        reset_rlix()
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_metrics_report_interval_ms", None)
        else:
            os.environ["RAY_metrics_report_interval_ms"] = saved


def endpoint(context: Any) -> str:
    return f"127.0.0.1:{context.address_info['metrics_export_port']}"


def ray_series(context: Any, worker_id: str) -> dict[str, dict[tuple[str, ...], float]]:
    """Ray's endpoint, the series of one scheduler worker: rlix name -> the catalog's label values
    -> value (Ray's own labels dropped, its ``ray_`` prefix removed)."""
    text = urllib.request.urlopen(f"http://{endpoint(context)}/metrics", timeout=5).read().decode()
    specs = {spec.name: spec for spec in catalog.METRICS}
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("ray_rlix_") or sample.labels.get("WorkerId") != worker_id:
                continue
            name = sample.name.removeprefix("ray_")
            base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in specs else name
            labels = specs[base].labels if base in specs else ()
            if name.endswith("_bucket"):
                continue
            out.setdefault(name, {})[tuple(sample.labels[label] for label in labels)] = sample.value
    return out


def quiet(client: Any) -> None:
    wait_until(lambda: client.snapshot()["moves_in_flight"] == 0, 20, "no move in flight")


def command(context: Any, *args: str) -> list[str]:
    """``rlix-plugin ARGS`` on this module's cluster (named: ``auto`` could find another one on a
    shared machine)."""
    return [sys.executable, "-m", "rlix_plugin.cli", *args, "--address", context.address_info["address"]]


def cli(context: Any, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(context, *args), capture_output=True, text=True, timeout=timeout_s)


def training_pipeline(pid: str, train: tuple[int, ...], infer: tuple[int, ...] = (0, 1, 2, 3)):
    """A pipeline in the driver that opened demand and holds its training stage."""
    engines = SlowEngines(pid)
    hooks = hooks_on("ray", {}, engines)
    hooks.register_pipeline(pipeline_id=pid, clusters=clusters(train, infer))
    hooks.signal_demand(pipeline_id=pid, rollout_id=0, step_target=16, timeout_s=30)
    hooks.request_gpus(pipeline_id=pid, cluster=ACTOR_TRAIN, priority=Priority.ACTOR_TRAINING, timeout_s=30)
    return hooks, engines


def leave(hooks: Any, pid: str) -> None:
    hooks.release(pipeline_id=pid, cluster=ACTOR_TRAIN)
    hooks.release(pipeline_id=pid, cluster=ACTOR_INFER)
    hooks.unregister_pipeline(pipeline_id=pid, reason="test over")


def test_rays_endpoint_shows_the_snapshot_and_the_log(cluster):
    context, client = cluster
    runs = [spawn("ray", {}, pid, train, rollouts=2) for pid, train in (("p1", (0, 1)), ("p2", (2, 3)))]
    for run in runs:
        run.finish(60, stop=False)
    hooks, _ = training_pipeline("p3", (0, 1))
    try:
        quiet(client)
        snap = client.snapshot()
        worker = snap["scheduler"]["worker_id"]
        expected = expected_gauges(snap)

        def gauges_match() -> bool:
            series = ray_series(context, worker)
            for name, values in expected.items():
                scraped = series.get(name, {})
                # Series of pipelines gone are kept by Ray, at 0.
                if {k: v for k, v in scraped.items() if k in values or v} != values:
                    return False
            return True

        wait_until(gauges_match, 30, "Ray's endpoint showing the snapshot's gauges", interval_s=0.25)
        assert comparable(client.snapshot()) == comparable(snap), "the pool changed meanwhile"
        decisions = client.events(0, limit=100_000)["decisions"]
        kinds: dict[tuple[str, ...], float] = {}
        preempted: dict[tuple[str, ...], float] = {}
        resizes: dict[tuple[str, ...], float] = {}
        for d in decisions:
            kinds[(d["kind"],)] = kinds.get((d["kind"],), 0) + 1
            if d["kind"] == "preempt":
                preempted[(d["pipeline"], d["reason"])] = preempted.get((d["pipeline"], d["reason"]), 0) + len(
                    d["dp_ranks"]
                )
            if d["kind"] in ("awake", "asleep"):
                key = (d["pipeline"], "wake" if d["kind"] == "awake" else "sleep")
                resizes[key] = resizes.get(key, 0) + 1
        assert preempted, "the runs had preemptions"

        def counters_match() -> bool:
            series = ray_series(context, worker)
            return (
                series.get("rlix_decisions_total") == kinds
                and series.get("rlix_preemptions_total") == preempted
                and series.get("rlix_resize_seconds_count") == resizes
            )

        wait_until(counters_match, 30, "Ray's endpoint counting what the decision log says", interval_s=0.25)
        waits = ray_series(context, worker)["rlix_request_wait_seconds_count"]
        for run in runs:
            assert waits[(run.pipeline_id, "signal_demand", "6")] == run.signals == 2
            assert waits[(run.pipeline_id, "request_gpus", "1")] == run.trainings == 2
    finally:
        leave(hooks, "p3")


def test_events_follows_the_log_and_why_explains_a_pipeline(cluster):
    context, client = cluster
    hooks, _ = training_pipeline("p4", (0, 1))
    try:
        quiet(client)
        out = cli(context, "events", "--json", "--pipeline", "p4")
        assert out.returncode == 0, out.stderr
        assert [json.loads(line) for line in out.stdout.splitlines()] == client.events(0, "p4")["decisions"]
        text = cli(context, "events", "--last", "2")
        assert text.returncode == 0 and len(text.stdout.splitlines()) == 2 and "p4" in text.stdout
        follower = subprocess.Popen(
            command(context, "events", "--follow", "--last", "1", "--count", "4", "--json"),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            first = json.loads(follower.stdout.readline())  # it prints the newest decision, then follows
            assert first["seq"] == client.events(0)["last"]
            engines = SlowEngines("p5")
            late = hooks_on("ray", {}, engines)
            late.register_pipeline(pipeline_id="p5", clusters=clusters((4, 5), infer=(4, 5, 6, 7)))
            late.signal_demand(pipeline_id="p5", rollout_id=0, step_target=4, timeout_s=30)
            rest, _ = follower.communicate(timeout=30)
        finally:
            follower.kill()
        followed = [json.loads(line) for line in rest.splitlines()]
        assert [d["seq"] for d in followed] == [first["seq"] + 1, first["seq"] + 2, first["seq"] + 3]
        assert (followed[0]["kind"], followed[0]["pipeline"]) == ("register", "p5")
        late.release(pipeline_id="p5", cluster=ACTOR_INFER)
        late.unregister_pipeline(pipeline_id="p5", reason="test over")
        why = cli(context, "status", "--why", "p4")
        assert why.returncode == 0, why.stderr
        paragraph = why.stdout.strip()
        assert "\n" not in paragraph and paragraph.startswith("p4 holds actor_train on GPUs [0, 1] (priority 1")
        assert "Its open demand is 16 samples" in paragraph
        ghost = cli(context, "status", "--why", "ghost")
        assert ghost.returncode == 2 and len(ghost.stderr.strip().splitlines()) == 1
        assert "'ghost' is not registered" in ghost.stderr and "p4" in ghost.stderr
    finally:
        leave(hooks, "p4")


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_the_dashboard_page_shows_the_pool_in_a_real_browser(cluster, tmp_path):
    context, client = cluster
    port = free_port()
    errors = (tmp_path / "dashboard.err").open("w")
    server = subprocess.Popen(
        command(context, "dashboard", "--port", str(port)), stdout=subprocess.PIPE, stderr=errors, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stdout], daemon=True).start()
    trainer = waiter = None
    blocked = threading.Thread()
    try:
        try:
            first = lines.get(timeout=60)
        except queue.Empty:
            raise AssertionError(f"the dashboard did not start: {(tmp_path / 'dashboard.err').read_text()}") from None
        assert first.startswith(f"rlix dashboard: http://127.0.0.1:{port}/")
        # Some history for the timeline: two short runs sharing node 0 and node 1.
        warmups = [
            spawn("ray", {}, "train", (0, 1), rollouts=3, infer=(0, 1, 2, 3, 4, 5, 6, 7)),
            spawn("ray", {}, "roll", (4, 5), rollouts=3, infer=(4, 5, 6, 7)),
        ]
        for run in warmups:
            run.finish(60, stop=False)
        # The scene: "train" trains on GPUs 0-1 with engines on its other GPUs, "roll" rolls out on
        # node 1, and "late" waits for an engine whose wake hangs.
        trainer, _ = training_pipeline("train", (0, 1), infer=(0, 1, 2, 3))
        roll = SlowEngines("roll")
        roller = hooks_on("ray", {}, roll)
        roller.register_pipeline(pipeline_id="roll", clusters=clusters((4, 5), infer=(4, 5, 6, 7)))
        roller.signal_demand(pipeline_id="roll", rollout_id=0, step_target=64, timeout_s=30)
        quiet(client)
        late = SlowEngines("late")
        late.hold_wakes.set()
        waiter = hooks_on("ray", {}, late)
        waiter.register_pipeline(pipeline_id="late", clusters=clusters((6, 7), infer=(4, 5, 6, 7)))
        blocked = threading.Thread(
            target=lambda: waiter.signal_demand(pipeline_id="late", rollout_id=0, step_target=32, timeout_s=60),
            daemon=True,
        )
        blocked.start()
        wait_until(lambda: any(g["state"] == "waking" for g in client.snapshot()["gpus"]), 30, "an engine waking")
        quiet_except_wake = lambda: client.snapshot()["moves_in_flight"] == 1  # noqa: E731 (the hung wake's)
        wait_until(quiet_except_wake, 30, "the other moves to finish")
        snap = client.snapshot()
        url = f"http://127.0.0.1:{port}/"
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", "--virtual-time-budget=3000", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert comparable(client.snapshot()) == comparable(snap), "the pool changed while the page loaded"
        cells = {
            int(m["gpu"]): m
            for m in (
                dict(re.findall(r'data-([\w-]+)="([^"]*)"', tag))
                for tag in re.findall(r'<div class="gpu state-[^"]*"[^>]*>', dom.stdout)
            )
        }
        assert sorted(cells) == list(range(8))
        for gpu in snap["gpus"]:
            cell = cells[gpu["gpu"]]
            assert (cell["state"], cell["pipeline"] or None, cell["cluster"] or None) == (
                gpu["state"],
                gpu["pipeline"],
                gpu["cluster"],
            ), f"GPU {gpu['gpu']}"
            assert cell["dp-rank"] == ("" if gpu["dp_rank"] is None else str(gpu["dp_rank"]))
        states = {c["state"] for c in cells.values()}
        assert {"training", "awake", "waking"} <= states
        assert 'data-cluster-id="late_actor_infer"' in dom.stdout, "the pending request is listed"
        assert re.search(r'<tr data-pipeline="late">', dom.stdout) and 'data-kind="wake"' in dom.stdout
        assert re.search(r'<tr data-pipeline="roll">(?:(?!</tr>).)*<td class="rollout">0</td>', dom.stdout), (
            "each pipeline's rollout (epoch) is shown"
        )
        shot = tmp_path / "dashboard.png"
        taken = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1280,1000",
                f"--screenshot={shot}",
                "--virtual-time-budget=3000",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert taken.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", taken.stderr[-2000:]
        if os.environ.get(SAVE_SCREENSHOT):
            target = REPO / "docs" / "img" / "dashboard.png"
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(shot, target)
    finally:
        server.terminate()
        server.wait(timeout=30)
        errors.close()
        if waiter is not None:
            waiter.plugin_manager.get_plugin("engines-late").release_wakes.set()
            blocked.join(30)
            waiter.unregister_pipeline(pipeline_id="late", reason="test over")
        for hooks, pid in ((trainer, "train"), (locals().get("roller"), "roll")):
            if hooks is not None:
                hooks.unregister_pipeline(pipeline_id=pid, reason="test over")


@pytest.mark.skipif(PROMETHEUS is None, reason=NO_PROMETHEUS)
def test_the_grafana_queries_work_on_rays_endpoint(cluster, tmp_path):
    context, _ = cluster
    runs = [spawn("ray", {}, pid, train, train_s=0.1) for pid, train in (("q1", (0, 1)), ("q2", (2, 3)))]
    # Ray's endpoint (its dashboard agent) answers a scrape in tens of milliseconds on a quiet
    # machine and in more than 200 ms on a loaded one: a scrape gets a whole second.
    prometheus = Prometheus(tmp_path, [endpoint(context)], scrape_s=1.0)
    try:
        try:
            wait_until(prometheus.targets_up, 60, "Prometheus scraping Ray's endpoint", interval_s=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {prometheus.scrape_errors}") from None
        missing = wait_answered(prometheus)
        assert not missing, "queries without series on Ray's endpoint:\n" + "\n".join(missing)
    finally:
        prometheus.close()
        for run in runs:
            run.finish(60)


def test_a_new_scheduler_on_the_cluster_counts_a_restart_and_the_page_follows_it(cluster):
    context, client = cluster
    before = (
        ray_series(context, client.snapshot()["scheduler"]["worker_id"])
        .get("rlix_scheduler_restarts_total", {})
        .get((), 0.0)
    )
    page = DashboardServer(RaySource(client, context.address_info["address"]), port=0, poll_s=0.1)
    try:
        reset_rlix()
        fresh = connect(**POOL)
        worker = fresh.snapshot()["scheduler"]["worker_id"]
        wait_until(
            lambda: ray_series(context, worker).get("rlix_scheduler_restarts_total") == {(): before + 1},
            30,
            "the new scheduler's restart count",
        )
        hooks = hooks_on("ray", {}, SlowEngines("r1"))
        hooks.register_pipeline(pipeline_id="r1", clusters=clusters((0, 1)))
        wait_until(
            lambda: (
                [(d["seq"], d["pipeline"]) for d in page.state()["decisions"]] == [(1, "r1")]
                and page.state()["error"] is None
            ),
            30,
            "the page reading the new scheduler from its start",
        )
        hooks.unregister_pipeline(pipeline_id="r1", reason="test over")
    finally:
        page.close()
