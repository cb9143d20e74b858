"""Versioned, append-only schema migrations, applied by ``sluicegate migrate`` and at start.

Each step is a function of a sync connection (run through ``run_sync``), recorded in ``schema_migrations``
when applied. Upgrading is: install the new version, run ``sluicegate migrate`` (or just start it). Never edit
a released step; add a new one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, Table, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine

from . import schema

Step = Callable[[Connection], None]


def _create(*tables: Table) -> Step:
    def step(conn: Connection) -> None:
        for table in tables:
            table.create(conn, checkfirst=True)

    return step


MIGRATIONS: list[tuple[str, str, Step]] = [
    ("0001", "groups and api keys", _create(schema.groups, schema.api_keys)),
]


async def migrate(engine: AsyncEngine) -> list[str]:
    """Apply every pending step in order; return the versions applied now."""
    async with engine.begin() as conn:
        return await conn.run_sync(_migrate_sync)


def _migrate_sync(conn: Connection) -> list[str]:
    schema.schema_migrations.create(conn, checkfirst=True)
    done = set(conn.execute(select(schema.schema_migrations.c.version)).scalars())
    applied: list[str] = []
    for version, name, step in MIGRATIONS:
        if version in done:
            continue
        step(conn)
        conn.execute(schema.schema_migrations.insert().values(version=version, name=name, applied_at=time.time()))
        applied.append(version)
    return applied


async def pending(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return await conn.run_sync(_pending_sync)


def _pending_sync(conn: Connection) -> list[str]:
    if not inspect(conn).has_table("schema_migrations"):
        return [v for v, _, _ in MIGRATIONS]
    done = set(conn.execute(select(schema.schema_migrations.c.version)).scalars())
    return [v for v, _, _ in MIGRATIONS if v not in done]
