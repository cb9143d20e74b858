"""A batch the store refused for what it holds: its records written apart, so one bad record costs no other
its place (issues 23 and 24).

The group commit writes a whole batch in one transaction, so a single value the store refuses (a NUL,
which PostgreSQL cannot store; a text longer than its column; an integer past its column's range) used to
fail every record in it, and the recorder's retries failed the same way. Records are cleaned when they are
built (``sanitize.py``), so this runs only when something slipped past that: a writer calls
``write_apart`` after a batch failed with an error about its data (``is_record_error``), never on the
normal path. It bisects the batch, committing every part the store takes, until each refused record stands
alone; that record is written once more in its last-resort form (``sanitize.last_resort_row`` /
``last_resort_entry``), and one that is refused even then is logged as lost and returned, so its request
learns it has no record. Each part is its own transaction, audit entries included: every part's entries
are chained to the head it finds under the head's lock, so the chain stays whole and ``audit verify`` passes.
Everything runs before the batch's requests are released: a response still ends only after its record.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..records import AuditEntry
from .sanitize import last_resort_entry, last_resort_row

log = logging.getLogger("sluicegate.metering")

Write = Callable[[Sequence[tuple[Any, ...]], Sequence[AuditEntry]], Awaitable[None]]

_TRIES = 3  # per part, for failures of the store itself (a dropped connection), as the recorder retries a batch
# Errors about the values written, not about the store: a type or value the driver cannot encode, or an
# SQLSTATE of class 22 (data exception), 23 (integrity constraint) or 54 (program limit, e.g. an index row
# too large). A lost connection, a timeout, a full disk are none of these: the batch is retried whole.
_RECORD_ERRORS = (
    TypeError,
    ValueError,
    OverflowError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
)
_RECORD_SQLSTATE_CLASSES = ("22", "23", "54")


def is_record_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the store refused a value in the batch, so that another batch may well succeed."""
    if isinstance(exc, _RECORD_ERRORS):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _RECORD_SQLSTATE_CLASSES


class RecordsLost(Exception):
    """Raised by a writer after the rest of its batch was committed: these records (indices into the batch's
    rows and audit entries) could not be written in any form."""

    def __init__(self, rows: list[int], audits: list[int], cause: BaseException) -> None:
        super().__init__(f"{len(rows)} usage row(s) and {len(audits)} audit entry(ies) could not be written: {cause}")
        self.rows = rows
        self.audits = audits
        self.cause = cause


@dataclass
class Tally:
    """What isolation did, for diagnostics and the ``sluicegate_store_refused_records_total`` metric."""

    isolated_batches: int = 0
    salvaged: int = 0  # records written in their last-resort form
    lost: int = 0
    listener: Callable[[str, int], None] | None = None  # ("salvaged" | "lost", count)

    def add(self, result: str, count: int = 1) -> None:
        setattr(self, result, getattr(self, result) + count)
        if self.listener is not None:
            try:
                self.listener(result, count)
            except Exception:  # a metric must never cost a record
                log.exception("the refused-records listener failed")


async def write_apart(
    write: Write, rows: Sequence[tuple[Any, ...]], audits: Sequence[AuditEntry], error: BaseException, tally: Tally
) -> tuple[list[int], list[int]]:
    """Write the records of a batch that ``write`` refused with ``error`` in parts, as described above.

    Returns the indices of the rows and audit entries that could not be written at all (logged already).
    """
    tally.isolated_batches += 1
    n_rows, total = len(rows), len(rows) + len(audits)
    log.error(
        "the store refused a batch of %d usage row(s) and %d audit entry(ies) (%s: %s); writing them apart",
        n_rows,
        len(audits),
        type(error).__name__,
        error,
    )
    lost_rows: list[int] = []
    lost_audits: list[int] = []

    def part(lo: int, hi: int) -> tuple[Sequence[tuple[Any, ...]], Sequence[AuditEntry]]:
        return rows[lo:hi], audits[max(lo - n_rows, 0) : max(hi - n_rows, 0)]

    def lose(lo: int, hi: int) -> None:
        lost_rows.extend(i for i in range(lo, min(hi, n_rows)))
        lost_audits.extend(i - n_rows for i in range(max(lo, n_rows), hi))
        tally.add("lost", hi - lo)

    # Parts to write, as [lo, hi) over the rows followed by the audit entries, with the error that refused
    # them if they were tried already; the first part is on top.
    todo: list[tuple[int, int, BaseException | None]] = [(0, total, error)]
    while todo:
        lo, hi, refused = todo.pop()
        if refused is None:
            refused = await _try(write, *part(lo, hi))
            if refused is None:
                continue
        if not is_record_error(refused):
            ids = ", ".join(_safe(row[0]) for row in rows[lo:hi][:10])
            log.error("LOST %d record(s) (requests %s): the store failed while writing them apart: %s",
                      hi - lo, ids or "-", refused)  # fmt: skip
            lose(lo, hi)
        elif hi - lo > 1:
            mid = (lo + hi) // 2
            todo.extend(((mid, hi, None), (lo, mid, None)))
        elif await _salvage(write, rows, audits, lo, refused):
            tally.add("salvaged")
        else:
            lose(lo, hi)
    return lost_rows, lost_audits


async def _try(write: Write, rows: Sequence[tuple[Any, ...]], audits: Sequence[AuditEntry]) -> BaseException | None:
    """Write one part; the error it ends with, if any (a failure of the store itself is tried again first)."""
    for attempt in range(_TRIES):
        try:
            await write(rows, audits)
            return None
        except Exception as exc:
            if is_record_error(exc) or attempt == _TRIES - 1:
                return exc
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


async def _salvage(
    write: Write, rows: Sequence[tuple[Any, ...]], audits: Sequence[AuditEntry], index: int, refused: BaseException
) -> bool:
    """Write the one record at ``index`` that the store refused, in its last-resort form."""
    if index < len(rows):
        what = f"the usage row of request {_safe(rows[index][0])}"
        part: tuple[list[tuple[Any, ...]], list[AuditEntry]] = ([last_resort_row(rows[index])], [])
    else:
        entry = audits[index - len(rows)]
        request_id = entry.payload.get("request_id") if isinstance(entry.payload, dict) else None
        what = f"the {_safe(entry.kind)} audit entry {_safe(entry.action)} of request {_safe(request_id)}"
        part = ([], [last_resort_entry(entry, refused)])
    failed = await _try(write, *part)
    if failed is None:
        cause = f"{type(refused).__name__}: {refused}"
        log.error("%s was refused by the store (%s); written in its last-resort form", what, cause)
        return True
    log.error(
        "LOST %s: refused by the store (%s: %s), and in its last-resort form too (%s: %s)",
        what,
        type(refused).__name__,
        refused,
        type(failed).__name__,
        failed,
    )
    return False


def _safe(value: Any) -> str:
    """A value for a log line: ASCII, short, whatever it holds."""
    return ascii(str(value))[1:-1][:160]
