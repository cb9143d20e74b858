"""Versioned, append-only schema migrations, applied by ``sluicegate migrate`` and at start.

Each step is a function of a sync connection (run through ``run_sync``), recorded in ``schema_migrations``
when applied. Upgrading is: install the new version, run ``sluicegate migrate`` (or just start it). Never edit
a released step; add a new one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Connection, Integer, String, Table, func, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from . import console_schema, schema

Step = Callable[[Connection], None]


def _create(*tables: Table) -> Step:
    def step(conn: Connection) -> None:
        for table in tables:
            table.create(conn, checkfirst=True)

    return step


def _add_columns(conn: Connection, table: str, columns: list[Column[Any]]) -> None:
    """Add the columns a table lacks (a database created before they existed)."""
    existing = {c["name"] for c in inspect(conn).get_columns(table)}
    missing = [c for c in columns if c.name not in existing]
    if not missing:
        return
    # alembic's operations give portable ALTER TABLE (and SQLite's batch mode) without hand-written DDL.
    # Imported here, not at the top: only an upgrade needs it, and it costs every process ~12 MB.
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    op = Operations(MigrationContext.configure(conn))
    for column in missing:
        op.add_column(table, column)


def _limits_columns(conn: Connection) -> None:
    for table in ("groups", "api_keys"):
        _add_columns(
            conn,
            table,
            [
                Column("rpm", Integer, nullable=True),
                Column("tpm", Integer, nullable=True),
                Column("budget_micro", BigInteger, nullable=True),
                Column("budget_period", String(10), nullable=True),
            ],
        )


def _accounting(conn: Connection) -> None:
    _limits_columns(conn)
    for table in (schema.usage, schema.usage_daily, schema.rollup_days, schema.audit_log, schema.audit_head):
        table.create(conn, checkfirst=True)
    if conn.execute(select(schema.audit_head.c.id)).first() is None:
        conn.execute(schema.audit_head.insert().values(id=1, seq=0, hash=GENESIS_HASH))


def _group_dlp(conn: Connection) -> None:
    _add_columns(conn, "groups", [Column("dlp", JSON, nullable=True)])


def _lean_usage_indexes(conn: Connection) -> None:
    # Every usage index is written inside the group commit. Request ids are random, so their index put each
    # row on a different page (a 4 KB WAL frame per row on SQLite: measured +7 µs per request at 24 rows per
    # commit); the day index duplicated created_at's. Reports, rollups and pruning use created_at ranges.
    for name in ("ix_usage_request", "ix_usage_day"):
        conn.execute(text(f"DROP INDEX IF EXISTS {name}"))


def _console(conn: Connection) -> None:
    for table in (console_schema.usage_hourly, console_schema.rollup_marks, console_schema.console_sessions):
        table.create(conn, checkfirst=True)
    conn.execute(text(console_schema.AUDIT_KIND_INDEX))


# The hash the first audit record chains to.
GENESIS_HASH = "0" * 64

MIGRATIONS: list[tuple[str, str, Step]] = [
    ("0001", "groups and api keys", _create(schema.groups, schema.api_keys)),
    ("0002", "limits, budgets, usage, rollups, audit log", _accounting),
    ("0003", "per-group DLP overrides", _group_dlp),
    ("0004", "fewer usage indexes: the group commit writes every one", _lean_usage_indexes),
    ("0005", "console: hourly usage cube, sessions, audit index by kind", _console),
]


# Any constant: the advisory lock that serialises migrations of one PostgreSQL database.
_PG_LOCK = 7_426_170_531


async def migrate(engine: AsyncEngine) -> list[str]:
    """Apply every pending step in order; return the versions applied now.

    Several processes (workers, replicas) start at once on a fresh database: on PostgreSQL a transaction
    advisory lock makes them take turns; SQLite has no such lock, so a process that loses the race to
    create a table retries once the winner has committed (its check then finds the step applied).
    """
    attempt = 0
    while True:
        try:
            async with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    await conn.execute(select(func.pg_advisory_xact_lock(_PG_LOCK)))
                return await conn.run_sync(_migrate_sync)
        except (OperationalError, IntegrityError, ProgrammingError):
            attempt += 1
            if attempt >= 10:
                raise
            await asyncio.sleep(0.05 * attempt)


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
