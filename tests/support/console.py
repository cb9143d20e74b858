"""Helpers for the console's tests: a logged-in HTTP client, the CSRF token of a page, the gateway's store."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, update

from sluicegate.storage.console_schema import console_sessions
from sluicegate.storage.db import create_engine
from tests.support.databases import database_url
from tests.support.gateway import GatewayProcess

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@contextmanager
def console_gateway(
    config: dict[str, Any], workdir: Path, kind: str = "sqlite", env: dict[str, str] | None = None
) -> Iterator[GatewayProcess]:
    """A gateway on a fresh database of ``kind`` (``database(gw)`` is its URL)."""
    with (
        database_url(kind, workdir) as url,
        GatewayProcess(config, workdir, {"SLUICEGATE_DATABASE_URL": url, **(env or {})}) as gw,
    ):
        yield gw


def database(gw: GatewayProcess) -> str:
    return gw.env["SLUICEGATE_DATABASE_URL"]


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def login(gw: GatewayProcess, key: str | None = None) -> httpx.Client:
    client = httpx.Client(base_url=gw.url, timeout=30)
    r = client.post("/ui/login", data={"master_key": key or gw.key, "next": "/ui/overview"})
    assert r.status_code == 303, r.text
    return client


def admin_get(gw: GatewayProcess, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{gw.url}/admin/v1{path}", params=params, headers={"Authorization": f"Bearer {gw.key}"})


def store_run(database: str, statement: Any) -> list[Any]:
    """Run one statement on the gateway's store from the test (sessions are rows: expiry is a row edit).

    In a thread of its own: Playwright's sync API keeps an event loop running on the test's thread.
    """

    async def run() -> list[Any]:
        engine = create_engine(database)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(statement)
                return list(result.all()) if result.returns_rows else []
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def age_sessions(database: str, *, idle: float | None = None, past_max: bool = False) -> None:
    """Make every console session look ``idle`` seconds unused, or past its maximum age."""
    values: dict[str, float] = {}
    if idle is not None:
        values["last_seen"] = time.time() - idle
    if past_max:
        values["expires_at"] = time.time() - 1
    store_run(database, update(console_sessions).values(**values))


def session_rows(database: str) -> list[Any]:
    return store_run(database, select(console_sessions))
