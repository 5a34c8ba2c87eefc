"""The CLI's promise for bad input: exit status 2 and one line on stderr that names the option
and the value -- before anything runs (no Ray cluster is looked for, no scenario is started)."""

from __future__ import annotations

import pytest

from rlix_plugin import cli

CASES = [
    (["demo", "--timeout", "-1"], "--timeout", "-1"),
    (["demo", "--stall-timeout", "nan"], "--stall-timeout", "nan"),
    (["demo", "--time-scale", "0"], "--time-scale", "0"),
    (["demo", "--timeout", "1e300"], "--timeout", "1e+300"),
    (["demo", "--policy", "nope"], "--policy", "'nope'"),
    (["demo", "--scenario", "nope"], "scenario nope", "bundled"),
    (["run", "/nonexistent.toml"], "/nonexistent.toml", "no such file"),
    (["demo", "--trace", "/nonexistent/dir/x.json"], "--trace", "/nonexistent/dir/x.json"),
    (["demo", "--timeline", "/proc/x.png"], "--timeline", "/proc/x.png"),
    (["status", "--watch", "-1"], "--watch", "-1"),
    (["status", "--watch", "1", "--count", "-3"], "--count", "-3"),
    (["status", "--timeout", "0"], "--timeout", "0"),
    (["kill", "bad\nid"], "PIPELINE", "'bad\\nid'"),
    (["kill"], "PIPELINE", "required"),
    (["drain", "--timeout", "inf"], "--timeout", "inf"),
    (["status", "--timeout", "soon"], "--timeout", "'soon'"),
    (["nosuchcommand"], "nosuchcommand", "invalid choice"),
]


@pytest.mark.parametrize(("argv", "option", "value"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_exit_2_and_one_line(argv, option, value, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # were a cluster looked for, it would fail differently
    try:
        status = cli.main(argv)
    except SystemExit as exc:  # argparse's own refusals
        status = exc.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("rlix-plugin") and "error:" in lines[0]
    assert option in lines[0] and value in lines[0], lines[0]
    assert captured.out == ""
