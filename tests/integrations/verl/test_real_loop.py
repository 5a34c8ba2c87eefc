"""Real verl GRPO training loops with the integration on, on the CPU kit: no fake anywhere.

Each job is ``python -m verl.trainer.main_ppo`` (verl 0.9.1's TaskRunner, ``PPOTrainer.fit``,
FSDP2 over gloo, agent-loop workers, TransferQueue, the reward loop, the load balancer and the
naive checkpoint engine) on a tiny random Qwen2 built here, with the transformers rollout
server. What each test proves is in its docstring; the assertions read the jobs' logs (hook
trace, the integration's lines, the servers' memory transitions), verl's own metrics and
rollout dumps, and the scheduler's committed decisions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="verl is not installed (the verl integration tests need rlix-plugin[verl])")

from rlix_plugin.testing.verl_cpu import assets as tiny

from ... import waiting
from . import real_loop as rl

STEPS = 2
#: Parameters of the tiny model's state dict (what every weight update exports).
TENSORS = 15


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("verl-real")


JOBS = ("solo", "job-a", "job-b", "job-x", "job-y")


@pytest.fixture(scope="module")
def model(workdir) -> tiny.TinyAssets:
    """The tiny model, and one dataset per job whose prompts carry the job's name."""
    return tiny.build(workdir / "assets", tags=JOBS)


@pytest.fixture
def jobs():
    """Jobs started by a test; any still running at teardown is killed with its process group."""
    started: list[rl.Job] = []
    yield started
    for job in started:
        job.kill()


@pytest.fixture(scope="module")
def cluster(workdir):
    """A private Ray cluster with 4 logical GPUs shared by the jobs, and a handle on its rlix
    scheduler, whose pool is 3 GPUs: the two-job layout below overlaps on GPU 1."""
    import ray

    import rlix_plugin

    env = rl.job_env()
    cluster = rl.RayCluster(workdir, num_gpus=rl.CLUSTER_GPUS, num_cpus=rl.CLUSTER_CPUS, env=env)
    try:
        ray.init(address=cluster.address, namespace="rlix-real-loop-test", log_to_driver=False)
        client = rlix_plugin.connect(cluster.address, num_gpus=rl.POOL_GPUS, gpus_per_node=rl.POOL_GPUS)
        yield cluster, client, {**env, "RAY_ADDRESS": cluster.address}
    finally:
        ray.shutdown()
        cluster.stop()


def start(jobs, workdir, model, name, *, backend, gpus, token_delay_s=0.25, env, extra=()):
    argv = rl.job_command(
        model=model.model,
        train=model.tagged[name],
        val=model.val,
        name=name,
        steps=STEPS,
        gpus=gpus,
        backend=backend,
        token_delay_s=token_delay_s,
        rollout_dump=workdir / f"dump-{name}",
        extra=extra,
    )
    job = rl.Job.start(name, argv, env, workdir / f"{name}.log", workdir)
    jobs.append(job)
    return job


def start_shared(jobs, workdir, model, name, *, gpus, replicas, token_delay_s=rl.SHARED_TOKEN_DELAY_S, env):
    argv = rl.shared_job_command(
        model=model.model,
        train=model.tagged[name],
        val=model.val,
        name=name,
        gpus=gpus,
        replicas=replicas,
        rollout_dump=workdir / f"dump-{name}",
        token_delay_s=token_delay_s,
        steps=STEPS,
    )
    job = rl.Job.start(name, argv, env, workdir / f"{name}.log", workdir)
    jobs.append(job)
    return job


def dumped_inputs(workdir: Path, name: str) -> dict[int, list[str]]:
    """verl's rollout dump of ``name``: per step, the prompt of every sample trained on."""
    out = {}
    for path in sorted((workdir / f"dump-{name}").glob("*.jsonl")):
        out[int(path.stem)] = [json.loads(line)["input"] for line in path.read_text().splitlines()]
    return out


def assert_job_ran_as_documented(job: rl.Job, workdir: Path) -> str:
    """What every finished job must show; returns its log."""
    text = job.text()
    assert rl.demand_sequence(text, job.name) == rl.expected_demand_sequence(STEPS), job.tail()
    # Every rollout collected all its samples, and verl trained on exactly its own prompts.
    assert rl.rollouts_done(text, job.name) == [(rl.SAMPLES, rl.SAMPLES)] * STEPS
    inputs = dumped_inputs(workdir, job.name)
    assert sorted(inputs) == list(range(1, STEPS + 1))
    assert all(len(step) == rl.SAMPLES and all(f"[{job.name}]" in p for p in step) for step in inputs.values())
    # verl's staleness is 0 (max and min, every step): each sample of step s was generated with
    # the weights of step s - 1, including on replicas woken in the middle of a rollout.
    assert rl.staleness(text) == [0, 0] * STEPS
    return text


def test_one_job_on_the_local_backend(jobs, workdir, model):
    """One job, its scheduler in its own process (``backend=local``): the hooks fire in the
    documented order, the rollout engine sleeps after every rollout and is woken only through
    the weight update (weights first, then KV cache), and every rollout and wake is tagged with
    the weights verl trains on."""
    job = start(
        jobs,
        workdir,
        model,
        "solo",
        backend="local",
        gpus=1,
        env=rl.job_env(),
        extra=[
            "+ray_kwargs.ray_init.num_cpus=8",
            "+ray_kwargs.ray_init.num_gpus=1",
            "+ray_kwargs.ray_init.include_dashboard=false",
        ],
    )
    assert job.wait() == 0, job.tail()
    text = assert_job_ran_as_documented(job, workdir)

    # The engine is asleep after set-up, woken for each rollout (fit start, after each step),
    # and put to sleep after each.
    assert rl.resizes(text, "solo") == [((), (0,), (0,)), ((0,), (), ())] * (STEPS + 1)
    # The batch of verl's shipped rollout config was declared: max_num_seqs 256, one engine.
    assert "samples_per_engine=256)" in text
    # The server saw vLLM's order each time: weights allocated, loaded, then the KV cache.
    events = [event for rank, event in rl.server_events(text) if rank == 0]
    assert events == expected_server_events(events, STEPS), events


#: A wake through the weight update: weights allocated, loaded, then the KV cache.
WAKE = ["wake_up", "update_weights", "wake_up"]


def expected_server_events(events: list[str], rollouts: int) -> list[str]:
    """What a solo job's one server sees over ``rollouts`` rollouts and the final release.

    The job declares its engine batched (``max_num_seqs`` > 1), so the scheduler puts the engine
    to sleep once a rollout's progress batch has ended: a resize, which aborts first (nothing is
    in flight by then) and closes the submission gate that the next wake reopens
    (``resume_generation``). The trainer's own sleep in ``on_sample_end`` neither aborts nor
    closes the gate; which of the two reaches the engine first is a race, which ``events`` tells.
    The final release aborts either way.
    """
    expected = ["launch", "sleep"]
    gate_closed = False
    for _ in range(rollouts):
        expected += [*WAKE, *(["resume_generation"] if gate_closed else [])]
        gate_closed = events[len(expected) : len(expected) + 1] == ["abort"]
        expected += ["abort", "sleep"] if gate_closed else ["sleep"]
    return [*expected, *WAKE, *(["resume_generation"] if gate_closed else []), "abort", "sleep"]


def test_two_jobs_share_three_gpus_through_the_ray_scheduler(jobs, workdir, model, cluster):
    """Two jobs of two replicas each, each in its own Ray namespace, on one cluster and one
    scheduler, on GPUs [0, 1] and [1, 2] of a 3-GPU pool: while one holds GPU 1 the other is
    granted only the replica on its other GPU (a partial grant), and that replica's weight
    update leaves the other replica asleep. Both finish every step with their own samples
    (one TransferQueue per job), and both exit 0."""
    _, client, env = cluster
    a, b = (
        start_shared(jobs, workdir, model, name, gpus=gpus, replicas=2, env=env)
        for name, gpus in rl.SHARED_LAYOUT.items()
    )
    assert a.wait() == 0, a.tail()
    assert b.wait() == 0, b.tail()
    texts = {job.name: assert_job_ran_as_documented(job, workdir) for job in (a, b)}

    import ray

    decisions = ray.get(client.scheduler.decisions.remote(), timeout=30)
    partial = [
        d
        for d in decisions
        for pid, ranks in d["awake"].items()
        if pid in d["open_demand"] and 0 < len(ranks) < d["dp_size"][pid]
    ]
    assert partial, f"no partial grant among {len(decisions)} decisions: {decisions}"

    # A partial wake synced one replica and left the other asleep, on the GPU the other job held;
    # its training ranks took part in the all-gather of every tensor (measured) and dropped it.
    held = [event for name, text in texts.items() for event in rl.held_back(text, name)]
    assert held, "no partial wake was logged"
    for event in held:
        assert event.asleep and not set(event.asleep) & set(event.synced)
        assert event.tensors == TENSORS and event.bytes >= event.largest > 0
    for name, text in texts.items():
        woke = [w for _, w, _ in rl.resizes(text, name) if w]
        slept = [s for s, _, _ in rl.resizes(text, name) if s]
        assert woke and slept, f"{name}: engines never woke or slept"
    # Both jobs left the scheduler.
    snapshot = ray.get(client.scheduler.snapshot.remote(), timeout=30)
    assert not {"job-a", "job-b"} & set(snapshot["pipelines"])


def test_a_job_killed_mid_rollout_while_the_other_finishes(jobs, workdir, model, cluster):
    """Two one-replica jobs on the same GPU. The first seen generating (its rollout batch open
    and its engine awake) is killed with its whole process group: the scheduler reaps it when
    its coordinator dies, and the other job, which at that moment has not rolled out yet, gets
    the GPU and finishes every step; its TransferQueue outlives the dead job's."""
    import ray

    _, client, env = cluster
    names = ("job-x", "job-y")
    started = {
        name: start_shared(jobs, workdir, model, name, gpus="[0]", replicas=1, token_delay_s=1.0, env=env)
        for name in names
    }

    def generating() -> str | None:
        snap = ray.get(client.scheduler.snapshot.remote(), timeout=30)
        for name in names:
            info = snap["pipelines"].get(name)
            if info and info["progress"] and info["clusters"]["actor_infer"]["awake_dp_ranks"]:
                return name
        assert all(job.process.poll() is None for job in started.values()), "a job exited before any rollout"
        return None

    victim = waiting.wait_until(generating, rl.JOB_TIMEOUT_S, "a job to start generating", interval_s=0.1)
    survivor = next(name for name in names if name != victim)
    assert rl.rollouts_done(started[survivor].text(), survivor) == []  # it has everything ahead of it
    started[victim].kill()

    assert started[survivor].wait() == 0, started[survivor].tail()
    assert_job_ran_as_documented(started[survivor], workdir)
    snapshot = ray.get(client.scheduler.snapshot.remote(), timeout=30)
    assert victim in snapshot["reaped"] and victim not in snapshot["pipelines"]
    assert rl.rollouts_done(started[victim].text(), victim) == []  # killed inside its first rollout
