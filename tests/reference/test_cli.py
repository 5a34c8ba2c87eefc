"""``rlix-plugin demo`` / ``rlix-plugin run``: JSON output, files, exit codes, bad input."""

from __future__ import annotations

import json

import pytest

from rlix_plugin.cli import build_parser, main


def write_tiny(tmp_path, text=None):
    path = tmp_path / "tiny.toml"
    path.write_text(text if text is not None else TINY_TEXT)
    return path


TINY_TEXT = """
name = "tiny-cli"
[cluster]
gpus = 2
gpus_per_node = 2
""" + "".join(
    f"""
[[pipeline]]
name = "{name}"
train_gpus = [{gpu}]
infer_gpus = [0, 1]
infer_tp = 1
rollouts = 2
samples_per_rollout = 8
sample_seconds = {{ median = 0.02, sigma = 0.5 }}
train_seconds = 0.05
seed = {seed}
"""
    for name, gpu, seed in (("A", 0, 3), ("B", 1, 4))
)


def test_run_json_trace_and_timeline(tmp_path, capsys):
    path = write_tiny(tmp_path)
    trace, picture = tmp_path / "t.pftrace", tmp_path / "t.png"
    code = main(["run", str(path), "--json", "--trace", str(trace), "--timeline", str(picture), "--stall-timeout", "5"])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads(out)  # exactly one JSON object on stdout
    assert data["ok"] is True and data["scenario"] == "tiny-cli" and data["backend"] == "local"
    assert data["static_partition_s"] > 0 and data["lower_bound_s"] > 0 and 0 < data["gpu_busy_fraction"] <= 1
    for name in ("A", "B"):
        metrics = data["pipelines"][name]
        assert metrics["rollouts_completed"] == 2 and metrics["samples_completed"] == 16
        assert {"reward_first", "reward_last", "gpu_wait_s", "max_stall_s"} <= set(metrics)
    assert trace.stat().st_size > 100 and picture.read_bytes()[:4] == b"\x89PNG"


def test_run_prints_a_table_without_json(tmp_path, capsys):
    code = main(["run", str(write_tiny(tmp_path)), "--no-static"])
    captured = capsys.readouterr()
    assert code == 0
    assert "scenario tiny-cli" in captured.out and "OK" in captured.out and "2/2" in captured.out


def test_bad_scenario_is_exit_2_naming_the_field(tmp_path, capsys):
    path = write_tiny(tmp_path, TINY_TEXT.replace("rollouts = 2", "rollouts = -1", 1))
    assert main(["run", str(path), "--json"]) == 2
    err = capsys.readouterr().err
    assert "pipeline 'A': field 'rollouts': must be an integer >= 1" in err


def test_missing_file_is_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "not a bundled scenario" in capsys.readouterr().err


def test_demo_defaults_to_the_seed_scenario_on_the_local_backend():
    args = build_parser().parse_args(["demo"])
    assert (args.scenario, args.backend, args.json, args.no_static) == ("seed", "local", False, False)
    assert args.stall_timeout < 60  # the watchdog speaks well within a minute
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--backend", "nope"])


def test_pre_fix_switch_is_not_on_the_command_line():
    parser = build_parser()
    for command in ("demo", "run"):
        sub = parser._subparsers._group_actions[0].choices[command]
        flags = {flag for action in sub._actions for flag in action.option_strings}
        assert not any("legacy" in f or "durable" in f or "pre-fix" in f for f in flags), flags
