"""Usage rows, the audit chain, rollups, retention and reports on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete, update

from sluicegate.metering.audit import AuditEntry
from sluicegate.metering.record import Attempt, RequestRecord
from sluicegate.metering.recorder import UsageRecorder
from sluicegate.metering.usage_store import UsageStore, usage_row
from sluicegate.storage.db import create_engine
from sluicegate.storage.migrations import migrate
from sluicegate.storage.schema import audit_log
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
            store.close()
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
    recent = {r["key"]: r["cost_micro"] for r in await store.report("key", now - 3600)}
    assert recent == {"sk-sg-key_a": 40}
