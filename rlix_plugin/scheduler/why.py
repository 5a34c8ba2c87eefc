"""``status --why PIPELINE``: one paragraph saying why a pipeline holds what it holds now.

Pure: it reads the scheduler's snapshot (:func:`.report.snapshot`) and the pipeline's decisions
(:meth:`.journal.Decision.to_json` forms, oldest first) and cites, for everything the pipeline
holds or lost, the latest decision that explains it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rlix_plugin.hookspecs import ACTOR_INFER, InvalidRequestError

from .journal import ASLEEP, AWAKE, DONATE, GRANT, PREEMPT, SLEEP, UNREGISTER, WAKE

Record = Mapping[str, Any]


def explain(snapshot: Mapping[str, Any], decisions: Sequence[Record], pipeline: str, now: float) -> str:
    """The paragraph for ``pipeline`` at wall time ``now``.

    :raises InvalidRequestError: ``pipeline`` is not registered (the message says when and why it
        left if a decision records it, and lists the registered ones).
    """
    info = snapshot.get("pipelines", {}).get(pipeline)
    mine = [d for d in decisions if d.get("pipeline") == pipeline]
    if info is None:
        left = [d for d in mine if d["kind"] == UNREGISTER]
        gone = f"; it left {_ago(now, left[-1]['t'])} ago: {left[-1]['reason']}" if left else ""
        raise InvalidRequestError(
            f"pipeline {pipeline!r} is not registered{gone}; registered: {sorted(snapshot.get('pipelines', {}))}"
        )
    sentences: list[str] = []
    held: list[str] = []
    for name, cluster in info.get("clusters", {}).items():
        if name == ACTOR_INFER or not cluster.get("held"):
            continue
        grant = _latest(mine, lambda d, n=name: d["kind"] == GRANT and d.get("cluster") == n)
        text = f"{name} on GPUs {cluster['gpus_held']} (priority {cluster.get('priority')}"
        if grant is not None:
            text += (
                f", granted {_ago(now, grant['t'])} ago after waiting "
                f"{grant['detail'].get('waited_s', 0):.3f}s, {grant['reason']}"
            )
        held.append(text + ")")
    infer = info.get("clusters", {}).get(ACTOR_INFER)
    if infer is not None:
        engines = _engines(infer, mine, now)
        if engines:
            held.append(engines)
    sentences.append(f"{pipeline} holds " + ("; ".join(held) if held else "no GPU") + ".")
    if infer is not None:
        lost = _lost(infer, mine, now)
        if lost:
            sentences.append(lost)
    demand = info.get("open_demand")
    entitled = snapshot.get("entitled_bundles", {}).get(pipeline)
    if demand is not None:
        text = f"Its open demand is {demand} samples, {info.get('remaining')} remaining"
        if entitled is not None and infer is not None:
            text += f"; the planner's last pass entitled it to {entitled} of {infer['dp_size']} generation bundles"
        sentences.append(text + ".")
    else:
        sentences.append("It has no open demand (no rollout in progress), so the planner gives it no engine.")
    waits = [
        f"{r['cluster']} at priority {priority} for {r['waiting_s']:g}s"
        for priority, requests in sorted(snapshot.get("pending", {}).items(), key=lambda kv: int(kv[0]))
        for r in requests
        if r.get("pipeline_id") == pipeline
    ]
    if waits:
        sentences.append("It waits for " + ", ".join(waits) + ".")
    if info.get("releasing"):
        sentences.append(f"It is releasing generation workers dp {info['releasing']}.")
    if info.get("fenced"):
        sentences.append(
            f"It is fenced ({info['fenced']}): it is left out of planning and keeps the GPUs its "
            "engines may still use until it unregisters or is reclaimed."
        )
    return " ".join(sentences)


def _engines(infer: Mapping[str, Any], mine: Sequence[Record], now: float) -> str:
    """What its generation engines hold: awake, waking and falling asleep, each with its cause."""
    parts = []
    awake = infer.get("awake_dp_ranks", [])
    if awake:
        parts.append(
            f"{len(awake)} of {infer['dp_size']} generation engines awake (dp {awake} on GPUs "
            f"{infer.get('gpus_held')}" + _causes(awake, mine, (AWAKE,), now, "woke") + ")"
        )
    for key, what, kinds in (
        ("waking_dp_ranks", "waking", (WAKE,)),
        ("sleeping_dp_ranks", "falling asleep", (PREEMPT, DONATE, SLEEP)),
    ):
        ranks = infer.get(key, [])
        if ranks:
            parts.append(f"engines dp {ranks} {what}" + _causes(ranks, mine, kinds, now, "since"))
    return "; ".join(parts)


def _lost(infer: Mapping[str, Any], mine: Sequence[Record], now: float) -> str:
    """The latest engines it lost and why (those not awake or in transition now)."""
    current = {*infer.get("awake_dp_ranks", []), *infer.get("waking_dp_ranks", []), *infer.get("sleeping_dp_ranks", [])}
    latest = _latest(mine, lambda d: d["kind"] == ASLEEP and not current & set(d["dp_ranks"]))
    if latest is None:
        return ""
    return (
        f"Its engines dp {latest['dp_ranks']} went to sleep {_ago(now, latest['t'])} ago"
        f" ({latest['reason'] or 'no reason recorded'})."
    )


def _causes(ranks: Sequence[int], mine: Sequence[Record], kinds: tuple[str, ...], now: float, verb: str) -> str:
    """``; dp [..] woke Ns ago: <reason>`` (``verb`` "woke") or ``; dp [..] for Ns: <reason>`` (a
    transition under way) for the ranks, grouped by the decision that covers them."""
    groups: dict[int, list[int]] = {}
    found: dict[int, Record] = {}
    for rank in ranks:
        decision = _latest(mine, lambda d, r=rank: d["kind"] in kinds and r in d.get("dp_ranks", ()))
        if decision is not None:
            groups.setdefault(decision["seq"], []).append(rank)
            found[decision["seq"]] = decision
    if not groups:
        return "; no decision about them is kept"
    texts = []
    for seq, group in sorted(groups.items()):
        d = found[seq]
        source = f" from {d['detail']['from']}" if d.get("detail", {}).get("from") else ""
        when = f"woke {_ago(now, d['t'])} ago" if verb == "woke" else f"for {_ago(now, d['t'])}"
        texts.append(f"dp {group} {when}: {d['reason'] or 'no reason recorded'}{source}")
    return "; " + "; ".join(texts)


def _latest(decisions: Sequence[Record], keep: Any) -> Record | None:
    for decision in reversed(decisions):
        if keep(decision):
            return decision
    return None


def _ago(now: float, t: float) -> str:
    seconds = max(0.0, now - t)
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f} min"


__all__ = ["explain"]
