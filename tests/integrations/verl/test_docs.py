"""docs/verl.md shows the two-job command line the CI's real-loop test runs, word for word."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="verl is not installed (the verl integration tests need rlix-plugin[verl])")

from . import real_loop as rl

DOC = Path(__file__).resolve().parents[3] / "docs" / "verl.md"


def cpu_block() -> str:
    text = DOC.read_text()
    start = text.index("<!-- cpu-two-jobs -->")
    body = text[text.index("```bash", start) + len("```bash") :]
    return body[: body.index("```")]


def words(block: str) -> set[str]:
    return set(shlex.split(block.replace("\\\n", " "), comments=True))


def test_the_documented_cpu_command_is_the_one_the_test_runs():
    block = words(cpu_block())
    argv = rl.shared_job_command(
        model=Path("tiny/tiny-qwen2"),
        train=Path("tiny/$job.parquet"),
        val=Path("tiny/val.parquet"),
        name="$job",
        gpus="$gpus",
        replicas=2,
        rollout_dump=Path("$job-rollouts"),
    )
    assert argv[1:3] == ["-m", "verl.trainer.main_ppo"]
    missing = [word for word in argv[3:] if word not in block]
    assert not missing, f"docs/verl.md's CPU command lacks {missing}"
    # The cluster and the scheduler's pool, as the test sets them up.
    assert {f"--num-gpus={rl.CLUSTER_GPUS}", f"--num-cpus={rl.CLUSTER_CPUS}"} <= block
    assert f"num_gpus={rl.POOL_GPUS}, gpus_per_node={rl.POOL_GPUS})" in cpu_block()
    assert {"VERL_PLATFORM=cpu", "RLIX_TRACE_HOOKS=1", "RAY_AUTH_MODE=disabled"} <= block
    for name, gpus in rl.SHARED_LAYOUT.items():
        assert f"{name} {gpus}" in cpu_block()
