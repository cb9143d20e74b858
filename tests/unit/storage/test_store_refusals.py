"""No record loses its place because of a value the store refuses (issues 23 and 24), on SQLite and PostgreSQL.

Against the real writers and real databases: values that used to fail a whole group commit are cleaned when the
record is built; a record the store refuses all the same (a value that bypasses that cleaning, or a database that
refuses what the cleaning lets through) is isolated, its batch-mates written, itself written in its last-resort
form, and the audit chain stays verifiable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sluicegate.metering.recorder import UsageRecorder, request_audit
from sluicegate.records import Attempt, AuditEntry, RequestRecord
from sluicegate.storage.db import create_engine
from sluicegate.storage.isolation import RecordsLost
from sluicegate.storage.migrations import migrate
from sluicegate.storage.sanitize import USAGE_COLUMNS, clean_text, last_resort_row
from sluicegate.storage.schema import usage
from sluicegate.storage.usage import UsageStore, usage_row
from sluicegate.types import Usage
from tests.support.databases import database_url

NUL_CODE = "x" * 100 + "\x00" + "y" * 99  # an upstream error code: over the 80-character column, with a NUL


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[UsageStore]:
    with database_url(request.param, tmp_path) as url:
        engine = create_engine(url)
        await migrate(engine)
        store = UsageStore(engine)
        try:
            yield store
        finally:
            await store.close()
            await engine.dispose()


def is_postgres(store: UsageStore) -> bool:
    return store._engine.dialect.name == "postgresql"


def rec(i: int, **changes: Any) -> RequestRecord:
    r = RequestRecord(
        request_id=f"req-{i}",
        key_id="key_a",
        key_prefix="sk-sg-key_a",
        group="eng",
        requested_model="m1",
        model="m1",
        deployment="openai/up",
        stream=False,
        started_at=time.time(),
        user=f"user-{i}",
        status=200,
        outcome="completed",
        usage=Usage(prompt_tokens=10, completion_tokens=5),
        attempts=[Attempt("m1", "openai/up", True, latency_ms=3.0)],
        metadata={"team": "search", "n": str(i)},
    )
    r.cost_micro = 100
    for name, value in changes.items():
        setattr(r, name, value)
    return r


async def refuse_in_store(store: UsageStore, name: str, sqlite_when: str, postgres_check: str) -> None:
    """Make the database itself refuse some usage rows, whatever the gateway cleaned: a CHECK constraint on
    PostgreSQL, a trigger on SQLite (which cannot add constraints to a table)."""
    async with store._engine.begin() as conn:
        if is_postgres(store):
            await conn.execute(text(f"ALTER TABLE usage ADD CONSTRAINT {name} CHECK ({postgres_check})"))
        else:
            await conn.execute(
                text(
                    f"CREATE TRIGGER {name} BEFORE INSERT ON usage WHEN {sqlite_when} "
                    f"BEGIN SELECT RAISE(ABORT, '{name}'); END"
                )
            )


async def counts(store: UsageStore, n: int) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Usage rows and request audit payloads of req-0 .. req-(n-1), by request id."""
    rows = {r["request_id"]: r for r in await store.by_request_ids([f"req-{i}" for i in range(n)])}
    entries = await store.audit_entries(limit=10 * n, kind="request")
    audits = {p["request_id"]: p for p in (json.loads(e["payload"]) for e in entries)}
    return rows, audits


def test_every_usage_column_has_a_rule() -> None:
    """The cleaning reads the schema: every column of ``usage`` the writer fills is in the row it cleans."""
    assert set(USAGE_COLUMNS) == {c.name for c in usage.c} - {"id"}
    assert clean_text("fine", 10) == "fine"
    assert clean_text(NUL_CODE, 80) == "x" * 66 + "...[truncated]"
    assert clean_text("lone \ud800 surrogate\x00", None) == "lone \ufffd surrogate"


async def test_values_that_failed_a_batch_are_cleaned_when_the_record_is_built(store: UsageStore) -> None:
    """A NUL in ``user``, an upstream error code of 200 characters with a NUL or a lone surrogate, counts past
    int4, config texts longer than their columns: in one batch of 50, every record is written, cleaned."""
    bad = {
        3: {"user": "nul\x00user"},
        11: {"error_code": NUL_CODE, "status": 400, "outcome": "failed",
             "attempts": [Attempt("m1", "openai/up", False, NUL_CODE, 400)]},
        19: {"error_code": "lone \ud800 surrogate", "status": 400, "outcome": "failed"},
        27: {"usage": Usage(prompt_tokens=2**40, completion_tokens=2**31), "cost_micro": 2**70},
        35: {"model": "m" * 250, "deployment": "d" * 400},
    }  # fmt: skip
    recorder = UsageRecorder(store)
    recorder.start()
    await asyncio.gather(*(recorder.record(rec(i, **bad.get(i, {}))) for i in range(50)))
    await recorder.close()
    assert recorder.failures == 0 and store.tally.isolated_batches == 0  # cleaned, not isolated
    rows, audits = await counts(store, 50)
    assert len(rows) == 50 and len(audits) == 50
    assert rows["req-3"]["user_field"] == "nuluser" and rows["req-4"]["user_field"] == "user-4"
    assert rows["req-11"]["error_code"] == "x" * 66 + "...[truncated]" == audits["req-11"]["error_code"]
    assert rows["req-11"]["attempts"][0]["error_code"] == "x" * 66 + "...[truncated]"
    assert rows["req-19"]["error_code"] == "lone \ufffd surrogate"
    assert (rows["req-27"]["prompt_tokens"], rows["req-27"]["cost_micro"]) == (2**31 - 1, 2**63 - 1)
    assert len(rows["req-35"]["model"]) == 200 and len(rows["req-35"]["deployment"]) == 300
    result = await store.verify_audit()
    assert result.ok and result.records == 50


async def test_a_refused_record_in_a_batch_of_50_is_isolated_and_written_in_its_last_resort_form(
    store: UsageStore,
) -> None:
    """Values that bypass the record's cleaning (set on the built row): the batch fails, its records are written
    apart, the refused ones in their last-resort form; 50 usage rows, 50 audit entries, a chain that verifies."""
    records = [rec(i) for i in range(50)]
    rows = [list(usage_row(r)) for r in records]
    audits = [request_audit(r) for r in records]
    user, prompt_tokens = USAGE_COLUMNS.index("user_field"), USAGE_COLUMNS.index("prompt_tokens")
    rows[7][user] = "lone \ud800 surrogate"  # neither sqlite3 nor orjson can encode it
    rows[31][prompt_tokens] = 2**64  # past any integer column
    # Not a float: fails the chain's hash (on either store), so the batch fails before any statement.
    audits[20] = audits[20]._replace(created_at=None)  # type: ignore[arg-type]
    salvaged = 3
    if is_postgres(store):
        rows[40][user] = "nul\x00user"  # PostgreSQL's refusal (issue 23): a NUL in text or jsonb
        rows[45][USAGE_COLUMNS.index("error_code")] = NUL_CODE  # and a varchar(80) too long (issue 24)
        salvaged += 2
    await store.write([tuple(r) for r in rows], audits)

    assert store.tally.isolated_batches == 1 and store.tally.salvaged == salvaged and store.tally.lost == 0
    got, payloads = await counts(store, 50)
    assert len(got) == 50 and len(payloads) == 50
    assert got["req-7"]["user_field"] == "lone \\ufffd surrogate" and got["req-31"]["prompt_tokens"] == 2**31 - 1
    assert got["req-8"]["user_field"] == "user-8"  # its neighbours as they were
    # The entry that failed is recorded, marked, without the client's free-form fields.
    assert payloads["req-20"]["last_resort"] == {"error": "TypeError", "dropped": ["metadata"]}
    assert "metadata" not in payloads["req-20"] and payloads["req-21"]["metadata"] == {"team": "search", "n": "21"}
    if is_postgres(store):
        assert got["req-40"]["user_field"] == "nuluser"
        assert got["req-45"]["error_code"] == "x" * 66 + "...[truncated]"
    result = await store.verify_audit()
    assert result.ok and result.records == 50


async def test_batches_with_records_the_database_refuses_keep_every_record_and_the_chain(store: UsageStore) -> None:
    """A database that refuses non-ASCII users (as a LATIN1 or SQL_ASCII database refuses other scripts): through
    the recorder, concurrent batches (two in flight on PostgreSQL) with refused records among them and admin
    entries in the same chain. Every request gets its record, the refused ones in ASCII."""
    await refuse_in_store(store, "ascii_user", "NEW.user_field GLOB '*[^ -~]*'", "user_field ~ '^[ -~]*$'")
    recorder = UsageRecorder(store)
    recorder.start()
    calls = [recorder.record(rec(i, user=f"名前-{i}" if i % 10 == 3 else f"user-{i}")) for i in range(200)]
    calls += [recorder.audit(AuditEntry(time.time(), "admin", "admin", "key.create", f"k{i}", {})) for i in range(5)]
    await asyncio.gather(*calls)
    await recorder.close()
    assert recorder.failures == 0 and store.tally.salvaged == 20 and store.tally.lost == 0
    rows, audits = await counts(store, 200)
    assert len(rows) == 200 and len(audits) == 200
    assert rows["req-13"]["user_field"] == "\\u540d\\u524d-13" and rows["req-14"]["user_field"] == "user-14"
    result = await store.verify_audit()
    assert result.ok and result.records == 205


async def test_a_record_refused_in_every_form_fails_only_its_own_request(
    store: UsageStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The last resort refused too: that request learns it has no usage row (and it is logged as LOST); the 49
    others and all 50 audit entries are written, once each, and the chain verifies."""
    await refuse_in_store(store, "doomed", "NEW.request_id = 'req-17'", "request_id <> 'req-17'")
    recorder = UsageRecorder(store)
    recorder.start()
    with caplog.at_level(logging.ERROR, "sluicegate.metering"):
        results = await asyncio.gather(*(recorder.record(rec(i)) for i in range(50)), return_exceptions=True)
    await recorder.close()
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [17] and isinstance(results[17], RecordsLost)
    assert recorder.failures == 1 and store.tally.lost == 1 and store.tally.salvaged == 0
    assert any("LOST the usage row of request req-17" in m for m in caplog.messages), caplog.messages
    rows, audits = await counts(store, 50)
    assert len(rows) == 49 and "req-17" not in rows and len(audits) == 50
    result = await store.verify_audit()
    assert result.ok and result.records == 50


def test_last_resort_row_takes_any_value() -> None:
    """Whatever a row holds, its last-resort form has the column types the store expects."""
    row = list(usage_row(rec(1)))
    row[USAGE_COLUMNS.index("created_at")] = float("nan")
    row[USAGE_COLUMNS.index("latency_ms")] = float("inf")
    row[USAGE_COLUMNS.index("group_name")] = "g" * 500
    row[USAGE_COLUMNS.index("attempts")] = "not json"
    row[USAGE_COLUMNS.index("cost_micro")] = -5
    out = dict(zip(USAGE_COLUMNS, last_resort_row(row), strict=True))
    assert abs(out["created_at"] - time.time()) < 60 and out["latency_ms"] == 0.0
    assert out["group_name"] == "g" * 186 + "...[truncated]" and out["attempts"] == "[]" and out["cost_micro"] == 0
