"""The progress coalescer: begin at once, bounded report rate, final count before end, failures
logged once per batch, and the caller never blocked by delivery."""

from __future__ import annotations

import logging
import threading
import time

from rlix_plugin.progress import BEGIN, END, PROGRESS, ProgressCoalescer, ProgressReport

from ..waiting import wait_until_ended


def opened(pipeline_id, step_target, initial_completed=0, *, version=0, rollout_id=0):
    """The ``BEGIN`` report the hook layer builds for a batch."""
    return ProgressReport(BEGIN, pipeline_id, rollout_id, "full", None, step_target, initial_completed, version)


class Sink:
    def __init__(self, block: threading.Event | None = None, fail: bool = False):
        self.reports = []
        self.block = block
        self.fail = fail
        self.arrived = threading.Condition()

    def __call__(self, report):
        if self.block is not None:
            self.block.wait(10)
        if self.fail:
            raise ConnectionError("scheduler unreachable")
        with self.arrived:
            self.reports.append(report)
            self.arrived.notify_all()

    def wait_for(self, predicate, timeout_s=5.0):
        deadline = time.monotonic() + timeout_s
        with self.arrived:
            while not predicate(self.reports):
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; got {self.reports}"
                self.arrived.wait(left)


def test_begin_is_delivered_at_once_and_end_after_the_final_count():
    sink = Sink()
    progress = ProgressCoalescer(sink, min_interval_s=10.0)  # bumps alone would wait 10 s
    progress.begin(opened("p", 100, 5, version=3))
    sink.wait_for(lambda r: len(r) == 1)
    assert sink.reports[0].kind == BEGIN and sink.reports[0].completed == 5
    for _ in range(40):
        progress.bump("p", 0, "full", None, 3, 1)
    progress.end("p", 0, "full", None)
    sink.wait_for(lambda r: r and r[-1].kind == END)
    assert [r.kind for r in sink.reports] == [BEGIN, PROGRESS, END]
    assert sink.reports[1].completed == 45, "the final count precedes the end"
    progress.close()


def test_report_rate_is_bounded_whatever_the_bump_rate():
    sink = Sink()
    progress = ProgressCoalescer(sink, min_interval_s=0.05)
    progress.begin(opened("p", 10**9, 0, version=0))
    start = time.monotonic()
    bumps = 0
    while time.monotonic() - start < 0.5:
        progress.bump("p", 0, "full", None, 0, 1)
        bumps += 1
    assert progress.flush(5.0)
    elapsed = time.monotonic() - start
    updates = [r for r in sink.reports if r.kind == PROGRESS]
    assert bumps > 10_000
    assert len(updates) <= elapsed / 0.05 + 2, f"{len(updates)} reports in {elapsed:.2f}s"
    assert updates[-1].completed == bumps, "nothing is lost by coalescing"
    progress.close()


def test_a_blocked_delivery_never_blocks_the_caller():
    release = threading.Event()
    sink = Sink(block=release)
    progress = ProgressCoalescer(sink, min_interval_s=0.0)
    progress.begin(opened("p", 100, 0, version=0))  # the delivery thread is now stuck in send
    start = time.monotonic()
    for _ in range(1000):
        progress.bump("p", 0, "full", None, 0, 1)
    progress.end("p", 0, "full", None)
    assert time.monotonic() - start < 1.0
    release.set()
    sink.wait_for(lambda r: r and r[-1].kind == END)
    assert sink.reports[-2].completed == 100, "clamped to the step target"
    progress.close()


def test_failed_delivery_is_logged_once_per_batch(caplog):
    sink = Sink(fail=True)
    progress = ProgressCoalescer(sink, min_interval_s=0.0)
    with caplog.at_level(logging.WARNING, logger="rlix_plugin.progress"):
        progress.begin(opened("p", 100, 0, version=0))
        for _ in range(5):
            progress.bump("p", 0, "full", None, 0, 1)
            assert progress.flush(5.0)
        progress.end("p", 0, "full", None)
        assert progress.flush(5.0)
    lost = [r for r in caplog.records if "progress signal lost" in r.getMessage()]
    assert len(lost) == 1 and "scheduler unreachable" in lost[0].getMessage()
    progress.close()


def test_begin_without_end_replaces_the_stale_batch_and_bump_without_begin_is_ignored():
    sink = Sink()
    progress = ProgressCoalescer(sink, min_interval_s=0.0)
    progress.bump("p", 0, "full", None, 0, 7)  # no open batch
    progress.begin(opened("p", 10, 0, version=1))
    progress.bump("p", 0, "full", None, 1, 4)
    progress.begin(opened("p", 20, 0, version=2))  # previous batch never ended
    progress.bump("p", 0, "full", None, 2, 1)
    progress.end("p", 0, "full", None)
    sink.wait_for(lambda r: r and r[-1].kind == END)
    last_begin = max(i for i, r in enumerate(sink.reports) if r.kind == BEGIN)
    assert sink.reports[last_begin].step_target == 20
    assert [r.completed for r in sink.reports[last_begin + 1 :]] == [1, 1]
    progress.close()


def test_bumps_and_ends_of_another_rollout_never_touch_the_open_batch():
    """Rollout 3's straggling bump and late end, called after rollout 4 began on the same stream,
    neither count towards rollout 4 nor close its batch; every report carries its rollout."""
    sink = Sink()
    progress = ProgressCoalescer(sink, min_interval_s=0.0)
    progress.begin(opened("p", 10, rollout_id=3))
    progress.bump("p", 3, "full", None, 0, 2)
    progress.begin(opened("p", 10, rollout_id=4))  # rollout 3 never ended: replaced
    progress.bump("p", 3, "full", None, 0, 5)  # a straggler of rollout 3
    progress.end("p", 3, "full", None)  # rollout 3's late end
    progress.bump("p", 4, "full", None, 0, 1)
    assert progress.flush(5.0)
    assert [r.kind for r in sink.reports if r.rollout_id == 4 and r.kind == END] == [], "rollout 4 is still open"
    progress.end("p", 4, "full", None)
    sink.wait_for(lambda r: r and r[-1].kind == END)
    fours = [r for r in sink.reports if r.rollout_id == 4]
    assert [r.kind for r in fours] == [BEGIN, PROGRESS, END]
    assert fours[1].completed == 1, "only rollout 4's own bump counts"
    assert all(r.kind != END for r in sink.reports if r.rollout_id == 3), "rollout 3's end changed nothing"
    progress.close()


def delivery_threads():
    return [t for t in threading.enumerate() if t.name == "rlix-progress"]


def wait_until_gone(threads):
    wait_until_ended(threads, 5.0, "the delivery thread to end")


def test_the_delivery_thread_runs_only_while_a_batch_is_open():
    """A framework that drops its backend without closing it leaves no thread behind: the
    delivery thread ends with the last open batch, and the next begin starts another."""
    before = set(delivery_threads())
    sink = Sink()
    progress = ProgressCoalescer(sink, min_interval_s=0.01)
    progress.begin(opened("p", 10))
    progress.bump("p", 0, "full", None, 0, 4)
    (thread,) = set(delivery_threads()) - before
    progress.end("p", 0, "full", None)
    sink.wait_for(lambda r: r and r[-1].kind == END)
    wait_until_gone([thread])
    progress.begin(opened("p", 10, rollout_id=1))
    progress.bump("p", 1, "full", None, 0, 10)
    progress.end("p", 1, "full", None)
    sink.wait_for(lambda r: r[-1].kind == END and r[-1].rollout_id == 1)
    assert [(r.kind, r.rollout_id, r.completed) for r in sink.reports] == [
        (BEGIN, 0, 0),
        (PROGRESS, 0, 4),
        (END, 0, 4),
        (BEGIN, 1, 0),
        (PROGRESS, 1, 10),
        (END, 1, 10),
    ]
    wait_until_gone(set(delivery_threads()) - before)


def test_a_closed_coalescer_takes_nothing_and_starts_no_thread():
    sink = Sink()
    progress = ProgressCoalescer(sink, min_interval_s=0.01)
    before = set(delivery_threads())
    progress.begin(opened("p", 10))
    sink.wait_for(lambda r: len(r) == 1)
    progress.close()
    wait_until_gone(set(delivery_threads()) - before)
    progress.bump("p", 0, "full", None, 0, 3)
    progress.end("p", 0, "full", None)
    progress.begin(opened("p", 10, rollout_id=1))
    assert set(delivery_threads()) == before
    assert progress.flush(1.0) and [r.kind for r in sink.reports] == [BEGIN], "nothing is taken after close"


def test_forgetting_the_last_open_batch_ends_the_delivery_thread():
    """A pipeline unregistered (or its generation cluster released) mid-batch takes its open
    batch with it, and the thread that waited on it ends."""
    before = set(delivery_threads())
    sink = Sink()
    progress = ProgressCoalescer(sink, min_interval_s=0.01)
    progress.begin(opened("p", 10))
    sink.wait_for(lambda r: len(r) == 1)
    (thread,) = set(delivery_threads()) - before
    progress.forget("p")
    wait_until_gone([thread])
    progress.bump("p", 0, "full", None, 0, 3)
    assert progress.flush(1.0) and [r.kind for r in sink.reports] == [BEGIN]
