"""The group commit's one transaction: a batch of usage rows and audit entries, through the driver itself.

This is the only per-request database work, so it skips SQLAlchemy's statement compilation and parameter
processing (measured: 43 µs per request through SQLAlchemy Core against 25 µs for the same batch through
``sqlite3``): rows arrive as tuples in column order and the statements are fixed strings: ``executemany``
on SQLite, one JSON array of rows per table on PostgreSQL. Reads, reports, rollups, migrations stay on SQLAlchemy.

SQLite: ``sqlite3`` connections of our own (``SqliteBatchWriter`` says which thread writes). PostgreSQL:
asyncpg connections the writer keeps checked out of the engine's pool; a batch is one statement when it can be.
A batch the store refuses for a value it holds is written apart (``isolation.py``), on both stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..records import AuditEntry
from .audit import chain
from .db import sqlite_pragmas
from .isolation import RecordsLost, Tally, is_record_error, write_apart
from .sanitize import USAGE_COLUMNS

AUDIT_COLUMNS = ("seq", "created_at", "kind", "actor", "action", "target", "payload", "prev_hash", "hash")

UsageRow = tuple[Any, ...]

log = logging.getLogger("sluicegate.metering")


def _insert(table: str, columns: Sequence[str], placeholders: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(placeholders)})"


_SQLITE_USAGE = _insert("usage", USAGE_COLUMNS, ["?"] * len(USAGE_COLUMNS))
_SQLITE_AUDIT = _insert("audit_log", AUDIT_COLUMNS, ["?"] * len(AUDIT_COLUMNS))


class SqliteBatchWriter:
    """Batches into one SQLite file: on the event loop when the write lock is free, else on our own thread.

    A batch written from another thread cost more than the write itself: the sqlite3 module releases the
    GIL around every row's step, so on a busy core each row became two thread hand-offs. Written on the
    loop, a batch of 32 is ~0.5 ms of CPU, once. The loop must never wait for a lock, though: its
    connection has no busy timeout, and a batch that finds the lock taken (another process, a CLI
    command, an admin write in flight) goes to the thread's connection, which waits as long as it must.
    Checkpoints, which fsync, run on that thread too, never on the loop: every ``checkpoint_every``-th batch
    is written there followed by a checkpoint, with no other batch in between, so the checkpoint completes
    and the WAL restarts (~20 MB of WAL under load; hot index pages rewritten by many commits copied once).
    """

    max_in_flight = 1  # one writer at a time, and the loop's writes are synchronous anyway

    def __init__(self, path: str, *, checkpoint_every: int = 256) -> None:
        self._path = path
        self._loop_db: sqlite3.Connection | None = None
        self._thread_db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sluicegate-usage")
        self._checkpoint_every = checkpoint_every
        self._since_checkpoint = 0
        self.max_loop_batch = 500  # records per commit (about 6 ms of CPU)
        self.written_on_loop = 0  # commits, for tests and diagnostics
        self.written_on_thread = 0
        self.tally = Tally()

    async def write(self, rows: Sequence[UsageRow], audits: Sequence[AuditEntry]) -> None:
        # A burst (thousands of streams ending together) makes a batch of thousands: written on the loop in
        # one go it would stall every stream for tens of ms. Commits of at most ``max_loop_batch`` records,
        # with a loop turn between them, bound the stall to a few ms.
        step = self.max_loop_batch
        lost_rows: list[int] = []
        lost_audits: list[int] = []
        first_loss: BaseException | None = None
        for start in range(0, max(len(rows), len(audits)), step):
            if start:
                await asyncio.sleep(0)
            part_rows, part_audits = rows[start : start + step], audits[start : start + step]
            try:
                await self._write_part(part_rows, part_audits)
            except Exception as exc:
                if not is_record_error(exc):
                    raise
                lost = await write_apart(self._write_part, part_rows, part_audits, exc, self.tally)
                lost_rows.extend(start + i for i in lost[0])
                lost_audits.extend(start + i for i in lost[1])
                first_loss = first_loss or (exc if lost_rows or lost_audits else None)
        if first_loss is not None:
            raise RecordsLost(lost_rows, lost_audits, first_loss)

    async def _write_part(self, rows: Sequence[UsageRow], audits: Sequence[AuditEntry]) -> None:
        loop = asyncio.get_running_loop()
        db = self._loop_db
        if db is None:
            db = self._loop_db = self._connect(busy_timeout_ms=0)
            # This connection never checkpoints: a checkpoint fsyncs, which would stall the loop.
            db.execute("PRAGMA wal_autocheckpoint=0")
        if self._since_checkpoint >= self._checkpoint_every:
            # This batch and a checkpoint, on the thread, while no other batch is written: a checkpoint racing
            # a writer never catches up with it, and a WAL that is never fully checkpointed never restarts
            # (it grew without bound under steady load when the checkpoint ran beside the loop's writes).
            self._since_checkpoint = 0
            await loop.run_in_executor(self._thread, self._write_on_thread, rows, audits, True)
            self.written_on_thread += 1
            return
        try:
            _write_sqlite(db, rows, audits)
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
            await loop.run_in_executor(self._thread, self._write_on_thread, rows, audits, False)
            self.written_on_thread += 1
            return
        self.written_on_loop += 1
        self._since_checkpoint += 1

    def _connect(self, *, busy_timeout_ms: int) -> sqlite3.Connection:
        # isolation_level=None: the transaction in _write_sqlite is ours, not the module's implicit one.
        db = sqlite3.connect(self._path, timeout=30, isolation_level=None, check_same_thread=False)
        sqlite_pragmas(db, None)
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        return db

    def _thread_conn(self) -> sqlite3.Connection:
        if self._thread_db is None:
            self._thread_db = self._connect(busy_timeout_ms=30_000)
        return self._thread_db

    def _write_on_thread(self, rows: Sequence[UsageRow], audits: Sequence[AuditEntry], checkpoint: bool) -> None:
        db = self._thread_conn()
        _write_sqlite(db, rows, audits)
        if checkpoint:
            try:
                # PASSIVE: copy what no reader still needs; never waits for readers or other writers.
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # the batch is committed; the next checkpoint tries again
                log.warning("WAL checkpoint failed (the next one retries): %s", exc)

    async def close(self) -> None:
        self._thread.shutdown(wait=True)
        for db in (self._loop_db, self._thread_db):
            if db is not None:
                db.close()
        self._loop_db = self._thread_db = None


def _locked(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or (
        "locked" in str(exc)
    )


def _write_sqlite(db: sqlite3.Connection, rows: Sequence[UsageRow], audits: Sequence[AuditEntry]) -> None:
    # IMMEDIATE: take the write lock first (or fail at once), so the chain head read below cannot go stale.
    db.execute("BEGIN IMMEDIATE")
    try:
        if rows:
            db.executemany(_SQLITE_USAGE, rows)
        if audits:
            ((seq, prev),) = db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchall()
            linked, seq, prev = chain(int(seq), str(prev), audits)
            db.executemany(_SQLITE_AUDIT, linked)
            db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


# PostgreSQL types of the columns, cast from the batch's JSON.
_PG_USAGE_TYPES = (
    "text", "float8", "text", "text", "text", "text", "text", "text", "text", "bool", "int4", "text", "text",
    "bool", "bool", "int4", "int4", "int4", "int4", "int4", "int8", "float8", "float8", "text", "json",
)  # fmt: skip
_PG_AUDIT_TYPES = ("int8", "float8", "text", "text", "text", "text", "text", "text", "text")


def _json_insert(table: str, columns: Sequence[str], types: Sequence[str], param: int, guard: str) -> str:
    """Insert the rows of one jsonb parameter: an array of rows, each an array in column order.

    One JSON text per batch instead of one array per column: asyncpg encodes an array element by element
    with abstract-base-class checks on each (measured: ~90 µs of the gateway's CPU per usage row on the CI
    machine, more than the rest of accounting), while orjson writes the whole batch in microseconds.
    jsonb keeps numbers as written, so floats come back bit for bit.
    """
    fields = ", ".join(f"(r->>{i})::{t}" for i, t in enumerate(types))
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"SELECT {fields} FROM jsonb_array_elements(${param}::jsonb) AS r WHERE {guard}"
    )


# The whole batch in one statement, so one round trip, atomic on its own: it writes only if the chain's
# head is still the one this process wrote last (seq $1, hash $2), locking it for the statement; when
# another writer (a replica, a worker, the CLI) moved the head, it writes nothing and returns 0.
_PG_BATCH = f"""
WITH head AS (SELECT 1 FROM audit_head WHERE id = 1 AND seq = $1 AND hash = $2 FOR UPDATE),
moved AS (UPDATE audit_head SET seq = $3, hash = $4 WHERE id = 1 AND EXISTS (SELECT 1 FROM head) RETURNING 1),
audits AS ({_json_insert("audit_log", AUDIT_COLUMNS, _PG_AUDIT_TYPES, 5, "EXISTS (SELECT 1 FROM head)")}),
usage_rows AS ({_json_insert("usage", USAGE_COLUMNS, _PG_USAGE_TYPES, 6, "EXISTS (SELECT 1 FROM head)")})
SELECT count(*) FROM moved
"""
_PG_USAGE_ONLY = _json_insert("usage", USAGE_COLUMNS, _PG_USAGE_TYPES, 1, "true")
_PG_AUDIT_ONLY = _json_insert("audit_log", AUDIT_COLUMNS, _PG_AUDIT_TYPES, 1, "true")


def _json(rows: Sequence[tuple[Any, ...]]) -> str:
    return orjson.dumps(rows).decode()


async def _append_locked(db: Any, rows: Sequence[UsageRow], audits: Sequence[AuditEntry]) -> tuple[int, str]:
    """Rows and audit entries in one transaction that locks the chain's head, reads it and appends; the new head."""
    async with db.transaction():
        if rows:
            await db.execute(_PG_USAGE_ONLY, _json(rows))
        # FOR UPDATE: replicas appending at the same time extend the one chain in turn.
        head = await db.fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
        linked, seq, prev = chain(int(head["seq"]), str(head["hash"]), audits)
        await db.execute(_PG_AUDIT_ONLY, _json(linked))
        await db.execute("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", seq, prev)
    return seq, prev


class PostgresBatchWriter:
    """Batches on asyncpg connections it keeps checked out of the engine's pool, in one round trip.

    The chain's head this process expects next is remembered, so the audit hashes are computed before the
    statement and the batch is one guarded statement. Two batches may be in flight: the second is chained
    to the head the first will leave, and its guard waits on the head row's lock until the first commits.
    When its statement reaches the server before the first's, its guard writes nothing; it waits for the
    first to land and tries once more. Whenever a guess is wrong otherwise (another writer moved the head, a
    batch failed), the guarded statement writes nothing and that batch takes the slow path: a transaction that
    locks the head, reads it and appends. Every append is either guarded or locked, so the chain stays whole.
    """

    max_in_flight = 2

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._head: tuple[int, str] | None = None  # (seq, hash) the next batch is expected to follow
        self._in_flight = 0
        self._idle = asyncio.Event()
        # Connections this writer holds checked out of the engine's pool for its lifetime (at most
        # ``max_in_flight``): a checkout per batch went through SQLAlchemy's greenlet bridge, measured at
        # ~10 % of the accounting path's CPU with small batches.
        self._spare: list[tuple[AsyncConnection, Any]] = []
        self._landing: asyncio.Future[bool] | None = None  # whether the last claimed batch landed on its claim
        self.fast_batches = 0  # for tests and diagnostics
        self.locked_batches = 0
        self.retried_batches = 0  # fast after waiting for the batch before them (see ``_write``)
        self.tally = Tally()

    async def write(self, rows: Sequence[UsageRow], audits: Sequence[AuditEntry]) -> None:
        try:
            await self._write_batch(rows, audits)
        except Exception as exc:
            if not is_record_error(exc):
                raise
            # Apart, each part under the head's lock: ``_write_batch`` forgot the head when it failed, so batches
            # that follow take the locked path too, or guess from a head a guard checks.
            lost_rows, lost_audits = await write_apart(self._write_locked, rows, audits, exc, self.tally)
            if lost_rows or lost_audits:
                raise RecordsLost(lost_rows, lost_audits, exc) from exc

    async def _write_batch(self, rows: Sequence[UsageRow], audits: Sequence[AuditEntry]) -> None:
        while audits and self._head is None and self._in_flight:
            await self._idle.wait()  # the head is unknown: let the writes in flight land, then read it
        guess = self._head if audits else None
        claim: tuple[list[tuple[Any, ...]], int, str] | None = None
        prior: asyncio.Future[bool] | None = None
        landing: asyncio.Future[bool] | None = None
        if guess is not None:
            # Claimed before the first await: a batch dispatched meanwhile chains to this one.
            claim = chain(guess[0], guess[1], audits)
            self._head = (claim[1], claim[2])
            if self._landing is not None and not self._landing.done():
                prior = self._landing  # the batch in flight whose claimed head this one chains to
            landing = self._landing = asyncio.get_running_loop().create_future()
        self._in_flight += 1
        self._idle.clear()
        landed = False
        try:
            landed = await self._write(rows, audits, guess, claim, prior)
        except BaseException:
            if audits:
                self._head = None  # unknown now: the next batch reads it under the lock
            raise
        finally:
            if landing is not None:
                landing.set_result(landed)
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """One of the asyncpg connections this writer keeps; one that failed is thrown away, not kept."""
        if self._spare:
            held = self._spare.pop()
        else:
            conn = await self._engine.connect()
            held = (conn, (await conn.get_raw_connection()).driver_connection)
        try:
            yield held[1]
        except BaseException:
            # Broken, cancelled mid-statement or refused: whatever state it is in, it is not reused.
            with contextlib.suppress(Exception):
                await held[0].invalidate()
            with contextlib.suppress(Exception):
                await held[0].close()
            raise
        self._spare.append(held)

    async def _write(
        self,
        rows: Sequence[UsageRow],
        audits: Sequence[AuditEntry],
        guess: tuple[int, str] | None,
        claim: tuple[list[tuple[Any, ...]], int, str] | None,
        prior: asyncio.Future[bool] | None,
    ) -> bool:
        """Write the batch; True when it landed on the head it claimed (the next batch's guess holds)."""
        async with self._connection() as db:
            if not audits:
                if rows:
                    await db.execute(_PG_USAGE_ONLY, _json(rows))
                return False
            if guess is not None and claim is not None:
                linked, new_seq, new_hash = claim
                args = (guess[0], guess[1], new_seq, new_hash, _json(linked), _json(rows))
                if await db.fetchval(_PG_BATCH, *args) == 1:
                    self.fast_batches += 1
                    return True
                # Two connections: this batch's statement may have run before that of the batch it chains to. Once
                # that one landed, the head is the one expected: one more round trip, not the locked path's four.
                if prior is not None and await prior and await db.fetchval(_PG_BATCH, *args) == 1:
                    self.fast_batches += 1
                    self.retried_batches += 1
                    return True
                self._head = None  # the guess was wrong: later batches wait for this one to land
            self._head = await _append_locked(db, rows, audits)
            self.locked_batches += 1
            return False  # chained to the head it read, not to its claim: a batch that guessed from the claim is wrong

    async def _write_locked(self, rows: Sequence[UsageRow], audits: Sequence[AuditEntry]) -> None:
        """One part of a refused batch (``write_apart``): its own transaction, chained under the head's lock."""
        async with self._connection() as db:
            if audits:
                await _append_locked(db, rows, audits)
            elif rows:
                await db.execute(_PG_USAGE_ONLY, _json(rows))

    async def close(self) -> None:
        while self._spare:
            conn, _ = self._spare.pop()
            with contextlib.suppress(Exception):
                await conn.close()
