"""What ``rlix-plugin status`` says of a restarted scheduler (pure: the snapshot as text)."""

from __future__ import annotations

from rlix_plugin.commands.status import render

SNAPSHOT = {"pool": {"num_gpus": 4, "gpus_per_node": 4}, "pipelines": {}, "idle_gpus": [0, 1, 2, 3], "pending": {}}


def test_a_restarted_scheduler_says_so_and_who_it_still_waits_for():
    text = render({**SNAPSHOT, "recovering": ["p2"], "scheduler": {"restarted_at": 1.0, "epoch": 7}})
    assert text.splitlines()[1] == (
        "restarted from its saved state (epoch 7); waiting for p2 to reattach: nothing is planned until then"
    )
    done = render({**SNAPSHOT, "recovering": [], "scheduler": {"restarted_at": 1.0, "epoch": 7}})
    assert done.splitlines()[1] == "restarted from its saved state (epoch 7)"


def test_a_scheduler_that_never_restarted_shows_no_such_line():
    assert "restarted" not in render({**SNAPSHOT, "scheduler": {"restarted_at": None, "epoch": 1}})
