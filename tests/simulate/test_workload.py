"""The token workload in the one scenario format: defaults from model-size classes, short GPU
mappings and replicas, errors that name the field, the live runner's refusal, and the draws."""

from __future__ import annotations

import math
import statistics

import pytest

from rlix_plugin.cli import main
from rlix_plugin.reference.harness.runner import RunOptions, run_scenario
from rlix_plugin.scenario import ScenarioError, bundled_scenario, bundled_scenarios, parse_scenario
from rlix_plugin.scenario.model_sizes import DEFAULT_BATCH, DEFAULT_RESPONSE_CAP, MODEL_SIZES
from rlix_plugin.scenario.workload import lower_bound, response_lengths, sample_work

CLUSTER = """
[cluster]
gpus = 32
gpus_per_node = 8

[[pipeline]]
name = "math"
replicas = 3
model = "7b"
train_gpus = 8
infer_gpus = "all"
infer_tp = 1
rollouts = 2
prompts = 16
samples_per_prompt = 8
response_tokens = {}
seed = 10

[[pipeline]]
name = "moe"
model = "30b"
train_gpus = 8
infer_gpus = "all"
infer_tp = 2
rollouts = 2
prompts = 8
samples_per_prompt = 4
response_tokens = { median = 3000, cap = 8192 }
decode = { batch = 64 }
stop_after_seconds = 500
"""


def test_model_size_classes_default_every_field_and_fields_override_them():
    scenario = parse_scenario(CLUSTER)
    math7b, moe = scenario.pipelines[0], scenario.pipelines[3]
    small, large = MODEL_SIZES["7b"], MODEL_SIZES["30b"]
    assert (math7b.wake_seconds, math7b.sleep_seconds, math7b.sync_seconds) == (
        small.wake_s,
        small.sleep_s,
        small.sync_s,
    )
    assert math7b.decode is not None and math7b.decode.tokens_per_s == small.tokens_per_s
    assert math7b.decode.batch == DEFAULT_BATCH and math7b.response_tokens.cap == DEFAULT_RESPONSE_CAP
    assert math7b.train_gpu_seconds_per_ktoken == small.train_gpu_s_per_ktoken
    assert math7b.samples_per_rollout == 16 * 8 and math7b.sample_seconds is None
    assert moe.decode.tokens_per_s == large.tokens_per_s and moe.decode.batch == 64
    assert (moe.response_tokens.median, moe.response_tokens.cap) == (3000, 8192)
    assert moe.stop_after_seconds == 500 and moe.sync_seconds == large.sync_s


def test_replicas_and_short_gpu_mappings():
    scenario = parse_scenario(CLUSTER)
    assert [p.name for p in scenario.pipelines] == ["math-1", "math-2", "math-3", "moe"]
    assert [p.seed for p in scenario.pipelines[:3]] == [10, 11, 12]
    assert [p.train_gpus for p in scenario.pipelines] == [tuple(range(i * 8, i * 8 + 8)) for i in range(4)]
    assert all(p.infer_gpus == tuple(range(32)) for p in scenario.pipelines)
    assert scenario.pipelines[3].dp_size == 16


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('model = "30b"', 'model = "13b"'), "pipeline 'moe': field 'model': unknown model-size class '13b'"),
        (('model = "30b"\n', ""), "pipeline 'moe': field 'decode'.tokens_per_s: missing, and no model-size"),
        (("replicas = 3", "replicas = 4"), "pipeline 'moe': field 'train_gpus': 8 GPUs after GPU 31 do not fit"),
        (("replicas = 3", "replicas = 0"), "pipeline 'math': field 'replicas': must be an integer >= 1"),
        (("cap = 8192", "cap = 0"), "field 'response_tokens'.cap: must be an integer >= 1"),
        (("decode = { batch = 64 }", "decode = { batch = 64, width = 2 }"), "unknown field(s) ['width']"),
        (
            ("stop_after_seconds = 500", "stop_after_seconds = 0"),
            "field 'stop_after_seconds': must be a finite number > 0",
        ),
        (("prompts = 8\n", ""), "pipeline 'moe': missing field(s) ['prompts']"),
        (
            ("prompts = 8\n", "prompts = 8\nsample_seconds = { median = 1, sigma = 1 }\n"),
            "pipeline 'moe': unknown field(s) ['sample_seconds']",
        ),
        (
            ('infer_gpus = "all"\ninfer_tp = 2', 'infer_gpus = "most"\ninfer_tp = 2'),
            "pipeline 'moe': field 'infer_gpus': must be a non-empty list of GPU ids",
        ),
    ],
)
def test_invalid_token_workload_fields_are_named(change, expected):
    old, new = change
    assert CLUSTER.count(old) == 1
    with pytest.raises(ScenarioError) as raised:
        parse_scenario(CLUSTER.replace(old, new))
    assert expected in str(raised.value)


def test_the_live_runner_refuses_simulator_only_fields_before_starting_anything(tmp_path, capsys):
    scenario = parse_scenario(CLUSTER)
    with pytest.raises(ScenarioError, match="pipeline 'math-1': field 'prompts' is for `rlix-plugin simulate` only"):
        run_scenario(scenario, RunOptions(timeout_s=5))
    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER)
    assert main(["run", str(path), "--json"]) == 2
    assert "is for `rlix-plugin simulate` only" in capsys.readouterr().err
    # The live scenarios stay runnable as they were.
    for name in bundled_scenarios():
        assert all(not p.live_unsupported() for p in bundled_scenario(name).pipelines)


def test_response_lengths_are_deterministic_capped_and_correlated_within_a_prompt():
    pipeline = parse_scenario(CLUSTER.replace("prompts = 16", "prompts = 200")).pipelines[0]
    lengths = response_lengths(pipeline, 0)
    assert lengths == response_lengths(pipeline, 0) and lengths != response_lengths(pipeline, 1)
    assert len(lengths) == 200 * 8 and max(lengths) <= DEFAULT_RESPONSE_CAP and min(lengths) >= 1
    assert sample_work(pipeline, 0) == [float(n) for n in lengths]
    logs = [math.log(n) for n in lengths]
    groups = [logs[i : i + 8] for i in range(0, len(logs), 8)]
    within = statistics.mean(statistics.pvariance(g) for g in groups)
    across = statistics.pvariance([statistics.mean(g) for g in groups])
    # sigma 1.0 within a group, prompt medians spread by 0.7: group means vary far more than
    # independent draws' means would (1/8 of the within-group variance).
    assert across > 2 * within / 8
    assert statistics.median(lengths) == pytest.approx(pipeline.response_tokens.median, rel=0.35)


def test_lower_bound_of_a_token_workload_counts_tails_at_the_alone_speed_and_stops():
    scenario = parse_scenario(CLUSTER)
    bound = lower_bound(scenario)
    first = scenario.pipelines[0]
    longest = max(max(response_lengths(first, r)) for r in range(first.rollouts))
    assert bound.per_pipeline["math-1"] >= longest / first.decode.tokens_per_s
    assert bound.per_pipeline["moe"] <= 500  # stopped then at the latest
    assert bound.seconds >= max(bound.pool_bound_s, bound.pipeline_bound_s) - 1e-9
