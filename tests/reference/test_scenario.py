"""Scenario files: bundled ones load; every invalid input is rejected naming the field and the
pipeline; nothing invalid gets through."""

from __future__ import annotations

import pytest

from rlix_plugin.hookspecs import InvalidRequestError
from rlix_plugin.scenario import (
    ScenarioError,
    bundled_scenario,
    bundled_scenarios,
    load_scenario,
    parse_scenario,
)

VALID = """
[cluster]
gpus = 4
gpus_per_node = 4

[[pipeline]]
name = "P1"
train_gpus = [0, 1]
infer_gpus = [0, 1, 2, 3]
infer_tp = 2
rollouts = 3
samples_per_rollout = 8
sample_seconds = { median = 0.1, sigma = 0.5 }
train_seconds = 0.2
"""


def test_bundled_scenarios_load_and_the_seed_one_is_the_seed_topology():
    assert {"seed", "long_tail", "three_tp2"} <= set(bundled_scenarios())
    seed = bundled_scenario("seed")
    assert (seed.gpus, seed.gpus_per_node) == (4, 4)
    assert [(p.name, p.train_gpus, p.infer_gpus, p.infer_tp, p.rollouts) for p in seed.pipelines] == [
        ("P1", (0, 1), (0, 1, 2, 3), 1, 5),
        ("P2", (2, 3), (0, 1, 2, 3), 1, 5),
    ]
    three = bundled_scenario("three_tp2")
    assert three.gpus == 8 and len(three.pipelines) == 3 and {p.infer_tp for p in three.pipelines} == {2}


def test_valid_file_defaults_and_derived_values(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(VALID)
    scenario = load_scenario(path)
    (pipeline,) = scenario.pipelines
    assert scenario.name == "mine"  # the file name when the file names none
    assert pipeline.start_delay_seconds == 0.0 and pipeline.seed == 1
    assert pipeline.dp_size == 2 and pipeline.bundles() == [(0, 1), (2, 3)]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("infer_tp = 2", "infer_tp = 3"), "pipeline 'P1': field 'infer_gpus': 4 GPUs do not split"),
        (("infer_gpus = [0, 1, 2, 3]", "infer_gpus = [0, 2, 1, 3]"), "TP group [0, 2] is not contiguous"),
        (("train_gpus = [0, 1]", "train_gpus = [0, 9]"), "field 'train_gpus': GPU id 9 is outside the pool 0..3"),
        (("train_gpus = [0, 1]", "train_gpus = [1, 1]"), "field 'train_gpus': duplicate GPU ids [1]"),
        (("rollouts = 3", "rollouts = 0"), "pipeline 'P1': field 'rollouts': must be an integer >= 1"),
        (("rollouts = 3", 'rollouts = "3"'), "field 'rollouts'"),
        (("median = 0.1", "median = 0"), "field 'sample_seconds'.median: must be a finite number > 0"),
        (("sigma = 0.5", "sigma = -1"), "field 'sample_seconds'.sigma"),
        (("sigma = 0.5 }", "sigma = 0.5, mean = 1 }"), "unknown field(s) ['mean']"),
        (("train_seconds = 0.2", "train_seconds = -0.2"), "field 'train_seconds'"),
        (("train_seconds = 0.2", "train_seconds = 0.2\nrollout = 3"), "pipeline 'P1': unknown field(s) ['rollout']"),
        (("train_seconds = 0.2", ""), "pipeline 'P1': missing field(s) ['train_seconds']"),
        (('name = "P1"', 'name = "bad name"'), "field 'name'"),
        (("gpus = 4\n", "gpus = 0\n"), "[cluster]: field 'gpus'"),
        (("gpus_per_node = 4", "gpus_per_node = 1"), "crosses a node boundary"),
        (("[cluster]", "colour = 1\n[cluster]"), "top level: unknown field(s) ['colour']"),
        (("= [0, 1, 2, 3]", "= [0, 1, 2, 3"), "not valid TOML"),
    ],
)
def test_invalid_fields_are_named(change, expected):
    old, new = change
    assert old in VALID
    with pytest.raises(ScenarioError) as info:
        parse_scenario(VALID.replace(old, new, 1), "bad.toml")
    assert expected in str(info.value)
    assert str(info.value).startswith("scenario bad.toml: ")
    assert isinstance(info.value, InvalidRequestError)  # the CLI reports it as bad input


def test_duplicate_pipeline_names_and_missing_pipelines():
    twice = VALID + VALID[VALID.index("[[pipeline]]") :]
    with pytest.raises(ScenarioError, match=r"duplicate pipeline name\(s\) \['P1'\]"):
        parse_scenario(twice)
    with pytest.raises(ScenarioError, match=r"missing field\(s\) \['pipeline'\]"):
        parse_scenario(VALID[: VALID.index("[[pipeline]]")])


def test_unknown_file_or_name_lists_the_bundled_ones(tmp_path):
    with pytest.raises(ScenarioError, match="not a bundled scenario .*seed"):
        load_scenario(tmp_path / "missing.toml")
