"""Stand-ins for the parts of a verl job that need GPUs or other processes.

Every fake appends what happens to it to one shared :class:`Timeline`, so a test can check the
order of engine events and hook calls together. Nothing here imports verl.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from rlix_plugin import hookimpl
from rlix_plugin.hookspecs import hook_names


class Timeline:
    """An append-only, thread-safe list of ``(kind, name, detail)`` events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[str, str, Any]] = []

    def add(self, kind: str, name: str, detail: Any = None) -> None:
        with self._lock:
            self.events.append((kind, name, detail))

    def names(self, kind: str | None = None) -> list[str]:
        with self._lock:
            return [name for k, name, _ in self.events if kind is None or k == kind]

    def of(self, kind: str, name: str) -> list[Any]:
        with self._lock:
            return [detail for k, n, detail in self.events if k == kind and n == name]


class TimelinePlugin:
    """Appends every hook call to the timeline (answers nothing, so the defaults still answer)."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline


def _recording_hook(name: str) -> Any:
    def impl(self: TimelinePlugin, pipeline_id: str) -> None:
        self.timeline.add("hook", name.removeprefix("rlix_"), pipeline_id)

    impl.__name__ = name
    return hookimpl(tryfirst=True)(impl)


for _name in hook_names():
    setattr(TimelinePlugin, _name, _recording_hook(_name))


class _Remote:
    """``obj.method.remote(...)`` for a plain method, like a Ray actor handle's."""

    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeLoadBalancer:
    def __init__(self, timeline: Timeline, servers: list[str]) -> None:
        self.timeline = timeline
        self.servers = set(servers)
        self.add_servers = _Remote(self._add)
        self.remove_servers = _Remote(self._remove)

    def _add(self, servers: dict[str, Any]) -> None:
        self.servers |= set(servers)
        self.timeline.add("lb", "add", sorted(servers))

    def _remove(self, server_ids: list[str]) -> None:
        self.servers -= set(server_ids)
        self.timeline.add("lb", "remove", sorted(server_ids))


class FakeReplica:
    """A rollout replica: awake or asleep, the weight version it holds, and a gate that an abort
    closes."""

    def __init__(self, rank: int, timeline: Timeline, in_flight: int = 0) -> None:
        self.rank = rank
        self.timeline = timeline
        self.awake = False
        self.version: int | None = None
        self.gate_open = True
        self.in_flight = in_flight
        self.server_address = f"replica-{rank}"
        self.server_handle = object()

    async def sleep(self) -> None:
        self.awake = False
        self.version = None
        self.timeline.add("engine", "sleep", self.rank)

    async def wake_up(self) -> None:  # verl has it; waking must not use it (weights are gone)
        raise AssertionError("a bare wake_up would serve without weights")

    async def abort_all_requests(self, reject_request: bool = False) -> dict[str, Any]:
        self.gate_open = False
        aborted, self.in_flight = self.in_flight, 0
        self.timeline.add("engine", "abort", (self.rank, reject_request))
        return {"aborted_count": aborted, "request_ids": []}

    async def resume_generation(self) -> None:
        self.gate_open = True
        self.timeline.add("engine", "resume", self.rank)


class FakeAdapter:
    """verl's rollout adapter (``BaseRollout``) in one training rank, serving ``replica``."""

    def __init__(self, replica: FakeReplica) -> None:
        self.replica = replica
        self.replica_rank = replica.rank

    async def resume(self, tags: list[str]) -> None:
        self.replica.timeline.add("engine", f"resume {'+'.join(tags)}", self.replica_rank)
        if "kv_cache" in tags:
            self.replica.awake = True

    async def update_weights(self, weights: Any, global_steps: int | None = None, **kwargs: Any) -> None:
        self.replica.tensors = [name for name, _ in weights]
        self.replica.version = global_steps


class FakeTrainingRank:
    """A training-rank actor as verl builds it: a ``WorkerDict`` whose actor-rollout worker holds
    the rollout adapter; ``__ray_call__.remote(fn, *args)`` runs ``fn(actor, *args)``."""

    def __init__(self, adapter: FakeAdapter) -> None:
        self.worker_dict = {"actor_rollout": type("ActorRolloutRefWorker", (), {"rollout": adapter})()}
        self.__ray_call__ = _Remote(lambda fn, *args: fn(self, *args))


def _weights(exported: list[str]) -> Any:
    import torch

    for index in range(3):
        # Each tensor is an all-gather every rank takes part in: count the ranks that drained it.
        exported.append(f"w{index}")
        yield f"w{index}", torch.zeros(4, 8)


class FakeCheckpointManager:
    """verl's naive sync weight update: on every training rank, resume the rank's replica's
    weights, load them, resume its KV cache (``engine_workers.update_weights``)."""

    def __init__(self, replicas: list[FakeReplica], timeline: Timeline) -> None:
        self.replicas = replicas
        self.timeline = timeline
        self.ranks = [FakeTrainingRank(FakeAdapter(replica)) for replica in replicas]
        self.exported: list[str] = []

    def update_weights(self, global_steps: int | None = None) -> dict:
        # verl's is auto_await: called plainly by its trainer, awaited by nobody.
        from rlix_plugin.integrations.verl.engines import run_sync

        async def each_rank() -> None:
            for rank in self.ranks:
                adapter = rank.worker_dict["actor_rollout"].rollout
                await adapter.resume(tags=["weights"])
                await adapter.update_weights(_weights(self.exported), global_steps=global_steps)
                await adapter.resume(tags=["kv_cache"])

        self.timeline.add("engine", "update_weights", global_steps)
        run_sync(each_rank())
        return {}

    def sleep_replicas(self) -> None:
        for replica in self.replicas:
            replica.awake = False
            replica.version = None
        self.timeline.add("engine", "sleep_replicas", None)


class FakeWorkerGroup:
    """``actor_rollout_wg``: the training ranks' actor handles."""

    def __init__(self, checkpoint_manager: FakeCheckpointManager) -> None:
        self.workers = checkpoint_manager.ranks


class FakeLLMServerManager:
    def __init__(self, replicas: list[FakeReplica], load_balancer: FakeLoadBalancer) -> None:
        self.replicas = replicas
        self.global_load_balancer = load_balancer
        self.client_requests: list[tuple[Any, dict]] = []

    def get_replicas(self) -> list[FakeReplica]:
        return self.replicas

    def get_client(self, client_cls: Any = None, **kwargs: Any) -> Any:
        self.client_requests.append((client_cls, kwargs))
        return ("client", client_cls)


@dataclass
class FakePromptBatch:
    """What ``_next_train_batch`` returns: ``len`` prompts with uids."""

    uids: list[str]

    def __len__(self) -> int:
        return len(self.uids)

    def __getitem__(self, key: str) -> list[str]:
        assert key == "uid"
        return self.uids


@dataclass
class FakeBatchMeta:
    keys: list[str]
    tags: list[dict] = field(default_factory=list)
    partition_id: str = "train"
    extra_info: dict = field(default_factory=dict)


class FakeReplayBuffer:
    """Returns a batch at once; ``fail_at`` makes ``sample`` raise at that step."""

    def __init__(self, timeline: Timeline, fail_at: dict[int, BaseException] | None = None) -> None:
        self.timeline = timeline
        self.fail_at = fail_at or {}

    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[FakeBatchMeta, dict]:
        self.timeline.add("verl", "sample", global_steps)
        if global_steps in self.fail_at:
            raise self.fail_at[global_steps]
        keys = [f"s{global_steps}-{i}" for i in range(batch_size)]
        return FakeBatchMeta(keys=keys, tags=[{} for _ in keys]), {}


class FakeAgentLoopManager:
    """Finishes every submitted group: the first half at once, the rest when flushed (as the
    progress pump would deliver them), each group reporting ``n`` samples."""

    def __init__(self, timeline: Timeline, group_size: int, with_progress: bool = True) -> None:
        self.timeline = timeline
        self.group_size = group_size
        self.sink: Any = None
        self.pending = 0
        self.attached = 0
        self.detached = 0
        if not with_progress:
            # A manager without the rlix methods: verl's own AgentLoopManagerTQ.
            self.rlix_attach = None  # type: ignore[assignment]

    def generate_sequences(self, batch: FakePromptBatch) -> None:
        self.timeline.add("verl", "generate", len(batch))
        groups = len(batch)
        now = groups // 2
        self.pending += groups - now
        if self.sink is not None:
            for _ in range(now):
                self.sink(self.group_size)

    def rlix_attach(self, sink: Any) -> None:
        self.sink = sink
        self.attached += 1

    def rlix_flush(self, timeout_s: float = 10.0) -> bool:
        pending, self.pending = self.pending, 0
        if self.sink is not None:
            for _ in range(pending):
                self.sink(self.group_size)
        return True

    def rlix_detach(self) -> None:
        self.sink = None
        self.detached += 1


class FakeWorkerBase:
    """The part of verl's ``AgentLoopWorkerTQ`` the progress mixin relies on: ``_run_prompt``
    runs ``n`` sessions through ``_run_agent_loop`` and settles them with ``return_exceptions``
    (a failing session never raises out of ``_run_prompt``)."""

    def __init__(self, n: int = 2) -> None:
        self.config = _Cfg(n)

    async def _run_agent_loop(self, sampling_params: dict, trajectory: dict, *, agent_name: str, **kwargs: Any) -> Any:
        if kwargs.get("fail"):
            raise RuntimeError(f"session {kwargs['session_id']} of {kwargs['uid']} failed")
        await asyncio.sleep(0)
        return kwargs["session_id"]

    async def _run_prompt(self, prompt: dict, sampling_params: dict, trajectory: dict, trace: bool = False) -> None:
        n = prompt.pop("__rollout_n__", self.config.actor_rollout_ref.rollout.n)
        tasks = [
            asyncio.create_task(self._run_agent_loop(sampling_params, trajectory, session_id=i, **prompt))
            for i in range(n)
        ]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run_group(self, uid: str, validate: bool = False, fail: bool = False, n: int | None = None) -> None:
        prompt: dict[str, Any] = {"uid": uid, "agent_name": "single_turn_agent", "fail": fail}
        if n is not None:
            prompt["__rollout_n__"] = n
        await self._run_prompt(prompt, {}, {"validate": validate})


class _Cfg:
    def __init__(self, n: int) -> None:
        self.actor_rollout_ref = type("ARR", (), {"rollout": type("R", (), {"n": n})()})()
