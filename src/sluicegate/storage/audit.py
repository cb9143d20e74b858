"""The tamper-evident audit chain: each record's hash covers its content and the previous record's hash.

``hash = sha256(prev_hash + "\\n" + seq + "\\n" + created_at + "\\n" + kind + "\\n" + actor + "\\n" + action
+ "\\n" + target + "\\n" + payload)``. Editing any field of any row changes its hash; deleting a row
breaks the next row's ``prev_hash`` and leaves a gap in ``seq``; truncating the tail leaves the head row
(which every append updates in the same transaction) pointing past the end. ``verify`` walks the chain.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from ..records import AuditEntry
from .migrations import GENESIS_HASH
from .sanitize import clean_entry, clean_json

log = logging.getLogger("sluicegate.metering")


def canonical(payload: dict[str, Any]) -> str:
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()


def chain_hash(
    prev_hash: str, seq: int, created_at: float, kind: str, actor: str, action: str, target: str, payload: str
) -> str:
    material = "\n".join((prev_hash, str(seq), repr(float(created_at)), kind, actor, action, target, payload))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def chain(seq: int, prev: str, entries: Iterable[AuditEntry]) -> tuple[list[tuple[Any, ...]], int, str]:
    """Link ``entries`` after the head ``(seq, prev)``: their rows in ``AUDIT_COLUMNS`` order, and the new head.

    The caller holds the head's lock (SQLite's write lock, PostgreSQL's row lock) from reading it until it
    writes the new head in the same transaction, so writers on every replica extend one chain in turn.
    """
    rows: list[tuple[Any, ...]] = []
    for e in entries:
        seq += 1
        try:
            payload = canonical(e.payload)
            digest = chain_hash(prev, seq, e.created_at, e.kind, e.actor, e.action, e.target, payload)
        except (TypeError, ValueError) as exc:
            # A value orjson or UTF-8 cannot take (a lone surrogate, an integer past 64 bits, a key that is not
            # a string) would fail every batch this entry rides in: it is stored, and hashed, cleaned instead.
            log.error("an audit entry was cleaned before it was stored: %s", exc)
            e = clean_entry(e)._replace(payload=clean_json(e.payload))
            payload = canonical(e.payload)
            digest = chain_hash(prev, seq, e.created_at, e.kind, e.actor, e.action, e.target, payload)
        rows.append((seq, e.created_at, e.kind, e.actor, e.action, e.target, payload, prev, digest))
        prev = digest
    return rows, seq, prev


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    records: int
    problem: str | None = None
    seq: int | None = None


async def verify(rows: AsyncIterator[Any], head_seq: int, head_hash: str) -> VerifyResult:
    """Walk the chain in ``seq`` order; the first inconsistency is reported with its sequence number."""
    prev = GENESIS_HASH
    expected_seq = 1
    count = 0
    async for row in rows:
        if row.seq != expected_seq:
            return VerifyResult(False, count, f"record {expected_seq} is missing (next is {row.seq})", expected_seq)
        if row.prev_hash != prev:
            return VerifyResult(False, count, f"record {row.seq} does not chain to the record before it", row.seq)
        digest = chain_hash(prev, row.seq, row.created_at, row.kind, row.actor, row.action, row.target, row.payload)
        if digest != row.hash:
            return VerifyResult(False, count, f"record {row.seq} was altered (its hash does not match)", row.seq)
        prev = row.hash
        expected_seq += 1
        count += 1
    if count != head_seq or prev != head_hash:
        return VerifyResult(False, count, f"the chain ends at record {count} but its head says {head_seq}", count + 1)
    return VerifyResult(True, count)
