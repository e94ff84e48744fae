"""Where ledger records are kept: one SQLite file (and optionally daily JSONL files).

The SQLite file holds one row per record: its arrival time (indexed, for ``--since``), a share
number from its conversation id (a parallel replay keeps conversations whole) and the record as
msgpack, with the request's
features as a positional array (their names once per file, in ``meta``): a third of the size of
named fields, and the part ``router simulate`` decodes a million times. The workers of a host
share the file (WAL mode); each writes its batches in one transaction from a thread.

Rotation, at most every ``ROTATE_SECONDS``: records older than ``max_age_days`` go, then the
oldest ones while the file is over ``max_mb``, and the freed pages are returned to the disk
(``auto_vacuum = INCREMENTAL``). JSONL files are one per UTC day, deleted by age.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import operator
import os
import sqlite3
import threading
import time
import typing
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import msgspec

from router.accounting.cost import Tokens
from router.accounting.entry import FORMAT, Entry
from router.config import LedgerConfig
from router.routing.features import Features, feature_names

ROTATE_SECONDS = 60.0
MMAP_BYTES = 1 << 31
"""How much of the file a reader maps (SQLite caps it at its own limit)."""
DELETE_BATCH = 5000
"""Rows deleted per transaction while rotating: the write lock is held briefly."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    ts REAL NOT NULL,
    part INTEGER NOT NULL,
    feature_set TEXT,
    entry BLOB NOT NULL,
    features BLOB
);
CREATE INDEX IF NOT EXISTS entries_ts ON entries (ts);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(Entry)
_json = msgspec.json.Encoder()


class LedgerError(Exception):
    """The ledger file cannot be opened or read; the message names it."""


def feature_set_id(names: Sequence[str]) -> str:
    """A short id of an ordered list of feature names."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]


PARTS = 1 << 16


def part_of(entry: Entry) -> int:
    """The record's share for a parallel replay: its conversation's, so that a conversation
    is replayed whole, in one process."""
    key = entry.conversation.id if entry.conversation else entry.request_id
    return zlib.crc32(key.encode()) % PARTS


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """Open the ledger file (creating it and its directory when ``create``).

    Raises:
        LedgerError: it cannot be created or opened, or it is not a ledger.
    """
    if not create and not path.is_file():
        raise LedgerError(f"no ledger at {path} (set ledger.dir, or --ledger)")
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        if create:
            # Before anything is written: auto_vacuum is fixed once the first table exists.
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(SCHEMA)
        db.execute("SELECT 1 FROM entries LIMIT 1").fetchall()
    except (OSError, sqlite3.Error) as err:
        raise LedgerError(f"cannot use the ledger {path}: {err}") from err
    return db


class LedgerFiles:
    """Writes batches of records; one per worker, called from one thread at a time."""

    def __init__(self, path: Path, config: LedgerConfig) -> None:
        self.path = path
        self.config = config
        self.db = connect(path, create=True)
        self.names = feature_names()
        self.set_id = feature_set_id(self.names)
        self._values = operator.attrgetter(*self.names)
        self.db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                        (f"features:{self.set_id}", json.dumps(self.names)))
        self.jsonl = Path(config.jsonl_dir).expanduser() if config.jsonl_dir else None
        if self.jsonl is not None:
            self.jsonl.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._next_rotation = 0.0
        self._lock = threading.Lock()

    def write(self, entries: Sequence[Entry]) -> None:
        """Append records to the SQLite file (one transaction) and to today's JSONL file."""
        rows = [self._row(e) for e in entries]
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", rows)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            if self.jsonl is not None:
                self._append_jsonl(entries)
            if time.monotonic() >= self._next_rotation:
                self._next_rotation = time.monotonic() + ROTATE_SECONDS
                self.rotate()

    def _row(self, entry: Entry) -> tuple[Any, ...]:
        features = entry.features
        packed = None
        if features is not None:
            packed = _encoder.encode(self._values(features))
            entry = msgspec.structs.replace(entry, features=None)
        return (entry.ts, part_of(entry), self.set_id if packed else None,
                _encoder.encode(entry), packed)

    def _append_jsonl(self, entries: Sequence[Entry]) -> None:
        assert self.jsonl is not None
        by_day: dict[str, list[bytes]] = {}
        for entry in entries:
            day = datetime.fromtimestamp(entry.ts, UTC).strftime("%Y-%m-%d")
            by_day.setdefault(day, []).append(_json.encode(entry))
        for day, lines in by_day.items():
            # One write per batch with O_APPEND: workers appending to the same file do not
            # interleave within a batch.
            fd = os.open(self.jsonl / f"ledger-{day}.jsonl",
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, b"\n".join(lines) + b"\n")
            finally:
                os.close(fd)

    def rotate(self, now: float | None = None) -> int:
        """Delete records past ``max_age_days``, then the oldest while the file is over
        ``max_mb``; return how many went. Old JSONL files are deleted too."""
        now = time.time() if now is None else now
        cutoff = now - self.config.max_age_days * 86400
        deleted = self._delete("DELETE FROM entries WHERE rowid IN (SELECT rowid FROM entries "
                               "WHERE ts < ? LIMIT ?)", cutoff)
        limit = self.config.max_mb * 1024 * 1024
        while self._used_bytes() > limit:
            count = self.db.execute("SELECT count(*) FROM entries").fetchone()[0]
            if not count:
                break
            # A tenth at a time: the size per row is not known exactly.
            gone = self._delete("DELETE FROM entries WHERE rowid IN (SELECT rowid FROM entries "
                                "ORDER BY ts LIMIT ?)", None, max(1, count // 10))
            deleted += gone
            if not gone:
                break
        if deleted:
            # execute() steps the pragma once (one page freed); a script runs it to the end.
            self.db.executescript("PRAGMA incremental_vacuum;")
        if self.jsonl is not None:
            oldest = datetime.fromtimestamp(cutoff, UTC).strftime("%Y-%m-%d")
            for file in self.jsonl.glob("ledger-*.jsonl"):
                if file.stem.removeprefix("ledger-") < oldest:
                    file.unlink(missing_ok=True)
        return deleted

    def _delete(self, sql: str, cutoff: float | None, total: int | None = None) -> int:
        deleted = 0
        while total is None or deleted < total:
            batch = DELETE_BATCH if total is None else min(DELETE_BATCH, total - deleted)
            params = (cutoff, batch) if cutoff is not None else (batch,)
            gone = self.db.execute(sql, params).rowcount
            deleted += gone
            if gone < batch:
                break
        return deleted

    def _used_bytes(self) -> int:
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        size = self.db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self.db.close()


# --------------------------------------------------------------------------- reading


FeatureRow = msgspec.defstruct(
    "FeatureRow", [(n, t) for n, t in typing.get_type_hints(Features).items()],
    array_like=True, frozen=True, gc=False)
"""The request's features as a Struct of :class:`Features`' fields, read by name like the
dataclass, and decoded straight from the stored array: what ``router simulate`` reads a million
of, built in a twentieth of the time the frozen dataclass takes."""

_ZERO = {int: 0, float: 0.0, str: "", bool: False}


@dataclasses.dataclass(frozen=True, slots=True)
class Reader:
    """Reads records back, oldest first."""

    path: Path

    def entries(self, since: float | None = None, until: float | None = None) -> Iterator[Entry]:
        """Every record that arrived in ``[since, until)``, oldest first, with its
        :class:`Features` (recorded under another list of features: matched by name, and a
        feature the record predates takes its type's zero value)."""
        return self._read(since, until, lambda values: Features(*values))

    def rows(self, since: float | None = None, until: float | None = None,
             part: tuple[int, int] = (0, 1)) -> Iterator[Entry]:
        """Like :meth:`entries`, faster: each record's ``features`` is a :data:`FeatureRow`,
        which reads like :class:`Features` (what :mod:`router.accounting.simulate` needs).
        ``part=(k, n)``: only the k-th of n shares, each holding whole conversations."""
        return self._read(since, until, _feature_row, part)

    def _read(self, since: float | None, until: float | None,
              make: Callable[[tuple[Any, ...]], Any],
              part: tuple[int, int] = (0, 1)) -> Iterator[Entry]:
        db = connect(self.path, create=False)
        try:
            # Read through the page cache, not into SQLite's own (a fifth less CPU a row).
            db.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
            sets = {key.removeprefix("features:"): json.loads(value) for key, value in
                    db.execute("SELECT key, value FROM meta WHERE key LIKE 'features:%'")}
            readers = {set_id: _feature_reader(names, make) for set_id, names in sets.items()}
            cursor = db.execute(
                "SELECT feature_set, entry, features FROM entries WHERE ts >= ? AND ts < ? "
                "AND part % ? = ? ORDER BY ts",
                (since if since is not None else float("-inf"),
                 until if until is not None else float("inf"), part[1], part[0]))
            decode_entry = _entry_decoder.decode
            replace = msgspec.structs.replace
            for set_id, blob, packed in cursor:
                entry = decode_entry(blob)
                if entry.v > FORMAT:
                    continue
                if packed is not None:
                    entry = replace(entry, features=readers[set_id](packed))
                yield entry
        except sqlite3.Error as err:
            raise LedgerError(f"cannot read the ledger {self.path}: {err}") from err
        finally:
            db.close()

    def count(self, since: float | None = None) -> int:
        """How many records arrived since ``since``."""
        db = connect(self.path, create=False)
        try:
            return int(db.execute("SELECT count(*) FROM entries WHERE ts >= ?",
                                  (since if since is not None else float("-inf"),)
                                  ).fetchone()[0])
        finally:
            db.close()


def _feature_row(values: tuple[Any, ...]) -> Any:
    return FeatureRow(*values)


def _feature_reader(names: Sequence[str], make: Callable[[tuple[Any, ...]], Any]
                    ) -> Callable[[bytes], Any]:
    """A function from a stored feature array (recorded under ``names``) to ``make`` of the
    current features' values."""
    hints = typing.get_type_hints(Features)
    decoder = msgspec.msgpack.Decoder(
        tuple.__class_getitem__(tuple(hints.get(n, Any) for n in names)))
    current = feature_names()
    if list(names) == list(current):
        if make is _feature_row:
            return msgspec.msgpack.Decoder(FeatureRow).decode
        return lambda packed: make(decoder.decode(packed))
    index = {name: i for i, name in enumerate(names)}
    zeros = {n: _ZERO.get(hints[n], ()) for n in current}

    def convert(packed: bytes) -> Any:
        values = decoder.decode(packed)
        return make(tuple(values[index[n]] if n in index else zeros[n] for n in current))

    return convert


# --------------------------------------------------------------------------- export

EXPORT_FORMATS = ("jsonl", "csv", "parquet")


def flat(entry: Entry) -> dict[str, Any]:
    """A record as one level of named scalars (for CSV and Parquet): ``usage_*``,
    ``conversation_*``, ``feature_*``; lists joined with commas, mappings as JSON."""
    row = {key: _scalar(getattr(entry, key)) for key in _ENTRY_COLUMNS}
    row.update({f"usage_{key}": getattr(entry.usage, key) for key in _USAGE_COLUMNS})
    seen = entry.conversation
    state = seen.state if seen else None
    row["conversation_id"] = seen.id if seen else None
    row["conversation_model"] = state.model if state else None
    row["conversation_turns"] = state.turns if state else None
    row["conversation_tool_loop"] = seen.tool_loop if seen else None
    features = entry.features
    for name in feature_names():
        row[f"feature_{name}"] = _scalar(getattr(features, name)) if features else None
    return row


_USAGE_COLUMNS = list(Tokens.__struct_fields__)
_ENTRY_COLUMNS = [name for name in Entry.__struct_fields__
                  if name not in ("features", "conversation", "usage")]


def _scalar(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def export(entries: Iterable[Entry], fmt: str, out: IO[bytes]) -> int:
    """Write records to ``out`` as ``jsonl``, ``csv`` or ``parquet``; return how many.

    Raises:
        LedgerError: ``parquet`` without pyarrow installed.
    """
    count = 0
    if fmt == "jsonl":
        for entry in entries:
            out.write(_json.encode(entry) + b"\n")
            count += 1
        return count
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as err:
            raise LedgerError("parquet needs pyarrow: pip install 'claude-router[parquet]'"
                              ) from err
        rows = [flat(e) for e in entries]
        pq.write_table(pa.Table.from_pylist(rows), out)
        return len(rows)
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer: csv.DictWriter[str] | None = None
    for entry in entries:
        row = flat(entry)
        if writer is None:
            writer = csv.DictWriter(text, fieldnames=list(row))
            writer.writeheader()
        writer.writerow(row)
        count += 1
    text.detach()
    return count
