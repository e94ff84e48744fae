"""The embedded store: one SQLite file in WAL mode, shared by the workers of one host.

Calls run inline on the event loop: each is one short statement (a few tens of microseconds,
see ``bench/bench_state.py``) and none waits on the disk (``synchronous=NORMAL`` in WAL mode
syncs only at checkpoints). The slow parts run in a thread, off the loop: checkpoints (which
sync) at most every second after writes, and every minute the purge of expired rows and of the
soonest-expiring rows beyond ``max_keys``, in small batches so that a worker waiting for the
write lock waits for one batch at most.

Waiting for the write lock another worker holds is bounded by ``lock_timeout``: SQLite's own
busy handler sleeps a millisecond or more per try, so the wait is a loop of short sleeps here.
Past the bound the call raises :class:`StoreUnavailable` and the wrapper serves it from memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from router.settings import APP_DIR
from router.state.store import (
    Charge,
    OnError,
    StateError,
    Store,
    StoreUnavailable,
    counter_value,
    ttl_milliseconds,
)

log = logging.getLogger("router.state")

FILE_NAME = "state.db"

CHECKPOINT_SECONDS = 1.0
"""After writes, copy the WAL into the database at most this often (bounds the WAL's size)."""
PURGE_SECONDS = 60.0
"""Delete expired rows, and rows beyond ``max_keys``, at most this often."""
PURGE_BATCH = 200
"""Rows deleted per write transaction while purging: one batch holds the lock ~1 ms."""
PURGE_LIMIT = 100_000
"""Most rows one purge deletes (of each kind); the rest waits for the next one."""
CHUNK = 300
"""Keys per statement (SQLite caps the number of bound parameters)."""
CACHE_KEYS = 10_000
"""Most values a worker keeps of what it read and wrote (a few MB; emptied when full)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
"""
"""No index on ``expires``: it would double the pages every write touches (p99 of a 3-key write
40 -> 150 µs); purges scan the table instead, in a thread, off the loop."""

ADD_SQL = """
INSERT INTO kv (key, value, expires) VALUES (:key, CAST(:amount AS BLOB), :expires)
ON CONFLICT (key) DO UPDATE SET
    value = CAST(IIF(kv.expires > :now, CAST(kv.value AS INTEGER), 0) + :amount AS BLOB),
    expires = IIF(kv.expires > :now, kv.expires, :expires)
    WHERE kv.expires <= :now OR CAST(CAST(kv.value AS INTEGER) AS BLOB) = kv.value
RETURNING value
"""
"""One statement, so atomic across processes; a live non-integer value updates nothing and
returns no row."""

T = TypeVar("T")


@lru_cache(maxsize=64)
def _charge_sql(count: int) -> str:
    """One statement, so atomic across processes: read every key, and write them all only if
    no charge is refused (see :class:`router.state.store.Charge`). ?1 is the expiry clock's
    now, ?2 the charge's time in microseconds; then five parameters per charge."""
    rows = ",".join(f"(?{3 + 5 * i},?{4 + 5 * i},?{5 + 5 * i},?{6 + 5 * i},?{7 + 5 * i})"
                    for i in range(count))
    return f"""
WITH req(key, amount, lim, bucket, expires) AS (VALUES {rows}),
cur AS MATERIALIZED (
    SELECT req.key, req.amount, req.lim, req.bucket, req.expires,
           IIF(kv.expires > ?1, CAST(kv.value AS INTEGER), 0) AS v,
           IIF(kv.expires > ?1, kv.expires, NULL) AS live
    FROM req LEFT JOIN kv ON kv.key = req.key
)
INSERT INTO kv (key, value, expires)
SELECT key, CAST(IIF(bucket, max(max(v, ?2) + amount, ?2), v + amount) AS BLOB),
       IIF(bucket OR live IS NULL, expires, live)
FROM cur
WHERE NOT EXISTS (
    SELECT 1 FROM cur WHERE lim IS NOT NULL
    AND IIF(bucket, v > ?2 AND v + amount - ?2 > lim, v >= lim))
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires
RETURNING key, CAST(value AS INTEGER)
"""


def state_dir(configured: str | None) -> Path:
    """Return the state directory: ``configured`` (``state.dir``, which $ROUTER_STATE_DIR or
    $XDG_STATE_HOME fill in when the file leaves it unset), else ~/.local/state/claude-router."""
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "state" / APP_DIR


def open_sqlite(directory: Path, *, max_keys: int, lock_timeout: float) -> SqliteStore:
    """Open (creating them if needed) the state directory and its database file.

    Raises:
        StateError: the directory cannot be created or written, or the file is not a usable
            SQLite database; the message names the path and what to change.
    """
    path = directory / FILE_NAME
    hint = ("set state.dir in router.yaml or ROUTER_STATE_DIR to a writable directory, "
            "or use state.backend: memory")
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        raise StateError(f"cannot create the state directory {directory}: "
                         f"{err.strerror or err}; {hint}") from err
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StateError(f"the state directory {directory} is not writable; {hint}")
    try:
        db = _connect(path, schema=True)
    except sqlite3.Error as err:
        raise StateError(f"cannot use the state database {path}: {err}; {hint}") from err
    return SqliteStore(db, path, max_keys=max_keys, lock_timeout=lock_timeout)


def _connect(path: Path, *, schema: bool = False) -> sqlite3.Connection:
    # Busy waits are done by SqliteStore._run in short steps, not by SQLite's handler, except
    # while opening: several workers start at once and the schema is written under a lock.
    db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.OperationalError(
                f"journal_mode is {mode}, not wal (is it on a network filesystem?)")
        db.execute("PRAGMA synchronous = NORMAL")
        # Checkpoints sync the disk: they run in a thread (SqliteStore._maintain), not inline.
        db.execute("PRAGMA wal_autocheckpoint = 0")
        # The WAL is reused after each checkpoint; this truncates it back after a burst.
        db.execute("PRAGMA journal_size_limit = 67108864")
        if schema:
            db.executescript(SCHEMA)
        db.execute("PRAGMA busy_timeout = 0")
    except BaseException:
        db.close()
        raise
    return db


@lru_cache(maxsize=64)
def _select_sql(count: int) -> str:
    marks = ",".join("?" * count)
    return f"SELECT key, value, expires FROM kv WHERE expires > ? AND key IN ({marks})"


@lru_cache(maxsize=64)
def _upsert_sql(count: int) -> str:
    rows = ",".join(["(?,?,?)"] * count)
    return (f"INSERT INTO kv (key, value, expires) VALUES {rows} "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires")


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class _Pending:
    """The rows of one turn's writes, and the writers waiting for their commit."""

    __slots__ = ("rows", "waiters")

    def __init__(self) -> None:
        self.rows: dict[str, tuple[bytes, float]] = {}
        self.waiters: list[asyncio.Future[None]] = []


class SqliteStore:
    """Keys in one SQLite file, expiring on the wall clock so that every process and restart
    agrees on what is live."""

    name = "sqlite"
    on_error: OnError = "open"

    def __init__(self, db: sqlite3.Connection, path: Path, *, max_keys: int,
                 lock_timeout: float, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._db = db
        self._max_keys = max_keys
        self._lock_timeout = lock_timeout
        self._clock = clock
        self._next_checkpoint = 0.0
        self._next_purge = time.monotonic()
        self._maintenance: asyncio.Future[None] | None = None
        self._pending: _Pending | None = None
        """Rows written in this turn of the loop, not yet committed."""
        self._cache: dict[str, tuple[bytes, float]] = {}
        """Values this worker read or wrote, with their expiry, as of ``_version``."""
        self._version: int | None = None

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        now = self._clock()
        cache = self._cached()
        found: dict[str, bytes] = {}
        missing: list[str] = []
        for key in keys:
            hit = cache.get(key)
            if hit is not None and hit[1] > now:
                found[key] = hit[0]
            else:
                missing.append(key)
        for chunk in _chunks(missing):
            for key, value, expires in self._run(self._fetch, _select_sql(len(chunk)),
                                                 (now, *chunk)):
                found[key] = value
                self._remember(key, value, expires)
        return [found.get(key) for key in keys]

    async def set_many(self, items: Mapping[str, bytes], ttl_seconds: float) -> None:
        if not items:
            return
        expires = self._clock() + ttl_milliseconds(ttl_seconds) / 1000
        loop = asyncio.get_running_loop()
        pending = self._pending
        if pending is None:
            # The writes of every request that finishes in this turn of the loop go in one
            # transaction, at the end of the turn: a commit (a WAL append under a file lock)
            # costs the same for one key as for fifty.
            pending = self._pending = _Pending()
            loop.call_soon(self._write_pending)
        for key, value in items.items():
            pending.rows[key] = (bytes(value), expires)  # a later write of a key wins
        done = loop.create_future()
        pending.waiters.append(done)
        await done

    def _write_pending(self) -> None:
        """Write the turn's pending rows, then tell each writer how it went."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            self._write([(key, value, expires)
                         for key, (value, expires) in pending.rows.items()])
        except Exception as err:  # every writer hears of it: none may wait for ever
            for waiter in pending.waiters:
                if not waiter.done():
                    waiter.set_exception(err)
            return
        for waiter in pending.waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _write(self, rows: list[tuple[str, bytes, float]]) -> None:
        # The version last checked: if it still holds after the write, no other connection
        # committed since the cache was last known good, the write included.
        before = self._version
        # Forgotten first: whatever fails from here on, the file says what they hold.
        self._forget(key for key, _, _ in rows)
        if len(rows) <= CHUNK:
            self._run(self._fetch, _upsert_sql(len(rows)), [f for row in rows for f in row])
        else:
            self._run(self._write_all, rows)
        self._cached()
        if self._version == before:
            # No other commit came between: what we wrote is what the file holds.
            for key, value, expires in rows:
                self._remember(key, value, expires)
        self._after_write()

    def _cached(self) -> dict[str, tuple[bytes, float]]:
        """The worker's cache, emptied first if another connection (a worker, a purge) has
        committed since it was last checked.

        ``PRAGMA data_version`` changes exactly then (never for this connection's own
        commits), and costs a tenth of a lookup: a conversation's next turn usually reads
        what this worker wrote at its last one.
        """
        version = self._run(self._fetch, "PRAGMA data_version", ())[0][0]
        if version != self._version:
            self._cache.clear()
            self._version = version
        return self._cache

    def _remember(self, key: str, value: bytes, expires: float) -> None:
        if len(self._cache) >= CACHE_KEYS:
            self._cache.clear()
        self._cache[key] = (value, expires)

    def _forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._cache.pop(key, None)

    async def add(self, key: str, amount: int, ttl_seconds: float) -> int:
        self._forget((key,))
        now = self._clock()
        params = {"key": key, "amount": amount, "now": now,
                  "expires": now + ttl_milliseconds(ttl_seconds) / 1000}
        rows = self._run(self._fetch, ADD_SQL, params)
        self._after_write()
        if not rows:
            raise ValueError(f"state key {key!r} holds a value that is not an integer")
        return counter_value(rows[0][0], key)

    async def charge(self, charges: Sequence[Charge], now_us: int, once: str | None = None
                     ) -> tuple[bool, list[int]]:
        if not charges:
            return True, []
        now = self._clock()
        params: list[Any] = [now, now_us]
        for c in charges:
            params += [c.key, c.amount, c.limit, c.bucket,
                       now + ttl_milliseconds(c.ttl_seconds) / 1000]
        self._forget(c.key for c in charges)
        rows = self._run(self._fetch, _charge_sql(len(charges)), params)
        if rows:
            self._after_write()
            after = dict(rows)
            return True, [after[c.key] for c in charges]
        # Refused: nothing was written; say what the keys hold (the refusal's explanation).
        current = await self.get_many([c.key for c in charges])
        return False, [counter_value(v, c.key) for v, c in zip(current, charges, strict=True)]

    def strict(self) -> Store:
        return self

    async def close(self) -> None:
        self._write_pending()  # nothing written is left behind
        if self._maintenance is not None:
            await asyncio.wait([self._maintenance])
        self._db.close()

    async def maintain(self) -> None:
        """Checkpoint and purge now (it also happens by itself after writes)."""
        if self._maintenance is not None:
            await asyncio.wait([self._maintenance])
        await asyncio.get_running_loop().run_in_executor(None, self._maintain, True)

    def count(self) -> int:
        """Return the number of rows, live or expired (for tests and the bench)."""
        return int(self._run(self._fetch, "SELECT count(*) FROM kv", ())[0][0])

    def _write_all(self, rows: list[tuple[str, bytes, float]]) -> None:
        """Write many rows in one transaction, a chunk per statement."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for chunk in _chunks(rows):
                params = [field for row in chunk for field in row]
                self._db.execute(_upsert_sql(len(chunk)), params)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _fetch(self, sql: str, params: Any) -> list[Any]:
        # fetchall() steps the statement to its end, which is what ends its transaction.
        return self._db.execute(sql, params).fetchall()

    def _run(self, statement: Callable[..., T], *args: Any) -> T:
        """Run ``statement``, retrying in short sleeps while another process holds the lock.

        Raises:
            StoreUnavailable: the lock stayed taken past ``lock_timeout``, or SQLite failed
                (disk full, I/O error).
        """
        deadline = 0.0
        pause = 20e-6
        while True:
            try:
                return statement(*args)
            except sqlite3.OperationalError as err:
                if err.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise StoreUnavailable(f"sqlite {self.path}: {err}") from err
                now = time.monotonic()
                if not deadline:
                    deadline = now + self._lock_timeout
                elif now >= deadline:
                    raise StoreUnavailable(
                        f"sqlite {self.path}: still locked after {self._lock_timeout:g} s"
                    ) from err
                time.sleep(pause)
                pause = min(pause * 2, 0.001)
            except sqlite3.DatabaseError as err:
                raise StoreUnavailable(f"sqlite {self.path}: {err}") from err

    def _after_write(self) -> None:
        now = time.monotonic()
        if now < self._next_checkpoint or self._maintenance is not None:
            return
        self._next_checkpoint = now + CHECKPOINT_SECONDS
        purge = now >= self._next_purge
        if purge:
            self._next_purge = now + PURGE_SECONDS
        future = asyncio.get_running_loop().run_in_executor(None, self._maintain, purge)
        self._maintenance = future
        future.add_done_callback(self._maintained)

    def _maintained(self, future: asyncio.Future[None]) -> None:
        self._maintenance = None
        if not future.cancelled() and future.exception() is not None:
            log.warning({"event": "state_maintenance_failed", "backend": self.name,
                         "path": str(self.path), "error": str(future.exception())})

    def _maintain(self, purge: bool) -> None:
        """Checkpoint, and with ``purge`` delete expired and excess rows (runs in a thread)."""
        db = _connect(self.path)
        try:
            db.execute("PRAGMA busy_timeout = 50")
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            if purge:
                self._purge(db)
        except sqlite3.OperationalError as err:
            if err.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            if purge:  # the workers were busy writing: purge again at the next round
                self._next_purge = time.monotonic()
        finally:
            db.close()

    def _purge(self, db: sqlite3.Connection) -> None:
        """Delete expired rows, then the soonest to expire beyond ``max_keys``.

        The victims are chosen by reading (which never blocks the workers in WAL mode), then
        deleted in small write transactions; a row a worker rewrote meanwhile has a new expiry
        and is kept.
        """
        expired = db.execute("SELECT key, expires FROM kv WHERE expires <= ? LIMIT ?",
                             (self._clock(), PURGE_LIMIT)).fetchall()
        self._delete(db, expired)
        excess = db.execute("SELECT count(*) FROM kv").fetchone()[0] - self._max_keys
        if excess > 0:
            soonest = db.execute("SELECT key, expires FROM kv ORDER BY expires LIMIT ?",
                                 (min(excess, PURGE_LIMIT),)).fetchall()
            self._delete(db, soonest)

    def _delete(self, db: sqlite3.Connection, rows: list[tuple[str, float]]) -> None:
        for batch in _chunks(rows, PURGE_BATCH):
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("DELETE FROM kv WHERE key = ? AND expires = ?", batch)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            time.sleep(0.001)  # let the workers' writes in between batches
