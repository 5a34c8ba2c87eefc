"""One planning pass: pure, reads a :class:`SchedulerState`, returns a :class:`~.plan.Plan`.

Order: planned releases -> stages 0-5 in priority order, each on its fixed device mapping,
preempting generation workers there -> generation, divided by the policy (:mod:`.policy`).
Bundles in transition (waking, falling asleep, reserved by a started move) are left alone:
planning continues around them, so a slow resize holds up only the GPUs it is moving.

**Stages.** A stage request whose GPUs are idle or held by awake engines gets a move: those
engines sleep, then the stage is granted. A stage never preempts another stage nor a fenced
pipeline's engines; it waits. A stage blocked only by bundles in transition claims its idle GPUs
so that no engine is woken there meanwhile. Switch-cost rules never delay a stage.

**Generation.** Receivers (below target) take idle bundles first, then bundles of donors (above
target): pipelines without demand first, then the one with the most remaining work. Receivers
with no worker go first. A receiver never takes a rank it lost earlier in the same pass, and
donors and receivers are disjoint, so the moves of one pass never exceed the distance between
the current and the target allocation. Work per pass is in counts and per-donor queues:
O(GPUs + pipelines log pipelines + moves x tp).

**Switch-cost rules** (policies with ``switch_aware``; estimates from :mod:`.estimates`, whose
figures a framework may declare and the scheduler then measures; see docs/switch-costs.md):

* *payoff*: a bundle moves from donor D to receiver R only when the work R can do on it before
  it would move again exceeds ``PAYOFF_MARGIN`` times the GPU time the move destroys::

      min(queued_R / (held_R + 1) x sample_s_R, stage_horizon)  >  1.5 x (sleep_s_D + wake_s_R)

  ``queued_R`` = remaining samples of R not already running on its ``held_R`` bundles (each
  runs ``samples_per_engine`` at once, declared in :class:`~rlix_plugin.hookspecs.PipelineLimits`),
  ``sample_s_R`` its measured engine-seconds per sample, ``stage_horizon`` how soon another
  pipeline's stage is expected to take those GPUs (a pipeline rolling out asks for its stages when
  its rollout ends: in about its remaining samples / its bundles x its sample time).
  Worked example: R has 40 samples left on 3 bundles at 2.0 engine-seconds per sample, D sleeps
  in 3 s and R wakes in 5 s: (40 - 3) / 4 x 2.0 = 18.5 s > 1.5 x 8 s = 12 s, so the bundle
  moves. With 11 samples left, (11 - 3) / 4 x 2.0 = 4 s < 12 s: it stays. The same rule, with
  the wake alone as the cost, decides whether an idle bundle is worth waking;
* *minimum residency*: a woken bundle of a pipeline with demand is not donated before
  ``RESIDENCY_FACTOR x (wake_s + sleep_s)`` seconds of service (a bundle then spends at most
  1 / RESIDENCY_FACTOR of its time switching);
* *anticipation*: for ``ANTICIPATION_S`` after a pipeline's rollout ends (or one of its stages is
  released), the GPUs of its stages are not given to engines of other pipelines that already
  have a bundle: its next stage would have to wait for that wake and a sleep;
* *placement*: a receiver takes bundles on its own stages' GPUs first, then bundles outside every
  stage mapping; a donor gives bundles on other pipelines' stage GPUs first. A pipeline's stage
  then preempts its own engines, idle once its rollout is done, instead of a neighbour's busy ones;
* *reclaim between rollouts*: a pipeline between rollouts has its engines put to sleep when its
  declared weight sync costs more than a sleep and a wake (instead of re-syncing them after
  training), or when its engines are batched (``samples_per_engine`` > 1): a few engines kept
  awake would be granted the next rollout alone and take its whole batch.

None of these ever delays a stage (priorities 0-5). Idle GPUs are used whenever a pipeline has
samples left for them and the wake pays. The starvation rule overrides residency, payoff and
anticipation: a pipeline with demand and no bundle gets one as soon as one can be freed. It waits
at most one planning pass plus the donor's sleep and its own wake (or, if stages hold every GPU it
could use, until one releases them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeGuard

from rlix_plugin.hookspecs import ACTOR_INFER, Priority

from .ownership import Owner, Ownership
from .plan import BATCHED_BETWEEN_ROLLOUTS, IDLE, RELEASED, SYNC_COSTS_MORE, Move, Plan, donated_to, preempted_by
from .policy import DEFAULT_POLICY, Policy, TargetInputs, get_policy
from .state import SchedulerState
from .topology import cluster_id

#: A bundle spends at most 1/RESIDENCY_FACTOR of its time switching under rebalancing.
RESIDENCY_FACTOR = 4.0
#: A move must gain this many times the GPU time it destroys: estimates of what a receiver will do
#: are rough, and a move that only breaks even is not worth the risk.
PAYOFF_MARGIN = 1.5
#: Seconds after a rollout ends (or a stage is released) during which the pipeline's stage GPUs
#: are kept from other pipelines' engines.
ANTICIPATION_S = 1.0


def generation_demand(state: SchedulerState, durable_demand: bool = True) -> dict[str, int]:
    """Remaining samples of every pipeline the generation planner should serve.

    ``durable_demand=False`` reproduces the semantics before the open-demand registry existed
    (demand visible only while a generation request is pending, or through progress of a pipeline
    that still has an awake worker). It exists for tests that show the old race; never use it.
    """
    demand: dict[str, int] = {}
    fenced, releases, ledger = state.fenced, state.planned_releases, state.demand
    for pid, alloc in state.generation.items():
        if pid in fenced or pid in releases:
            continue
        if durable_demand:
            remaining = ledger.remaining(pid)
        else:
            pending = state.pending.get(cluster_id(pid, ACTOR_INFER))
            if pending is not None:
                remaining = pending.step_target or 0
            elif alloc.active:
                streams = state.progress.get(pid, {})
                remaining = sum(s.step_target - s.completed for s in streams.values())
            else:
                remaining = 0
        if remaining > 0:
            demand[pid] = remaining
    return demand


def anticipated_gpus(state: SchedulerState, now: float) -> tuple[set[int], float | None]:
    """GPUs kept for the stage a pipeline between rollouts is expected to request, and when the
    earliest of those reservations runs out (None if there is none)."""
    gpus: set[int] = set()
    expires: float | None = None
    open_demand, fenced, generation = state.open_demand, state.fenced, state.generation
    retired_at, stage_seen_at = state.demand.retired_at, state.stage_seen_at
    for pid, spec in state.pipelines.items():
        if pid in open_demand or pid in fenced or pid not in generation:
            continue
        since = max(retired_at.get(pid, -1e18), stage_seen_at.get(pid, -1e18))
        end = since + ANTICIPATION_S
        if end <= now:
            continue
        held = {a.cluster for cid, a in state.fixed.items() if a.pipeline_id == pid}
        for name, cluster in spec.clusters.items():
            if name != ACTOR_INFER and name not in held:
                gpus.update(cluster.gpus)
        expires = end if expires is None else min(expires, end)
    return gpus, expires


class _Cycle:
    """Scratch space of one planning pass: a copy of ownership, the movable (awake, not in
    transition) ranks and the bundles each pipeline has or is getting."""

    def __init__(self, state: SchedulerState, policy: Policy, now: float) -> None:
        self.state = state
        self.policy = policy
        self.now = now
        self.owner: Ownership = state.owner.copy()
        self.active = {pid: set(alloc.active) for pid, alloc in state.generation.items()}
        # alloc.held (awake and waking) for each, without a property call per pipeline
        self.held = {pid: len(alloc.active) + len(alloc.waking) for pid, alloc in state.generation.items()}
        self.lost: dict[str, set[int]] = {}
        #: GPUs no engine may be woken on in this pass: claimed by a waiting stage.
        self.blocked: set[int] = set()
        #: GPUs kept for a stage expected soon (anticipation): closed to pipelines that switch at
        #: a cost and already have a bundle.
        self.kept: set[int] = set()
        self.plan = Plan()
        #: GPU -> pipelines whose stages use it (filled for switch-aware policies).
        self.stage_gpus: dict[int, set[str]] = {}
        self._idle_moves: dict[str, Move] = {}
        self._donations: dict[tuple[str, str], Move] = {}
        #: Bumped by every sleep and wake planned: what :meth:`victims` remembers is valid while
        #: it stays the same.
        self.version = 0
        self._victims: dict[tuple[str, int], tuple[int, list[tuple[str, int]] | None]] = {}
        #: (id of a generation mapping's bundles, rank) -> (version, :func:`_blocked_for_all`).
        self._blocked: dict[tuple[int, int], tuple[int, bool]] = {}
        #: (id of a generation mapping's bundles, id of a donor's queue) -> the version at which
        #: no worker in that queue could be given to any receiver with that mapping.
        self.dead: dict[tuple[int, int], int] = {}

    def bundle(self, pid: str, rank: int) -> tuple[int, ...]:
        return self.state.pipelines[pid].bundles[rank]

    def sleep(self, pid: str, rank: int, move: Move) -> None:
        """Put an awake rank to sleep in ``move``; its GPUs stay its own until the move hands them
        on (the caller sets the new holder)."""
        self.version += 1
        self.active[pid].discard(rank)
        self.held[pid] -= 1
        self.lost.setdefault(pid, set()).add(rank)
        move.sleeps.setdefault(pid, set()).add(rank)

    def wake(self, pid: str, rank: int, move: Move) -> None:
        self.version += 1
        self.owner.set(self.bundle(pid, rank), (pid, rank))
        self.held[pid] = self.held.get(pid, 0) + 1
        move.wakes.setdefault(pid, set()).add(rank)

    def victims(
        self, pid: str, rank: int, surplus: dict[str, int], demand: dict[str, int]
    ) -> list[tuple[str, int]] | None:
        """:func:`_victims`, remembered until the next sleep or wake is planned (many donor
        workers overlap one receiver bundle)."""
        known = self._victims.get((pid, rank))
        if known is not None and known[0] == self.version:
            return known[1]
        found = _victims(self, pid, rank, surplus, demand)
        self._victims[(pid, rank)] = (self.version, found)
        return found

    def idle_move(self, pid: str) -> Move:
        move = self._idle_moves.get(pid)
        if move is None:
            move = self._idle_moves[pid] = Move(IDLE)
            self.plan.moves.append(move)
        return move

    def donation(self, donor: str, receiver: str) -> Move:
        move = self._donations.get((donor, receiver))
        if move is None:
            move = self._donations[(donor, receiver)] = Move(donated_to(receiver))
            self.plan.moves.append(move)
        return move

    def closed_to(self, pid: str, gpus: tuple[int, ...]) -> bool:
        """Whether ``pid`` may not wake an engine on ``gpus`` in this pass."""
        if any(g in self.blocked for g in gpus):
            return True
        if not self.kept or self.held.get(pid, 0) == 0 or self.state.estimates.switch_s(pid) <= 0:
            return False
        return any(g in self.kept for g in gpus)

    def movable(self, holder: Owner) -> TypeGuard[tuple[str, int]]:
        """An awake engine not in transition, of a pipeline that is not fenced."""
        if type(holder) is not tuple:
            return False
        pid, rank = holder
        return pid not in self.state.fenced and rank in self.active.get(pid, ())


def plan_cycle(
    state: SchedulerState,
    policy: Policy | str = DEFAULT_POLICY,
    *,
    durable_demand: bool = True,
    now: float | None = None,
) -> Plan:
    """Plan one scheduling pass from ``state`` (which is not modified)."""
    cycle = _Cycle(state, get_policy(policy), state.clock() if now is None else now)
    _plan_releases(cycle)
    _plan_stages(cycle)
    _plan_generation(cycle, generation_demand(state, durable_demand))
    return cycle.plan


def _plan_releases(cycle: _Cycle) -> None:
    state = cycle.state
    for pid in sorted(state.planned_releases):
        ranks = state.planned_releases[pid].ranks & cycle.active.get(pid, set())
        if ranks:
            move = Move(RELEASED)
            for rank in sorted(ranks):
                cycle.sleep(pid, rank, move)
            cycle.plan.moves.append(move)


def _plan_stages(cycle: _Cycle) -> None:
    state, owner = cycle.state, cycle.owner
    stage_requests = sorted(
        (r for r in state.pending.values() if r.priority < Priority.GENERATION and r.move is None),
        key=lambda r: (r.priority, r.seq),
    )
    for request in stage_requests:
        gpus = state.pipelines[request.pipeline_id].clusters[request.cluster].gpus
        holders = [owner[g] for g in gpus]
        # A stage never preempts another stage, nor a fenced pipeline's engines (their release
        # cannot be trusted): it waits, without claiming anything.
        if any(type(h) is str or (type(h) is tuple and h[0] in state.fenced) for h in holders):
            continue
        if not all(h is None or cycle.movable(h) for h in holders):
            # Blocked only by bundles in transition: nothing may be woken on its GPUs meanwhile.
            cycle.blocked.update(gpus)
            continue
        move = Move(preempted_by(request.cluster_id), grant=request.cluster_id, grant_gpus=tuple(gpus))
        for pid, rank in sorted({h for h in holders if type(h) is tuple}):
            cycle.sleep(pid, rank, move)
        owner.set(gpus, request.cluster_id)
        cycle.plan.moves.append(move)


def _capacity(cycle: _Cycle, demand: dict[str, int]) -> tuple[int, dict[str, int]]:
    """GPUs generation may use in this pass, and the most bundles each pipeline with demand could
    hold: bundles with no GPU held by a stage, a fenced pipeline or a sleeping engine, nor kept
    back. Bundles waking count as their pipeline's.

    Read from the allocations rather than by walking the ownership table (they agree: see
    :func:`~.validation.check_state`): stages held, reserved by a started grant or granted in
    this pass; engines falling asleep or put to sleep in this pass; every engine of a fenced
    pipeline."""
    state = cycle.state
    unusable = set(cycle.blocked)
    for stage in state.fixed.values():
        unusable.update(stage.gpus)
    for request in state.pending.values():
        if request.move is not None:
            unusable.update(state.pipelines[request.pipeline_id].clusters[request.cluster].gpus)
    for move in cycle.plan.moves:
        unusable.update(move.grant_gpus)
    fenced, lost = state.fenced, cycle.lost
    for pid, alloc in state.generation.items():
        bundles = state.pipelines[pid].bundles
        if pid in fenced:
            ranks: Iterable[int] = {*alloc.active, *alloc.waking, *alloc.sleeping, *lost.get(pid, ())}
        elif alloc.sleeping or pid in lost:
            ranks = {*alloc.sleeping, *lost.get(pid, ())}
        else:
            continue
        for rank in ranks:
            unusable.update(bundles[rank])
    max_bundles: dict[str, int] = {}
    lost_per_layout: dict[int, int] = {}  # pipelines registering one mapping share its gpu -> rank map
    for pid in demand:
        spec = state.pipelines[pid]
        rank_of_gpu = spec.rank_of_gpu
        count = lost_per_layout.get(id(rank_of_gpu))
        if count is None:
            ranks_lost = set(map(rank_of_gpu.get, unusable))
            ranks_lost.discard(None)
            count = lost_per_layout[id(rank_of_gpu)] = len(ranks_lost)
        max_bundles[pid] = spec.dp_size - count
    return state.pool.num_gpus - len(unusable), max_bundles


def _plan_generation(cycle: _Cycle, demand: dict[str, int]) -> None:
    state, plan, policy = cycle.state, cycle.plan, cycle.policy
    fenced = state.fenced
    aware = policy.switch_aware
    if aware:
        cycle.kept = anticipated_gpus(state, cycle.now)[0]
    capacity, max_bundles = _capacity(cycle, demand)
    estimates = state.estimates
    sharing = sum(1 for p in state.pipelines if p not in fenced)
    target, ideal = policy.targets(
        TargetInputs(
            demand=demand,
            tp={pid: state.pipelines[pid].tp for pid in demand},
            max_bundles=max_bundles,
            sample_s={pid: estimates.sample_s(pid) for pid in demand},
            capacity=capacity,
            num_gpus=state.pool.num_gpus,
            sharing=sharing,
            rollouts={pid: state.demand.rollouts.get(pid, 0) for pid in demand},
            min_bundles={pid: state.limits[pid].min_bundles for pid in demand},
            max_bundles_quota={pid: state.limits[pid].max_bundles for pid in demand},
        )
    )
    for pid in cycle.active:
        if pid not in fenced and pid not in state.planned_releases:
            target.setdefault(pid, 0)
    plan.targets, plan.ideal = target, ideal
    held = cycle.held
    stage_gpus = cycle.stage_gpus = state.stage_gpus() if aware else {}

    # Donors: pipelines without demand first (their engines are idle), then the one with the most
    # remaining work; ties by id. Each gives at most its surplus, from its movable ranks.
    donors = sorted(
        (p for p in target if held[p] > target[p] and cycle.active[p]),
        key=lambda p: (p in demand, -demand.get(p, 0), p),
    )
    surplus = {p: held[p] - target[p] for p in donors}
    queues = _GiveQueues(cycle, stage_gpus, demand)
    blocked = cycle.blocked
    idle = [g for g in cycle.owner.idle() if g not in blocked]

    receivers = sorted(
        (p for p in target if held.get(p, 0) < target[p]),
        key=lambda p: (held[p] > 0, -(target[p] - held[p]) / target[p], p),
    )
    for first_round in (True, False):
        for pid in receivers:
            want = (1 if held[pid] == 0 else 0) if first_round else target[pid] - held[pid]
            if want <= 0:
                continue
            got = _take_idle(cycle, pid, want, idle, stage_gpus, demand) if idle else 0
            if got < want:
                _take_from_donors(cycle, pid, want - got, donors, surplus, queues, demand)
        idle = [g for g in idle if cycle.owner[g] is None]

    # Work-conserving pass. Targets come from a pool-wide GPU count, so for a given mapping they
    # can be out of reach (a pipeline whose only bundle a peer holds at its minimum). Capacity left
    # that way goes to pipelines with demand that can use it: idle bundles, and for a pipeline
    # with no worker, the engines of pipelines without demand. Targets are raised to match, so
    # they stay the allocation this plan moves toward.
    idle_donors = [p for p in donors if p not in demand]
    # With no idle GPU and a worker for every pipeline with demand, the loop below changes nothing
    # (the common case on a busy pool): skip it.
    busy = not idle and all(held.get(p, 0) > 0 for p in demand)
    for pid in () if busy else sorted(demand, key=lambda p: (held.get(p, 0) > 0, -demand[p], p)):
        if pid not in held:
            continue
        limit = min(max_bundles[pid], demand[pid]) if policy.capped else max_bundles[pid]
        quota = state.limits[pid].max_bundles
        if quota is not None:
            limit = min(limit, quota)
        before = held[pid]
        if idle and limit > held[pid]:
            _take_idle(cycle, pid, limit - held[pid], idle, stage_gpus, demand)
        if held[pid] == 0:
            _take_from_donors(cycle, pid, 1, idle_donors, surplus, queues, demand)
        if held[pid] == 0:
            # Starvation wins over targets: when no idle bundle and no pipeline without demand can
            # give this one a worker (its mapping reaches only a peer's engines), a peer with demand
            # and more than one worker gives one, keeping at least one.
            peers = sorted(
                (p for p in demand if p != pid and held.get(p, 0) > 1 and cycle.active.get(p)),
                key=lambda p: (-held[p], p),
            )
            for peer in peers:
                surplus[peer] = max(surplus.get(peer, 0), held[peer] - 1)
                if peer not in queues:
                    queues[peer] = _give_order(cycle, peer, stage_gpus)
            cycle.version += 1  # victims remembered under the old surpluses no longer hold
            _take_from_donors(cycle, pid, 1, peers, surplus, queues, demand)
            for peer in peers:
                target[peer] = min(target[peer], held[peer])
        if held[pid] != before:
            target[pid] = max(target[pid], held[pid])
            idle = [g for g in idle if cycle.owner[g] is None]

    if aware:
        _reclaim_between_rollouts(cycle, demand)


def _reclaim_between_rollouts(cycle: _Cycle, demand: dict[str, int]) -> None:
    """Engines of a pipeline between rollouts (its open demand retired) sleep now, their GPUs
    free for others meanwhile, when keeping them awake costs more than a sleep and a wake:

    * its declared weight sync costs more than a sleep and a wake (every engine still awake after
      its training step must be re-synced);
    * its engines run several samples at once (``samples_per_engine`` > 1): the next rollout is
      granted as soon as one engine is awake, and a framework then dispatches its whole batch over
      the engines it has, so a few kept awake would take every sample before the planner could
      wake the rest of its share (nothing migrates between awake engines). Asleep, all of them
      are woken by one planning pass and the batch is spread over the whole share."""
    state = cycle.state
    estimates, limits, open_demand = state.estimates, state.limits, state.open_demand
    for pid in sorted(cycle.active):
        # Between rollouts means the rollout is over (its last stream ended), not merely that its
        # count reached the target: a framework refilling filtered groups may still grow it.
        if pid in demand or pid in open_demand or pid in state.fenced or pid in state.planned_releases:
            continue
        if not cycle.active[pid]:
            continue
        if estimates.sync_s(pid) > estimates.switch_s(pid):
            reason = SYNC_COSTS_MORE
        elif limits[pid].samples_per_engine > 1:
            reason = BATCHED_BETWEEN_ROLLOUTS
        else:
            continue
        move = Move(reason)
        for rank in sorted(cycle.active[pid]):
            cycle.sleep(pid, rank, move)
        cycle.plan.moves.append(move)


class _GiveQueues(dict):
    """donor -> its give order (:func:`_give_order`), built the first time a receiver asks. The
    order depends only on the donor's ranks still movable, which a lazy build sees as an eager
    one would after skipping the ranks taken meanwhile.

    Beside it, :meth:`open_queue`: the same order without the ranks in their minimum residency,
    which :func:`_eligible` refuses to every receiver that has a bundle. Residency depends on the
    donor, the rank and the pass's clock alone, so it is fixed for the pass; a receiver with a
    bundle scans only the open queue and skips exactly the workers the full queue would have made
    it skip one by one. Both queues are the give order filtered by the ranks still movable (taken
    ranks are dropped lazily, skipped ones put back in order), so they never disagree."""

    def __init__(self, cycle: _Cycle, stage_gpus: dict[int, set[str]], demand: dict[str, int]) -> None:
        super().__init__()
        self.cycle = cycle
        self.stage_gpus = stage_gpus
        self.demand = demand
        self._open: dict[str, list[int]] = {}

    def __missing__(self, donor: str) -> list[int]:
        queue = self[donor] = _give_order(self.cycle, donor, self.stage_gpus)
        return queue

    def open_queue(self, donor: str) -> list[int]:
        """The queue a receiver with a bundle scans (the full one when no rank is resident)."""
        queue = self._open.get(donor)
        if queue is None:
            full = self[donor]
            resident = _resident_ranks(self.cycle, donor, self.demand)
            queue = self._open[donor] = [r for r in full if r not in resident] if resident else full
        return queue

    def for_receiver(self, donor: str, receiver: str) -> list[int]:
        """The queue ``receiver`` scans: the open one unless it has no bundle (starvation
        overrides residency), or the policy is not switch-aware (no residency then)."""
        if self.cycle.policy.switch_aware and self.cycle.held[receiver] > 0:
            return self.open_queue(donor)
        return self[donor]


def _resident_ranks(cycle: _Cycle, donor: str, demand: dict[str, int]) -> set[int]:
    """Movable ranks of ``donor`` still in their minimum residency: :func:`_eligible` is False
    for them and any receiver that has a bundle."""
    if donor not in demand:
        return set()
    residency = RESIDENCY_FACTOR * cycle.state.estimates.switch_s(donor)
    since = cycle.state.generation[donor].awake_since
    now = cycle.now
    return {r for r in cycle.active[donor] if (woke := since.get(r)) is not None and now - woke < residency}


def _give_order(cycle: _Cycle, donor: str, stage_gpus: dict[int, set[str]]) -> list[int]:
    """The donor's movable ranks, the one to give first last (the queue is popped from the end).
    Switch-aware: bundles on other pipelines' stage GPUs go first, its own stage GPUs last, and
    among equals the longest-resident first."""
    if not stage_gpus:
        return sorted(cycle.active[donor])
    since = cycle.state.generation[donor].awake_since
    place = cycle.state.placements(donor)
    # Sorted by (place, -woke, rank), keys built by one comprehension rather than a call per rank.
    keyed = sorted([(place[r], -since.get(r, 0.0), r) for r in cycle.active[donor]])
    return [r for _, _, r in keyed]


def _bundle_free(cycle: _Cycle, pid: str, rank: int) -> bool:
    if rank in cycle.active[pid] or rank in cycle.lost.get(pid, ()):
        return False
    alloc = cycle.state.generation[pid]
    if rank in alloc.waking or rank in alloc.sleeping:
        return False
    gpus = cycle.bundle(pid, rank)
    return cycle.owner.all_idle(gpus) and not cycle.closed_to(pid, gpus)


def _take_idle(
    cycle: _Cycle, pid: str, want: int, idle: list[int], stage_gpus: dict[int, set[str]], demand: dict[str, int]
) -> int:
    if _idle_hopeless(cycle, pid, demand):
        return 0  # no idle bundle would be worth waking: the scan below would find none
    rank_of_gpu = cycle.state.pipelines[pid].rank_of_gpu
    candidates: list[int] = []
    seen: set[int] = set()
    owner = cycle.owner
    for gpu in idle:
        rank = rank_of_gpu.get(gpu)
        if (
            rank is not None
            and owner[gpu] is None
            and rank not in seen
            and _bundle_free(cycle, pid, rank)
            and _idle_worth(cycle, pid, cycle.bundle(pid, rank), stage_gpus, demand)
        ):
            candidates.append(rank)
            seen.add(rank)
            if not stage_gpus and len(candidates) == want:
                break
    if stage_gpus:
        place = cycle.state.placements(pid)
        candidates.sort(key=lambda r: (place[r], r))
    got = 0
    for rank in candidates[:want]:
        cycle.wake(pid, rank, cycle.idle_move(pid))
        got += 1
    return got


def _eligible(cycle: _Cycle, donor: str, rank: int, receiver: str, demand: dict[str, int]) -> bool:
    """Switch-cost rules for taking ``rank`` of ``donor`` for ``receiver`` (always True for
    policies that are not switch-aware, and for a receiver with no bundle: starvation wins)."""
    if not cycle.policy.switch_aware or cycle.held[receiver] == 0:
        return True
    state, estimates = cycle.state, cycle.state.estimates
    if donor in demand:
        woke = state.generation[donor].awake_since.get(rank)
        if woke is not None and cycle.now - woke < RESIDENCY_FACTOR * estimates.switch_s(donor):
            return False
    cost = estimates.sleep_s(donor) + estimates.wake_s(receiver)
    if cost <= 0:
        return True
    gpus = cycle.bundle(donor, rank)
    gain = min(_queue_drain_s(cycle, receiver, demand), _stage_horizon_s(cycle, receiver, gpus, demand))
    return gain > PAYOFF_MARGIN * cost


def _idle_worth(
    cycle: _Cycle, pid: str, gpus: tuple[int, ...], stage_gpus: dict[int, set[str]], demand: dict[str, int]
) -> bool:
    """Switch-aware: an idle bundle is worth waking unless its wake would not pay for itself, or a
    stage is expected to take its GPUs before the engine has woken and been put back to sleep."""
    if not cycle.policy.switch_aware or cycle.held.get(pid, 0) == 0:
        return True
    estimates = cycle.state.estimates
    wake, sleep = estimates.wake_s(pid), estimates.sleep_s(pid)
    if wake + sleep <= 0:
        return True
    return (
        _queue_drain_s(cycle, pid, demand) > PAYOFF_MARGIN * wake
        and _stage_horizon_s(cycle, pid, gpus, demand) > wake + sleep
    )


def _idle_hopeless(cycle: _Cycle, pid: str, demand: dict[str, int]) -> bool:
    """True when :func:`_idle_worth` is False for every bundle: its queue-drain part, the same
    for all of them, already fails."""
    if not cycle.policy.switch_aware or cycle.held.get(pid, 0) == 0:
        return False
    estimates = cycle.state.estimates
    wake, sleep = estimates.wake_s(pid), estimates.sleep_s(pid)
    if wake + sleep <= 0:
        return False
    return not _queue_drain_s(cycle, pid, demand) > PAYOFF_MARGIN * wake


def _donor_hopeless(cycle: _Cycle, donor: str, receiver: str, demand: dict[str, int]) -> bool:
    """True when :func:`_eligible` is False for every rank of ``donor``: the receiver's
    queue-drain gain, the same for all of them, does not pay for the move."""
    if not cycle.policy.switch_aware or cycle.held[receiver] == 0:
        return False
    estimates = cycle.state.estimates
    cost = estimates.sleep_s(donor) + estimates.wake_s(receiver)
    if cost <= 0:
        return False
    return not _queue_drain_s(cycle, receiver, demand) > PAYOFF_MARGIN * cost


def _queue_drain_s(cycle: _Cycle, pid: str, demand: dict[str, int]) -> float:
    """How long one more bundle would be busy before ``pid``'s queued samples run out: its
    samples not yet running (remaining minus what its bundles run at once, ``samples_per_engine``
    each), over its bundles plus one, times its engine-seconds per sample (infinite before
    anything was measured: as if switching were free)."""
    held = cycle.held.get(pid, 0)
    queued = queued_samples(cycle.state, pid, demand.get(pid, 0), held)
    if queued <= 0:
        return 0.0
    sample_s = cycle.state.estimates.sample_s(pid)
    return float("inf") if sample_s is None else queued / (held + 1) * sample_s


def queued_samples(state: SchedulerState, pid: str, remaining: int, held: int) -> int:
    """Of ``remaining`` samples, those not running on the pipeline's ``held`` bundles (each runs
    ``samples_per_engine`` at once); negative when its bundles could run more. Until its rollout
    begins generating (no progress stream yet) its engines run nothing: the samples are dispatched
    over whatever it holds then, so each bundle counts for one."""
    per_engine = state.limits[pid].samples_per_engine if state.progress.get(pid) else 1
    return remaining - held * per_engine


def _stage_horizon_s(cycle: _Cycle, pid: str, gpus: tuple[int, ...], demand: dict[str, int]) -> float:
    """How long until a stage of another pipeline is expected to take one of ``gpus``: a pipeline
    rolling out requests its stages when its rollout ends, in about its remaining samples over
    its bundles times its engine-seconds per sample."""
    state = cycle.state
    horizon = float("inf")
    seen: set[str] = set()
    for gpu in gpus:
        for other in cycle.stage_gpus.get(gpu, ()):
            if other == pid or other in seen or other not in demand:
                continue
            seen.add(other)
            sample_s = state.estimates.sample_s(other)
            if sample_s is not None:
                horizon = min(horizon, demand[other] / max(1, cycle.held.get(other, 0)) * sample_s)
    return horizon


def _take_from_donors(
    cycle: _Cycle,
    pid: str,
    want: int,
    donors: list[str],
    surplus: dict[str, int],
    queues: _GiveQueues,
    demand: dict[str, int],
) -> int:
    spec = cycle.state.pipelines[pid]
    rank_of_gpu, bundles = spec.rank_of_gpu, spec.bundles
    got = 0
    # _donor_hopeless(cycle, donor, pid, demand) written out: the receiver's part once, again
    # after each bundle it gets.
    payoff = cycle.policy.switch_aware
    estimates, held = cycle.state.estimates, cycle.held
    wake_s = estimates.wake_s(pid)
    drain, drain_held = 0.0, -1  # the receiver's queue drain, for this many bundles
    for donor in donors:
        if donor == pid or surplus[donor] <= 0:
            continue
        if payoff and held[pid] != 0:
            if drain_held != held[pid]:
                drain, drain_held = _queue_drain_s(cycle, pid, demand), held[pid]
            cost = estimates.sleep_s(donor) + wake_s
            if cost > 0 and not drain > PAYOFF_MARGIN * cost:
                continue  # every rank would be skipped
        queue = queues.for_receiver(donor, pid)
        donor_active = cycle.active[donor]
        skipped: list[int] = []
        if cycle.state.pipelines[donor].bundles is bundles:
            got = _take_same_layout(cycle, donor, pid, want, got, queue, skipped, surplus, demand)
            queue.extend(reversed(skipped))
            if got == want:
                break
            continue
        # Receivers with this mapping found no worker of this queue they could take, for reasons
        # that hold for all of them, and nothing moved since: this one would skip each in turn.
        dead_key = (id(bundles), id(queue))
        if cycle.dead.get(dead_key) == cycle.version:
            continue
        all_blocked = True  # so far, every worker popped is blocked for any receiver like this one
        while got < want and surplus[donor] > 0 and queue:
            worker = queue.pop()
            if worker not in donor_active:
                continue  # already taken this pass
            worker_gpus = cycle.bundle(donor, worker)
            rank = rank_of_gpu.get(worker_gpus[0])
            aligned = rank is not None and bundles[rank] == worker_gpus
            # A worker moves when its GPUs are open to the receiver, they form (or free) one of
            # its bundles, and the switch-cost rules allow it: tested cheapest first.
            if cycle.closed_to(pid, worker_gpus):
                if all_blocked and (
                    aligned or not _overlaps_blocked(cycle, bundles, rank_of_gpu, worker_gpus, surplus)
                ):
                    all_blocked = False
                skipped.append(worker)
                continue
            same = aligned and _rank_open(cycle, pid, rank)  # type: ignore[arg-type]
            victims = None
            if aligned:
                all_blocked = False
            if not same:
                # The receiver's bundles that overlap this worker (TP sizes or offsets differ);
                # one that no receiver with this mapping can free is passed over at once.
                for gpu in worker_gpus:
                    overlap = rank_of_gpu.get(gpu)
                    if overlap is not None and not _blocked_for_all(cycle, bundles, overlap, surplus):
                        all_blocked = False
                        victims = cycle.victims(pid, overlap, surplus, demand)
                        if victims is not None:
                            rank = overlap
                            break
                if victims is None:
                    skipped.append(worker)
                    continue
            if not _eligible(cycle, donor, worker, pid, demand):
                skipped.append(worker)
                continue
            move = cycle.donation(donor, pid)
            if same:
                # Same bundle in both mappings (the common case): exactly this worker moves.
                cycle.sleep(donor, worker, move)
                surplus[donor] -= 1
            else:
                for victim_pid, victim_rank in victims:  # type: ignore[union-attr]
                    cycle.sleep(victim_pid, victim_rank, move)
                    surplus[victim_pid] -= 1
            cycle.wake(pid, rank, move)  # type: ignore[arg-type]
            got += 1
            if _donor_hopeless(cycle, donor, pid, demand):
                break  # its gain fell with the bundle it got: every later rank would be skipped
        queue.extend(reversed(skipped))
        if all_blocked:
            # Nothing was taken (a worker taken is not blocked), so the whole queue was seen and
            # nothing changed meanwhile.
            cycle.dead[dead_key] = cycle.version
        if got == want:
            break
    return got


def _blocked_for_all(cycle: _Cycle, bundles: tuple[tuple[int, ...], ...], rank: int, surplus: dict[str, int]) -> bool:
    """True when :func:`_victims` is None for bundle ``rank`` of the mapping ``bundles`` whatever
    the receiver with that mapping: one of its GPUs is held by a stage, an engine in transition
    or fenced, or an engine of a pipeline that is not a donor, or its engines' donors lack the
    surplus to give them all. Remembered until the next sleep or wake is planned."""
    key = (id(bundles), rank)
    known = cycle._blocked.get(key)
    if known is not None and known[0] == cycle.version:
        return known[1]
    owner = cycle.owner
    holders: dict[tuple[str, int], None] = {}
    blocked = False
    for gpu in bundles[rank]:
        holder = owner[gpu]
        if holder is None:
            continue
        if cycle.movable(holder) and holder[0] in surplus:
            holders[holder] = None
        else:
            blocked = True
            break
    if not blocked:
        need: dict[str, int] = {}
        for victim_pid, _ in holders:
            need[victim_pid] = need.get(victim_pid, 0) + 1
        blocked = any(surplus[p] < n for p, n in need.items())
    cycle._blocked[key] = (cycle.version, blocked)
    return blocked


def _overlaps_blocked(
    cycle: _Cycle,
    bundles: tuple[tuple[int, ...], ...],
    rank_of_gpu: Mapping[int, int],
    gpus: tuple[int, ...],
    surplus: dict[str, int],
) -> bool:
    """True when every bundle of the mapping ``bundles`` that overlaps ``gpus`` is
    :func:`_blocked_for_all` (or none does)."""
    for gpu in gpus:
        overlap = rank_of_gpu.get(gpu)
        if overlap is not None and not _blocked_for_all(cycle, bundles, overlap, surplus):
            return False
    return True


def _take_same_layout(
    cycle: _Cycle,
    donor: str,
    pid: str,
    want: int,
    got: int,
    queue: list[int],
    skipped: list[int],
    surplus: dict[str, int],
    demand: dict[str, int],
) -> int:
    """:func:`_take_from_donors` for a donor whose generation mapping is the receiver's (the same
    bundles, shared at registration): a worker moves as the same rank, so the checks are the
    same as there -- switch-cost rules, closed GPUs, the rank free on the receiver's side. While
    those rules cannot change from one worker to the next (no switch-cost rule applies), workers
    are taken as a batch. Returns the new ``got``; ineligible workers go to ``skipped``."""
    state = cycle.state
    bundles = state.pipelines[pid].bundles
    donor_active = cycle.active[donor]
    alloc = state.generation[pid]
    # Ranks not open on the receiver's side (see _rank_open); none of them changes in this loop.
    taken_ranks = cycle.active[pid].union(cycle.lost.get(pid, ()), alloc.waking, alloc.sleeping)
    held = cycle.held
    aware = cycle.policy.switch_aware
    while got < want and surplus[donor] > 0 and queue:
        # Simple: every worker passes the switch-cost rules, and no GPU is closed to ``pid``;
        # both may change once ``pid`` has its first bundle, and otherwise stay. When not
        # simple, the rules depend on ``pid``'s bundles: one worker at a time.
        starving = held.get(pid, 0) == 0
        simple = (not aware or _always_eligible(cycle, donor, pid, demand)) and not _may_close(cycle, pid)
        batch = want - got if simple and not starving else 1
        left = min(batch, surplus[donor])
        take: list[int] = []
        pop, keep, skip = queue.pop, take.append, skipped.append
        if simple and left <= len(queue):
            # The common case first: the next ``left`` workers are all free to move.
            chunk = queue[len(queue) - left :]
            if donor_active.issuperset(chunk) and taken_ranks.isdisjoint(chunk):
                del queue[len(queue) - left :]
                take.extend(reversed(chunk))
                left = 0
        if simple:
            while left and queue:
                worker = pop()
                if worker not in donor_active:
                    continue  # already taken this pass
                if worker in taken_ranks:
                    skip(worker)
                    continue
                keep(worker)
                left -= 1
        else:
            while left and queue:
                worker = pop()
                if worker not in donor_active:
                    continue
                if (
                    worker in taken_ranks
                    or cycle.closed_to(pid, bundles[worker])
                    or not _eligible(cycle, donor, worker, pid, demand)
                ):
                    skip(worker)
                    continue
                keep(worker)
                left -= 1
        if not take:
            break
        # cycle.sleep(donor, w, move) and cycle.wake(pid, w, move) for every taken worker
        cycle.version += 1
        move = cycle.donation(donor, pid)
        donor_active.difference_update(take)
        held[donor] -= len(take)
        cycle.lost.setdefault(donor, set()).update(take)
        move.sleeps.setdefault(donor, set()).update(take)
        cycle.owner.assign(pid, take, bundles)
        held[pid] = held.get(pid, 0) + len(take)
        move.wakes.setdefault(pid, set()).update(take)
        surplus[donor] -= len(take)
        got += len(take)
        # Simple with a bundle already means not switch-aware or no switch cost to pay: the
        # gain cannot fail then.
        if (starving or not simple) and _donor_hopeless(cycle, donor, pid, demand):
            break  # its gain fell with the bundles it got: every later worker would be skipped
    return got


def _always_eligible(cycle: _Cycle, donor: str, receiver: str, demand: dict[str, int]) -> bool:
    """True when :func:`_eligible` holds for every rank of ``donor`` (not switch-aware, a
    receiver with no bundle, or a move that costs nothing and no residency to respect)."""
    if not cycle.policy.switch_aware or cycle.held[receiver] == 0:
        return True
    estimates = cycle.state.estimates
    if donor in demand and estimates.switch_s(donor) > 0:
        return False  # some ranks may still be in their minimum residency
    return estimates.sleep_s(donor) + estimates.wake_s(receiver) <= 0


def _may_close(cycle: _Cycle, pid: str) -> bool:
    """Whether :meth:`_Cycle.closed_to` may be True for some GPUs of ``pid``."""
    return bool(cycle.blocked) or (
        bool(cycle.kept) and cycle.held.get(pid, 0) > 0 and cycle.state.estimates.switch_s(pid) > 0
    )


def _rank_open(cycle: _Cycle, pid: str, rank: int) -> bool:
    alloc = cycle.state.generation[pid]
    return not (
        rank in cycle.active[pid] or rank in cycle.lost.get(pid, ()) or rank in alloc.waking or rank in alloc.sleeping
    )


def _victims(
    cycle: _Cycle, pid: str, rank: int, surplus: dict[str, int], demand: dict[str, int]
) -> list[tuple[str, int]] | None:
    """Donor workers to shrink so that ``pid`` can wake ``rank``, or None if that bundle cannot
    be freed (a GPU held by a stage, a receiver, a move, or a donor without surplus left)."""
    if not _rank_open(cycle, pid, rank):
        return None
    victims: dict[tuple[str, int], None] = {}
    if cycle.closed_to(pid, cycle.bundle(pid, rank)):
        return None
    for gpu in cycle.bundle(pid, rank):
        holder = cycle.owner[gpu]
        if holder is None:
            continue
        if not cycle.movable(holder) or holder[0] not in surplus:
            return None
        if not _eligible(cycle, holder[0], holder[1], pid, demand):
            return None
        victims[holder] = None
    need: dict[str, int] = {}
    for victim_pid, _ in victims:
        need[victim_pid] = need.get(victim_pid, 0) + 1
    if any(surplus[p] < n for p, n in need.items()):
        return None
    return list(victims)


__all__ = [
    "ANTICIPATION_S",
    "RESIDENCY_FACTOR",
    "anticipated_gpus",
    "generation_demand",
    "plan_cycle",
    "queued_samples",
]
