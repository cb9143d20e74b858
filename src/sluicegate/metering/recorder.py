"""Group commit: every finished request waits for its record to be durable, without one fsync per request.

``record`` queues the usage row (and its audit entry) and waits on a future; one writer task takes
everything queued, writes it in a single transaction, and resolves all the futures. While one batch is
being written the next one fills, so under load a commit covers many requests and costs each of them a
fraction of a round trip. The queue is bounded (callers wait for room), so a slow store slows admissions
instead of growing memory. ``MeteringSink`` is the policy-chain hook that calls it before the response
ends; so a completed response always has its record, even if the process is killed right after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from ..records import AuditEntry, RequestRecord
from ..storage.batch_writer import UsageRow
from ..storage.isolation import RecordsLost
from ..storage.sanitize import ERROR_CODE_CHARS, clean_entry, clean_text
from ..storage.usage import UsageStore, usage_row

if TYPE_CHECKING:
    from ..hooks import RequestContext

log = logging.getLogger("sluicegate.metering")

_RETRIES = 3
_LINGER_FROM = 8  # records in the previous commit from which the writer waits one loop turn before the next
_PIPELINE_FROM = 8  # records waiting from which a second commit starts while one is in flight

# A queued record: its usage row, its audit entry, and the future its request waits on (the commit's span).
_Pending = tuple[UsageRow | None, AuditEntry | None, "asyncio.Future[tuple[float, float]]"]


class UsageRecorder:
    def __init__(self, store: UsageStore, *, max_pending: int = 10_000, audit_requests: bool = True) -> None:
        self._store = store
        self._audit_requests = audit_requests
        self._max_pending = max_pending
        # Everything submitted since the last write began, each with the future its request waits on.
        self._pending: list[_Pending] = []
        # Resolved when the batch now filling is written: what a caller waiting for room awaits.
        self._next: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_batch = 0
        self._in_flight = 0  # commits begun and not finished
        self.batches = 0
        self.records = 0  # rows and audit entries written: records / batches is the group commit's yield
        self.failures = 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._next = loop.create_future()
        self._task = loop.create_task(self._run())

    async def record(self, rec: RequestRecord, prompt: str | None = None) -> None:
        """``prompt``: the messages as JSON, for the audit entry, when prompt logging is on."""
        entry = request_audit(rec, prompt) if self._audit_requests else None
        rec.stored = await self._submit(usage_row(rec), entry)

    async def audit(self, entry: AuditEntry) -> None:
        await self._submit(None, clean_entry(entry))

    async def _submit(self, row: UsageRow | None, entry: AuditEntry | None) -> tuple[float, float]:
        assert self._next is not None, "the recorder is not started"
        while len(self._pending) >= self._max_pending:
            # Bounded: wait for the batch being filled to be written before adding more.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._next)
        # A future of its own per record: a client that disconnects cancels only this one, never the batch's
        # bookkeeping (what ``asyncio.shield`` on a shared future gave, at twice the loop callbacks).
        done: asyncio.Future[tuple[float, float]] = asyncio.get_running_loop().create_future()
        self._pending.append((row, entry, done))
        self._wake.set()
        return await done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # Commits in flight at once: 1 on SQLite (one writer); more on PostgreSQL, so the next batch is on
        # its way while the previous one commits instead of every waiting request leaving the core idle.
        slots = asyncio.Semaphore(self._store.max_in_flight)
        writing: set[asyncio.Task[None]] = set()
        while not (self._closing and not self._pending):
            await self._wake.wait()
            if self._last_batch >= _LINGER_FROM and not self._closing:
                # Under load, one more loop turn lets the requests finishing in it join this commit: fewer,
                # larger commits for the same records. A lone request never waits for it.
                await asyncio.sleep(0)
            if self._in_flight and len(self._pending) < _PIPELINE_FROM and not self._closing:
                # A commit is on its way and only a few records wait: they join the next commit when it lands
                # (or when enough arrive) instead of paying a commit's fixed cost each. Measured on PostgreSQL at
                # c=64: two commits in flight for every record or two left the core idle 4-6 % and cost ~0.1 ms
                # of CPU per request in per-commit overhead.
                self._wake.clear()
                continue
            await slots.acquire()
            self._wake.clear()
            if not self._pending:
                slots.release()
                continue
            batch, self._pending = self._pending, []
            self._last_batch = len(batch)
            future, self._next = self._next, loop.create_future()
            assert future is not None
            self._in_flight += 1
            if self._store.max_in_flight == 1:
                await self._commit(batch, future, slots)
            else:
                task = loop.create_task(self._commit(batch, future, slots))
                writing.add(task)
                task.add_done_callback(writing.discard)
        if writing:
            await asyncio.gather(*writing)

    async def _commit(
        self,
        batch: list[_Pending],
        future: asyncio.Future[None],
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            span, lost = await self._write(batch)
        finally:
            slots.release()
            self._in_flight -= 1
            self._wake.set()  # records held back for this commit to land may go now
        future.set_result(None)
        for i, (_, _, done) in enumerate(batch):
            if done.done():  # its request was cancelled; the record is written all the same
                continue
            failure = span if isinstance(span, BaseException) else lost.get(i)
            if failure is not None:
                done.set_exception(failure)
                done.exception()  # retrieved here too: its waiter may be cancelled before it looks
            else:
                assert not isinstance(span, BaseException)
                done.set_result(span)

    async def _write(self, batch: list[_Pending]) -> tuple[tuple[float, float] | BaseException, dict[int, RecordsLost]]:
        """Write the batch: its commit's span (or the error that failed it), and the records the store refused
        in any form (by position in ``batch``) when the rest was written apart (``isolation.py``)."""
        rows = [row for row, _, _ in batch if row is not None]
        audits = [entry for _, entry, _ in batch if entry is not None]
        started = time.time()
        error: BaseException | None = None
        lost: dict[int, RecordsLost] = {}
        for attempt in range(_RETRIES):
            try:
                await self._store.write(rows, audits)
                error = None
                break
            except RecordsLost as exc:  # the rest of the batch is written: trying it again would write it twice
                lost = _lost_positions(batch, exc)
                error = None
                break
            except Exception as exc:  # retried; a lost record is worse than a slow one
                error = exc
                log.error("writing %d usage records failed (try %d): %s", len(rows), attempt + 1, exc)
                await asyncio.sleep(0.05 * (attempt + 1))
        self.batches += 1
        self.records += len(batch)
        if error is not None:
            self.failures += len(batch)
            return error, lost
        self.failures += len(lost)
        return (started, time.time()), lost

    async def close(self) -> None:
        """Write whatever is queued, then stop (graceful shutdown); a write in progress is never cut."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self.batches:
            log.info("usage recorder: %d records in %d commits", self.records, self.batches)


def _lost_positions(batch: list[_Pending], exc: RecordsLost) -> dict[int, RecordsLost]:
    """The positions in ``batch`` of the records ``exc`` names (it counts rows and audit entries apart)."""
    rows: list[int] = []
    audits: list[int] = []
    for i, (row, entry, _) in enumerate(batch):
        if row is not None:
            rows.append(i)
        if entry is not None:
            audits.append(i)
    return {i: exc for i in [rows[r] for r in exc.rows] + [audits[a] for a in exc.audits]}


def request_audit(rec: RequestRecord, prompt: str | None = None) -> AuditEntry:
    """The audit entry of a request: who, what, when, outcome, tokens, cost, the client's ``metadata``; the
    prompt only when ``prompt`` is given (``metering.audit_prompts``), never secrets."""
    u = rec.usage
    payload: dict[str, Any] = {
        "request_id": rec.request_id,
        "group": rec.group,
        "status": rec.status,
        "outcome": rec.outcome,
        "error_code": clean_text(rec.error_code, ERROR_CODE_CHARS) if rec.error_code is not None else None,
        "prompt_tokens": u.prompt_tokens if u else 0,
        "completion_tokens": u.completion_tokens if u else 0,
        "cost_micro": rec.cost_micro,
        "partial": rec.partial,
    }
    if rec.metadata:
        payload["metadata"] = rec.metadata
    if prompt is not None:
        payload["prompt"] = prompt
    return clean_entry(
        AuditEntry(
            created_at=rec.started_at,
            kind="request",
            actor=rec.key_prefix,
            action="chat.completion",
            target=rec.model or rec.requested_model,
            payload=payload,
        )
    )


def prompt_text(messages: list[dict[str, Any]], max_chars: int) -> str:
    """The messages as JSON for the audit log, cut at ``max_chars`` with a marker saying how long they were."""
    text = orjson.dumps(messages).decode()
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"...[truncated: {len(text)} characters in all]"


class MeteringSink:
    """Writes the record (and its audit entry) before the response ends.

    ``audit_prompts``: the most characters of each request's messages to keep in its audit entry (prompt logging),
    or None (the default: no prompt text). Only a request that reached an upstream has its prompt logged: every
    before-hook ran for it, so DLP has redacted what it redacts; a refused request may hold what DLP blocked.
    """

    name = "metering"

    def __init__(self, recorder: UsageRecorder, *, audit_prompts: int | None = None) -> None:
        self._recorder = recorder
        self._audit_prompts = audit_prompts

    async def finished(self, ctx: RequestContext, record: RequestRecord) -> None:
        try:
            for event in ctx.dlp_events:
                await self._recorder.audit(
                    AuditEntry(
                        record.started_at,
                        "dlp",
                        record.key_prefix,
                        f"dlp.{event.direction}.{event.action}",
                        event.detector,
                        {"request_id": record.request_id, "count": event.count},
                    )
                )
            prompt = None
            if self._audit_prompts is not None and any(not a.skipped for a in record.attempts):
                prompt = prompt_text(ctx.request.messages, self._audit_prompts)
            await self._recorder.record(record, prompt)
        except Exception as exc:
            # The answer is already paid for upstream; failing the client now would not unspend it.
            log.error("usage record of %s could not be written: %s", record.request_id, exc)


class AdminAuditWriter:
    """Admin actions into the same chain (``admin.AdminAudit`` protocol): queued in a server, direct in the CLI."""

    def __init__(self, write: Callable[[AuditEntry], Awaitable[None]]) -> None:
        self._write = write

    async def admin_action(self, actor: str, action: str, target: str, details: dict[str, Any]) -> None:
        await self._write(AuditEntry(time.time(), "admin", actor, action, target, details))
