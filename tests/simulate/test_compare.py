"""Policies compared on one scenario, and the ``rlix-plugin simulate`` command."""

from __future__ import annotations

import json

import pytest

from rlix_plugin.cli import main
from rlix_plugin.scenario import parse_scenario
from rlix_plugin.simulate.compare import CHOICES, STATIC, check_policies, compare
from rlix_plugin.simulate.run import simulate

SMALL = """
name = "small"
[cluster]
gpus = 16
gpus_per_node = 8

[[pipeline]]
name = "a"
replicas = 2
model = "7b"
train_gpus = 4
infer_gpus = "all"
infer_tp = 1
rollouts = 3
prompts = 8
samples_per_prompt = 4
response_tokens = { cap = 4096 }

[[pipeline]]
name = "late"
model = "7b"
train_gpus = 4
infer_gpus = "all"
infer_tp = 2
rollouts = 3
prompts = 8
samples_per_prompt = 4
response_tokens = { cap = 4096 }
start_delay_seconds = 30

[[pipeline]]
name = "stopped"
model = "30b"
train_gpus = 4
infer_gpus = "all"
infer_tp = 2
rollouts = 20
prompts = 8
samples_per_prompt = 4
response_tokens = { cap = 4096 }
stop_after_seconds = 120
"""


@pytest.fixture(scope="module")
def comparison():
    return compare(parse_scenario(SMALL, "small.toml"), timeline=True)


def test_every_policy_runs_the_same_work_within_its_bounds(comparison):
    data = comparison.to_json()
    assert list(data["policies"]) == list(CHOICES)
    bound = comparison.bound
    for policy, run in comparison.runs.items():
        assert run.wall_s >= bound.seconds - 1e-6, policy
        assert 0 < run.gpu_useful_fraction <= run.gpu_busy_fraction <= 1.0, policy
        for name, stats in run.pipelines.items():
            assert stats.jct_s >= bound.per_pipeline[name] - 1e-6, (policy, name)
        assert run.pipelines["late"].started_at == pytest.approx(30.0)
        stopped = run.pipelines["stopped"]
        assert stopped.stopped and stopped.jct_s == pytest.approx(120.0) and stopped.rollouts_completed < 20
        finished = [s for n, s in run.pipelines.items() if n != "stopped"]
        assert all(s.rollouts_completed == 3 and not s.stopped for s in finished), policy
        assert data["policies"][policy]["stopped"] == ["stopped"]


def test_static_keeps_each_pipeline_on_its_own_slice(comparison):
    static = comparison.runs[STATIC].timeline
    assert static is not None and len(static.times) > 10
    assert all(max(static.held[name]) <= 4 for name in static.pipelines)
    shared = comparison.runs["finish_first"].timeline
    assert any(max(shared.held[name]) > 4 for name in shared.pipelines)  # sharing does lend GPUs


def test_speedups_are_static_over_the_policy(comparison):
    data = comparison.to_json()
    static = data["policies"][STATIC]
    for policy in ("finish_first", "gap_ratio"):
        speed = data["speedup"][policy]
        assert speed["makespan"] == pytest.approx(
            static["makespan_s"] / data["policies"][policy]["makespan_s"], rel=1e-3
        )
        worst = speed["worst_pipeline"]
        assert speed["worst_jct_ratio"] == pytest.approx(
            data["policies"][policy]["jct_s"][worst] / static["jct_s"][worst], rel=1e-3
        )
    assert data["best_policy"] in CHOICES


def test_runs_are_deterministic_and_seeds_draw_another_workload():
    scenario = parse_scenario(SMALL)
    first, second = simulate(scenario, "gap_ratio"), simulate(scenario, "gap_ratio")
    assert (first.wall_s, first.switches, first.events) == (second.wall_s, second.switches, second.events)
    other = simulate(scenario.with_seed(1), "gap_ratio")
    assert other.wall_s != first.wall_s


def test_policy_names_are_checked():
    assert check_policies(["finish_first", STATIC, "finish_first"]) == [STATIC, "finish_first"]
    with pytest.raises(Exception, match="unknown policy 'fastest'; known: static, finish_first, gap_ratio"):
        check_policies(["fastest"])


def test_simulate_command_json_policies_and_timeline(tmp_path, capsys):
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    picture = tmp_path / "t.png"
    assert (
        main(
            [
                "simulate",
                str(path),
                "--json",
                "--policy",
                "static",
                "--policy",
                "finish_first",
                "--timeline",
                str(picture),
                "--seed",
                "2",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert list(data["policies"]) == [STATIC, "finish_first"] and "finish_first" in data["speedup"]
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["simulate", "seed", "--policy", "static", "--policy", "finish_first"]) == 0
    text = capsys.readouterr().out
    assert "lower bound on the makespan" in text and "finish_first" in text and "use " in text


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["simulate", "no-such-scenario"], "not a bundled scenario"),
        (["simulate", "seed", "--seed", "-1"], "--seed must be an integer >= 0, got -1"),
        (["simulate", "seed", "--timeline", "/no/such/dir/t.png"], "cannot write there"),
    ],
)
def test_simulate_command_refuses_bad_input(argv, expected, capsys):
    assert main(argv) == 2
    assert expected in capsys.readouterr().err


def test_bundled_cluster_scenarios_load_and_mix_sizes_and_tp():
    from rlix_plugin.scenario import bundled_scenario, bundled_scenarios

    names = bundled_scenarios("rlix_plugin.simulate")
    assert {"cluster_16x128", "cluster_64x1024"} <= set(names)
    big = bundled_scenario("cluster_64x1024", "rlix_plugin.simulate")
    assert big.gpus == 1024 and len(big.pipelines) == 64
    assert {p.infer_tp for p in big.pipelines} == {1, 2, 4} and {p.model for p in big.pipelines} == {"7b", "30b"}
    assert all(p.rollouts == 50 for p in big.pipelines)
    assert any(p.start_delay_seconds for p in big.pipelines) and any(p.stop_after_seconds for p in big.pipelines)
