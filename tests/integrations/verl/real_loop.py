"""Running real verl training jobs on the CPU kit, and reading what they did.

A job is ``python -m verl.trainer.main_ppo`` in its own process (its own Ray driver and job),
with the command line :func:`job_command` builds; docs/verl.md shows the same command. Its log
carries the hook trace (``RLIX_TRACE_HOOKS=1``), the integration's lines and the rollout
servers' memory transitions, which the parsers below turn into data.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rlix_plugin.testing.verl_cpu import PLATFORM_NAME, cpu_overrides

#: Longest a job may run; a step of the tiny model takes seconds, start-up about a minute.
JOB_TIMEOUT_S = 420.0
#: Samples per step: 2 prompts × n=2.
PROMPTS, GROUP = 2, 2
SAMPLES = PROMPTS * GROUP


def job_command(
    *,
    model: Path,
    train: Path,
    val: Path,
    name: str,
    steps: int,
    gpus: int,
    backend: str,
    token_delay_s: float,
    rollout_dump: Path | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """argv of one GRPO job on the CPU kit with rlix enabled on ``backend``."""
    argv = [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        "algorithm.adv_estimator=grpo",
        f"data.train_files={train}",
        f"data.val_files={val}",
        f"data.train_batch_size={PROMPTS}",
        "data.max_prompt_length=32",
        "data.max_response_length=8",
        f"actor_rollout_ref.model.path={model}",
        f"actor_rollout_ref.rollout.n={GROUP}",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={PROMPTS}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={PROMPTS}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={PROMPTS}",
        "trainer.nnodes=1",
        f"trainer.n_gpus_per_node={gpus}",
        f"trainer.total_training_steps={steps}",
        "trainer.val_before_train=false",
        "trainer.logger=[console]",
        f"trainer.experiment_name={name}",
        "trainer.v1.trainer_mode=rlix_sync",
        "+trainer.rlix.enable=true",
        f"+trainer.rlix.backend={backend}",
        *cpu_overrides(token_delay_s=token_delay_s),
    ]
    if rollout_dump is not None:
        argv.append(f"trainer.rollout_data_dir={rollout_dump}")
    return argv + list(extra)


#: The two-job layout: job name -> its GPUs in the shared 3-GPU pool.
SHARED_LAYOUT = {"job-a": "[0,1]", "job-b": "[1,2]"}
#: Ray resources of the shared cluster and the scheduler's pool.
CLUSTER_GPUS, CLUSTER_CPUS, POOL_GPUS = 4, 32, 3
#: Seconds the rollout servers wait per token in the two-job run.
SHARED_TOKEN_DELAY_S = 0.25


def shared_job_command(
    *,
    model: Path,
    train: Path,
    val: Path,
    name: str,
    gpus: str,
    replicas: int,
    rollout_dump: Path,
    token_delay_s: float = SHARED_TOKEN_DELAY_S,
    steps: int = 2,
) -> list[str]:
    """argv of a job on the shared cluster (docs/verl.md shows it for the two-job layout): its
    name on the scheduler, its GPUs in the pool (``"[0,1]"``), its own Ray namespace."""
    return job_command(
        model=model,
        train=train,
        val=val,
        name=name,
        steps=steps,
        gpus=replicas,
        backend="ray",
        token_delay_s=token_delay_s,
        rollout_dump=rollout_dump,
        extra=[
            f"+trainer.rlix.pipeline_id={name}",
            f"+trainer.rlix.gpus={gpus}",
            f"+ray_kwargs.ray_init.namespace={name}",
        ],
    )


def job_env(**extra: str) -> dict[str, str]:
    """Environment of a job's driver (and of a cluster's ``ray start``)."""
    env = dict(os.environ)
    for name in ("RLIX_BACKEND", "RLIX_DISABLE_PLUGIN_AUTOLOAD", "RAY_ADDRESS"):
        env.pop(name, None)
    env.update(
        VERL_PLATFORM=PLATFORM_NAME,
        RLIX_TRACE_HOOKS="1",
        # Every line of every process, undeduplicated: the assertions read them.
        RAY_DEDUP_LOGS="0",
        # A private test cluster: drivers started by the test join it without Ray's token.
        RAY_AUTH_MODE="disabled",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return env


@dataclass
class Job:
    """A running job: its process (own session, so it can be killed whole) and its log."""

    name: str
    log: Path
    process: subprocess.Popen = field(repr=False)
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path) -> Job:
        handle = open(log, "wb")
        try:
            process = subprocess.Popen(
                list(argv), env=dict(env), cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            handle.close()
        return cls(name, log, process)

    def wait(self, timeout_s: float = JOB_TIMEOUT_S) -> int:
        """Exit status; a job still running after ``timeout_s`` is killed and the test fails
        with the tail of its log."""
        try:
            return self.process.wait(timeout=max(0.0, timeout_s - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"job {self.name} still running after {timeout_s:.0f}s:\n{self.tail()}") from None

    def kill(self) -> None:
        """SIGKILL the job's whole process group (its driver; Ray then ends the job's actors)."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)

    @property
    def wall_s(self) -> float:
        return time.monotonic() - self.started

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.text().splitlines()[-lines:])


class RayCluster:
    """A private single-node Ray cluster (``ray start --head --block``) with logical GPUs,
    stopped by killing the processes it started (never ``ray stop``, which would stop every
    cluster on the machine)."""

    def __init__(self, root: Path, num_gpus: int, num_cpus: int, env: Mapping[str, str]) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray's socket paths must stay short: keep the session directory near the root of /tmp.
        self.temp_dir = Path(f"/tmp/rlix-ray-{self.port}")
        self.log = root / "ray-start.log"
        handle = open(self.log, "wb")
        try:
            self.process = subprocess.Popen(
                [
                    "ray",
                    "start",
                    "--head",
                    "--block",
                    f"--port={self.port}",
                    f"--num-gpus={num_gpus}",
                    f"--num-cpus={num_cpus}",
                    "--include-dashboard=false",
                    "--disable-usage-stats",
                    f"--temp-dir={self.temp_dir}",
                ],
                env=dict(env),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            handle.close()

    def stop(self) -> None:
        # The cluster is disposable: kill its head processes at once (a graceful stop takes half
        # a minute); every worker exits when its raylet is gone.
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- reading a job's log ---------------------------------------------------------------------------

_CALL = re.compile(r"call (rlix_\w+)\(\{'pipeline_id': '([^']+)'(.*?)\}\) -> \d+ impl")
_FIELD = re.compile(r"'(\w+)': ('[^']*'|[^,}]+)")


@dataclass(frozen=True)
class HookCall:
    name: str
    pipeline_id: str
    args: dict[str, str]

    def short(self) -> str:
        """``request_gpus(actor_train,1)``, ``signal_demand(2)``, ``bump``, ``unregister(finished)``."""
        name = self.name.removeprefix("rlix_")
        a = self.args
        if name == "request_gpus":
            return f"request_gpus({a['cluster'].strip(chr(39))},{a['priority']})"
        if name == "release":
            return f"release({a['cluster'].strip(chr(39))})"
        if name == "signal_demand":
            return f"signal_demand({a['rollout_id']})"
        if name == "begin_progress_batch":
            return f"begin({a['step_target']},v{a['target_weight_version']})"
        if name == "bump_completed":
            return "bump"
        if name == "end_progress_batch":
            return "end"
        if name == "unregister_pipeline":
            return f"unregister({a['reason'].strip(chr(39)).split(':')[0]})"
        return name.removesuffix("_pipeline")


def hook_calls(text: str, pipeline_id: str, names: set[str] | None = None) -> list[HookCall]:
    """The traced hook calls of ``pipeline_id``, in order (only ``names`` if given)."""
    calls = []
    for match in _CALL.finditer(text):
        name, pid, rest = match.groups()
        if pid != pipeline_id or (names is not None and name not in names):
            continue
        calls.append(HookCall(name, pid, dict(_FIELD.findall(rest))))
    return calls


DEMAND_SIDE = {
    "rlix_register_pipeline",
    "rlix_unregister_pipeline",
    "rlix_request_gpus",
    "rlix_release",
    "rlix_signal_demand",
    "rlix_begin_progress_batch",
    "rlix_bump_completed",
    "rlix_end_progress_batch",
}


def demand_sequence(text: str, pipeline_id: str) -> list[str]:
    """Demand-side hook calls as short strings, consecutive bumps merged into one ``bump*``."""
    out: list[str] = []
    for call in hook_calls(text, pipeline_id, DEMAND_SIDE):
        item = call.short()
        if item == "bump":
            item = "bump*"
            if out and out[-1] == "bump*":
                continue
        out.append(item)
    return out


def expected_demand_sequence(steps: int, samples: int = SAMPLES) -> list[str]:
    """What docs/verl.md documents for a job of ``steps`` steps."""
    init = [
        "register",
        "request_gpus(actor_train,0)",
        "release(actor_train)",
        "release(actor_infer)",
        "release(actor_train)",
        "unregister(initialized)",
    ]
    fit = ["register", "signal_demand(1)"]
    for step in range(1, steps + 1):
        fit += [
            f"begin({samples},v{step - 1})",
            "bump*",
            "end",
            "release(actor_infer)",
            "request_gpus(actor_train,1)",
            "release(actor_train)",
            f"signal_demand({step + 1})",
        ]
    return init + fit + ["release(actor_infer)", "release(actor_train)", "unregister(finished)"]


_DONE = re.compile(r"rlix: rollout of '([^']+)' done: (\d+) of (\d+) samples")
_RESIZED = re.compile(
    r"rlix: pipeline '([^']+)' resized: slept \[([\d, ]*)\], woke \[([\d, ]*)\]; awake now \[([\d, ]*)\]"
)
_HELD_BACK = re.compile(
    r"rlix: pipeline '([^']+)': weights v(\d+) went to replicas \[([\d, ]*)\] only; "
    r"replicas \[([\d, ]*)\] stayed asleep \(per training rank at most (\d+) tensors, (\d+) bytes, "
    r"largest (\d+) bytes, ([\d.]+)s"
)
_SERVER = re.compile(r"transformers_cpu replica (\d+): (\w[\w ]*?) (\{.*\}|\S.*)?$", re.M)
_STALENESS = re.compile(r"training/off_policy/trajectory_staleness/(max|min):np\.int64\((-?\d+)\)")


def _ranks(text: str) -> tuple[int, ...]:
    return tuple(int(r) for r in text.split(",") if r.strip())


def rollouts_done(text: str, pipeline_id: str) -> list[tuple[int, int]]:
    """``(completed, submitted)`` samples of each finished rollout of ``pipeline_id``."""
    return [(int(c), int(s)) for pid, c, s in _DONE.findall(text) if pid == pipeline_id]


def resizes(text: str, pipeline_id: str) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``(slept, woke, awake now)`` of each resize of ``pipeline_id``'s engines."""
    return [(_ranks(s), _ranks(w), _ranks(a)) for pid, s, w, a in _RESIZED.findall(text) if pid == pipeline_id]


@dataclass(frozen=True)
class HeldBack:
    version: int
    synced: tuple[int, ...]
    asleep: tuple[int, ...]
    tensors: int
    bytes: int
    largest: int
    seconds: float


def held_back(text: str, pipeline_id: str) -> list[HeldBack]:
    """Partial wakes of ``pipeline_id`` and what its held-back training ranks did."""
    return [
        HeldBack(int(v), _ranks(s), _ranks(a), int(t), int(b), int(lg), float(sec))
        for pid, v, s, a, t, b, lg, sec in _HELD_BACK.findall(text)
        if pid == pipeline_id
    ]


def server_events(text: str) -> list[tuple[int, str]]:
    """``(replica rank, event)`` of the job's rollout servers (``sleep``, ``wake_up``, ...)."""
    return [(int(rank), event) for rank, event, _ in _SERVER.findall(text)]


def staleness(text: str) -> list[int]:
    """verl's per-step ``trajectory_staleness`` max and min (0 when every sample of step ``s``
    was generated with the weights of step ``s - 1``)."""
    return [int(value) for _, value in _STALENESS.findall(text)]


__all__ = [
    "CLUSTER_CPUS",
    "CLUSTER_GPUS",
    "JOB_TIMEOUT_S",
    "POOL_GPUS",
    "SAMPLES",
    "SHARED_LAYOUT",
    "SHARED_TOKEN_DELAY_S",
    "shared_job_command",
    "HeldBack",
    "HookCall",
    "Job",
    "RayCluster",
    "demand_sequence",
    "expected_demand_sequence",
    "held_back",
    "hook_calls",
    "job_command",
    "job_env",
    "resizes",
    "rollouts_done",
    "server_events",
    "staleness",
]
