"""Per-test databases: a SQLite file, or a fresh schema in the machine's PostgreSQL (database ``test``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from tests.support.services import PG_DSN, require


async def _pg_async(sql: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_execute(sql: str) -> None:
    """Run one statement from sync or async test code (its own loop, in a worker thread)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _pg_async(sql)).result()


@contextmanager
def database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """Yield a ``SLUICEGATE_DATABASE_URL`` for an empty database of ``kind`` (``sqlite`` or ``postgres``)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'sluicegate.db'}"
        return
    require("postgresql")
    schema = "t_" + uuid.uuid4().hex[:12]
    pg_execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_DSN}?search_path={schema}"
    finally:
        pg_execute(f'DROP SCHEMA "{schema}" CASCADE')
