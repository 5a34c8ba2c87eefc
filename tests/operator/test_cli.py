"""Bad input to the operator commands: one line on stderr, exit status 2, nothing contacted."""

from __future__ import annotations

import pytest

from rlix_plugin.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["events", "--pipeline", "bad id"], "--pipeline must be 1-128 letters"),
        (["events", "--last", "0"], "--last must be an int >= 1"),
        (["events", "--count", "-1"], "--count must be an int >= 0"),
        (["events", "--timeout", "-5"], "--timeout"),
        (["status", "--why", "no/such"], "--why must be 1-128 letters"),
        (["dashboard", "--port", "70000"], "--port must be an int in 0..65535"),
        (["dashboard", "--duration", "0"], "--duration"),
        (["dashboard", "--port", "eighty"], "invalid int value"),
    ],
)
def test_bad_operator_input_is_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(
        "rlix_plugin.commands.cluster.scheduler_client", lambda address: pytest.fail("bad input reached the cluster")
    )
    code = main(argv) if argv[-1] != "eighty" else _exit_code(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def _exit_code(argv):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return exited.value.code
