"""The decode model of simulated engines: rates fall with concurrency as documented, work spreads
least-loaded first, a sleep retracts sequences with what they did, a stop drops the rest."""

from __future__ import annotations

import math

import pytest

from rlix_plugin.scenario import DecodeModel, parse_scenario
from rlix_plugin.scheduler.state import ResizeAction
from rlix_plugin.simulate.engines import AWAKE, PipelineStats, SimEngines
from rlix_plugin.simulate.events import EventLoop

TOKENS = """
[cluster]
gpus = 4
gpus_per_node = 4

[[pipeline]]
name = "P"
train_gpus = [0]
infer_gpus = [0, 1, 2, 3]
infer_tp = 1
rollouts = 1
prompts = 2
samples_per_prompt = 4
response_tokens = { median = 100, cap = 1000 }
decode = { tokens_per_s = 100, batch = 4, half_speed_at = 3 }
train_gpu_seconds_per_ktoken = 1.0
wake_seconds = 0.5
sleep_seconds = 0.25
"""


def engines(finished: list[tuple[float, int]]):
    config = parse_scenario(TOKENS).pipelines[0]
    loop = EventLoop()
    stats = PipelineStats("P")
    pool = SimEngines(loop, config, stats, lambda index: finished.append((loop.now(), index)))
    return loop, pool, stats


def wake(loop, pool, ranks):
    outcomes = []
    pool.resize(ResizeAction(1, "P", add=tuple(ranks)), outcomes.append)
    loop.run()
    assert outcomes and set(ranks) <= set(outcomes[-1].awake)
    return outcomes[-1]


def test_rate_falls_with_concurrency_as_the_documented_curve():
    decode = DecodeModel(tokens_per_s=100.0, batch=256, half_speed_at=64.0)
    assert decode.rate(1) == 100.0
    assert decode.rate(65) == pytest.approx(50.0)  # half speed at half_speed_at + 1
    # The engine's aggregate throughput grows with the batch and stays below its saturation.
    totals = [n * decode.rate(n) for n in (1, 16, 64, 256)]
    assert totals == sorted(totals) and totals[-1] < 100.0 * 64.0


def test_sequences_on_one_engine_share_its_speed_and_speed_up_as_others_finish():
    finished: list[tuple[float, int]] = []
    loop, pool, stats = engines(finished)
    wake(loop, pool, [0])
    woke = loop.now()
    assert woke == pytest.approx(0.5)  # the wake took wake_seconds
    pool.submit([100.0, 300.0])
    loop.run()
    rate2 = 100.0 / (1 + 1 / 3)  # two at once
    first = 100.0 / rate2
    second = first + (300.0 - 100.0) / 100.0  # alone afterwards
    assert [i for _, i in finished] == [0, 1]
    assert finished[0][0] - woke == pytest.approx(first)
    assert finished[1][0] - woke == pytest.approx(second)
    assert stats.tokens == pytest.approx(400.0)
    assert stats.busy_gpu_s == pytest.approx(second)  # one GPU generating the whole time


def test_work_spreads_least_loaded_and_the_batch_bounds_each_engine():
    finished: list[tuple[float, int]] = []
    loop, pool, _ = engines(finished)
    wake(loop, pool, [0, 1])
    pool.submit([50.0] * 10)
    assert sorted(len(e.heap) for e in pool.engines[:2]) == [4, 4]  # batch 4 each, 2 queued
    assert len(pool.queue) == 2
    loop.run()
    assert len(finished) == 10 and not pool.queue


def test_a_sleep_retracts_sequences_with_their_progress_and_they_resume_elsewhere():
    finished: list[tuple[float, int]] = []
    loop, pool, stats = engines(finished)
    wake(loop, pool, [0, 1])
    start = loop.now()
    pool.submit([200.0])  # least-loaded: rank 0
    assert len(pool.engines[0].heap) == 1
    loop.run(until=start + 1.0)  # 100 of its 200 tokens done
    done = []
    pool.resize(ResizeAction(2, "P", remove=(0,)), done.append)
    assert len(pool.engines[1].heap) == 1  # resumed at once on the other awake engine
    loop.run()
    assert done and 0 not in done[0].awake
    assert stats.retracted == 1 and stats.switches == 3  # two wakes, one sleep
    assert finished[0][0] - start == pytest.approx(2.0)  # 100 tokens before, 100 after, no loss
    assert stats.switch_gpu_s == pytest.approx(2 * 0.5 + 0.25)


def test_a_stopped_pool_drops_its_work_and_generates_no_more():
    finished: list[tuple[float, int]] = []
    loop, pool, stats = engines(finished)
    wake(loop, pool, [0])
    pool.submit([1000.0, 1000.0])
    loop.run(until=loop.now() + 1.0)
    pool.stop()
    busy = stats.busy_gpu_s
    loop.run()
    assert finished == [] and not pool.queue and pool.busy_gpus == 0
    assert stats.busy_gpu_s == busy and math.isclose(busy, 1.0)
    assert pool.engines[0].state == AWAKE  # asleep or awake, it holds nothing any more
