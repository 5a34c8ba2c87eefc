"""The SQLite store (WAL, epochs, stale writers refused) and the write-ahead log over it (changes
saved before anyone waits on them, changes nobody waits on coalesced, a superseded writer
stopped)."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from rlix_plugin.hookspecs import InvalidRequestError
from rlix_plugin.scheduler.durable import DurableLog
from rlix_plugin.scheduler.store import SqliteStore, StaleWriterError

from ..scheduler.support import run


def test_the_file_is_in_wal_mode_and_a_save_survives_the_process(tmp_path):
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    epoch = store.claim()
    store.save(epoch, 3, {"pipelines": ["p1"]})
    store.close()
    with sqlite3.connect(path) as db:  # another connection: what a new process would see
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    reopened = SqliteStore(path)
    stored = reopened.load()
    assert (stored.epoch, stored.version, stored.payload) == (epoch, 3, {"pipelines": ["p1"]})
    assert reopened.claim() == epoch + 1, "epochs keep counting across processes"


def test_a_stale_writer_never_overwrites_a_newer_epoch(tmp_path):
    old, new = SqliteStore(tmp_path / "s.db"), SqliteStore(tmp_path / "s.db")
    first = old.claim()
    old.save(first, 1, {"by": "old"})
    second = new.claim()
    assert second > first
    new.save(second, 1, {"by": "new"})
    with pytest.raises(StaleWriterError, match=f"epoch {first} was superseded by epoch {second}"):
        old.save(first, 2, {"by": "old, late"})
    assert old.load().payload == {"by": "new"} and new.load().epoch == second
    # A newer claim alone (its first save not made yet) already stops the old writer.
    third = old.claim()
    with pytest.raises(StaleWriterError):
        new.save(second, 2, {"by": "new, late"})
    assert old.load().payload == {"by": "new"} and third == second + 1


def test_clear_forgets_the_record_but_not_the_epochs(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    epoch = store.claim()
    store.save(epoch, 1, {"x": 1})
    store.clear()
    assert store.load() is None and store.claim() == epoch + 1


def test_a_path_that_cannot_hold_the_file_is_refused_by_name(tmp_path):
    with pytest.raises(InvalidRequestError, match="no folder"):
        SqliteStore(tmp_path / "missing" / "s.db")
    with pytest.raises(InvalidRequestError, match="not a file path"):
        SqliteStore(tmp_path)


def test_flush_returns_once_the_change_is_saved_and_changes_are_coalesced(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    epoch = store.claim()
    value = {"n": 0}

    async def scenario() -> tuple[int, int, dict]:
        log = DurableLog(store, epoch, lambda: dict(value), min_interval_s=10.0)
        log.start()
        for n in range(1, 51):  # progress nobody waits on: at most one save per interval
            value["n"] = n
            log.changed()
        await asyncio.sleep(0.05)
        quiet_saves = log.saves
        await log.flush()  # a grant about to be answered: saved now, whatever the interval
        saved = store.load().payload
        await log.stop()
        return quiet_saves, log.saves, saved

    quiet_saves, saves, saved = run(scenario())
    assert quiet_saves <= 1 and saves <= 2
    assert saved == {"n": 50}, "the flushed save holds every change made before it"


def test_a_superseded_log_fails_its_waiters_and_says_so(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    epoch = store.claim()
    stale: list[StaleWriterError] = []

    async def scenario() -> None:
        log = DurableLog(store, epoch, lambda: {"by": epoch}, on_stale=stale.append)
        log.start()
        log.changed()
        await log.flush()
        store.claim()  # a newer incarnation takes over
        log.changed()
        with pytest.raises(StaleWriterError):
            await log.flush()
        with pytest.raises(StaleWriterError):
            await log.flush()  # and every later one
        await log.stop()

    run(scenario())
    assert len(stale) == 1 and store.load().payload == {"by": epoch}
