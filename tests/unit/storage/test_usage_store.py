"""Usage rows, the audit chain, rollups, retention and reports on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, inspect, text, update

from sluicegate.metering.recorder import UsageRecorder, request_audit
from sluicegate.records import Attempt, AuditEntry, RequestRecord
from sluicegate.storage.batch_writer import PostgresBatchWriter, SqliteBatchWriter
from sluicegate.storage.db import create_engine
from sluicegate.storage.migrations import migrate
from sluicegate.storage.schema import audit_log
from sluicegate.storage.usage import UsageStore, usage_row
from sluicegate.types import Usage
from tests.support.databases import database_url

DAY = 86400.0


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[UsageStore]:
    with database_url(request.param, tmp_path) as url:
        engine = create_engine(url)
        await migrate(engine)
        store = UsageStore(engine)  # SQLite batches go through the writer's own thread
        try:
            yield store
        finally:
            await store.close()
            await engine.dispose()


def rec(i: int, at: float, *, key: str = "key_a", group: str = "eng", model: str = "m1", cost: int = 100,
        status: int = 200) -> RequestRecord:  # fmt: skip
    r = RequestRecord(
        request_id=f"req-{i}",
        key_id=key,
        key_prefix=f"sk-sg-{key}",
        group=group,
        requested_model=model,
        model=model,
        deployment="openai/up",
        stream=True,
        started_at=at,
        status=status,
        outcome="completed" if status == 200 else "failed",
        usage=Usage(prompt_tokens=10, completion_tokens=5, cached_tokens=2),
        attempts=[Attempt(model, "openai/up", True, latency_ms=3.0)],
    )
    r.cost_micro = cost
    return r


async def test_group_commit_writes_everything_in_few_transactions(store: UsageStore) -> None:
    recorder = UsageRecorder(store)
    recorder.start()
    now = time.time()
    await asyncio.gather(*(recorder.record(rec(i, now)) for i in range(200)))
    await recorder.close()
    rows = await store.by_request_ids([f"req-{i}" for i in range(200)])
    assert len(rows) == 200
    assert recorder.batches < 50  # many records per commit
    assert rows[0]["attempts"][0]["deployment"] == "openai/up" and rows[0]["cost_micro"] == 100
    result = await store.verify_audit()
    assert result.ok and result.records == 200


async def test_every_value_comes_back_as_written(store: UsageStore) -> None:
    """Floats bit for bit, booleans, NULLs, quotes, backslashes and non-ASCII text, through either writer
    (PostgreSQL's travels as one JSON document per batch)."""
    r = rec(7, 1764288000.123456789)
    r.user = 'o\'brien "q" \\ 名前 🚀'
    r.partial, r.latency_ms, r.ttft_ms = True, 1234.5678, None
    r.usage = Usage(prompt_tokens=2**31 - 1, completion_tokens=0, estimated=True)
    r.cost_micro = 2**62
    await store.write([usage_row(r)], [request_audit(r)])
    (row,) = await store.by_request_ids(["req-7"])
    assert row["created_at"] == 1764288000.123456789 and row["day"] == "2025-11-28"
    assert row["user_field"] == r.user and row["partial"] is True and row["estimated"] is True
    assert row["stream"] is True and row["ttft_ms"] is None and row["latency_ms"] == 1234.568
    assert row["prompt_tokens"] == 2**31 - 1 and row["cost_micro"] == 2**62
    assert row["attempts"] == [
        {"model": "m1", "deployment": "openai/up", "ok": True, "error_code": None, "status": None, "latency_ms": 3.0}
    ]
    assert (await store.verify_audit()).ok


async def test_audit_verify_detects_edit_delete_and_truncation(store: UsageStore) -> None:
    now = time.time()
    entries = [AuditEntry(now + i, "admin", "admin", "key.create", f"k{i}", {"i": i}) for i in range(5)]
    await store.write([], entries[:3])
    await store.write([], entries[3:])
    assert (await store.verify_audit()).ok
    engine = store._engine
    async with engine.begin() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(target="someone-else"))
    bad = await store.verify_audit()
    assert not bad.ok and bad.seq == 2 and "altered" in (bad.problem or "")
    async with engine.begin() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(target="k1"))
    assert (await store.verify_audit()).ok
    async with engine.begin() as conn:
        await conn.execute(delete(audit_log).where(audit_log.c.seq == 3))
    gone = await store.verify_audit()
    assert not gone.ok and gone.seq == 3
    async with engine.begin() as conn:
        await conn.execute(delete(audit_log).where(audit_log.c.seq >= 3))
    truncated = await store.verify_audit()
    assert not truncated.ok and "head" in (truncated.problem or "")
    async with engine.begin() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == 1).values(payload='{"i":9}'))
    assert not (await store.verify_audit()).ok


async def test_rollup_prune_report_and_spend(store: UsageStore) -> None:
    now = time.time()
    old, yesterday = now - 100 * DAY, now - DAY
    records = [
        rec(1, old, cost=1_000),
        rec(2, old, key="key_b", cost=2_000, model="m2"),
        rec(3, yesterday, cost=300),
        rec(4, yesterday, cost=0, status=502),
        rec(5, now, cost=40),
    ]
    await store.write([usage_row(r) for r in records], [])
    before = {r["key"]: r for r in await store.report("key", now - 200 * DAY)}
    assert before["sk-sg-key_a"]["cost_micro"] == 1_340 and before["sk-sg-key_a"]["requests"] == 4
    assert before["sk-sg-key_a"]["errors"] == 1
    assert await store.spent_since("key", "key_a", 0) == 1_340
    assert await store.spent_since("group", "eng", 0) == 3_340

    rolled = await store.rollup(now)
    assert len(rolled) == 2  # the two complete days; today stays raw
    assert await store.rollup(now) == []  # idempotent
    assert await store.prune(90, now) == 2  # only the 100-day-old rows: rolled up and past retention
    assert not await store.by_request_ids(["req-1", "req-2"])
    # Totals are unchanged by rolling up and pruning.
    after = {r["key"]: r for r in await store.report("key", now - 200 * DAY)}
    assert after == before
    assert await store.spent_since("key", "key_a", 0) == 1_340
    assert await store.spent_since("key", "key_a", now - 2 * DAY) == 340
    by_model = {r["model"]: r["cost_micro"] for r in await store.report("model", now - 200 * DAY)}
    assert by_model == {"m1": 1_340, "m2": 2_000}
    # Rolled-up days count whole: a report from today's UTC midnight sees only today's raw row (an hour ago
    # would, just after midnight, be inside yesterday and include all of it).
    today = now // DAY * DAY
    recent = {r["key"]: r["cost_micro"] for r in await store.report("key", today)}
    assert recent == {"sk-sg-key_a": 40}


async def test_sqlite_batch_never_blocks_the_loop_on_a_held_write_lock(tmp_path: Path) -> None:
    """Another writer holds SQLite's lock: the batch waits on the writer's thread while the loop runs on."""
    url = f"sqlite:///{tmp_path}/usage.db"
    engine = create_engine(url)
    await migrate(engine)
    store = UsageStore(engine)
    writer = store._writer
    assert isinstance(writer, SqliteBatchWriter)
    try:
        now = time.time()
        await store.write([usage_row(rec(1, now))], [])
        assert (writer.written_on_loop, writer.written_on_thread) == (1, 0)

        other = sqlite3.connect(tmp_path / "usage.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # e.g. a CLI command or another worker mid-transaction
        write = asyncio.ensure_future(
            store.write([usage_row(rec(2, now))], [AuditEntry(now, "admin", "a", "x", "t", {})])
        )
        ticks = 0
        for _ in range(20):  # the loop keeps turning while the batch waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert not write.done() and ticks == 20
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(write, 10)
        assert (writer.written_on_loop, writer.written_on_thread) == (1, 1)
        assert len(await store.by_request_ids(["req-1", "req-2"])) == 2
        assert (await store.verify_audit()).ok

        await store.write([usage_row(rec(3, now))], [])  # the lock is free again: back on the loop
        assert writer.written_on_loop == 2
    finally:
        await store.close()
        await engine.dispose()


async def _db_file_size_after_40_batches(db: Path, checkpoint_every: int) -> int:
    engine = create_engine(f"sqlite:///{db}")
    await migrate(engine)
    store = UsageStore(engine)
    assert isinstance(store._writer, SqliteBatchWriter)
    store._writer._checkpoint_every = checkpoint_every
    try:
        now = time.time()
        for i in range(40):
            await store.write([usage_row(rec(i, now))], [])
        writer = store._writer
        assert writer.written_on_loop + writer.written_on_thread == 40
        assert writer.written_on_thread == (40 // (checkpoint_every + 1) if checkpoint_every < 40 else 0)
        # Pages reach the database file itself only through a checkpoint.
        return db.stat().st_size
    finally:
        await store.close()
        await engine.dispose()


async def test_sqlite_checkpoints_run_off_the_loop(tmp_path: Path) -> None:
    """The loop's connection never checkpoints (it would fsync on the loop); the writer's thread does."""
    never = await _db_file_size_after_40_batches(tmp_path / "never.db", checkpoint_every=10**9)
    often = await _db_file_size_after_40_batches(tmp_path / "often.db", checkpoint_every=5)
    assert often > never, (often, never)


async def test_sqlite_wal_stays_bounded_under_steady_writes(tmp_path: Path) -> None:
    """Batches back to back, never a pause: checkpoints still complete, so the WAL restarts instead of growing."""
    db = tmp_path / "usage.db"
    engine = create_engine(f"sqlite:///{db}")
    await migrate(engine)
    store = UsageStore(engine)
    assert isinstance(store._writer, SqliteBatchWriter)
    store._writer._checkpoint_every = 20
    try:
        now = time.time()
        batch = [rec(i, now) for i in range(24)]
        rows, audits = [usage_row(r) for r in batch], [request_audit(r) for r in batch]
        for _ in range(600):  # ~600 commits x ~15 pages: ~36 MB of WAL if it never restarted
            await store.write(rows, audits)
        wal = Path(f"{db}-wal").stat().st_size
        assert wal < 8_000_000, wal  # about 20 commits' worth, reused
    finally:
        await store.close()
        await engine.dispose()


@pytest.mark.parametrize("engine_name", ["sqlite", "postgres"])
async def test_migration_0004_drops_the_indexes_every_commit_paid_for(engine_name: str, tmp_path: Path) -> None:
    """A database from before 0004 (request-id and day indexes on usage) loses them; a new one never has them."""
    with database_url(engine_name, tmp_path) as url:
        engine = create_engine(url)
        try:
            await migrate(engine)

            async def usage_indexes() -> set[str]:
                async with engine.connect() as conn:
                    return await conn.run_sync(lambda c: {ix["name"] for ix in inspect(c).get_indexes("usage")})

            lean = {"ix_usage_created", "ix_usage_key_created", "ix_usage_group_created"}
            assert await usage_indexes() == lean
            async with engine.begin() as conn:  # as 0002 created them in earlier releases
                await conn.execute(text("CREATE INDEX ix_usage_request ON usage (request_id)"))
                await conn.execute(text("CREATE INDEX ix_usage_day ON usage (day)"))
                await conn.execute(text("DELETE FROM schema_migrations WHERE version = '0004'"))
            assert await migrate(engine) == ["0004"]
            assert await usage_indexes() == lean
        finally:
            await engine.dispose()


async def test_postgres_writers_on_two_replicas_extend_one_chain(tmp_path: Path) -> None:
    """Each writer remembers the head it wrote last; when the other one moved it, the guarded one-statement
    batch writes nothing and the locked path appends instead. The chain and the rows stay complete."""
    with database_url("postgres", tmp_path) as url:
        engines = [create_engine(url), create_engine(url)]
        try:
            await migrate(engines[0])
            stores = [UsageStore(e) for e in engines]
            writers = [s._writer for s in stores]
            assert all(isinstance(w, PostgresBatchWriter) for w in writers)
            now = time.time()
            n = 0
            for turn in [0, 0, 0, 1, 1, 0, 1, 0, 0]:
                batch = [rec(n + i, now) for i in range(3)]
                n += 3
                await stores[turn].write([usage_row(r) for r in batch], [request_audit(r) for r in batch])
            a, b = writers
            assert isinstance(a, PostgresBatchWriter) and isinstance(b, PostgresBatchWriter)
            # Writer 0: first batch locked, two fast; after writer 1 moved the head, locked again, etc.
            assert (a.locked_batches, a.fast_batches) == (3, 3)
            assert (b.locked_batches, b.fast_batches) == (2, 1)
            result = await stores[0].verify_audit()
            assert result.ok and result.records == n
            assert len(await stores[1].by_request_ids([f"req-{i}" for i in range(n)])) == n
            for s in stores:
                await s.close()
        finally:
            for e in engines:
                await e.dispose()


async def test_under_load_the_writer_waits_one_loop_turn_for_more_records(store: UsageStore) -> None:
    """After a large commit the writer lets one more loop turn's records join the next one; a lone request
    (after a small commit) is written at once."""
    recorder = UsageRecorder(store)
    recorder.start()
    now = time.time()

    async def after_turns(i: int, turns: int) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)
        await recorder.record(rec(i, now))

    await recorder.record(rec(0, now))  # quiet: a commit of one
    quiet = recorder.batches
    await asyncio.gather(after_turns(1, 0), after_turns(2, 1))
    assert recorder.batches == quiet + 2  # no lingering after a small commit: each went on its own

    await asyncio.gather(*(recorder.record(rec(10 + i, now)) for i in range(10)))  # busy: a commit of ten
    busy = recorder.batches
    await asyncio.gather(after_turns(100, 0), after_turns(101, 1))
    assert recorder.batches == busy + 1  # the second joined the first's commit
    await recorder.close()
    assert len(await store.by_request_ids([f"req-{i}" for i in (0, 1, 2, 100, 101)])) == 5


async def test_a_cancelled_request_still_gets_its_record_and_failures_reach_every_waiter(
    store: UsageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that disconnects while its record commits cancels only its own wait; a failed commit is
    reported to every request of the batch."""
    recorder = UsageRecorder(store)
    recorder.start()
    now = time.time()
    waiters = [asyncio.create_task(recorder.record(rec(i, now))) for i in range(3)]
    await asyncio.sleep(0)  # all three are queued for the same commit
    waiters[1].cancel()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert [type(r) for r in (results[0], results[2])] == [type(None)] * 2
    assert len(await store.by_request_ids(["req-0", "req-1", "req-2"])) == 3

    async def broken(rows: Any, audits: Any) -> None:
        raise RuntimeError("disk gone")

    monkeypatch.setattr(store, "write", broken)
    monkeypatch.setattr("sluicegate.metering.recorder._RETRIES", 1)
    failed = await asyncio.gather(*(recorder.record(rec(10 + i, now)) for i in range(2)), return_exceptions=True)
    assert [str(e) for e in failed] == ["disk gone", "disk gone"]
    assert recorder.failures == 2
    await recorder.close()


async def test_a_burst_is_committed_in_parts_with_the_loop_running_between(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/usage.db"
    engine = create_engine(url)
    await migrate(engine)
    store = UsageStore(engine)
    writer = store._writer
    assert isinstance(writer, SqliteBatchWriter)
    writer.max_loop_batch = 100
    try:
        now = time.time()
        records = [rec(i, now) for i in range(350)]
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        start = ticks
        await store.write([usage_row(r) for r in records], [request_audit(r) for r in records])
        task.cancel()
        assert writer.written_on_loop == 4  # 100 + 100 + 100 + 50
        assert ticks - start >= 3  # the loop turned between the commits
        assert len(await store.by_request_ids([f"req-{i}" for i in range(350)])) == 350
        result = await store.verify_audit()
        assert result.ok and result.records == 350
    finally:
        await store.close()
        await engine.dispose()


@pytest.fixture
async def pg_store(tmp_path: Path) -> AsyncIterator[tuple[UsageStore, PostgresBatchWriter]]:
    with database_url("postgres", tmp_path) as url:
        engine = create_engine(url)
        try:
            await migrate(engine)
            store = UsageStore(engine)
            assert isinstance(store._writer, PostgresBatchWriter)
            yield store, store._writer
            await store.close()
        finally:
            await engine.dispose()


class WritesInFlight:
    """Wraps a writer's ``write`` to count the batches in flight and their sizes, optionally delaying each;
    instrumentation only: the real write runs."""

    def __init__(self, writer: PostgresBatchWriter, delay: float = 0.0) -> None:
        self.now = self.peak = 0
        self.sizes: list[int] = []
        self._write = writer.write
        self._delay = delay
        writer.write = self  # type: ignore[method-assign]

    async def __call__(self, rows: Any, audits: Any) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        self.sizes.append(len(rows))
        try:
            if self._delay:
                await asyncio.sleep(self._delay)
            await self._write(rows, audits)
        finally:
            self.now -= 1


async def test_postgres_pipelined_commits_keep_the_chain_whole(
    pg_store: tuple[UsageStore, PostgresBatchWriter],
) -> None:
    """Two batches commit at once on PostgreSQL; the second chains to the head the first leaves."""
    store, writer = pg_store
    assert store.max_in_flight == 2
    writes = WritesInFlight(writer)
    recorder = UsageRecorder(store)
    recorder.start()
    now = time.time()

    async def wave(w: int) -> None:
        await asyncio.sleep(0.001 * (w % 3))
        await asyncio.gather(*(recorder.record(rec(w * 100 + i, now)) for i in range(20)))

    await asyncio.gather(*(wave(w) for w in range(30)))
    await recorder.close()
    assert writes.peak == 2  # batches did overlap, never more than two
    assert writer.fast_batches > 0
    result = await store.verify_audit()
    assert result.ok and result.records == 600
    ids = [f"req-{w * 100 + i}" for w in range(30) for i in range(20)]
    assert len(await store.by_request_ids(ids)) == 600


async def test_postgres_writer_replaces_a_connection_the_server_dropped(
    pg_store: tuple[UsageStore, PostgresBatchWriter],
) -> None:
    """The writer keeps its connections between batches; one the server killed is thrown away and the
    recorder's retry lands the batch on a new one: no record lost, the chain whole."""
    store, writer = pg_store
    recorder = UsageRecorder(store)
    recorder.start()
    now = time.time()
    await recorder.record(rec(0, now))
    ((conn, db),) = writer._spare
    pid = db.get_server_pid()
    other = await conn.engine.connect()
    try:
        assert (await other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})).scalar()
    finally:
        await other.close()
    await recorder.record(rec(1, now))
    await recorder.close()
    assert recorder.failures == 0
    ((_, db),) = writer._spare
    assert db.get_server_pid() != pid
    assert len(await store.by_request_ids(["req-0", "req-1"])) == 2
    result = await store.verify_audit()
    assert result.ok and result.records == 2


async def test_postgres_batch_that_overtakes_the_one_it_chains_to_waits_for_it_and_retries(
    pg_store: tuple[UsageStore, PostgresBatchWriter],
) -> None:
    """Two commits in flight run on two connections; when the second one's statement reaches the server first,
    its guard fails, and it retries once the first has landed instead of taking the locked path."""
    store, writer = pg_store
    now = time.time()
    first = rec(0, now)
    await store.write([usage_row(first)], [request_audit(first)])  # reads the head: the locked path
    assert (writer.locked_batches, writer.fast_batches) == (1, 0)
    write = writer._write
    calls = 0

    async def first_one_late(*args: Any) -> bool:  # timing only: the real statements run
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.2)  # the first batch's statement reaches the server after the second's
        return await write(*args)

    writer._write = first_one_late  # type: ignore[method-assign]
    a, b = [rec(1, now), rec(2, now)], [rec(3, now)]
    await asyncio.gather(
        store.write([usage_row(r) for r in a], [request_audit(r) for r in a]),
        store.write([usage_row(r) for r in b], [request_audit(r) for r in b]),
    )
    assert (writer.locked_batches, writer.fast_batches, writer.retried_batches) == (1, 2, 1)
    result = await store.verify_audit()
    assert result.ok and result.records == 4
    assert len(await store.by_request_ids([f"req-{i}" for i in range(4)])) == 4


async def test_postgres_second_commit_starts_only_for_enough_waiting_records(
    pg_store: tuple[UsageStore, PostgresBatchWriter],
) -> None:
    """While one commit is in flight, a few waiting records join the next commit after it lands (a commit's
    fixed cost is not paid per record); a backlog of eight or more starts the second commit at once."""
    store, writer = pg_store
    writes = WritesInFlight(writer, delay=0.1)
    recorder = UsageRecorder(store)
    recorder.start()
    now = time.time()

    async def later(i: int, delay: float) -> None:
        await asyncio.sleep(delay)
        await recorder.record(rec(i, now))

    await asyncio.gather(later(0, 0), *(later(i, 0.01 * i) for i in range(1, 4)))
    assert writes.sizes == [1, 3] and writes.peak == 1  # three stragglers waited for the first commit, then together
    writes.sizes.clear()
    await asyncio.gather(later(10, 0), *(later(11 + i, 0.02) for i in range(9)))
    assert writes.sizes == [1, 9] and writes.peak == 2  # a backlog of nine did not wait
    await recorder.close()
    assert (await store.verify_audit()).ok
