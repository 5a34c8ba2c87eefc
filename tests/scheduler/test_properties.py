"""Stateful property test: random sequences of register / request / release / progress / clear /
unregister across 2-6 pipelines on random topologies and both sharing policies, driving the real
async service with fake engines. After every step, once the scheduler settles:

* no GPU is double-booked and idle + allocated GPUs are the pool (``check_state``);
* the plan the planner would make now passes validation, and its generation moves never exceed
  the distance between the current and the target allocation;
* a pipeline with demand and no worker has no bundle that could be freed for it (all idle, or held
  only by pipelines without demand);
* no caller is left blocked without a pending request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from rlix_plugin.hookspecs import ACTOR_INFER, ACTOR_TRAIN, ClusterSpec, PipelineGoneError, Priority, RlixError
from rlix_plugin.scheduler.planner import plan_cycle
from rlix_plugin.scheduler.policy import POLICIES
from rlix_plugin.scheduler.service import SchedulerService
from rlix_plugin.scheduler.topology import PoolTopology, cluster_id
from rlix_plugin.scheduler.validation import check_state, validate_plan

from .support import AsOwners, FakeEngines, end, progress

PIDS = [f"p{i}" for i in range(6)]


@st.composite
def topologies(draw):
    per_node = draw(st.sampled_from([4, 8]))
    nodes = draw(st.integers(1, 2))
    gpus = per_node * nodes
    count = draw(st.integers(2, 6))
    pipelines = {}
    for pid in PIDS[:count]:
        tp = draw(st.sampled_from([1, 2]))
        node = draw(st.integers(0, nodes - 1))
        base = node * per_node
        start = draw(st.integers(0, per_node // tp - 1)) * tp
        end = draw(st.integers(start // tp + 1, per_node // tp)) * tp
        infer = ClusterSpec(tp, tuple(range(base + start, base + end)))
        train_node = draw(st.integers(0, nodes - 1)) * per_node
        train_start = draw(st.integers(0, per_node - 1))
        train_len = draw(st.integers(1, min(4, per_node - train_start)))
        train = ClusterSpec(train_len, tuple(range(train_node + train_start, train_node + train_start + train_len)))
        pipelines[pid] = {ACTOR_INFER: infer, ACTOR_TRAIN: train}
    return gpus, per_node, pipelines


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.engines = FakeEngines()
        self.service = None
        self.topology = {}
        self.registered = set()
        self.tasks = {}

    def do(self, coro):
        return self.loop.run_until_complete(coro)

    def quiet(self):
        """No cycle due or running, and every unfinished caller still has its request pending
        (a granted caller needs a few loop turns to return)."""
        service = self.service
        if service._wakeup.is_set() or service.state.moves or service._resizes:
            return False
        return all(task.done() or cluster_id(*key) in service.state.pending for key, task in self.tasks.items())

    async def settle(self):
        for _ in range(500):
            await asyncio.sleep(0)
            if self.quiet():
                return
        # Not quiet: the invariants report what is wrong.

    def step(self, coro=None):
        async def run():
            if coro is not None:
                with contextlib.suppress(RlixError):
                    await coro
            await self.settle()

        self.do(run())

    def block(self, key, coro):
        """Start a blocking call; it is checked by the waiter invariant."""
        task = self.loop.create_task(coro)
        self.tasks[key] = task
        self.step()

    @initialize(topology=topologies(), policy=st.sampled_from(sorted(POLICIES)))
    def setup(self, topology, policy):
        gpus, per_node, pipelines = topology
        self.topology = pipelines
        self.engines.changed = asyncio.Event()
        self.service = AsOwners(SchedulerService(PoolTopology(gpus, per_node), resize_timeout_s=5, policy=policy))
        self.do(self.service.start())
        for pid, clusters in pipelines.items():
            self.do(self.service.register_pipeline(pid, clusters, self.engines.resize))
            self.registered.add(pid)

    def pid(self, data):
        return data.draw(st.sampled_from(sorted(self.registered)))

    @precondition(lambda self: self.registered)
    @rule(data=st.data(), step_target=st.integers(1, 64))
    def signal_demand(self, data, step_target):
        pid = self.pid(data)
        self.block((pid, ACTOR_INFER), self.service.signal_demand(pid, 0, step_target, timeout_s=60))

    @precondition(lambda self: self.registered)
    @rule(data=st.data())
    def request_train(self, data):
        pid = self.pid(data)
        self.block((pid, ACTOR_TRAIN), self.service.request_gpus(pid, ACTOR_TRAIN, Priority.ACTOR_TRAINING, None, 60))

    @precondition(lambda self: self.registered)
    @rule(data=st.data(), cluster=st.sampled_from([ACTOR_TRAIN, ACTOR_INFER]))
    def release(self, data, cluster):
        pid = self.pid(data)
        self.step(self.service.release(pid, cluster, timeout_s=10))

    @precondition(lambda self: self.registered)
    @rule(data=st.data(), step_target=st.integers(1, 64), done=st.floats(0, 1.2))
    def progress(self, data, step_target, done):
        pid = self.pid(data)
        with contextlib.suppress(RlixError):
            self.service.apply_progress(progress(pid, step_target, int(step_target * done)))
        self.step()

    @precondition(lambda self: self.registered)
    @rule(data=st.data())
    def end_batch(self, data):
        pid = self.pid(data)
        self.service.apply_progress(end(pid))
        self.step()

    @precondition(lambda self: self.registered)
    @rule(data=st.data())
    def unregister(self, data):
        pid = self.pid(data)
        self.step(self.service.unregister_pipeline(pid, "test"))
        self.registered.discard(pid)
        self.engines.awake.pop(pid, None)

    @precondition(lambda self: len(self.registered) < len(self.topology))
    @rule(data=st.data())
    def register_again(self, data):
        pid = data.draw(st.sampled_from(sorted(set(self.topology) - self.registered)))
        self.step(self.service.register_pipeline(pid, self.topology[pid], self.engines.resize))
        self.registered.add(pid)

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def ownership_is_consistent(self):
        if self.service is not None:
            check_state(self.service.state)
            for pid, alloc in self.service.state.generation.items():
                assert self.engines.awake.get(pid, set()) == alloc.active, f"{pid}: engines and scheduler disagree"

    @invariant()
    def next_plan_is_valid_and_minimal(self):
        if self.service is None:
            return
        state = self.service.state
        plan = plan_cycle(state, self.service.policy)
        validate_plan(state, plan)
        count = {pid: alloc.held for pid, alloc in state.generation.items()}
        moves = 0
        for (pid, _rank), reason in plan.reasons.items():
            if reason.startswith("donated"):
                moves += 1
            else:
                count[pid] -= 1
        moves += plan.activations
        distance = sum(abs(count.get(pid, 0) - target) for pid, target in plan.targets.items())
        assert moves <= distance, (moves, distance, plan)

    @invariant()
    def demand_is_served_when_a_bundle_can_be_freed(self):
        if self.service is None:
            return
        state = self.service.state
        from rlix_plugin.scheduler.planner import generation_demand

        demand = generation_demand(state)
        for pid in demand:
            if state.generation[pid].active:
                continue
            for bundle in state.pipelines[pid].bundles:
                holders = [state.owner[g] for g in bundle]
                freeable = all(
                    h is None or (type(h) is tuple and h[0] not in demand and h[0] not in state.fenced) for h in holders
                )
                assert not freeable, f"{pid} has demand, no worker, and bundle {bundle} could be freed: {holders}"

    @invariant()
    def no_waiter_without_a_pending_request(self):
        if self.service is None:
            return
        for (pid, cluster), task in self.tasks.items():
            if not task.done():
                assert cluster_id(pid, cluster) in self.service.state.pending, (
                    f"{pid} {cluster} blocked with no request"
                )
            elif not task.cancelled() and task.exception() is not None:
                assert isinstance(task.exception(), (RlixError, PipelineGoneError)), task.exception()

    def teardown(self):
        if self.service is not None:
            self.do(self.service.stop())
            tasks = list(self.tasks.values())
            for task in tasks:
                task.cancel()
            if tasks:  # collect every outcome, so none is reported as never retrieved
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()


SchedulerMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("RLIX_PROPERTY_EXAMPLES", "60")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestScheduler = SchedulerMachine.TestCase
