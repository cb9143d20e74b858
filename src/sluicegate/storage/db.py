"""Opening the store: one async SQLAlchemy engine over SQLite (aiosqlite, WAL) or PostgreSQL (asyncpg).

SQLAlchemy Core gives one query language for both engines without hand-built SQL strings; aiosqlite and
asyncpg are the maintained async drivers for each.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


class StoreConfigError(ValueError):
    pass


def engine_url(database_url: str) -> str:
    """Map the user-facing URL (``sqlite:///path``, ``postgresql://...``) to its async driver."""
    if database_url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + database_url.removeprefix("sqlite:///")
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+asyncpg://" + database_url.removeprefix(prefix)
    if database_url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        return database_url
    raise StoreConfigError("SLUICEGATE_DATABASE_URL must start with sqlite:/// or postgresql://")


def create_engine(
    database_url: str, *, schema: str | None = None, pool_size: int = 10, max_overflow: int = 10
) -> AsyncEngine:
    url = make_url(engine_url(database_url))
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    # ``?search_path=NAME`` in the URL puts sluicegate's tables in their own schema (tests isolate runs this way).
    schema = schema or url.query.get("search_path")  # type: ignore[assignment]
    if schema:
        url = url.difference_update_query(["search_path"])
        connect_args["server_settings"] = {"search_path": str(schema)}
    return create_async_engine(url, pool_size=pool_size, max_overflow=max_overflow, connect_args=connect_args)


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers run beside the single writer. synchronous=NORMAL: a committed transaction survives
    # the process being killed (it is in the WAL, in the OS cache); only a power loss can lose the newest.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
