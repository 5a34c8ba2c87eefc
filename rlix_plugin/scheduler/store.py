"""Durable stores for the scheduler's persisted state, and the contract they keep.

A store keeps one record (the JSON-able dict of :mod:`.persist`, plus the service's own part)
and outlives the scheduler that writes it. Writes are versioned by **epoch**: every scheduler
incarnation first :meth:`~StateStore.claim`\\ s an epoch greater than every epoch claimed before,
and each :meth:`~StateStore.save` names the writer's epoch. A save from an epoch older than the
newest claimed one raises :class:`StaleWriterError` and changes nothing, and :meth:`load` returns
the record of the newest epoch that wrote one: a stale writer (an incarnation that was replaced
while it still ran) can never overwrite newer state.

Implementations: :class:`SqliteStore` (the local backend, opt-in: a file in WAL mode) and
:class:`rlix_plugin.ray.kv_store.RayKVStore` (the Ray cluster's GCS key-value store).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from rlix_plugin.hookspecs import InvalidRequestError, RlixError


class StaleWriterError(RlixError):
    """A newer scheduler incarnation claimed the store: this one must stop writing (and serving)."""


@dataclass(frozen=True)
class StoredState:
    """The newest record: who wrote it (``epoch``), its sequence within that epoch (``version``)."""

    epoch: int
    version: int
    payload: dict[str, Any]


class StateStore(Protocol):
    """Where a scheduler's state survives the scheduler (see the module docstring)."""

    #: Where it keeps the record, for messages (``sqlite:/path``, ``ray-gcs:rlix``).
    where: str

    def claim(self) -> int:
        """A new epoch, greater than every epoch claimed so far (atomically: two claimants never
        get the same one)."""

    def load(self) -> StoredState | None:
        """The record of the newest epoch that saved one, or None."""

    def save(self, epoch: int, version: int, payload: dict[str, Any]) -> None:
        """Replace the record (``version`` grows within an epoch).

        :raises StaleWriterError: a newer epoch was claimed; nothing was written.
        """

    def clear(self) -> None:
        """Forget the record (an operator shut the scheduler down); epochs keep counting."""


def encode(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


def decode(text: str | bytes) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"a persisted record must be an object, got {type(value).__name__}")
    return value


class SqliteStore:
    """A :class:`StateStore` in one SQLite file in WAL mode.

    WAL with ``synchronous=NORMAL``: a committed save survives the process crashing (what a
    restart needs); only a power loss may take back the last few. Each claim and save is one
    ``BEGIN IMMEDIATE`` transaction, so the epoch check and the write are atomic across processes
    sharing the file. Thread-safe (one connection behind a lock).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = os.fspath(path)
        if not path or os.path.isdir(path):
            raise InvalidRequestError(f"state file {path!r}: not a file path")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise InvalidRequestError(f"state file {path!r}: no folder {folder!r}")
        self.path = path
        self.where = f"sqlite:{path}"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS epochs (epoch INTEGER PRIMARY KEY)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS state (epoch INTEGER PRIMARY KEY, version INTEGER NOT NULL, payload TEXT NOT NULL)"
        )

    def claim(self) -> int:
        with self._lock, self._transaction():
            (newest,) = self._db.execute("SELECT COALESCE(MAX(epoch), 0) FROM epochs").fetchone()
            self._db.execute("INSERT INTO epochs (epoch) VALUES (?)", (newest + 1,))
            return int(newest) + 1

    def load(self) -> StoredState | None:
        with self._lock:
            row = self._db.execute("SELECT epoch, version, payload FROM state ORDER BY epoch DESC LIMIT 1").fetchone()
        if row is None:
            return None
        return StoredState(int(row[0]), int(row[1]), decode(row[2]))

    def save(self, epoch: int, version: int, payload: dict[str, Any]) -> None:
        text = encode(payload)
        with self._lock, self._transaction():
            (newest,) = self._db.execute("SELECT COALESCE(MAX(epoch), 0) FROM epochs").fetchone()
            if newest > epoch:
                raise StaleWriterError(f"{self.where}: epoch {epoch} was superseded by epoch {newest}")
            self._db.execute(
                "INSERT OR REPLACE INTO state (epoch, version, payload) VALUES (?, ?, ?)", (epoch, version, text)
            )
            self._db.execute("DELETE FROM state WHERE epoch < ?", (epoch,))

    def clear(self) -> None:
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM state")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN IMMEDIATE`` .. ``COMMIT``, or ``ROLLBACK`` when the body raises."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: Any, *_: Any) -> None:
        self._db.execute("ROLLBACK" if kind is not None else "COMMIT")


__all__ = ["SqliteStore", "StaleWriterError", "StateStore", "StoredState", "decode", "encode"]
